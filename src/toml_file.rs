//! Reading the TOML files of `recipes/` and `images/` with errors that name file, line and field.
//!
//! Every string of such a file (every value and every key, whatever its field) is refused when
//! it holds a control character (C0, DEL, C1) or an invisible character that reorders or hides
//! text ([`crate::error::is_unsafe_char`]): these strings end up in labels, SBOMs, shell files
//! and terminals. Only the fields a format names may hold a line break (a list's `join`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, Key, Value};

use crate::error::{escape, line_col, Error, IoContext, Result};

/// A parsed file, kept with its text so later checks can point at a line.
pub(crate) struct TomlFile<T> {
    pub path: PathBuf,
    pub text: String,
    pub value: T,
}

impl<T: DeserializeOwned> TomlFile<T> {
    pub(crate) fn read(path: &Path) -> Result<Self> {
        Self::parse(path, read_text(path)?)
    }

    /// Parses `text` as the contents of `path` (which is only used in messages).
    pub(crate) fn parse(path: &Path, text: String) -> Result<Self> {
        Self::parse_allowing_line_breaks(path, text, &[])
    }

    /// As [`TomlFile::parse`], where the fields `line_breaks` names (dotted keys, `*` for any
    /// key: `lists.*.join`) may hold line breaks.
    pub(crate) fn parse_allowing_line_breaks(path: &Path, text: String, line_breaks: &[&str]) -> Result<Self> {
        let syntax_error = |e: toml::de::Error| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(&text, offset);
            Error::Parse { file: path.to_path_buf(), line, column, message: e.message().trim().to_string() }
        };
        let value = toml::from_str(&text).map_err(syntax_error)?;
        // toml_edit keeps every key's and value's span, which the checks point at.
        let strings = ImDocument::parse(text.clone())
            .map_err(|e| Error::Internal(format!("{}: parsed, but not by toml_edit: {e}", path.display())))?;
        let file = TomlFile { path: path.to_path_buf(), text, value };
        file.check_table(
            keyed(strings.iter().map(|(k, _)| k), |k| strings.get_key_value(k)),
            &mut Vec::new(),
            line_breaks,
        )?;
        Ok(file)
    }
}

impl<T> TomlFile<T> {
    /// An error about the value at `span` (from a `toml::Spanned` field).
    pub(crate) fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> Error {
        let (line, column) = line_col(&self.text, span.start);
        Error::Parse { file: self.path.clone(), line, column, message: message.into() }
    }

    /// Every string and key of the table (at the key path `field`) follows this module's rule.
    fn check_table<'a>(
        &self,
        entries: impl Iterator<Item = (&'a Key, &'a Item)>,
        field: &mut Vec<String>,
        line_breaks: &[&str],
    ) -> Result<()> {
        for (key, item) in entries {
            field.push(key.get().to_string());
            if let Some(c) = key.get().chars().find(|c| crate::error::is_unsafe_char(*c)) {
                let at = self.raw_offset(key.span(), c);
                return Err(self.error_at(at..at, format!("key `{}`: {}", shown(field), forbidden(c))));
            }
            self.check_item(item, field, line_breaks)?;
            field.pop();
        }
        Ok(())
    }

    fn check_item(&self, item: &Item, field: &mut Vec<String>, line_breaks: &[&str]) -> Result<()> {
        match item {
            Item::None => Ok(()),
            Item::Value(value) => self.check_value(value, field, line_breaks),
            Item::Table(table) => {
                self.check_table(keyed(table.iter().map(|(k, _)| k), |k| table.get_key_value(k)), field, line_breaks)
            }
            Item::ArrayOfTables(tables) => indexed(tables.iter(), field, |table, field| {
                self.check_table(keyed(table.iter().map(|(k, _)| k), |k| table.get_key_value(k)), field, line_breaks)
            }),
        }
    }

    fn check_value(&self, value: &Value, field: &mut Vec<String>, line_breaks: &[&str]) -> Result<()> {
        match value {
            Value::String(text) => self.check_string(text.value(), text.span(), field, line_breaks),
            Value::Array(items) => {
                indexed(items.iter(), field, |item, field| self.check_value(item, field, line_breaks))
            }
            Value::InlineTable(table) => {
                self.check_table(keyed(table.iter().map(|(k, _)| k), |k| table.get_key_value(k)), field, line_breaks)
            }
            _ => Ok(()),
        }
    }

    fn check_string(
        &self,
        text: &str,
        span: Option<Range<usize>>,
        field: &[String],
        line_breaks: &[&str],
    ) -> Result<()> {
        let breaks_ok = line_breaks.iter().any(|pattern| field_matches(field, pattern));
        match text.chars().find(|c| crate::error::is_unsafe_char(*c) && !(breaks_ok && *c == '\n')) {
            None => Ok(()),
            Some(c) => {
                let at = self.raw_offset(span, c);
                let mut value = escape(text);
                if value.chars().count() > 60 {
                    value = value.chars().take(57).chain("...".chars()).collect();
                }
                Err(self.error_at(at..at, format!("field `{}`: `{value}` {}", shown(field), forbidden(c))))
            }
        }
    }

    /// Where `c` is written in the value at `span`: the character itself when it is there raw,
    /// else the value's start (it is written as an escape); the file's start without a span.
    fn raw_offset(&self, span: Option<Range<usize>>, c: char) -> usize {
        let Some(span) = span else { return 0 };
        let raw = self.text.get(span.clone()).and_then(|t| t.find(c));
        raw.map_or(span.start, |at| span.start + at)
    }
}

/// `lists.servers.join`, `template[1].target`: a key path as the user reads it.
fn shown(field: &[String]) -> String {
    let mut out = String::new();
    for part in field {
        if !out.is_empty() && !part.starts_with('[') {
            out.push('.');
        }
        out.push_str(&escape(part));
    }
    out
}

/// Whether the key path `field` is the one `pattern` names (`*` standing for any one key).
fn field_matches(field: &[String], pattern: &str) -> bool {
    let keys: Vec<&String> = field.iter().filter(|p| !p.starts_with('[')).collect();
    let parts: Vec<&str> = pattern.split('.').collect();
    keys.len() == parts.len() && keys.iter().zip(parts).all(|(k, p)| p == "*" || k.as_str() == p)
}

/// Why `c` cannot be in a string here.
fn forbidden(c: char) -> String {
    let code = format!("U+{:04X}", c as u32);
    match c {
        '\n' => format!("holds a line break ({code}), which this field cannot hold"),
        '\t' => format!("holds a tab ({code}): control characters are not allowed"),
        '\u{1b}' => format!("holds an escape character ({code}): control characters are not allowed"),
        c if c.is_control() => format!("holds a control character ({code}), which is not allowed"),
        _ => format!("holds an invisible character that reorders or hides text ({code}), which is not allowed"),
    }
}

/// A table's entries with their keys as written (the key's span points at a bad character).
fn keyed<'a>(
    names: impl Iterator<Item = &'a str>,
    get: impl Fn(&str) -> Option<(&'a Key, &'a Item)>,
) -> impl Iterator<Item = (&'a Key, &'a Item)> {
    names.filter_map(get)
}

/// Checks each of `items` at `field[i]`.
fn indexed<T>(
    items: impl Iterator<Item = T>,
    field: &mut Vec<String>,
    mut check: impl FnMut(T, &mut Vec<String>) -> Result<()>,
) -> Result<()> {
    for (i, item) in items.enumerate() {
        field.push(format!("[{i}]"));
        check(item, field)?;
        field.pop();
    }
    Ok(())
}

/// A TOML basic string on one line: control and invisible characters escaped (`\u001B`), so
/// a value can neither break the line nor reach a terminal raw.
pub(crate) fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if crate::error::is_unsafe_char(c) => {
                out.push_str(&format!("\\U{:08X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text of a file the user wrote (a recipe, a definition, a template). A binary or
/// non-UTF-8 file is bad input (exit 1) named with the line and column where it stops being text.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    decode_text(path, std::fs::read(path).at(path)?)
}

/// `bytes` as text, or an error naming `path` and where the first NUL or non-UTF-8 byte is.
pub(crate) fn decode_text(path: &Path, bytes: Vec<u8>) -> Result<String> {
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
pub(crate) fn toml_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
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
