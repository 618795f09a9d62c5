//! Reading the TOML files of `recipes/` and `images/` with errors that name file, line and field.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{line_col, Error, IoContext, Result};

/// A parsed file, kept with its text so later checks can point at a line.
pub struct TomlFile<T> {
    pub path: PathBuf,
    pub text: String,
    pub value: T,
}

impl<T: DeserializeOwned> TomlFile<T> {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::parse(path, text)
    }

    /// Parses `text` as the contents of `path` (which is only used in messages).
    pub fn parse(path: &Path, text: String) -> Result<Self> {
        let value = toml::from_str(&text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(&text, offset);
            Error::Parse { file: path.to_path_buf(), line, column, message: e.message().trim().to_string() }
        })?;
        Ok(TomlFile { path: path.to_path_buf(), text, value })
    }
}

impl<T> TomlFile<T> {
    /// An error about the value at `span` (from a `toml::Spanned` field).
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> Error {
        let (line, column) = line_col(&self.text, span.start);
        Error::Parse { file: self.path.clone(), line, column, message: message.into() }
    }
}

/// The `*.toml` files of a directory, sorted by name so every listing is deterministic.
pub fn toml_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
