//! The configuration a node renders at boot, rendered the way the boot renders it: by the
//! entrypoint script itself (`IMGBUILD_RENDER_ONLY=1`) on the image's `/etc/imgbuild/`, in a
//! fresh directory standing for the node's root. There is no second renderer that could
//! disagree with the boot.
//!
//! The script that runs is this imgbuild's own (`entrypoint::ENTRYPOINT_SCRIPT`), never one read
//! from an image; and `cluster.env`, which it sources, must first be what imgbuild writes:
//! assignments of quoted literal text to `IMGBUILD_*` names, with every path in it an image
//! path. A hostile image thus runs nothing on this machine and writes nowhere but that
//! directory, and a render that does not end in `RENDER_TIMEOUT` is stopped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::digest::Sha256Digest;
use crate::entrypoint::{CONF_DIR, ENTRYPOINT_SCRIPT};
use crate::error::{escape, Error, IoContext, Result};
use crate::image_def::boot_cost::{MAX_NODES, MAX_TEMPLATES};

/// Longest one node's render may take (it takes milliseconds).
const RENDER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest all the renders of one `diff` may take together.
pub(crate) const RENDER_BUDGET: Duration = Duration::from_secs(300);
/// Most bytes of one node's rendered files read back: what `check` lets a boot render.
const MAX_RENDERED: u64 = crate::image_def::boot_cost::MAX_RENDERED;

/// The files under `/etc/imgbuild/` of an image, as its layers leave them (paths relative to it).
pub(crate) type ConfFiles = BTreeMap<String, Vec<u8>>;

/// What a node renders: each template target's text.
pub(crate) type Rendered = BTreeMap<String, String>;

/// `cluster.env` read back: each name's value, or why it is not what imgbuild writes.
pub(crate) fn parse_cluster_env(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    let mut rest = text;
    let mut line = 1;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('\n') {
            (rest, line) = (after, line + 1);
            continue;
        }
        if rest.starts_with('#') {
            rest = rest.find('\n').map_or("", |at| &rest[at..]);
            continue;
        }
        let name_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let name = &rest[..name_len];
        if !name.starts_with("IMGBUILD_") || !rest[name_len..].starts_with('=') {
            return Err(format!("line {line}: expected IMGBUILD_NAME=VALUE"));
        }
        let (value, used) = shell_word(&rest[name_len + 1..]).map_err(|e| format!("line {line}: {name}: {e}"))?;
        line += value.matches('\n').count();
        values.insert(name.to_string(), value);
        rest = &rest[name_len + 1 + used..];
        if !(rest.is_empty() || rest.starts_with('\n')) {
            return Err(format!("line {line}: one assignment per line"));
        }
    }
    Ok(values)
}

/// A word as `sh_quote` writes it (`'text'` pieces and `\'`) or a decimal number: its value and
/// how many bytes it took.
fn shell_word(text: &str) -> std::result::Result<(String, usize), String> {
    let (mut value, mut at) = (String::new(), 0);
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits > 0 {
        return Ok((text[..digits].to_string(), digits));
    }
    loop {
        let rest = &text[at..];
        if let Some(quoted) = rest.strip_prefix('\'') {
            let end = quoted.find('\'').ok_or("a quote that is not closed")?;
            value.push_str(&quoted[..end]);
            at += end + 2;
        } else if rest.starts_with("\\'") {
            value.push('\'');
            at += 2;
        } else if at == 0 {
            return Err("expected a quoted value or a number".into());
        } else {
            return Ok((value, at));
        }
    }
}

/// The path in a word of `cluster.env`.
type PathIn = fn(&str) -> &str;

/// The values of `cluster.env` that name image paths, and the path in each of their words
/// (`/target:mode`, `/file:key`).
const PATH_LISTS: [(&str, PathIn); 5] = [
    ("IMGBUILD_TEMPLATES", |w| w),
    ("IMGBUILD_TEMPLATE_MODES", |w| w.rsplit_once(':').map_or(w, |(p, _)| p)),
    ("IMGBUILD_GUARDED", |w| w),
    ("IMGBUILD_ID_CHECKS", |w| w.split_once(':').map_or(w, |(p, _)| p)),
    ("IMGBUILD_DATA_DIRS", |w| w),
];

fn bad_env(message: String) -> Error {
    Error::BadArchive { archive: format!("/{CONF_DIR}/cluster.env"), message }
}

/// `cluster.env`'s values, refused unless every path in them is an image path, and it names no
/// more templates than `check` allows.
fn checked_cluster_env(conf: &ConfFiles) -> Result<BTreeMap<String, String>> {
    let text = conf.get("cluster.env").ok_or_else(|| bad_env("missing: the image was not built by imgbuild".into()))?;
    let text = std::str::from_utf8(text).map_err(|_| bad_env("not UTF-8".into()))?;
    let values = parse_cluster_env(text).map_err(|e| bad_env(escape(&e)))?;
    for (name, path_in) in PATH_LISTS {
        for word in values.get(name).map_or("", String::as_str).split_ascii_whitespace() {
            crate::image_path::parse(path_in(word)).map_err(|e| bad_env(format!("{name}: {e}")))?;
        }
    }
    if values.get("IMGBUILD_TEMPLATES").map_or(0, |t| t.split_ascii_whitespace().count()) > MAX_TEMPLATES {
        return Err(bad_env(format!("IMGBUILD_TEMPLATES names more than {MAX_TEMPLATES} templates")));
    }
    Ok(values)
}

/// The node ids `cluster.env` names, in its order (at most as many as `check` allows).
pub(crate) fn nodes(conf: &ConfFiles) -> Result<Vec<u32>> {
    let values = checked_cluster_env(conf)?;
    let words = values.get("IMGBUILD_NODES").map_or("", String::as_str);
    if words.split_ascii_whitespace().count() > MAX_NODES {
        return Err(bad_env(format!("IMGBUILD_NODES names more than {MAX_NODES} nodes")));
    }
    words
        .split_ascii_whitespace()
        .map(|w| w.parse().map_err(|_| bad_env(format!("IMGBUILD_NODES: `{}` is not a node id", escape(w)))))
        .collect()
}

/// Renders node `id`'s configuration from `conf` with the entrypoint, in a new directory;
/// stopped at `deadline`.
pub(crate) fn render(conf: &ConfFiles, id: u32, deadline: Instant) -> Result<Rendered> {
    let values = checked_cluster_env(conf)?;
    let dir = crate::supply::verify::TempProject::create("diff")?;
    let root = dir.path().join("root");
    let conf_dir = root.join(CONF_DIR);
    for (rel, data) in conf {
        crate::image_path::parse(&format!("/{rel}"))
            .map_err(|e| Error::BadArchive { archive: format!("/{CONF_DIR}"), message: e })?;
        let path = conf_dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("under the root")).at(&path)?;
        std::fs::write(&path, data).at(&path)?;
    }
    let script = dir.path().join("imgbuild-init");
    std::fs::write(&script, ENTRYPOINT_SCRIPT).at(&script)?;
    run_entrypoint(&script, &root, id, &dir.path().join("stderr"), deadline)?;
    let (mut rendered, mut left) = (Rendered::new(), MAX_RENDERED);
    for target in values.get("IMGBUILD_TEMPLATES").map_or("", String::as_str).split_ascii_whitespace() {
        let path = root.join(target.trim_start_matches('/'));
        let mut data = Vec::new();
        let file = std::fs::File::open(&path).at(&path)?;
        file.take(left + 1).read_to_end(&mut data).at(&path)?;
        left = left.checked_sub(data.len() as u64).ok_or_else(|| {
            bad_env(format!("node {id} renders more than {MAX_RENDERED} bytes (more than a boot may)"))
        })?;
        rendered.insert(target.to_string(), String::from_utf8_lossy(&data).into_owned());
    }
    Ok(rendered)
}

/// Runs the entrypoint to render only, as node `id`, with nothing of this machine's
/// environment; stopped after `RENDER_TIMEOUT`.
fn run_entrypoint(script: &Path, root: &Path, id: u32, stderr: &Path, deadline: Instant) -> Result<()> {
    let log = std::fs::File::create(stderr).at(stderr)?;
    let mut child = Command::new("sh")
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("IMGBUILD_ROOT", root)
        .env("IMGBUILD_CONF_DIR", root.join(CONF_DIR))
        .env("IMGBUILD_SEED_DIRS", root.join("no-seed"))
        .env("IMGBUILD_RENDER_ONLY", "1")
        .env("HOSTNAME", "imgbuild-diff")
        .env("NODE_ID", id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            Error::tool("sh", "dash", format!("cannot run the entrypoint to render the configuration: {e}"))
        })?;
    let stop = deadline.min(Instant::now() + RENDER_TIMEOUT);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::tool("sh", "dash", e.to_string()))? {
            break status;
        }
        if Instant::now() > stop {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::BadArchive {
                archive: format!("/{CONF_DIR}"),
                message: format!(
                    "rendering node {id} was stopped: past {}s for one node or {}s for all",
                    RENDER_TIMEOUT.as_secs(),
                    RENDER_BUDGET.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut said = String::new();
    let _ = std::fs::File::open(stderr).map(|f| f.take(4096).read_to_string(&mut said));
    Err(Error::BadArchive {
        archive: format!("/{CONF_DIR}"),
        message: format!(
            "node {id} does not render ({status}): {}",
            crate::error::printable(said.trim_end()).replace('\n', "; ")
        ),
    })
}

/// The entrypoint an image carries, by hash, against this imgbuild's.
pub(crate) fn is_our_entrypoint(carried: Option<&Sha256Digest>) -> bool {
    carried == Some(&Sha256Digest::of(ENTRYPOINT_SCRIPT.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn what_imgbuild_writes_reads_back_and_anything_else_is_refused() {
        let text = "# comment\nIMGBUILD_NODES='0 1'\nIMGBUILD_LIST_s_JOIN='\n'\nIMGBUILD_X=3\nIMGBUILD_Q='it'\\''s'\n";
        let v = parse_cluster_env(text).unwrap();
        assert_eq!(v["IMGBUILD_NODES"], "0 1");
        assert_eq!(v["IMGBUILD_LIST_s_JOIN"], "\n");
        assert_eq!(v["IMGBUILD_X"], "3");
        assert_eq!(v["IMGBUILD_Q"], "it's");
        for bad in [
            "PATH='/tmp'\n",
            "IMGBUILD_A=$(id)\n",
            "IMGBUILD_A='x'; id\n",
            "IMGBUILD_A=\"x\"\n",
            "IMGBUILD_A='x\n",
            "IMGBUILD_A='x' IMGBUILD_B='y'\n",
            "IMGBUILD_A=3x\n",
            "IMGBUILD_A=`id`\n",
            " IMGBUILD_A='x'\n",
        ] {
            assert!(parse_cluster_env(bad).is_err(), "{bad:?}");
        }
    }

    /// A line of `cluster.env`: mostly assignments as imgbuild writes them, some with text
    /// after them, comments, and noise.
    fn line() -> impl Strategy<Value = String> {
        let value = "('[a\n$`;\\\\\"]*'|\\\\'|[0-9]){1,3}";
        let re = |r: &str| proptest::string::string_regex(r).unwrap();
        prop_oneof![
            3 => re(&format!("IMGBUILD_[AB]={value}")),
            1 => re(&format!("IMGBUILD_[AB]={value}[ ;a$]")),
            1 => re("#[a '$]*"),
            1 => re("[#'\\\\=IMGBUILD_AB $();`\"a1]{0,12}"),
        ]
    }

    proptest! {
        /// Any values, quoted as imgbuild quotes them, read back as themselves.
        #[test]
        fn quoted_values_read_back(values in proptest::collection::btree_map("IMGBUILD_[A-Za-z0-9_]{1,8}", "(?s).{0,40}", 0..6)) {
            let text: String = values.iter().map(|(k, v)| format!("{k}={}\n", crate::entrypoint::sh_quote(v))).collect();
            prop_assert_eq!(parse_cluster_env(&text).unwrap(), values);
        }

        /// Whatever text is read, what it accepts is what `sh` reads from it, and nothing runs.
        #[test]
        fn accepted_text_is_what_sh_reads(lines in proptest::collection::vec(line(), 0..5)) {
            let text = lines.join("\n");
            let Ok(values) = parse_cluster_env(&text) else { return Ok(()) };
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("env"), &text).unwrap();
            let shown = "for n in IMGBUILD_A IMGBUILD_B; do eval \"printf '%s=%s|' $n \\\"\\${$n-unset}\\\"\"; done";
            let out = Command::new("sh").arg("-c").arg(format!(". ./env; {shown}")).current_dir(dir.path()).output().unwrap();
            let want: String = ["IMGBUILD_A", "IMGBUILD_B"]
                .iter()
                .map(|n| format!("{n}={}|", values.get(*n).map_or("unset", String::as_str)))
                .collect();
            prop_assert_eq!(String::from_utf8_lossy(&out.stdout).into_owned(), want);
            prop_assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
