//! Errors of every stage, with the file, line, URL or path they concern, and the exit codes the
//! CLI maps them to (documented in the README; scripts may rely on them).

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

    #[error("refusing unsafe entry `{entry}` in {archive}: {reason}")]
    UnsafeEntry { archive: String, entry: String, reason: String },

    #[error("{}: {message}", archive)]
    BadArchive { archive: String, message: String },

    #[error("{} input(s) missing from the store{}", .0.len(), missing_list(.0))]
    MissingInputs(Vec<MissingInput>),

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("store {}: {message}", path.display())]
    Store { path: PathBuf, message: String },

    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },

    #[error("{0}")]
    Usage(String),
}

fn missing_list(missing: &[MissingInput]) -> String {
    let mut out = String::new();
    for m in missing {
        out.push_str(&format!("\n  - {} ({}) {}  {}", m.recipe, m.platform, m.file, m.hash));
        for url in &m.urls {
            out.push_str(&format!("\n      {url}"));
        }
        for reason in &m.reasons {
            out.push_str(&format!("\n      tried: {reason}"));
        }
        out.push_str(&format!("\n      add it: {}", m.add));
    }
    out
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
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
            Error::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Some("choose a writable store with --store DIR or IMGBUILD_STORE".into())
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
