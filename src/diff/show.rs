//! A diff report for people: grouped by image, recipe input, layer (with its files) and node.
//! Every text an image gave is escaped: an image cannot write control characters to a terminal.

use super::layers::{FileChange, FileFacts};
use super::{Input, LayerSide, Report};
use crate::digest::Sha256Digest;
use crate::error::escape;

/// The report as lines of text.
pub(crate) fn lines(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if report.same {
        out.push("no difference: the same images".to_string());
        for i in &report.images {
            out.push(format!("  {}  {}", escape(&i.name), short(i.new.as_ref())));
        }
        return out;
    }
    out.push("images".into());
    let width = report.images.iter().map(|i| i.name.chars().count()).max().unwrap_or(0);
    for i in &report.images {
        let what = match (i.same, i.changed_layers.is_empty()) {
            (true, _) => "the same".to_string(),
            (false, true) => "differ (configuration or manifest only)".to_string(),
            (false, false) => format!("layers changed: {}", escape(&i.changed_layers.join(", "))),
        };
        let name = format!("{:<width$}", i.name);
        out.push(format!("  {}  {} → {}  {what}", escape(&name), short(i.old.as_ref()), short(i.new.as_ref())));
    }
    if !report.inputs.is_empty() {
        out.push("recipe inputs".into());
        for c in &report.inputs {
            out.push(format!("  {}  {} → {}", escape(&c.name), input(c.old.as_ref()), input(c.new.as_ref())));
        }
    }
    for l in &report.layers {
        layer(&mut out, l);
    }
    if !report.nodes.is_empty() {
        out.push("configuration rendered at boot".into());
    }
    for n in &report.nodes {
        if n.files.is_empty() {
            out.push(format!("  node {}: the same", n.node));
            continue;
        }
        out.push(format!("  node {} (from {})", n.node, escape(&n.image)));
        for f in &n.files {
            out.push(format!("    {} {}", f.path, f.change));
            indented(&mut out, "      ", &f.lines.text, f.lines.cut);
        }
    }
    for note in &report.notes {
        out.push(format!("note: {}", escape(note)));
    }
    out
}

fn layer(out: &mut Vec<String>, l: &super::LayerChange) {
    let side = |s: &Option<LayerSide>| s.as_ref().map_or("(none)".to_string(), |s| short(Some(&s.digest)));
    let named = l.new.as_ref().or(l.old.as_ref()).map_or("", |s| s.created_by.as_str());
    out.push(format!(
        "layer {}  {} → {}  ({}; in {})",
        escape(&l.role),
        side(&l.old),
        side(&l.new),
        escape(named),
        escape(&l.images.join(", "))
    ));
    for f in &l.files.files {
        file(out, f);
    }
    if l.files.more > 0 {
        out.push(format!("  … and {} more changed path(s), not listed", l.files.more));
    }
}

fn file(out: &mut Vec<String>, f: &FileChange) {
    let facts = match (&f.old, &f.new) {
        (Some(a), Some(b)) => changed_facts(a, b),
        (a, b) => facts(a.as_ref().or(b.as_ref()).expect("one side")),
    };
    out.push(format!("  {:<7}  {}  {facts}", f.change, escape(&f.path)));
    if let Some(d) = &f.diff {
        indented(out, "    ", &d.text, d.cut);
    }
}

fn facts(f: &FileFacts) -> String {
    let link = f.link.as_ref().map(|l| format!(" → {}", escape(l))).unwrap_or_default();
    let content = f.content.as_ref().map(|c| format!(", {}", short(Some(c)))).unwrap_or_default();
    format!("({}, {} bytes, {}{content}{link})", f.kind, f.size, f.mode)
}

/// Only what differs, `old → new`.
fn changed_facts(a: &FileFacts, b: &FileFacts) -> String {
    let mut parts = Vec::new();
    let mut field = |what: &str, x: String, y: String| {
        if x != y {
            parts.push(format!("{what} {x} → {y}"));
        }
    };
    field("", a.kind.clone(), b.kind.clone());
    field("size", a.size.to_string(), b.size.to_string());
    field("mode", a.mode.clone(), b.mode.clone());
    field("owner", a.owner.clone(), b.owner.clone());
    field("content", short(a.content.as_ref()), short(b.content.as_ref()));
    let link = |f: &FileFacts| escape(f.link.as_deref().unwrap_or("-"));
    field("link", link(a), link(b));
    format!("({})", parts.join(", ").trim_start())
}

fn indented(out: &mut Vec<String>, by: &str, text: &str, cut: bool) {
    out.extend(text.lines().map(|l| format!("{by}{}", escape(l))));
    if cut {
        out.push(format!("{by}… (cut: at most {} lines, {} bytes)", super::text::MAX_LINES, super::text::MAX_BYTES));
    }
}

fn input(i: Option<&Input>) -> String {
    match i {
        None => "(none)".into(),
        Some(i) => format!("{} {}", escape(i.version.as_deref().unwrap_or("?")), escape(&short_hash(&i.hash))),
    }
}

/// A recipe's hash as `ALGORITHM:` and its first 12 digits (`--json` has it whole).
fn short_hash(hash: &str) -> String {
    match hash.split_once(':') {
        Some((algorithm, digits)) => format!("{algorithm}:{}", digits.chars().take(12).collect::<String>()),
        None => hash.chars().take(19).collect(),
    }
}

/// `sha256:` and 12 hex digits, or `(none)`.
fn short(d: Option<&Sha256Digest>) -> String {
    d.map_or("(none)".to_string(), |d| format!("sha256:{}", &d.hex()[..12]))
}
