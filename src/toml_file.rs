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
        Self::parse(path, read_text(path)?)
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

/// The text of a file the user wrote (a recipe, a definition, a template). A binary or
/// non-UTF-8 file is bad input (exit 1) named with the line and column where it stops being text.
pub fn read_text(path: &Path) -> Result<String> {
    decode_text(path, std::fs::read(path).at(path)?)
}

/// `bytes` as text, or an error naming `path` and where the first NUL or non-UTF-8 byte is.
pub fn decode_text(path: &Path, bytes: Vec<u8>) -> Result<String> {
    if let Some(offset) = bytes.iter().position(|b| *b == 0) {
        return Err(not_text(path, &bytes, offset, "a binary file (it holds a NUL byte), not text"));
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        not_text(path, e.as_bytes(), offset, "not UTF-8 text")
    })
}

fn not_text(path: &Path, bytes: &[u8], offset: usize, message: &str) -> Error {
    let before = &bytes[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = offset - before.iter().rposition(|b| *b == b'\n').map_or(0, |nl| nl + 1) + 1;
    Error::Parse { file: path.to_path_buf(), line, column, message: message.into() }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_non_utf8_files_name_the_line_and_column() {
        let path = Path::new("images/x.toml");
        let e = decode_text(path, b"name = \"x\"\nvalue = \"\xff\"\n".to_vec()).unwrap_err();
        assert_eq!(e.to_string(), "images/x.toml:2:10: not UTF-8 text");
        assert_eq!(e.exit_code(), crate::error::ExitCode::Input);
        let e = decode_text(path, b"\x7fELF\x02\x01\0\0".to_vec()).unwrap_err();
        assert_eq!(e.to_string(), "images/x.toml:1:7: a binary file (it holds a NUL byte), not text");
        assert_eq!(decode_text(path, "ünï = 1\n".as_bytes().to_vec()).unwrap(), "ünï = 1\n");
    }
}
