//! Bounded differences of text: a unified diff cut at a number of lines and bytes (saying so),
//! computed with a deadline, so that no file, however large or hostile, makes one big.

use std::time::Duration;

use similar::{ChangeTag, TextDiff};

/// Most lines of one unified diff shown.
pub(crate) const MAX_LINES: usize = 200;
/// Most bytes of one unified diff shown.
pub(crate) const MAX_BYTES: usize = 16 << 10;
/// Longest a diff algorithm may search for the smallest diff; past it the diff is still
/// right, only longer (similar's deadline).
const DEADLINE: Duration = Duration::from_secs(1);

/// A unified diff, possibly cut.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Unified {
    pub text: String,
    /// Lines or bytes were left out (past `MAX_LINES` or `MAX_BYTES`).
    pub cut: bool,
}

/// The unified diff of `old` and `new` (3 lines of context) under `a/PATH`, `b/PATH` headers.
pub(crate) fn unified(path: &str, old: &str, new: &str) -> Unified {
    let diff = TextDiff::configure().timeout(DEADLINE).diff_lines(old, new);
    let (a, b) = (format!("a/{path}"), format!("b/{path}"));
    let text = diff.unified_diff().context_radius(3).header(&a, &b).to_string();
    cut(&text, MAX_LINES, MAX_BYTES)
}

/// The lines that differ: removed ones as `-LINE`, added ones as `+LINE`, in order, at most
/// `MAX_LINES` and `MAX_BYTES` of them.
pub(crate) fn changed_lines(old: &str, new: &str) -> Unified {
    let diff = TextDiff::configure().timeout(DEADLINE).diff_lines(old, new);
    let mut text = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            ChangeTag::Equal => continue,
            ChangeTag::Delete => '-',
            ChangeTag::Insert => '+',
        };
        text.push(sign);
        text.push_str(change.value().trim_end_matches('\n'));
        text.push('\n');
        if text.len() > MAX_BYTES * 2 {
            break; // `cut` shortens it further and says so
        }
    }
    cut(&text, MAX_LINES, MAX_BYTES)
}

/// `text` cut after `lines` lines or `bytes` bytes, at a line's end (a line longer than
/// `bytes` is cut at a character boundary).
fn cut(text: &str, lines: usize, bytes: usize) -> Unified {
    let mut end = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if n == lines || end + line.len() > bytes {
            if end == 0 {
                end = bytes.min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
            }
            // Said cut only when something is left out (a first line kept whole is not).
            return Unified { text: text[..end].to_string(), cut: end < text.len() };
        }
        end += line.len();
    }
    Unified { text: text.to_string(), cut: false }
}

/// Whether `data` is text a diff can show: UTF-8 without NUL.
pub(crate) fn as_text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok().filter(|t| !t.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_changed_line_shows_as_removed_and_added() {
        let old = "a=1\ntickTime=2000\nb=2\n";
        let new = "a=1\ntickTime=3000\nb=2\n";
        assert_eq!(changed_lines(old, new).text, "-tickTime=2000\n+tickTime=3000\n");
        let u = unified("etc/zoo.cfg", old, new);
        assert!(u.text.starts_with("--- a/etc/zoo.cfg\n+++ b/etc/zoo.cfg\n@@"), "{}", u.text);
        assert!(u.text.contains("\n-tickTime=2000\n+tickTime=3000\n") && !u.cut);
    }

    proptest! {
        /// Whatever the texts, a diff stays within its bounds and says when it was cut.
        #[test]
        fn diffs_stay_within_bounds(old in "(?s).{0,3000}", new in "(?s).{0,3000}", lines in 0usize..400) {
            let old = old.repeat(lines % 7 + 1);
            for d in [unified("f", &old, &new), changed_lines(&old, &new)] {
                prop_assert!(d.text.len() <= MAX_BYTES);
                prop_assert!(d.text.lines().count() <= MAX_LINES);
            }
            let c = cut(&old, lines, 500);
            prop_assert!(old.starts_with(&c.text));
            prop_assert_eq!(c.cut, c.text.len() < old.len());
        }
    }
}
