//! Pulling an image from a registry into the store, checking every digest, so an image
//! definition can start from a base pinned by digest; and, offline, finding that an image is
//! already whole in the store.

use std::io::Read;
use std::sync::Arc;

use super::client::Client;
use super::transport::gave_up;
use crate::digest::{Algorithm, Sha256Digest};
use crate::error::{Error, MissingInput, Result};
use crate::import::Imported;
use crate::oci_doc::{Descriptor, DescriptorPlatform, Document};
use crate::platform::Platform;
use crate::progress::{Reporter, Task};
use crate::reference::Reference;
use crate::resume::{write_resumable, Body, Transfer};
use crate::retry::{Again, Policy};
use crate::store::Store;

/// Attempts per blob after dropped connections, each resuming where the last stopped.
const BLOB_ATTEMPTS: u32 = 3;

/// Where a pull reads from: a registry, or the store itself (offline).
trait Origin {
    /// The manifest or index `target`, checked against `expected` when pinned.
    fn manifest(&mut self, target: &str, expected: Option<&Sha256Digest>) -> Result<(Sha256Digest, Document)>;
    /// Makes sure a config or layer is in the store.
    fn blob(&mut self, desc: &Descriptor) -> Result<()>;
    fn invalid(&self, message: String) -> Error;
}

/// The children of an index a pull keeps: those of `platforms` (all when `None`), each digest
/// once (an index may list one many times).
fn wanted<'d>(children: &'d [Descriptor], platforms: Option<&[Platform]>) -> Vec<&'d Descriptor> {
    let mut seen = std::collections::HashSet::new();
    children
        .iter()
        .filter(|child| seen.insert(child.digest))
        .filter(|child| {
            let platform = child.platform.as_ref().map(DescriptorPlatform::text);
            match (platforms, &platform) {
                (None, _) => true,
                (Some(list), Some(p)) => list.iter().any(|w| w.to_string() == *p),
                (Some(_), None) => false,
            }
        })
        .collect()
}

/// The walk of every pull: the top document; for an index, the manifests of the platforms
/// asked for; for each manifest, its config and layers.
fn walk(origin: &mut dyn Origin, reference: &Reference, platforms: Option<&[Platform]>) -> Result<Imported> {
    let mut imported = Imported::default();
    let (digest, doc) = origin.manifest(&reference.target(), reference.digest.as_ref())?;
    let mut images = Vec::new();
    match &doc.manifests {
        Some(children) => {
            imported.indexes.push(digest);
            for child in wanted(children, platforms) {
                let (d, doc) = origin.manifest(&child.digest.to_string(), Some(&child.digest))?;
                images.push((d, child.platform.as_ref().map(DescriptorPlatform::text), doc));
            }
            if images.is_empty() {
                return Err(Error::Usage(format!("{reference} has no manifest for the platforms asked for")));
            }
        }
        None => images.push((digest, None, doc)),
    }
    for (digest, platform, doc) in images {
        let config = doc
            .config
            .as_ref()
            .ok_or_else(|| origin.invalid(format!("{digest} is neither an image index nor an image manifest")))?;
        for d in std::iter::once(config).chain(&doc.layers) {
            origin.blob(d)?;
            imported.blobs += 1;
        }
        imported.manifests.push((digest, platform));
    }
    Ok(imported)
}

struct RegistryOrigin<'a> {
    store: &'a Store,
    client: &'a Client,
    reporter: &'a dyn Reporter,
}

impl Origin for RegistryOrigin<'_> {
    fn manifest(&mut self, target: &str, expected: Option<&Sha256Digest>) -> Result<(Sha256Digest, Document)> {
        manifest(self.store, self.client, target, expected)
    }

    fn blob(&mut self, desc: &Descriptor) -> Result<()> {
        blob(self.store, self.client, desc, self.reporter)
    }

    fn invalid(&self, message: String) -> Error {
        self.client.error(message)
    }
}

/// Pulls `reference` into the store: an index and the manifests of `platforms` (all when
/// `None`), or a single manifest, with their configs and layers.
pub(crate) fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    platforms: Option<&[Platform]>,
    reporter: &dyn Reporter,
) -> Result<Imported> {
    walk(&mut RegistryOrigin { store, client, reporter }, reference, platforms)
}

struct StoreOrigin<'a> {
    store: &'a Store,
    reference: &'a Reference,
    /// What the store lacks.
    missing: Vec<String>,
}

impl StoreOrigin<'_> {
    fn missing_error(&self) -> Error {
        let reasons = self.missing.iter().map(|m| format!("offline, and not in the store: {m}")).collect();
        let file = format!("{}.tar", self.reference.repository.rsplit('/').next().unwrap_or("image"));
        let digest = self.reference.digest.as_ref();
        Error::MissingInputs(vec![missing_image("pull", "-", Some(self.reference), digest, &file, reasons)])
    }
}

impl Origin for StoreOrigin<'_> {
    fn manifest(&mut self, target: &str, _: Option<&Sha256Digest>) -> Result<(Sha256Digest, Document)> {
        let digest: Sha256Digest = target.parse().map_err(|e| Error::Internal(format!("{target}: {e}")))?;
        if !self.store.has_sha256(&digest) {
            self.missing.push(format!("{digest} (manifest)"));
            return Err(self.missing_error());
        }
        let bytes = self.store.read_blob(&digest)?;
        let doc = serde_json::from_slice(&bytes).map_err(|e| self.invalid(format!("{digest}: {e}")))?;
        Ok((digest, doc))
    }

    fn blob(&mut self, desc: &Descriptor) -> Result<()> {
        if !self.store.has_sha256(&desc.digest) {
            self.missing.push(desc.digest.to_string());
        }
        Ok(())
    }

    fn invalid(&self, message: String) -> Error {
        Error::Store { path: self.store.root().to_path_buf(), message }
    }
}

/// `pull --offline`: what `pull` would have stored, when the store already holds all of it.
pub(crate) fn from_store(store: &Store, reference: &Reference, platforms: Option<&[Platform]>) -> Result<Imported> {
    let mut origin = StoreOrigin { store, reference, missing: Vec::new() };
    if reference.digest.is_none() {
        origin
            .missing
            .push("what the tag points at (only the registry knows; offline, name the digest: REF@sha256:…)".into());
        return Err(origin.missing_error());
    }
    let imported = walk(&mut origin, reference, platforms)?;
    if origin.missing.is_empty() {
        Ok(imported)
    } else {
        Err(origin.missing_error())
    }
}

/// Fetches a manifest, checks it against `expected` (when pinned) and stores it; one the store
/// holds already is read from there (a walk fetches each digest once). Counted in the
/// client's [`Budget`](super::budget::Budget).
pub(crate) fn manifest(
    store: &Store,
    client: &Client,
    target: &str,
    expected: Option<&Sha256Digest>,
) -> Result<(Sha256Digest, Document)> {
    if let Some(stored) = expected.filter(|d| store.has_sha256(d)) {
        let bytes = store.read_blob(stored)?;
        return Ok((*stored, parse_manifest(client, target, &bytes)?));
    }
    client.budget.document().map_err(|why| client.error(why))?;
    let (bytes, _) = client.get_manifest(target)?;
    client.budget.bytes(bytes.len() as u64).map_err(|why| client.error(why))?;
    let found = Sha256Digest::of(&bytes);
    if let Some(expected) = expected {
        if *expected != found {
            return Err(Error::HashMismatch {
                what: format!("{}/{}@{target}", client.registry(), client.repository()),
                expected: expected.to_hash(),
                found: found.to_hash(),
            });
        }
    }
    let doc = parse_manifest(client, target, &bytes)?;
    store.add_bytes(&bytes)?;
    Ok((found, doc))
}

fn parse_manifest(client: &Client, target: &str, bytes: &[u8]) -> Result<Document> {
    serde_json::from_slice(bytes).map_err(|e| client.error(format!("{target} is not an OCI manifest: {e}")))
}

/// Fetches a document blob (what an artifact manifest carries, or its config) into the store:
/// at most [`MAX_DOCUMENT`](crate::store::MAX_DOCUMENT) bytes as its descriptor says, counted
/// in the client's budget; anything larger is refused unfetched.
pub(crate) fn document(store: &Store, client: &Client, desc: &Descriptor, what: &str) -> Result<()> {
    if store.has_sha256(&desc.digest) {
        return Ok(());
    }
    if desc.size > crate::store::MAX_DOCUMENT {
        return Err(client.error(format!(
            "{what}: its blob {} is {} bytes, more than the {} MiB a document may be (MAX_DOCUMENT): not fetched",
            desc.digest,
            desc.size,
            crate::store::MAX_DOCUMENT >> 20
        )));
    }
    client.budget.document().and_then(|()| client.budget.bytes(desc.size)).map_err(|why| client.error(why))?;
    fetch_blob(store, client, desc, &|_| {})
}

fn blob(store: &Store, client: &Client, desc: &Descriptor, reporter: &dyn Reporter) -> Result<()> {
    if store.has_sha256(&desc.digest) {
        return Ok(());
    }
    client.budget.layer().map_err(|why| client.error(why))?;
    let task = reporter.task(&format!("pull {}", &desc.digest.hex()[..12]), Some(desc.size));
    fetch_blob(store, client, desc, &|n| task.set_position(n))
}

/// Fetches one blob into the store, checked against its digest and resumed (bounded) after a
/// dropped connection. `progress` is told how many of its bytes are there.
fn fetch_blob(store: &Store, client: &Client, desc: &Descriptor, progress: &dyn Fn(u64)) -> Result<()> {
    let hash = desc.digest.to_hash();
    if store.has(&hash) {
        progress(desc.size);
        return Ok(());
    }
    // The same lock as a tarball download of this hash: one partial file, one writer.
    let _lock = store.lock(&format!("fetch-sha256-{}", desc.digest.hex()))?;
    if store.has(&hash) {
        progress(desc.size);
        return Ok(());
    }
    let partial = store.partial_path(&hash);
    let what = format!("{}@{}", client.reference.name(), desc.digest);
    let failed = |why: String| client.error(format!("blob {}: {why}", desc.digest));
    crate::retry::run(&Policy::attempts(BLOB_ATTEMPTS), |_| {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let (response, resumed) = client.get_blob(&desc.digest, have)?;
        let start = if resumed { have } else { 0 };
        let length = response.get_ref().content_length();
        // Never more than the manifest says (and one byte to notice a longer blob).
        let reader = response.take(desc.size.saturating_sub(start) + 1);
        match write_resumable(&partial, Body { reader, start, length }, Algorithm::Sha256, progress) {
            Ok(found) => Ok(store.commit_file(&partial, found, Some(&hash), &what).map(drop)?),
            Err(Transfer::Retry(why)) => Err(Again::retry(failed(why))),
            Err(Transfer::Fatal(why)) => Err(Again::Stop(failed(why))),
            Err(Transfer::Local(e)) => Err(Again::Stop(e)),
        }
    })
    .map_err(gave_up)
}

/// Fetches the image manifest `digest` and every blob it names into the store (a build's base
/// image): each checked against its digest, resumed after a dropped connection, and counted
/// in `task` as one download. An index is stored as it is; the caller refuses it.
pub(crate) fn fetch_image(store: &Store, client: &Client, digest: &Sha256Digest, task: &Arc<dyn Task>) -> Result<()> {
    let (_, doc) = manifest(store, client, &digest.to_string(), Some(digest))?;
    task.set_total(doc.blobs().map(|d| d.size).sum());
    let mut done = 0;
    for desc in doc.blobs() {
        fetch_blob(store, client, desc, &|n| task.set_position(done + n))?;
        done += desc.size;
    }
    Ok(())
}

/// The missing-input entry of an image: where it was looked for, and the one command that adds
/// it in any mode, `store add` of an archive of it (which `skopeo copy` makes where the registry
/// can be reached).
pub(crate) fn missing_image(
    recipe: &str,
    platform: &str,
    repository: Option<&Reference>,
    digest: Option<&Sha256Digest>,
    file: &str,
    reasons: Vec<String>,
) -> MissingInput {
    let pinned = |r: &Reference| match digest {
        Some(d) => format!("{}@{d}", r.name()),
        None => r.to_string(),
    };
    let copy = match repository {
        Some(r) => format!(" ({file} from `skopeo copy docker://{} oci-archive:{file}`)", pinned(r)),
        None => format!(" ({file}: an oci-archive or OCI layout holding it)"),
    };
    MissingInput {
        recipe: recipe.to_string(),
        platform: platform.to_string(),
        // The digest is the entry's hash; the name says where the image lives.
        file: format!(
            "image {}",
            repository.map_or_else(|| file.to_string(), |r| Reference { digest: None, ..r.clone() }.to_string())
        ),
        urls: repository.map(|r| format!("docker://{}", pinned(r))).into_iter().collect(),
        hash: digest.map_or_else(|| "unknown".to_string(), |d| d.to_string()),
        reasons,
        add: format!("imgbuild store add {file}{copy}"),
    }
}
