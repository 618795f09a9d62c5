//! A recipe's name and version guessed from an upstream file name, the way releases are
//! usually named: `zookeeper-3.4.10.tar.gz`, `kafka_2.11-1.0.0.tgz`, `jdk-v21.0.1.tar.xz`.

use crate::platform::Platform;

/// Architecture words of release file names, and the platform each means.
const ARCHITECTURES: &[(&str, &str)] = &[
    ("amd64", "linux/amd64"),
    ("x64", "linux/amd64"),
    ("aarch64", "linux/arm64"),
    ("arm64", "linux/arm64"),
    ("armv7", "linux/arm/v7"),
    ("armhf", "linux/arm/v7"),
    ("ppc64le", "linux/ppc64le"),
    ("s390x", "linux/s390x"),
    ("riscv64", "linux/riscv64"),
];

/// Other systems' builds, for which no linux platform is guessed.
const OTHER_SYSTEMS: &[&str] = &["windows", "win", "mac", "macos", "osx", "darwin", "freebsd", "aix", "solaris"];

/// Archive suffixes, longest first, so `.tar.gz` wins over `.gz`.
const ARCHIVE_SUFFIXES: &[&str] = &[
    ".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".tgz", ".txz", ".tbz2", ".tbz", ".tzst", ".tar", ".gz", ".xz",
    ".bz2", ".zst",
];

/// What a file name says about its recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Guess {
    /// A valid recipe name: `a-z`, `0-9`, `.`, `_`, `-`, never empty.
    pub name: String,
    /// The release, when the name has one (the part from the first `-`/`_` followed by a digit).
    pub version: Option<String>,
}

pub(crate) fn guess(file_name: &str) -> Guess {
    let stem = strip_archive_suffix(file_name);
    let (name, version) = match version_start(stem) {
        Some((name_end, version_start)) => (&stem[..name_end], Some(&stem[version_start..])),
        None => (stem, None),
    };
    let version = version.map(clean_version).filter(|v| !v.is_empty());
    Guess { name: recipe_name(name), version }
}

/// The platform a release file is built for, when its name says so (`…_x64_linux_…` →
/// linux/amd64, `…-aarch64.tar.gz` → linux/arm64); none for another system's build or when
/// the name names two architectures.
pub(crate) fn guess_platform(file_name: &str) -> Option<Platform> {
    // `x86_64` is one word, though `_` separates words elsewhere (`jdk_x64_linux`).
    let lower = strip_archive_suffix(file_name).to_ascii_lowercase().replace("x86_64", "amd64");
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
    let has_word = |w: &str| words.iter().any(|word| *word == w || word.split('_').any(|part| part == w));
    if OTHER_SYSTEMS.iter().any(|os| has_word(os)) {
        return None;
    }
    let mut found = ARCHITECTURES.iter().filter(|(word, _)| has_word(word)).map(|(_, platform)| *platform);
    let first = found.next()?;
    if found.any(|other| other != first) {
        return None;
    }
    first.parse().ok()
}

fn strip_archive_suffix(file_name: &str) -> &str {
    let lower = file_name.to_ascii_lowercase();
    ARCHIVE_SUFFIXES
        .iter()
        .find(|s| lower.len() > s.len() && lower.ends_with(*s))
        .map_or(file_name, |s| &file_name[..file_name.len() - s.len()])
}

/// Where the name ends and the version begins: at the first `-` or `_` followed by a digit
/// (or by `v` and a digit, as in `-v1.2`).
fn version_start(stem: &str) -> Option<(usize, usize)> {
    let bytes = stem.as_bytes();
    (1..bytes.len()).find_map(|i| {
        if !matches!(bytes[i], b'-' | b'_') {
            return None;
        }
        match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(d), _) if d.is_ascii_digit() => Some((i, i + 1)),
            (Some(b'v' | b'V'), Some(d)) if d.is_ascii_digit() => Some((i, i + 2)),
            _ => None,
        }
    })
}

/// Versions become image labels: keep them to printable characters without spaces.
fn clean_version(version: &str) -> String {
    version.chars().filter(|c| !c.is_whitespace() && !crate::error::is_unsafe_char(*c)).collect()
}

/// `text` made into a recipe name: lowercase, other characters as `-`, no leading or trailing
/// punctuation; `recipe` when nothing is left.
pub(crate) fn recipe_name(text: &str) -> String {
    let name = clean_name(text);
    if name.is_empty() {
        "recipe".into()
    } else {
        name
    }
}

/// `text` in the characters names use (`a-z`, `0-9`, `.`, `_`, `-`), lowercase, other
/// characters as one `-`, without punctuation at either end (so never `.` or `..`); maybe empty.
pub(crate) fn clean_name(text: &str) -> String {
    let mut name = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) { c } else { '-' };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    name.trim_matches(|c| "._-".contains(c)).to_string()
}

pub(crate) use crate::recipe::is_recipe_name;

/// `text` with each `%XX` made the byte it stands for; `None` when a `%` is not followed by
/// two hex digits.
pub(crate) fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A file name as it is compared with another: percent-decoded (a URL's `%2B` is the `+` of
/// the file's own name), or as it is when it is not valid percent-encoding.
pub(crate) fn normalized(name: &str) -> Vec<u8> {
    percent_decode(name).unwrap_or_else(|| name.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(file: &str) -> (String, Option<String>) {
        let Guess { name, version } = guess(file);
        (name, version)
    }

    #[test]
    fn upstream_release_names() {
        assert_eq!(g("zookeeper-3.4.10.tar.gz"), ("zookeeper".into(), Some("3.4.10".into())));
        assert_eq!(g("kafka_2.11-1.0.0.tgz"), ("kafka".into(), Some("2.11-1.0.0".into())));
        assert_eq!(g("apache-zookeeper-3.8.0-bin.tar.gz"), ("apache-zookeeper".into(), Some("3.8.0-bin".into())));
        assert_eq!(
            g("OpenJDK8U-jdk_x64_linux_hotspot_8u392b08.tar.gz"),
            ("openjdk8u-jdk_x64_linux_hotspot".into(), Some("8u392b08".into()))
        );
        assert_eq!(g("node-v20.10.0-linux-x64.tar.xz"), ("node".into(), Some("20.10.0-linux-x64".into())));
        assert_eq!(g("base.tar"), ("base".into(), None));
        assert_eq!(g("Debian Slim.TAR"), ("debian-slim".into(), None));
        assert_eq!(g(".tar.gz"), ("tar".into(), None));
        assert_eq!(g("---"), ("recipe".into(), None));
    }

    #[test]
    fn platforms_from_release_names() {
        let p = |f: &str| guess_platform(f).map(|p| p.to_string());
        assert_eq!(p("OpenJDK8U-jdk_x64_linux_hotspot_8u392b08.tar.gz").as_deref(), Some("linux/amd64"));
        assert_eq!(p("OpenJDK8U-jdk_aarch64_linux_hotspot_8u392b08.tar.gz").as_deref(), Some("linux/arm64"));
        assert_eq!(p("node-v20.10.0-linux-x64.tar.xz").as_deref(), Some("linux/amd64"));
        assert_eq!(p("go1.21.5.linux-arm64.tar.gz").as_deref(), Some("linux/arm64"));
        assert_eq!(p("pkg-1.0-x86_64.tgz").as_deref(), Some("linux/amd64"));
        assert_eq!(p("jdk_x86_64_linux.tgz").as_deref(), Some("linux/amd64"));
        assert_eq!(p("zookeeper-3.4.10.tar.gz"), None);
        assert_eq!(p("OpenJDK8U-jdk_x64_windows_hotspot.zip"), None);
        assert_eq!(p("tool-darwin-arm64.tar.gz"), None);
        assert_eq!(p("fat-x64-arm64.tar.gz"), None);
        assert_eq!(p("mixtape-1.0.tar.gz"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the file is called, the name is one a recipe accepts and the version has
        /// no control characters or spaces.
        #[test]
        fn any_file_name_gives_a_valid_name(file in "\\PC{0,40}|[\\x00-\\x7f]{0,40}") {
            let Guess { name, version } = guess(&file);
            prop_assert!(is_recipe_name(&name), "{name:?}");
            if let Some(v) = version {
                prop_assert!(!v.is_empty() && !v.chars().any(|c| c.is_whitespace() || crate::error::is_unsafe_char(c)));
            }
        }

        /// `NAME-VERSION.SUFFIX` gives back NAME and VERSION.
        #[test]
        fn name_and_version_round_trip(
            name in "[a-z][a-z0-9]{0,8}(-[a-uw-z][a-z0-9]{0,8}){0,3}",  // no `-v1`: that starts a version
            version in "[0-9][0-9a-z.]{0,10}(-[a-z0-9.]{1,6}){0,2}",
            suffix in prop::sample::select(ARCHIVE_SUFFIXES),
        ) {
            prop_assert_eq!(g(&format!("{name}-{version}{suffix}")), (name, Some(version)));
        }
    }
}
