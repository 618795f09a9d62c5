//! The images in an OCI archive or layout (what `podman save --format oci-archive` and
//! `skopeo copy … oci:DIR` write), read without the store: each image's manifest digest and
//! platform. The platform comes from the image's config, which every image has (an archive's
//! index often does not say it). Every document read is checked against its digest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::digest::Sha256Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci_doc::{Descriptor, Document};
use crate::platform::Platform;
use crate::store::MAX_DOCUMENT;

/// Indexes nested deeper than this are refused (a real one has at most two levels).
const MAX_DEPTH: usize = 4;

/// One image manifest and the platform it is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Image {
    pub digest: Sha256Digest,
    #[serde(serialize_with = "crate::pin::as_text")]
    pub platform: Platform,
}

/// One entry of the archive's `index.json`: an image, or an index of images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopEntry {
    pub digest: Sha256Digest,
    pub is_index: bool,
    /// Its `org.opencontainers.image.ref.name` (or containerd's `io.containerd.image.name`).
    pub ref_name: Option<String>,
    pub images: Vec<Image>,
    /// Manifests left out, and why (attestations, platforms imgbuild does not build).
    pub skipped: Vec<String>,
}

/// Where the documents are read from.
enum Origin<'a> {
    Layout(&'a Path),
    Archive(&'a Path),
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadArchive { archive: path.display().to_string(), message: message.into() }
}

/// The top-level entries of the OCI archive or layout at `path`, with their images.
pub fn read(path: &Path) -> Result<Vec<TopEntry>> {
    let origin = if path.is_dir() { Origin::Layout(path) } else { Origin::Archive(path) };
    let index: Document =
        serde_json::from_slice(&origin.index()?).map_err(|e| bad(path, format!("index.json: {e}")))?;
    let tops = index.manifests.unwrap_or_default();
    if tops.is_empty() {
        return Err(bad(path, "index.json lists no image"));
    }
    let docs = origin.walk(&tops)?;
    let configs = origin.configs(&docs)?;
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

impl Origin<'_> {
    fn path(&self) -> &Path {
        match self {
            Origin::Layout(p) | Origin::Archive(p) => p,
        }
    }

    /// Every manifest and index below the top entries, level by level.
    fn walk(&self, tops: &[Descriptor]) -> Result<BTreeMap<Sha256Digest, Document>> {
        let mut docs = BTreeMap::new();
        let mut wanted: BTreeSet<Sha256Digest> = tops.iter().map(|d| d.digest).collect();
        for _ in 0..=MAX_DEPTH {
            if wanted.is_empty() {
                return Ok(docs);
            }
            let mut next = BTreeSet::new();
            for (digest, data) in self.documents(&wanted)? {
                let doc: Document =
                    serde_json::from_slice(&data).map_err(|e| bad(self.path(), format!("{digest}: {e}")))?;
                if doc.is_index() {
                    next.extend(doc.manifests.iter().flatten().filter(|d| !is_attestation(d)).map(|d| d.digest));
                } else if doc.config.is_none() {
                    return Err(bad(self.path(), format!("{digest} is neither an image index nor an image manifest")));
                }
                docs.insert(digest, doc);
            }
            next.retain(|d| !docs.contains_key(d));
            wanted = next;
        }
        Err(bad(self.path(), format!("indexes nested more than {MAX_DEPTH} deep")))
    }

    fn configs(&self, docs: &BTreeMap<Sha256Digest, Document>) -> Result<BTreeMap<Sha256Digest, ConfigPlatform>> {
        let wanted: BTreeSet<Sha256Digest> =
            docs.values().filter_map(|d| d.config.as_ref()).map(|c| c.digest).collect();
        let mut configs = BTreeMap::new();
        for (digest, data) in self.documents(&wanted)? {
            let config: ConfigPlatform =
                serde_json::from_slice(&data).map_err(|e| bad(self.path(), format!("image config {digest}: {e}")))?;
            configs.insert(digest, config);
        }
        Ok(configs)
    }

    fn index(&self) -> Result<Vec<u8>> {
        match self {
            Origin::Layout(dir) => {
                let path = dir.join("index.json");
                read_document(File::open(&path).at(&path)?, &path, "index.json")
            }
            Origin::Archive(path) => {
                let mut found = None;
                self.each_entry(|name, entry| {
                    if name == "index.json" {
                        found = Some(read_document(entry, path, "index.json")?);
                        return Ok(false);
                    }
                    Ok(true)
                })?;
                found.ok_or_else(|| bad(path, "no index.json: not an OCI archive"))
            }
        }
    }

    /// The blobs `wanted`, each checked against its digest.
    fn documents(&self, wanted: &BTreeSet<Sha256Digest>) -> Result<BTreeMap<Sha256Digest, Vec<u8>>> {
        let mut found = BTreeMap::new();
        match self {
            Origin::Layout(dir) => {
                for digest in wanted {
                    let path = dir.join("blobs/sha256").join(digest.hex());
                    let file = File::open(&path)
                        .map_err(|e| bad(dir, format!("blob {digest} is referenced but cannot be read: {e}")))?;
                    found.insert(*digest, read_document(file, dir, &digest.to_string())?);
                }
            }
            Origin::Archive(path) => self.each_entry(|name, entry| {
                let digest = name.strip_prefix("blobs/sha256/").and_then(|hex| format!("sha256:{hex}").parse().ok());
                if let Some(digest) = digest.filter(|d| wanted.contains(d) && !found.contains_key(d)) {
                    found.insert(digest, read_document(entry, path, &digest.to_string())?);
                }
                Ok(found.len() < wanted.len())
            })?,
        }
        for (digest, data) in &found {
            if Sha256Digest::of(data) != *digest {
                return Err(bad(self.path(), format!("blob {digest} does not match its digest")));
            }
        }
        if let Some(missing) = wanted.iter().find(|d| !found.contains_key(d)) {
            return Err(bad(self.path(), format!("blob {missing} is referenced but not in the archive")));
        }
        Ok(found)
    }

    /// Calls `visit` with each entry of the archive until it returns false.
    fn each_entry(&self, mut visit: impl FnMut(&str, &mut dyn Read) -> Result<bool>) -> Result<()> {
        let path = self.path();
        let mut archive = tar::Archive::new(BufReader::new(File::open(path).at(path)?));
        for entry in archive.entries().map_err(|e| bad(path, format!("not a tar archive: {e}")))? {
            let mut entry = entry.map_err(|e| bad(path, format!("corrupt tar: {e}")))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).trim_start_matches("./").to_string();
            if !visit(&name, &mut entry)? {
                break;
            }
        }
        Ok(())
    }
}

/// A JSON document, read whole only when it is no larger than documents are.
fn read_document(reader: impl Read, origin: &Path, what: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    reader.take(MAX_DOCUMENT + 1).read_to_end(&mut data).map_err(|e| bad(origin, format!("{what}: {e}")))?;
    if data.len() as u64 > MAX_DOCUMENT {
        return Err(bad(origin, format!("{what} is larger than 4 MiB: not an OCI document")));
    }
    Ok(data)
}
