//! YAML written from a JSON value: block style for structure, keys in the map's (sorted) order,
//! and every string a double-quoted scalar with JSON's escapes, which YAML 1.1 and 1.2 read
//! alike. Non-ASCII and control characters are escaped too, so no value from a definition can
//! end a scalar, start a comment, or be read as a number, a boolean or a line break.

use std::fmt::Write;

use serde_json::Value;

/// One YAML document (without the `---` that separates documents).
pub(crate) fn document(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

/// Several documents in one stream, each introduced by `---`.
pub(crate) fn documents(values: &[Value]) -> String {
    values.iter().map(|v| format!("---\n{}", document(v))).collect()
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        let _ = write!(out, "{:indent$}{}:", "", key_text(key));
        write_nested(out, value, indent + 2);
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        match item {
            // A block item starts on the dash's line: render it indented, then put the dash
            // over its first indentation.
            Value::Object(m) if !m.is_empty() => dash_first_line(out, indent, |o| write_map(o, m, indent + 2)),
            Value::Array(a) if !a.is_empty() => dash_first_line(out, indent, |o| write_seq(o, a, indent + 2)),
            scalar => {
                let _ = writeln!(out, "{:indent$}- {}", "", scalar_text(scalar));
            }
        }
    }
}

fn dash_first_line(out: &mut String, indent: usize, write: impl FnOnce(&mut String)) {
    let mut block = String::new();
    write(&mut block);
    let _ = write!(out, "{:indent$}- {}", "", &block[indent + 2..]);
}

/// What follows `key:`: a scalar on the same line, or a block on the next lines.
fn write_nested(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent);
        }
        scalar => {
            let _ = writeln!(out, " {}", scalar_text(scalar));
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quoted(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// Plain keys only where every YAML reader takes them as that same string; else quoted.
fn key_text(key: &str) -> String {
    // YAML 1.1 reads these as booleans or null (y, n, yes, on, …); 1.2 some of them.
    const SPECIAL: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
        && !SPECIAL.contains(&key.to_ascii_lowercase().as_str());
    if plain {
        key.to_string()
    } else {
        quoted(key)
    }
}

/// A double-quoted scalar holding exactly `text`: printable ASCII as is, everything else escaped.
pub(crate) fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;

    /// What yaml-rust2 (a YAML 1.2 reader) makes of a document, as JSON.
    fn read_back(text: &str) -> Value {
        let docs = yaml_rust2::YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(docs.len(), 1, "{text}");
        to_json(&docs[0])
    }

    fn to_json(y: &yaml_rust2::Yaml) -> Value {
        use yaml_rust2::Yaml;
        match y {
            Yaml::String(s) => Value::String(s.clone()),
            Yaml::Integer(i) => json!(i),
            Yaml::Boolean(b) => json!(b),
            Yaml::Null => Value::Null,
            Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
            Yaml::Hash(h) => Value::Object(
                h.iter()
                    .map(|(k, v)| match k {
                        Yaml::String(k) => (k.clone(), to_json(v)),
                        other => panic!("key read as {other:?}"),
                    })
                    .collect(),
            ),
            other => panic!("read as {other:?}"),
        }
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ -~]{0,12}",
            Just("yes".to_string()),
            Just("0x1F".to_string()),
            Just("- a: #b".to_string()),
            Just("'\"\\\u{85}\u{2028}\u{feff}\u{1F600}".to_string()),
        ]
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any_text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(any_text(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_value_reads_back_as_itself(value in any_value()) {
            let text = document(&value);
            prop_assert!(text.is_ascii());
            prop_assert_eq!(read_back(&text), value);
        }
    }

    #[test]
    fn a_manifest_reads_as_written() {
        let value = json!({"apiVersion": "v1", "items": [{"a": 1, "b": ["x", {"c": "on"}]}, [], {}], "on": "y"});
        assert_eq!(
            document(&value),
            "apiVersion: \"v1\"\nitems:\n  - a: 1\n    b:\n      - \"x\"\n      - c: \"on\"\n  - []\n  - {}\n\"on\": \"y\"\n"
        );
    }
}
