//! `imgbuild diff OLD NEW`: what changed between two images, or between every image of two
//! builds, from what the images carry: the recipe inputs (their labels), the layers (paired by
//! the role their history names), the files of each changed layer (streamed, bounded), and the
//! configuration each node renders at boot (by the entrypoint itself, see `render`).
//!
//! The report is data (`--json` prints it as is); `show` writes it for people.

mod image;
mod layers;
mod render;
pub(crate) mod show;
pub(crate) mod text;

use std::collections::{BTreeMap, HashMap};

use self::image::{conf_files, ImageFacts};
use self::layers::FileChanges;
use self::render::{ConfFiles, Rendered};
use self::text::{changed_lines, Unified};
use crate::digest::Sha256Digest;
use crate::error::{escape, Error, Result};
use crate::store::Store;

/// The label imgbuild puts on a node's image.
const NODE_LABEL: &str = "org.imgbuild.node.id";
/// Labels `org.imgbuild.input.NAME` (hash) and `org.imgbuild.input.NAME.version`.
const INPUT_LABEL: &str = "org.imgbuild.input.";

/// The images of one side: one named image, or every tagged image of a build output.
pub(crate) struct Side {
    pub images: Vec<(String, Sha256Digest)>,
    /// A whole build output (images are paired by tag), not one named image.
    pub output: bool,
}

pub(crate) struct Options {
    /// Only this node (its image, and its configuration).
    pub node: Option<u32>,
    /// For an image of several platforms: which one (else the host's, else the first).
    pub platform: Option<String>,
    /// `IMGBUILD_MAX_UNPACKED`: what one layer may unpack to.
    pub max_unpacked: u64,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct Report {
    /// Whether every image compared is the same image (the same digest).
    pub same: bool,
    pub images: Vec<ImagePair>,
    pub inputs: Vec<InputChange>,
    pub layers: Vec<LayerChange>,
    pub nodes: Vec<NodeConfig>,
    pub notes: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct ImagePair {
    pub name: String,
    pub old: Option<Sha256Digest>,
    pub new: Option<Sha256Digest>,
    pub same: bool,
    /// The roles of its layers that changed.
    pub changed_layers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Input {
    pub version: Option<String>,
    pub hash: String,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct InputChange {
    pub name: String,
    pub old: Option<Input>,
    pub new: Option<Input>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LayerSide {
    pub digest: Sha256Digest,
    pub created_by: String,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct LayerChange {
    pub role: String,
    pub old: Option<LayerSide>,
    pub new: Option<LayerSide>,
    /// The images that hold this change.
    pub images: Vec<String>,
    #[serde(flatten)]
    pub files: FileChanges,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct NodeConfig {
    pub node: u32,
    /// The image pair it was rendered from.
    pub image: String,
    pub files: Vec<ConfigChange>,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct ConfigChange {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// The lines that differ (`-old`, `+new`).
    pub lines: Unified,
}

/// Compares `old` with `new`.
pub(crate) fn diff(store: &Store, old: &Side, new: &Side, options: &Options) -> Result<Report> {
    let mut notes = Vec::new();
    let mut pairs = Vec::new();
    for (name, a, b) in pair(old, new)? {
        let read = |d: Option<Sha256Digest>| d.map(|d| image::read(store, &d, options.platform.as_deref())).transpose();
        let (fa, fb) = (read(a)?, read(b)?);
        if let (Some(x), Some(y)) = (&fa, &fb) {
            if x.platform != y.platform {
                notes.push(format!(
                    "{name}: the old image's platform {} is compared with the new one's {}",
                    x.platform.as_deref().unwrap_or("?"),
                    y.platform.as_deref().unwrap_or("?")
                ));
            }
        }
        pairs.push(Pair { name, old: a, new: b, old_facts: fa, new_facts: fb });
    }
    if let (Some(id), true) = (options.node, old.output) {
        // Of a build: node N's own image, or else the images of no node (`cluster`).
        let id = id.to_string();
        let has_own = pairs.iter().any(|p| p.node() == Some(&id));
        pairs.retain(|p| if has_own { p.node() == Some(&id) } else { p.node().is_none() });
    }
    if pairs.is_empty() {
        return Err(Error::Usage(format!("no image of node {} to compare", options.node.unwrap_or_default())));
    }
    let inputs = input_changes(&pairs);
    let mut layers = layer_changes(&pairs);
    for change in &mut layers {
        let digest = |s: &Option<LayerSide>| s.as_ref().map(|s| s.digest);
        let (a, b) = (digest(&change.old), digest(&change.new));
        change.files = layers::compare(store, a.as_ref(), b.as_ref(), options.max_unpacked)?;
    }
    let nodes = node_configs(store, &pairs, options, &mut notes)?;
    let images: Vec<ImagePair> = pairs
        .iter()
        .map(|p| ImagePair {
            name: p.name.clone(),
            old: p.old,
            new: p.new,
            same: p.old.is_some() && p.old == p.new,
            changed_layers: layers.iter().filter(|l| l.images.contains(&p.name)).map(|l| l.role.clone()).collect(),
        })
        .collect();
    let same = images.iter().all(|i| i.same);
    Ok(Report { same, images, inputs, layers, nodes, notes })
}

/// One image of each side (either may be missing from its build).
struct Pair {
    name: String,
    old: Option<Sha256Digest>,
    new: Option<Sha256Digest>,
    old_facts: Option<ImageFacts>,
    new_facts: Option<ImageFacts>,
}

impl Pair {
    /// The node id its images' labels name.
    fn node(&self) -> Option<&String> {
        [&self.new_facts, &self.old_facts].into_iter().flatten().find_map(|f| f.labels.get(NODE_LABEL))
    }
}

/// A name and the image of each side that has one.
type Paired = (String, Option<Sha256Digest>, Option<Sha256Digest>);

/// Two named images pair; two build outputs pair by tag.
fn pair(old: &Side, new: &Side) -> Result<Vec<Paired>> {
    match (old.output, new.output) {
        (false, false) => {
            let name = |s: &Side| s.images[0].0.clone();
            let shown = if name(old) == name(new) { name(new) } else { format!("{} → {}", name(old), name(new)) };
            Ok(vec![(shown, Some(old.images[0].1), Some(new.images[0].1))])
        }
        (true, true) => {
            let mut by_name: BTreeMap<&str, (Option<Sha256Digest>, Option<Sha256Digest>)> = BTreeMap::new();
            for (name, d) in &old.images {
                by_name.entry(name).or_default().0 = Some(*d);
            }
            for (name, d) in &new.images {
                by_name.entry(name).or_default().1 = Some(*d);
            }
            Ok(by_name.into_iter().map(|(n, (a, b))| (n.to_string(), a, b)).collect())
        }
        _ => Err(Error::Usage(
            "compare two images (oci:DIR:TAG, oci-archive:FILE:TAG, docker://…) or two build outputs (directories), not one of each".into(),
        )),
    }
}

/// The recipe inputs whose hash or version differs, from the labels of every image compared.
fn input_changes(pairs: &[Pair]) -> Vec<InputChange> {
    let inputs = |facts: &Option<ImageFacts>| -> BTreeMap<String, Input> {
        let Some(f) = facts else { return BTreeMap::new() };
        f.labels
            .iter()
            .filter_map(|(k, hash)| {
                let name = k.strip_prefix(INPUT_LABEL).filter(|n| !n.ends_with(".version"))?;
                let version = f.labels.get(&format!("{k}.version")).cloned();
                Some((name.to_string(), Input { version, hash: hash.clone() }))
            })
            .collect()
    };
    let mut changes: BTreeMap<String, InputChange> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.old_facts.is_some() && p.new_facts.is_some()) {
        let (mut a, b) = (inputs(&p.old_facts), inputs(&p.new_facts));
        for (name, new) in b {
            let old = a.remove(&name);
            if old.as_ref() != Some(&new) {
                changes.entry(name.clone()).or_insert(InputChange { name, old, new: Some(new) });
            }
        }
        for (name, old) in a {
            changes.entry(name.clone()).or_insert(InputChange { name, old: Some(old), new: None });
        }
    }
    changes.into_values().collect()
}

/// The layers that differ, paired by role, each change once however many images hold it.
fn layer_changes(pairs: &[Pair]) -> Vec<LayerChange> {
    let mut changes: Vec<LayerChange> = Vec::new();
    for p in pairs {
        let by_role = |f: &Option<ImageFacts>| -> BTreeMap<String, LayerSide> {
            let layers = f.as_ref().map_or(&[][..], |f| &f.layers[..]);
            layers
                .iter()
                .map(|l| (l.role.clone(), LayerSide { digest: l.digest, created_by: l.created_by.clone() }))
                .collect()
        };
        let (mut a, b) = (by_role(&p.old_facts), by_role(&p.new_facts));
        let mut found: Vec<(String, Option<LayerSide>, Option<LayerSide>)> = Vec::new();
        for (role, new) in b {
            match a.remove(&role) {
                Some(old) if old.digest == new.digest => {}
                old => found.push((role, old, Some(new))),
            }
        }
        found.extend(a.into_iter().map(|(role, old)| (role, Some(old), None)));
        for (role, old, new) in found {
            let key = |s: &Option<LayerSide>| s.as_ref().map(|s| s.digest);
            let same =
                changes.iter_mut().find(|c| c.role == role && key(&c.old) == key(&old) && key(&c.new) == key(&new));
            match same {
                Some(c) => c.images.push(p.name.clone()),
                None => changes.push(LayerChange {
                    role,
                    old,
                    new,
                    images: vec![p.name.clone()],
                    files: FileChanges::default(),
                }),
            }
        }
    }
    changes
}

/// What each node renders at boot, before and after; a node once, from its own image when
/// there is one (else from a cluster image).
fn node_configs(store: &Store, pairs: &[Pair], options: &Options, notes: &mut Vec<String>) -> Result<Vec<NodeConfig>> {
    let mut seen = HashMap::new();
    let deadline = std::time::Instant::now() + render::RENDER_BUDGET;
    let mut rendered: BTreeMap<u32, NodeConfig> = BTreeMap::new();
    let labelled = |p: &&Pair| p.node().is_some();
    let ordered = pairs.iter().filter(labelled).chain(pairs.iter().filter(|p| !labelled(p)));
    for p in ordered {
        let mut conf = |f: &Option<ImageFacts>| -> Result<Option<(ConfFiles, Vec<u32>)>> {
            let Some(f) = f else { return Ok(None) };
            let (files, entrypoint) = conf_files(store, f, options.max_unpacked, &mut seen)?;
            if !files.contains_key("cluster.env") {
                notes.push(format!(
                    "{}: no /etc/imgbuild/cluster.env: not an imgbuild node image, no configuration rendered",
                    p.name
                ));
                return Ok(None);
            }
            if !render::is_our_entrypoint(entrypoint.as_ref()) {
                notes.push(format!("{}: the image's entrypoint is not this imgbuild's: its configuration is shown as this imgbuild's entrypoint renders it", p.name));
            }
            let ids = match f.labels.get(NODE_LABEL).and_then(|l| l.parse().ok()) {
                Some(id) => vec![id],
                None => render::nodes(&files)?,
            };
            Ok(Some((files, ids)))
        };
        let (a, b) = (conf(&p.old_facts)?, conf(&p.new_facts)?);
        let mut ids: Vec<u32> = a.iter().chain(&b).flat_map(|(_, ids)| ids.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| options.node.is_none_or(|n| n == *id) && !rendered.contains_key(id));
        for id in ids {
            let side = |s: &Option<(ConfFiles, Vec<u32>)>| match s {
                Some((files, ids)) if ids.contains(&id) => render::render(files, id, deadline),
                _ => Ok(Rendered::new()),
            };
            let files = config_changes(&side(&a)?, &side(&b)?);
            rendered.insert(id, NodeConfig { node: id, image: p.name.clone(), files });
        }
    }
    Ok(rendered.into_values().collect())
}

/// The rendered files that differ, with their lines that differ.
fn config_changes(old: &Rendered, new: &Rendered) -> Vec<ConfigChange> {
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| {
            let (a, b) = (old.get(path), new.get(path));
            let change = match (a, b) {
                (Some(x), Some(y)) if x == y => return None,
                (Some(_), Some(_)) => "changed",
                (None, _) => "added",
                (_, None) => "removed",
            };
            let lines = changed_lines(a.map_or("", String::as_str), b.map_or("", String::as_str));
            Some(ConfigChange { path: escape(path), change, lines })
        })
        .collect()
}

/// Every tagged image of a build output (an OCI layout or archive), brought into the store.
pub(crate) fn open_output(store: &Store, path: &std::path::Path) -> Result<Side> {
    let imported = crate::import::import(store, path)?;
    let images: Vec<(String, Sha256Digest)> =
        imported.tops.iter().filter_map(|(tag, d)| Some((tag.clone()?, *d))).collect();
    if images.is_empty() {
        return Err(Error::Usage(format!("{}: no tagged image (is it what `imgbuild build` wrote?)", path.display())));
    }
    Ok(Side { images, output: true })
}

#[cfg(test)]
mod tests {
    use super::image::Layer;
    use super::*;
    use proptest::prelude::*;

    const ROLES: [&str; 5] = ["recipe a", "recipe b", "runtime", "cluster", "layer 1"];

    /// An image whose layers have these roles and contents, and whose inputs these versions.
    fn facts(layers: &BTreeMap<usize, u8>, inputs: &BTreeMap<usize, u8>) -> ImageFacts {
        let layers = layers
            .iter()
            .map(|(r, c)| Layer {
                digest: Sha256Digest::of(&[*r as u8, *c]),
                role: ROLES[*r].into(),
                created_by: String::new(),
            })
            .collect();
        let mut labels = BTreeMap::new();
        for (i, v) in inputs {
            labels.insert(format!("{INPUT_LABEL}in{i}"), format!("sha256:{v}"));
            labels.insert(format!("{INPUT_LABEL}in{i}.version"), v.to_string());
        }
        ImageFacts { platform: None, labels, layers }
    }

    fn pair(old: ImageFacts, new: ImageFacts) -> Pair {
        let (a, b) = (Sha256Digest::of(b"old"), Sha256Digest::of(b"new"));
        Pair { name: "image".into(), old: Some(a), new: Some(b), old_facts: Some(old), new_facts: Some(new) }
    }

    /// Keys whose values differ between `a` and `b` (present in one only, or another value).
    fn differing(a: &BTreeMap<usize, u8>, b: &BTreeMap<usize, u8>) -> Vec<usize> {
        (0..ROLES.len()).filter(|k| a.get(k) != b.get(k)).collect()
    }

    proptest! {
        /// Exactly the layers whose role is in one image only, or holds other content, are
        /// reported, once each; exactly the inputs whose version or hash differs.
        #[test]
        fn changes_are_exactly_the_roles_and_inputs_that_differ(
            old in proptest::collection::btree_map(0..ROLES.len(), 0u8..3, 0..5),
            new in proptest::collection::btree_map(0..ROLES.len(), 0u8..3, 0..5),
            old_in in proptest::collection::btree_map(0..ROLES.len(), 0u8..3, 0..5),
            new_in in proptest::collection::btree_map(0..ROLES.len(), 0u8..3, 0..5),
        ) {
            let pairs = [pair(facts(&old, &old_in), facts(&new, &new_in))];
            let layers = layer_changes(&pairs);
            let mut roles: Vec<&str> = layers.iter().map(|l| l.role.as_str()).collect();
            roles.sort_unstable();
            let mut want: Vec<&str> = differing(&old, &new).into_iter().map(|r| ROLES[r]).collect();
            want.sort_unstable();
            prop_assert_eq!(roles, want);
            for l in &layers {
                let r = ROLES.iter().position(|x| *x == l.role).unwrap();
                prop_assert_eq!(l.old.is_some(), old.contains_key(&r));
                prop_assert_eq!(l.new.is_some(), new.contains_key(&r));
            }
            let inputs: Vec<String> = input_changes(&pairs).into_iter().map(|c| c.name).collect();
            let want: Vec<String> = differing(&old_in, &new_in).into_iter().map(|i| format!("in{i}")).collect();
            prop_assert_eq!(inputs, want);
        }
    }

    #[test]
    fn rendered_files_differ_by_their_lines() {
        let old =
            Rendered::from([("/a".to_string(), "x=1\ny=2\n".to_string()), ("/gone".to_string(), "g\n".to_string())]);
        let new = Rendered::from([("/a".to_string(), "x=1\ny=3\n".to_string()), ("/b".to_string(), "n\n".to_string())]);
        let changes = config_changes(&old, &new);
        let got: Vec<(&str, &str, &str)> =
            changes.iter().map(|c| (c.path.as_str(), c.change, c.lines.text.as_str())).collect();
        assert_eq!(got, [("/a", "changed", "-y=2\n+y=3\n"), ("/b", "added", "+n\n"), ("/gone", "removed", "-g\n")]);
        assert!(config_changes(&old, &old).is_empty());
    }
}
