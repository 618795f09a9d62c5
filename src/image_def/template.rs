//! The template language, exactly as the entrypoint reads it at boot (`render` in
//! `src/assets/imgbuild-init.sh`): text in which every `{{` opens a reference `{{name}}`
//! (spaces allowed around the name) that ends at the first `}}`. A `{{` that does not open a
//! valid reference is an error, never literal text, so that a text the parser accepts renders
//! the same under any shell.

/// A reference's name: `a-z`, `0-9` and `_`, not starting with a digit.
pub(crate) fn is_reference_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// A part of a text: literal text, or a reference to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    /// `offset` is where its `{{` starts in the text.
    Reference {
        name: &'a str,
        offset: usize,
    },
}

/// Where a text breaks the rules, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextError {
    /// Byte offset in the text.
    pub(crate) offset: usize,
    pub(crate) message: String,
}

/// Splits `text` into literal text and references.
pub(crate) fn parse(text: &str) -> Result<Vec<Piece<'_>>, TextError> {
    let mut pieces = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("{{") {
        let open = at + found;
        if open > at {
            pieces.push(Piece::Text(&text[at..open]));
        }
        let inner_start = open + 2;
        let Some(len) = text[inner_start..].find("}}") else {
            return Err(TextError {
                offset: open,
                message: "`{{` without a closing `}}` (a literal `{{` cannot appear in a template)".into(),
            });
        };
        let inner = &text[inner_start..inner_start + len];
        let name = inner.trim_matches(' ');
        if !is_reference_name(name) {
            return Err(TextError {
                offset: open,
                message: format!(
                    "`{{{{{}}}}}` is not a reference: write `{{{{name}}}}` with a-z, 0-9 and `_` \
                     (a literal `{{{{` cannot appear in a template)",
                    crate::error::escape(inner)
                ),
            });
        }
        pieces.push(Piece::Reference { name, offset: open });
        at = inner_start + len + 2;
    }
    if at < text.len() {
        pieces.push(Piece::Text(&text[at..]));
    }
    Ok(pieces)
}

/// The first control character of `text` (C0, DEL, C1) that is not in `allowed`.
pub(crate) fn check_characters(text: &str, allowed: &[char]) -> Result<(), TextError> {
    match text.char_indices().find(|(_, c)| c.is_control() && !allowed.contains(c)) {
        None => Ok(()),
        Some((offset, c)) => {
            Err(TextError { offset, message: format!("a control character ({}) is not allowed here", control_name(c)) })
        }
    }
}

/// `U+000D (carriage return)`: how an error names an invisible character.
fn control_name(c: char) -> String {
    let known = match c {
        '\n' => " (line break)",
        '\r' => " (carriage return: save the file with Unix line endings)",
        '\t' => " (tab)",
        '\0' => " (NUL)",
        '\u{1b}' => " (escape)",
        _ => "",
    };
    format!("U+{:04X}{known}", c as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<&str> {
        parse(text)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                Piece::Reference { name, .. } => Some(name),
                Piece::Text(_) => None,
            })
            .collect()
    }

    #[test]
    fn references_are_found_with_spaces_but_not_tabs_around_the_name() {
        assert_eq!(names("a={{ x }} b={{y}}}} {{_z1}}"), ["x", "y", "_z1"]);
        assert_eq!(parse("}} alone {is} text").unwrap(), [Piece::Text("}} alone {is} text")]);
        assert_eq!(parse("{{\tname}}").unwrap_err().offset, 0);
        assert!(parse("x {{y").unwrap_err().message.contains("without a closing"));
        assert_eq!(parse("ok {{{x}}").unwrap_err().offset, 3, "`{{{{{{` opens a reference named `{{x`");
        for bad in ["{{}}", "{{1x}}", "{{X}}", "{{a-b}}", "{{a\nb}}", "{{a{{b}}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pieces_put_back_together_give_the_text() {
        let text = "# {{a}}\nx={{ b }}:{{c}}\nend";
        let joined: String = parse(text)
            .unwrap()
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.to_string(),
                Piece::Reference { name, .. } => format!("{{{{ {name} }}}}"),
            })
            .collect();
        assert_eq!(joined, "# {{ a }}\nx={{ b }}:{{ c }}\nend");
    }

    #[test]
    fn control_characters_are_named_with_their_offset() {
        assert!(check_characters("a\tb\nc", &['\t', '\n']).is_ok());
        let e = check_characters("ab\r\n", &['\t', '\n']).unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("U+000D (carriage return"));
        assert_eq!(check_characters("é\u{85}", &[]).unwrap_err().offset, 2, "C1 controls count");
    }
}
