//! Errors of every stage, with the file, line, URL or path they concern, and the exit codes the
//! CLI maps them to (documented in docs/reference.md; scripts may rely on them).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Hash;

/// Stable process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// Bad input: a recipe, an image definition, a tarball or a hash that does not match.
    Input = 1,
    /// The command line itself is wrong (also clap's own code).
    Usage = 2,
    /// An input could not be had: offline and not in the store, or every URL failed.
    Unavailable = 3,
    /// The store or the output location could not be read or written.
    Storage = 4,
    /// The registry refused, failed, or could not be reached (after bounded retries).
    Registry = 5,
    /// The host is not ready: an external tool imgbuild needs (podman, mke2fs, qemu-img, …) is
    /// missing (`load` checks before it starts), or it failed.
    Tool = 6,
    /// `verify`: the image is not what its recorded inputs build.
    Mismatch = 7,
    /// `diff --exit-code`: the images differ (not a failure; 0 when they are the same).
    Differs = 10,
    /// A bug in imgbuild: an invariant did not hold (sysexits' EX_SOFTWARE).
    Internal = 70,
}

/// One input that is neither in the store nor reachable, with what adds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MissingInput {
    pub recipe: String,
    pub platform: String,
    pub file: String,
    pub urls: Vec<String>,
    pub hash: String,
    /// Why the fetch did not get it (empty when offline).
    pub reasons: Vec<String>,
    /// The one command that adds it to the store.
    pub add: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}:{line}:{column}: {message}", file.display())]
    Parse { file: PathBuf, line: usize, column: usize, message: String },

    #[error("{}: {message}", file.display())]
    Definition { file: PathBuf, message: String },

    #[error("hash mismatch for {what}\n  expected: {expected}\n  got:      {found}")]
    HashMismatch { what: String, expected: Hash, found: Hash },

    #[error("refusing unsafe entry `{}` in {}: {reason}", escape(entry), escape(archive))]
    UnsafeEntry { archive: String, entry: String, reason: String },

    #[error("{}: {message}", escape(archive))]
    BadArchive { archive: String, message: String },

    #[error("{} input(s) missing from the store{}", .0.len(), missing_list(.0))]
    MissingInputs(Vec<MissingInput>),

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("store {}: {message}", path.display())]
    Store { path: PathBuf, message: String },

    /// `hint`: the next step, when the failure says what it is.
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String, hint: Option<String> },

    #[error("{0}")]
    Usage(String),

    #[error("{tool}: {message}")]
    Tool { tool: String, package: String, message: String },

    /// `verify` rebuilt the image and got other bytes: what differs, first.
    #[error("{0}")]
    Mismatch(String),

    #[error("internal error: {0}")]
    Internal(String),

    /// Stdout's reader went away (`imgbuild check | head -1`): the command ends quietly, as
    /// `ls` and ripgrep do, with exit code 0 (what it did is done; only the rest of its output
    /// is not printed).
    #[error("stdout was closed")]
    StdoutClosed,

    /// `doctor`: a feature asked about is not ready. The report printed says what is missing;
    /// the exit code (1) is all that is left to say.
    #[error("the host is not ready")]
    NotReady,

    /// `diff --exit-code` found a difference: it has said what, and ends with exit code 10.
    #[error("the images differ")]
    Differs,
}

fn missing_list(missing: &[MissingInput]) -> String {
    let mut out = String::new();
    for m in missing {
        out.push_str(&format!("\n  - {} ({}) {}  {}", m.recipe, m.platform, escape(&m.file), m.hash));
        for url in &m.urls {
            out.push_str(&format!("\n      {}", escape(url)));
        }
        for reason in &m.reasons {
            out.push_str(&format!("\n      tried: {}", escape(reason)));
        }
        out.push_str(&format!("\n      add it: {}", m.add));
    }
    out
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// An external tool that is missing (`source` says why it could not start) or failed.
    pub fn tool(tool: &str, package: &str, message: impl Into<String>) -> Self {
        Error::Tool { tool: tool.into(), package: package.into(), message: message.into() }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Parse { .. }
            | Error::Definition { .. }
            | Error::HashMismatch { .. }
            | Error::UnsafeEntry { .. }
            | Error::BadArchive { .. } => ExitCode::Input,
            Error::MissingInputs(_) => ExitCode::Unavailable,
            Error::Io { .. } | Error::Store { .. } => ExitCode::Storage,
            Error::Usage(_) => ExitCode::Usage,
            Error::Registry { .. } => ExitCode::Registry,
            Error::Tool { .. } => ExitCode::Tool,
            Error::Mismatch(_) => ExitCode::Mismatch,
            Error::Internal(_) => ExitCode::Internal,
            Error::StdoutClosed => ExitCode::Ok,
            Error::NotReady => ExitCode::Input,
            Error::Differs => ExitCode::Differs,
        }
    }

    /// What the user can do next, shown as `hint:` lines.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::MissingInputs(_) => Some(
                "get each file from its URL on a machine with access and run its `add it` command here,\n      or put the files in a directory and pass `--mirror DIR` (or set IMGBUILD_MIRROR)"
                    .into(),
            ),
            Error::HashMismatch { .. } => Some(
                "nothing was stored; if the new content is trusted, pin the hash shown as `got` (see `imgbuild prefetch`)".into(),
            ),
            Error::Io { path, source } if source.kind() == io::ErrorKind::PermissionDenied && in_opened_store(path) => {
                Some("choose a writable store with --store DIR or IMGBUILD_STORE".into())
            }
            Error::Tool { tool, package, .. } => {
                Some(format!("install `{tool}` (Debian and Ubuntu: `apt-get install {package}`)"))
            }
            Error::Registry { hint, .. } => hint.clone(),
            Error::Internal(_) => Some("this is a bug in imgbuild; please report it with the command you ran".into()),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The store this process opened, so that a permission error can say "choose another store"
/// only when it is the store that refused.
static OPENED_STORE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Called by `Store::open`.
pub(crate) fn note_opened_store(root: &Path) {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let _ = OPENED_STORE.set(root);
}

fn in_opened_store(path: &Path) -> bool {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    OPENED_STORE.get().is_some_and(|root| path.starts_with(root))
}

/// Text from an input (a tar entry's name, a server's reply, a value of a file) made safe to
/// print on a terminal: control characters, and the invisible characters that reorder or hide
/// text (bidirectional overrides, zero-width marks), are shown escaped (`\n`, `\u{1b}`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Control characters (C0, DEL, C1), the line and paragraph separators, and every character
/// Unicode says a reader does not see (`Default_Ignorable_Code_Point`, which holds the bidi
/// controls that reorder the text around them): what could hide or forge text when printed.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_default_ignorable(c) || is_format(c)
}

/// Unicode 15's format characters (general category `Cf`) that are not default-ignorable:
/// invisible marks that still change how the text around them reads (interlinear annotation,
/// prepended number signs).
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{0600}'..='\u{0605}' | '\u{06dd}' | '\u{070f}' | '\u{0890}'..='\u{0891}' | '\u{08e2}'
        | '\u{fff9}'..='\u{fffb}' | '\u{110bd}' | '\u{110cd}' | '\u{13430}'..='\u{1343f}')
}

/// Unicode 15's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt).
fn is_default_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}'..='\u{1160}' | '\u{17b4}'..='\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}'
        | '\u{fff0}'..='\u{fff8}' | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

/// The last line of defence for everything printed about an error: our own messages use line
/// breaks (kept), anything else that could drive the terminal is escaped.
pub fn printable(message: &str) -> String {
    message.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// Attaches a path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// An error and its sources, on one line.
fn chain(first: &dyn std::error::Error) -> String {
    let mut text = first.to_string();
    let mut source = first.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// reqwest's errors nest the useful part under a message that repeats the URL; show the causes.
pub fn http_cause(e: &reqwest::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), chain)
}

/// An I/O error from a stream (such as a response body) with the error it wraps.
pub fn io_cause(e: &io::Error) -> String {
    e.get_ref().map_or_else(|| e.to_string(), |inner| chain(inner))
}

/// Converts a byte offset in `text` to a 1-based (line, column).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_every_control_and_reordering_character() {
        assert_eq!(escape("a\x1b[31mb\nc\u{202e}d\u{7f}"), "a\\u{1b}[31mb\\nc\\u{202e}d\\u{7f}");
        assert_eq!(escape("plain ünïcode/path-1.2"), "plain ünïcode/path-1.2");
    }

    /// The characters the attacker review found accepted (U+061C, tag characters, U+00AD,
    /// U+180E, U+115F), and every other invisible one: none reaches a terminal as it is.
    #[test]
    fn no_invisible_character_is_printed_as_it_is() {
        let invisible = (0..=0x10ffff).filter_map(char::from_u32).filter(|c| is_default_ignorable(*c));
        let named = [
            '\u{061c}',
            '\u{e0041}',
            '\u{00ad}',
            '\u{180e}',
            '\u{115f}',
            '\u{2028}',
            '\u{fff9}',
            '\u{fffb}',
            '\u{0600}',
        ];
        for c in invisible.chain(named) {
            assert!(is_unsafe_char(c), "{:x}", c as u32);
            assert_eq!(escape(&format!("a{c}b")), format!("a\\u{{{:x}}}b", c as u32));
        }
        for visible in ['a', 'ü', '€', '中', '🚀', ' ', '\u{a0}'] {
            assert!(!is_unsafe_char(visible), "{visible}");
        }
    }

    #[test]
    fn printable_keeps_line_breaks_but_nothing_else() {
        assert_eq!(printable("one\n  two\x07\r"), "one\n  two\\u{7}\\r");
    }

    #[test]
    fn the_store_hint_is_only_for_paths_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        note_opened_store(dir.path());
        // The first store opened in this process counts: another test may have opened its own.
        let root = OPENED_STORE.get().unwrap().clone();
        let denied = || io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(Error::io(root.join("blobs/x"), denied()).hint().is_some());
        assert!(Error::io("/somewhere/else/out", denied()).hint().is_none());
    }
}
