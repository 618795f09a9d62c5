//! What a definition costs the entrypoint at every boot, bounded so that the worst definition
//! `imgbuild check` accepts renders in well under a second. The entrypoint renders in time
//! linear in its input and output (one sed pass marks the references; the shell splits at
//! them), but each reference still costs some microseconds of shell, each node a few loops and
//! each template a few processes. The bounds (stated in `images/README.md`):
//!
//! - at most [`MAX_NODES`] nodes and [`MAX_TEMPLATES`] templates;
//! - template files of at most [`super::MAX_TEMPLATE_BYTES`] together, and as much again for the
//!   text of vars and lists (the entrypoint reads them all at every boot);
//! - at most [`MAX_REFERENCES`] references rendered per boot: each one in a template or a var's
//!   value once, each one in a list's item once per node;
//! - at most [`MAX_RENDERED`] bytes rendered per boot, counting every address as long as the
//!   longest one the entrypoint accepts.

use std::collections::BTreeMap;

use super::template::{self, Piece};
use super::{Node, PeerList, Template};

pub(crate) const MAX_NODES: usize = 1000;
pub(crate) const MAX_TEMPLATES: usize = 100;
pub(crate) const MAX_REFERENCES: u64 = 10_000;
pub(crate) const MAX_RENDERED: u64 = 16 << 20;

/// The longest address a node may be given at boot (`PEERS`, `ADVERTISED_HOST`).
const LONGEST_HOST: u64 = 253;

/// What rendering one text costs: its references, and the most bytes it can render to.
#[derive(Default, Clone, Copy)]
struct Cost {
    references: u64,
    bytes: u64,
}

/// `text`'s cost, each reference standing for at most `size(name)` bytes.
fn cost(text: &str, size: &dyn Fn(&str) -> u64) -> Cost {
    let Ok(pieces) = template::parse(text) else { return Cost::default() };
    pieces.iter().fold(Cost::default(), |c, p| match p {
        Piece::Text(t) => Cost { bytes: c.bytes.saturating_add(t.len() as u64), ..c },
        Piece::Reference { name, .. } => {
            Cost { references: c.references + 1, bytes: c.bytes.saturating_add(size(name)) }
        }
    })
}

/// The references and bytes a boot renders, or why they are too many.
pub(crate) fn check(
    vars: &BTreeMap<String, String>,
    lists: &BTreeMap<String, PeerList>,
    templates: &[Template],
    nodes: &[Node],
) -> Result<(), String> {
    let longest_id = nodes.iter().map(|n| n.id.to_string().len() as u64).max().unwrap_or(0);
    let builtin = |name: &str| match name {
        "node_id" | "id" => longest_id,
        _ => LONGEST_HOST,
    };
    let texts = vars.values().map(String::len).sum::<usize>()
        + lists
            .values()
            .map(|l| l.item.len() + l.self_item.as_ref().map_or(0, String::len) + l.join.len())
            .sum::<usize>();
    if texts as u64 > super::MAX_TEMPLATE_BYTES {
        return Err(format!(
            "the vars and lists hold {texts} bytes of text; at most {} are read at every boot",
            super::MAX_TEMPLATE_BYTES
        ));
    }
    let mut total = Cost::default();
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, value) in vars {
        let c = cost(value, &builtin);
        total.references += c.references;
        sizes.insert(name, c.bytes);
    }
    let var_or_builtin = |name: &str| sizes.get(name).copied().unwrap_or_else(|| builtin(name));
    let mut list_sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, list) in lists {
        let item = cost(&list.item, &var_or_builtin);
        let own = list.self_item.as_deref().map_or(item, |s| cost(s, &var_or_builtin));
        let per_node = Cost { references: item.references.max(own.references), bytes: item.bytes.max(own.bytes) };
        let n = nodes.len() as u64;
        total.references = total.references.saturating_add(per_node.references.saturating_mul(n));
        let joins = (list.join.len() as u64).saturating_mul(n.saturating_sub(1));
        list_sizes.insert(name, per_node.bytes.saturating_mul(n).saturating_add(joins));
    }
    let any = |name: &str| list_sizes.get(name).copied().unwrap_or_else(|| var_or_builtin(name));
    for t in templates {
        let c = cost(&t.text, &any);
        total.references = total.references.saturating_add(c.references);
        total.bytes = total.bytes.saturating_add(c.bytes);
    }
    if total.references > MAX_REFERENCES {
        return Err(format!(
            "a boot would render {} references (each in a template or a var once, each in a list's item once per node); at most {MAX_REFERENCES} keep a boot fast",
            total.references
        ));
    }
    if total.bytes > MAX_RENDERED {
        return Err(format!(
            "a boot could render {} bytes of templates (every address counted as {LONGEST_HOST} characters); at most {MAX_RENDERED}",
            total.bytes
        ));
    }
    Ok(())
}
