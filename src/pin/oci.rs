//! The images in an OCI archive or layout (what `podman save --format oci-archive` and
//! `skopeo copy … oci:DIR` write), read without the store: each image's manifest digest and
//! platform. The platform comes from the image's config, which every image has (an archive's
//! index often does not say it). Every document is read as [`OciSource`] reads a hostile
//! layout (regular files only, to its descriptor's size) and checked against its digest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::import::OciSource;
use crate::oci_doc::{Descriptor, Document};
use crate::platform::Platform;

/// Indexes nested deeper than this are refused (a real one has at most two levels).
const MAX_DEPTH: usize = 4;

/// One image manifest and the platform it is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Image {
    pub digest: Sha256Digest,
    #[serde(serialize_with = "crate::pin::as_text")]
    pub platform: Platform,
}

/// One entry of the archive's `index.json`: an image, or an index of images.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct TopEntry {
    pub digest: Sha256Digest,
    pub is_index: bool,
    /// Its `org.opencontainers.image.ref.name` (or containerd's `io.containerd.image.name`).
    pub ref_name: Option<String>,
    pub images: Vec<Image>,
    /// Manifests left out, and why (attestations, platforms imgbuild does not build).
    pub skipped: Vec<String>,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadArchive { archive: path.display().to_string(), message: message.into() }
}

/// The top-level entries of the OCI archive or layout at `path`, with their images.
pub(crate) fn read(path: &Path) -> Result<Vec<TopEntry>> {
    let source = OciSource::open(path)?;
    let index: Document =
        serde_json::from_slice(&source.index()?).map_err(|e| bad(path, format!("index.json: {e}")))?;
    let tops = index.manifests.unwrap_or_default();
    if tops.is_empty() {
        return Err(bad(path, "index.json lists no image"));
    }
    let docs = walk(&source, &tops)?;
    let configs = configs(&source, &docs)?;
    let mut entries = Vec::new();
    for top in &tops {
        let mut entry = TopEntry {
            digest: top.digest,
            is_index: docs.get(&top.digest).is_some_and(Document::is_index),
            ref_name: ref_name(top),
            images: Vec::new(),
            skipped: Vec::new(),
        };
        collect(top, &docs, &configs, &mut entry, 0);
        entries.push(entry);
    }
    Ok(entries)
}

fn ref_name(desc: &Descriptor) -> Option<String> {
    let annotations = desc.annotations.as_ref()?;
    ["io.containerd.image.name", "org.opencontainers.image.ref.name"]
        .iter()
        .find_map(|k| annotations.get(*k))
        .filter(|n| !n.is_empty())
        .cloned()
}

/// The os, architecture and variant of an image config.
#[derive(serde::Deserialize)]
struct ConfigPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// Gathers the images below `desc` into `entry`.
fn collect(
    desc: &Descriptor,
    docs: &BTreeMap<Sha256Digest, Document>,
    configs: &BTreeMap<Sha256Digest, ConfigPlatform>,
    entry: &mut TopEntry,
    depth: usize,
) {
    let Some(doc) = docs.get(&desc.digest) else {
        entry.skipped.push(format!("{}: not read", desc.digest));
        return;
    };
    if doc.is_index() {
        for child in doc.manifests.iter().flatten() {
            if is_attestation(child) {
                entry.skipped.push(format!("{}: an attestation, not an image", child.digest));
            } else if depth < MAX_DEPTH {
                collect(child, docs, configs, entry, depth + 1);
            }
        }
        return;
    }
    let config = doc.config.as_ref().and_then(|c| configs.get(&c.digest));
    let text = match (config, &desc.platform) {
        (Some(c), _) if !c.architecture.is_empty() => {
            let mut t = format!("{}/{}", c.os, c.architecture);
            if let Some(v) = c.variant.as_deref().filter(|v| !v.is_empty()) {
                t = format!("{t}/{v}");
            }
            t
        }
        (_, Some(p)) => p.text(),
        _ => String::from("(not given)"),
    };
    match text.parse::<Platform>() {
        Ok(platform) => {
            let image = Image { digest: desc.digest, platform };
            if !entry.images.contains(&image) {
                entry.images.push(image);
            }
        }
        Err(why) => entry.skipped.push(format!("{}: {}", desc.digest, crate::error::escape(&why))),
    }
}

/// Build tools add provenance manifests (`unknown/unknown`) beside the images of an index.
fn is_attestation(desc: &Descriptor) -> bool {
    let unknown = desc.platform.as_ref().is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
    let marked = desc
        .annotations
        .as_ref()
        .is_some_and(|a| a.get("vnd.docker.reference.type").is_some_and(|t| t == "attestation-manifest"));
    unknown || marked
}

/// Every manifest and index below the top entries, each read as its descriptor says
/// ([`OciSource::document`]) and once.
fn walk(source: &OciSource, tops: &[Descriptor]) -> Result<BTreeMap<Sha256Digest, Document>> {
    let mut docs = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for top in tops {
        read_tree(source, top, &mut docs, &mut seen, 0)?;
    }
    Ok(docs)
}

fn read_tree(
    source: &OciSource,
    desc: &Descriptor,
    docs: &mut BTreeMap<Sha256Digest, Document>,
    seen: &mut BTreeSet<Sha256Digest>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(bad(source.path(), format!("indexes nested more than {MAX_DEPTH} deep")));
    }
    if !seen.insert(desc.digest) {
        return Ok(());
    }
    let digest = desc.digest;
    let doc: Document =
        serde_json::from_slice(&source.document(desc)?).map_err(|e| bad(source.path(), format!("{digest}: {e}")))?;
    if doc.is_index() {
        for child in doc.manifests.iter().flatten().filter(|d| !is_attestation(d)) {
            read_tree(source, child, docs, seen, depth + 1)?;
        }
    } else if doc.config.is_none() {
        return Err(bad(source.path(), format!("{digest} is neither an image index nor an image manifest")));
    }
    docs.insert(digest, doc);
    Ok(())
}

/// The platform of each image config the manifests name.
fn configs(
    source: &OciSource,
    docs: &BTreeMap<Sha256Digest, Document>,
) -> Result<BTreeMap<Sha256Digest, ConfigPlatform>> {
    let mut configs = BTreeMap::new();
    for desc in docs.values().filter_map(|d| d.config.as_ref()) {
        if configs.contains_key(&desc.digest) {
            continue;
        }
        let digest = desc.digest;
        let config: ConfigPlatform = serde_json::from_slice(&source.document(desc)?)
            .map_err(|e| bad(source.path(), format!("image config {digest}: {e}")))?;
        configs.insert(digest, config);
    }
    Ok(configs)
}
