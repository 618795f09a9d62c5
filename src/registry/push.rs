//! Pushing an image (manifest or index) from the store: each blob is checked with HEAD first,
//! mounted from a sibling repository when one is known to hold it, and uploaded otherwise.
//! Then its referrers (SBOMs, provenance): through the registry's referrers API, or the
//! fallback tag where it has none (`referrers.rs`).
//!
//! Other pushes may run at the same time, to the same repository ([`put_complete`]): a
//! registry may refuse a manifest for a blob it answered for a moment ago, so a refusal for
//! unknown content makes the push check every blob again, upload what is missing, and retry.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use super::client::{Client, Put};
use super::transport::gave_up;
use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::oci_doc::{Descriptor, Document};
use crate::progress::Reporter;
use crate::reference::Reference;
use crate::store::Store;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct PushStats {
    pub bytes_uploaded: u64,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    pub manifests: usize,
    /// Manifests the registry refused for content it did not know (yet), then took on a
    /// later attempt: what concurrent pushes to one repository meet.
    pub manifests_retried: usize,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct Pushed {
    /// `REF@sha256:…`
    pub reference: String,
    pub digest: Sha256Digest,
    pub media_type: String,
    #[serde(flatten)]
    pub stats: PushStats,
    /// The SBOMs and provenance attached to it: their manifests and blobs.
    pub referrers: PushStats,
}

/// Which repositories of a registry are known to hold a blob: the sources of cross-repository
/// mounts. Only a hint: a failed mount falls back to an upload.
struct MountHints {
    path: PathBuf,
    repos: BTreeMap<String, BTreeSet<String>>,
}

impl MountHints {
    fn load(store: &Store, registry: &str) -> MountHints {
        let path = store.registry_hints_path(registry);
        let repos = std::fs::read(&path).ok().and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default();
        MountHints { path, repos }
    }

    fn sibling(&self, digest: &Sha256Digest, repository: &str) -> Option<String> {
        self.repos.get(&digest.to_string())?.iter().find(|r| *r != repository).cloned()
    }

    fn record(&mut self, digest: &Sha256Digest, repository: &str) {
        self.repos.entry(digest.to_string()).or_default().insert(repository.to_string());
    }

    fn save(&self, store: &Store) -> Result<()> {
        store.write_atomic(&self.path, &serde_json::to_vec(&self.repos).expect("serializes"))
    }
}

struct Pusher<'a> {
    store: &'a Store,
    client: &'a Client,
    reporter: &'a dyn Reporter,
    hints: MountHints,
    done: HashSet<Sha256Digest>,
    stats: PushStats,
}

fn read_doc(store: &Store, digest: &Sha256Digest) -> Result<(Vec<u8>, Document)> {
    let bytes = store.read_blob(digest)?;
    let doc: Document = serde_json::from_slice(&bytes).map_err(|e| Error::Store {
        path: store.sha256_path(digest),
        message: format!("not an OCI manifest or index: {e}"),
    })?;
    Ok((bytes, doc))
}

impl Pusher<'_> {
    /// Every blob of a manifest must be in the store before anything is sent.
    fn check_present(&self, doc: &Document) -> Result<()> {
        for d in doc.blobs() {
            if !self.store.has_sha256(&d.digest) {
                return Err(Error::Store {
                    path: self.store.sha256_path(&d.digest),
                    message: format!(
                        "blob {} is missing; rebuild the image (or `imgbuild store verify`) before pushing",
                        d.digest
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks that the registry holds a blob, and mounts or uploads it when it does not: once
    /// per push, or `again` (the registry refused a manifest naming it).
    fn blob(&mut self, desc: &Descriptor, again: bool) -> Result<()> {
        if !self.done.insert(desc.digest) && !again {
            return Ok(());
        }
        // Pushes from this store to this registry at the same time check and upload a blob one
        // at a time: the others find it there, and the registry gets its bytes once.
        let registry = Sha256Digest::of(self.client.registry().as_bytes());
        let _one_at_a_time =
            self.store.lock(&format!("push-{}-sha256-{}", &registry.hex()[..16], desc.digest.hex()))?;
        let repository = self.client.repository().to_string();
        if self.client.blob_exists(&desc.digest)? {
            // Counted once: a check again finds what this push placed.
            self.stats.blobs_skipped += usize::from(!again);
        } else if let Some(from) = self.hints.sibling(&desc.digest, &repository) {
            if self.client.mount(&desc.digest, &from)? {
                self.stats.blobs_mounted += 1;
            } else {
                self.upload(desc)?;
            }
        } else {
            self.upload(desc)?;
        }
        self.hints.record(&desc.digest, &repository);
        Ok(())
    }

    fn upload(&mut self, desc: &Descriptor) -> Result<()> {
        let short = &desc.digest.hex()[..12];
        let task = self.reporter.task(&format!("push {short}"), Some(desc.size));
        self.client.upload(&desc.digest, &self.store.intact_path(&desc.digest)?, desc.size, &task)?;
        self.stats.blobs_uploaded += 1;
        self.stats.bytes_uploaded += desc.size;
        Ok(())
    }

    fn manifest(&mut self, digest: &Sha256Digest, target: &str) -> Result<String> {
        let (bytes, doc) = read_doc(self.store, digest)?;
        let media_type = doc.media_type();
        if doc.manifests.is_none() {
            self.check_present(&doc)?;
        }
        let client = self.client;
        let attempts = put_complete(
            client,
            |attempt| self.content(&doc, attempt),
            || client.try_put_manifest(target, &media_type, &bytes),
        )?;
        self.stats.manifests += 1;
        self.stats.manifests_retried += usize::from(attempts > 1);
        Ok(media_type)
    }

    /// What a manifest or index names, in the registry: its blobs, or its platforms' manifests.
    /// The first attempt skips what this push placed already; a later one (the registry
    /// refused the document) checks every blob again and puts every child manifest again.
    fn content(&mut self, doc: &Document, attempt: u32) -> Result<()> {
        if let Some(children) = &doc.manifests {
            for child in children {
                self.manifest(&child.digest, &child.digest.to_string())?;
            }
            return Ok(());
        }
        for d in doc.blobs() {
            self.blob(d, attempt > 1)?;
        }
        Ok(())
    }

    /// An artifact manifest attached to a manifest already pushed: its blobs, then itself.
    fn referrer(&mut self, digest: &Sha256Digest) -> Result<()> {
        let (bytes, doc) = read_doc(self.store, digest)?;
        let not_artifact = || Error::Store {
            path: self.store.sha256_path(digest),
            message: "a referrer that is not an artifact manifest with a `subject`".into(),
        };
        let subject = doc.subject.as_ref().ok_or_else(not_artifact)?.digest;
        let artifact_type = doc.artifact_type.clone().ok_or_else(not_artifact)?;
        self.check_present(&doc)?;
        let client = self.client;
        let attempts = put_complete(
            client,
            |attempt| self.content(&doc, attempt),
            || super::referrers::put(client, &bytes, &subject, &artifact_type),
        )?;
        self.stats.manifests += 1;
        self.stats.manifests_retried += usize::from(attempts > 1);
        Ok(())
    }
}

/// Puts a manifest (`put`) once what it names is in the registry (`content`, told the
/// attempt's number). A refusal for unknown content ([`Put::Again`]) is what concurrent
/// pushes meet: the content is checked and placed again, then the manifest retried, bounded
/// by the client's retry policy. Returns the attempts it took.
pub(crate) fn put_complete(
    client: &Client,
    mut content: impl FnMut(u32) -> Result<()>,
    mut put: impl FnMut() -> Result<Put>,
) -> Result<u32> {
    crate::retry::run(&client.retry, |attempt| {
        content(attempt)?;
        match put()? {
            Put::Stored { .. } => Ok(attempt),
            Put::Again(e) => Err(crate::retry::Again::retry(e)),
        }
    })
    .map_err(gave_up)
}

/// Pushes the manifest or index `digest` from the store to `reference` (its tag, or its
/// digest), then the artifact manifests `referrers` attached to it or its platform manifests.
pub(crate) fn push(
    store: &Store,
    client: &Client,
    reference: &Reference,
    digest: &Sha256Digest,
    referrers: &[Sha256Digest],
    reporter: &dyn Reporter,
) -> Result<Pushed> {
    let mut pusher = Pusher {
        store,
        client,
        reporter,
        hints: MountHints::load(store, client.registry()),
        done: HashSet::new(),
        stats: PushStats::default(),
    };
    let result = pusher.manifest(digest, &reference.target());
    // The referrers are counted apart from the image.
    let image_stats = std::mem::take(&mut pusher.stats);
    let result =
        result.and_then(|media_type| referrers.iter().try_for_each(|r| pusher.referrer(r)).map(|()| media_type));
    let referrer_stats = std::mem::replace(&mut pusher.stats, image_stats);
    // What reached the registry is worth remembering even when a later step failed.
    pusher.hints.save(store)?;
    let media_type = result?;
    let pinned = Reference { digest: Some(*digest), ..reference.clone() };
    Ok(Pushed {
        reference: pinned.to_string(),
        digest: *digest,
        media_type,
        stats: pusher.stats,
        referrers: referrer_stats,
    })
}
