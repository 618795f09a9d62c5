//! The one rule for every path inside an image that a recipe or an image definition names
//! (a recipe's `prefix` and `path` entries; a definition's template targets, data directories,
//! volumes, identity-check files and `workdir`), so that what `imgbuild check` accepts is a
//! path every unpacker (umoci, Podman, the VM rootfs) and Linux itself can hold:
//!
//! - absolute, without `.` or `..` components;
//! - no control character (C0, DEL, C1);
//! - no component that is an OCI whiteout name (`.wh.NAME`, `.wh..wh..opq`): in a layer, such
//!   a name deletes files of the layers below instead of being a file;
//! - every component at most 255 bytes (`NAME_MAX`), the whole path under 4096 (`PATH_MAX`).

/// Linux's longest file name (`NAME_MAX`).
pub(crate) const MAX_COMPONENT: usize = 255;
/// Linux's `PATH_MAX`, which counts the final NUL: a path is shorter.
pub(crate) const PATH_MAX: usize = 4096;
/// What OCI layers name whiteouts with (image spec, layer.md).
const WHITEOUT_PREFIX: &str = ".wh.";

/// `text` as an image path without its leading `/` (empty for `/` itself), or why it is not one.
pub(crate) fn parse(text: &str) -> Result<String, String> {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!("holds a control character (U+{:04X})", c as u32));
    }
    if !text.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    let mut parts = Vec::new();
    for part in text.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err("must not contain `.` or `..`".into());
        }
        if part.starts_with(WHITEOUT_PREFIX) {
            return Err(format!(
                "has a component `{}` that is an OCI whiteout name (`.wh.…`), which deletes files in an image instead of naming one",
                crate::error::escape(part)
            ));
        }
        if part.len() > MAX_COMPONENT {
            return Err(format!("has a component of {} bytes; Linux allows {MAX_COMPONENT}", part.len()));
        }
        parts.push(part);
    }
    let path = parts.join("/");
    if path.len() + 1 >= PATH_MAX {
        return Err(format!("is {} bytes long; Linux paths are shorter than {PATH_MAX}", path.len() + 1));
    }
    Ok(path)
}

/// Whether `path` is `dir` or inside it (both without the leading `/`; `""` is the root).
pub(crate) fn inside_or_at(path: &str, dir: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `a` and `b` are the same path, or one is inside the other.
pub(crate) fn nests(a: &str, b: &str) -> bool {
    inside_or_at(a, b) || inside_or_at(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_are_normalized_without_their_leading_slash() {
        assert_eq!(parse("/opt//zk/").unwrap(), "opt/zk");
        assert_eq!(parse("/").unwrap(), "");
        assert_eq!(
            parse("/a.wh./x.wh.y/wh.z/..wh.").unwrap(),
            "a.wh./x.wh.y/wh.z/..wh.",
            "only a leading `.wh.` is one"
        );
        for (bad, why) in [
            ("opt/zk", "absolute"),
            ("/opt/../etc", "`..`"),
            ("/opt/./zk", "`.`"),
            ("/.wh.etc/x", "whiteout"),
            ("/opt/.wh.y", "whiteout"),
            ("/.wh..wh..opq", "whiteout"),
            ("/etc/.wh.passwd", "whiteout"),
            ("/a\u{85}b", "control"),
            ("/a\tb", "control"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    /// A component: ordinary, whiteout-shaped, dot-shaped, or around the length limit.
    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9._-]{1,12}",
            1 => "\\.wh\\.[a-z.]{0,6}",
            1 => prop::sample::select(vec![".", "..", ".wh", "wh.", "..wh.", "\u{1b}", "\u{7f}", "\u{9b}", "ü"]).prop_map(String::from),
            1 => (250usize..260).prop_map(|n| "c".repeat(n)),
            1 => (1000usize..1400).prop_map(|n| "d".repeat(n / 5)),
        ]
    }

    proptest! {
        /// The rule holds for every path it accepts, and each refusal breaks a part of it.
        #[test]
        fn accepted_paths_keep_every_part_of_the_rule(parts in prop::collection::vec(component(), 0..24), slash in any::<bool>()) {
            let text = format!("{}{}", if slash { "/" } else { "" }, parts.join("/"));
            let bad_part = parts.iter().any(|p| p == "." || p == ".." || p.starts_with(".wh.") || p.len() > 255 || p.chars().any(char::is_control));
            let joined: Vec<&str> = parts.iter().map(String::as_str).filter(|p| !p.is_empty()).collect();
            let too_long = joined.join("/").len() + 1 >= 4096;
            match parse(&text) {
                Ok(path) => {
                    prop_assert!(slash && !bad_part && !too_long, "{:?}", text);
                    prop_assert_eq!(path, joined.join("/"));
                }
                Err(_) => prop_assert!(!slash || bad_part || too_long, "{:?}", text),
            }
        }
    }
}
