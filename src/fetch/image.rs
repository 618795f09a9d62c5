//! Getting a base image, pinned by its manifest digest, into the store like any other input:
//! from the recipe's `file` in a `--mirror` directory (an oci-archive or OCI layout), then from
//! the `--registry-mirror`s of its registry, its `image` repository and the recipe's `mirrors`.
//! Every blob is checked against the digest the pinned manifest names.

use std::path::Path;
use std::sync::Arc;

use super::Fetcher;
use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::oci_doc::Document;
use crate::progress::Task;
use crate::recipe::{Recipe, Source};
use crate::registry::pull::missing_image;
use crate::registry::{pull, Access, Client, Reference, RegistrySettings};
use crate::store::Store;

/// Attempts per registry request; what no retry can fix fails at once.
const REGISTRY_ATTEMPTS: u32 = 3;

/// Why one place did not give the image.
enum Miss {
    /// Not there, or unreachable: the next place may have it.
    Reason(String),
    /// It had other bytes under the pinned digest.
    Mismatch(Error),
}

/// How much of a pinned image the store holds.
#[derive(PartialEq, Eq)]
enum InStore {
    /// The manifest and every blob it names.
    Whole,
    /// Not these: the manifest, or some of its blobs.
    Partly(Vec<Sha256Digest>),
    /// An image index, where a platform's manifest was pinned.
    Index,
}

fn in_store(store: &Store, digest: &Sha256Digest) -> Result<InStore> {
    if !store.has_sha256(digest) {
        return Ok(InStore::Partly(vec![*digest]));
    }
    let doc: Document = serde_json::from_slice(&store.read_blob(digest)?)
        .map_err(|e| Error::Store { path: store.sha256_path(digest), message: format!("not an OCI manifest: {e}") })?;
    let absent: Vec<Sha256Digest> = doc.blobs().map(|d| d.digest).filter(|d| !store.has_sha256(d)).collect();
    Ok(if doc.is_index() {
        InStore::Index
    } else if absent.is_empty() {
        InStore::Whole
    } else {
        InStore::Partly(absent)
    })
}

/// What of `recipe`'s image `digest` the store lacks (nothing: it is whole); an index is the
/// recipe's error.
fn absent(store: &Store, recipe: &Recipe, digest: &Sha256Digest) -> Result<Vec<Sha256Digest>> {
    match in_store(store, digest)? {
        InStore::Whole => Ok(Vec::new()),
        InStore::Partly(absent) => Ok(absent),
        InStore::Index => Err(Error::Definition {
            file: recipe.file.clone(),
            message: format!(
                "{digest} is an image index: pin each platform's image manifest (one of its `manifests`) in `[[source]]`"
            ),
        }),
    }
}

/// What the places tried said, for the missing-input entry.
#[derive(Default)]
struct Tried {
    reasons: Vec<String>,
    /// The first place that had other bytes under the pinned digest.
    mismatch: Option<Error>,
}

impl Tried {
    fn note(&mut self, miss: Miss) {
        match miss {
            Miss::Reason(why) => self.reasons.push(why),
            Miss::Mismatch(e) => {
                self.reasons.push(format!("different content: {}", first_line(&e)));
                self.mismatch.get_or_insert(e);
            }
        }
    }
}

pub(super) fn ensure(
    fetcher: &Fetcher,
    recipe: &Recipe,
    platform: &str,
    reference: Option<&Reference>,
    mirrors: &[Reference],
    source: &Source,
) -> Result<()> {
    let store = fetcher.store;
    let digest = source.hash.as_sha256().ok_or_else(|| Error::Internal("an oci-image source is not sha256".into()))?;
    if absent(store, recipe, &digest)?.is_empty() {
        return Ok(());
    }
    // Not the blob's own fetch lock, which fetching the manifest blob takes.
    let _lock = store.lock(&format!("image-sha256-{}", digest.hex()))?;
    let lacking = absent(store, recipe, &digest)?;
    if lacking.is_empty() {
        return Ok(()); // another build fetched it while we waited
    }
    let mut tried = Tried::default();
    if lacking != [digest] {
        let list: Vec<String> = lacking.iter().map(|d| d.to_string()).collect();
        tried.reasons.push(format!("the store holds its manifest but not {}", list.join(", ")));
    }
    for dir in &fetcher.settings.mirror_dirs {
        match from_file(store, recipe, &dir.join(&source.file_name), source)? {
            None => return Ok(()),
            Some(miss) => tried.note(miss),
        }
    }
    if from_registries(fetcher, recipe, platform, locations(fetcher, reference, mirrors), &digest, &mut tried)? {
        return Ok(());
    }
    if let Some(e) = tried.mismatch {
        return Err(e);
    }
    let missing = missing_image(&recipe.name, platform, reference, Some(&digest), &source.file_name, tried.reasons);
    Err(Error::MissingInputs(vec![missing]))
}

/// Asks each place in turn (none offline); true once the image is in the store.
fn from_registries(
    fetcher: &Fetcher,
    recipe: &Recipe,
    platform: &str,
    places: Vec<Reference>,
    digest: &Sha256Digest,
    tried: &mut Tried,
) -> Result<bool> {
    if fetcher.settings.offline {
        tried.note(Miss::Reason("offline: no registry was asked".into()));
        return Ok(false);
    }
    if places.is_empty() {
        tried.note(Miss::Reason("the recipe names no `image` (repository) to fetch it from".into()));
        return Ok(false);
    }
    let task = fetcher.reporter.task(&format!("fetch {} ({platform})", recipe.name), None);
    for place in &places {
        let policy = fetcher.settings.url_policy.as_ref();
        if let Some(why) = policy.and_then(|p| p.refuses_registry(place)) {
            tried.note(Miss::Reason(format!("docker://{}: not fetched: {why}", place.name())));
            continue;
        }
        match from_registry(fetcher, recipe, place, digest, &task)? {
            None => return Ok(true),
            Some(miss) => tried.note(miss),
        }
    }
    Ok(false)
}

fn first_line(e: &Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// The repositories to ask, in order: the `--registry-mirror`s of the image's registry, the
/// image's repository, then the recipe's mirrors.
fn locations(fetcher: &Fetcher, reference: Option<&Reference>, mirrors: &[Reference]) -> Vec<Reference> {
    let registry_mirrors = &fetcher.settings.registries.mirrors;
    let mut places: Vec<Reference> = Vec::new();
    for r in reference.iter().copied() {
        places.extend(registry_mirrors.iter().filter_map(|m| m.apply(r)));
        places.push(r.clone());
    }
    places.extend(mirrors.iter().cloned());
    places
}

/// An oci-archive or OCI layout at `path`, named as the recipe's source expects: it must hold
/// the pinned image (else nothing is imported, and the mismatch is said), which is imported blob
/// by blob (each checked against its digest) and must then be whole. `None`: the image is in the store.
fn from_file(store: &Store, recipe: &Recipe, path: &Path, source: &Source) -> Result<Option<Miss>> {
    if !path.exists() {
        return Ok(Some(Miss::Reason(format!("{}: not there", path.display()))));
    }
    let digest = source.hash.as_sha256().ok_or_else(|| Error::Internal("an oci-image source is not sha256".into()))?;
    // A file named as the recipe expects that is not a sound archive of the pinned image is bad
    // input (exit 1, when no other place has the image), as a tarball with other bytes is.
    match named_archive(path, recipe, &[source]) {
        Ok(NamedArchive::Holds) => {}
        Ok(NamedArchive::Mismatch(e)) => return Ok(Some(Miss::Mismatch(e))),
        Err(e @ Error::BadArchive { .. }) => return Ok(Some(Miss::Mismatch(e))),
        Err(e @ Error::Io { .. }) if !is_local_failure(&e, store) => return Ok(Some(Miss::Reason(first_line(&e)))),
        Err(e) => return Err(e),
    }
    match crate::import::import(store, path) {
        Ok(_) => {}
        Err(e @ (Error::HashMismatch { .. } | Error::BadArchive { .. })) => return Ok(Some(Miss::Mismatch(e))),
        Err(e @ Error::Io { .. }) if !is_local_failure(&e, store) => return Ok(Some(Miss::Reason(first_line(&e)))),
        Err(e) => return Err(e),
    }
    if absent(store, recipe, &digest)?.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Miss::Reason(format!("{}: does not hold image manifest {digest} and all its blobs", path.display()))))
    }
}

/// A failure to write the store: no other place can help.
fn is_local_failure(e: &Error, store: &Store) -> bool {
    matches!(e, Error::Io { path, .. } if path.starts_with(store.root()))
}

/// Fetches the image from one repository. `None`: the image is in the store.
fn from_registry(
    fetcher: &Fetcher,
    recipe: &Recipe,
    place: &Reference,
    digest: &Sha256Digest,
    task: &Arc<dyn Task>,
) -> Result<Option<Miss>> {
    let access = &fetcher.settings.registries;
    let settings = RegistrySettings {
        credentials: None,
        ca_files: access.ca_files.clone(),
        insecure: access.insecure.contains(&place.registry),
        timeout: fetcher.settings.timeout,
        chunk_size: u64::MAX,
        attempts: REGISTRY_ATTEMPTS,
        access: Access::Pull,
        reach: fetcher.settings.url_policy.as_ref().map(super::policy::UrlPolicy::reach).unwrap_or_default(),
    };
    let fetched =
        Client::connect(place, &settings).and_then(|client| pull::fetch_image(fetcher.store, &client, digest, task));
    let at = format!("docker://{}@{digest}", place.name());
    match fetched {
        Ok(()) if absent(fetcher.store, recipe, digest)?.is_empty() => Ok(None),
        Ok(()) => Err(Error::Internal(format!("{at}: fetched, but not whole in the store"))),
        Err(e @ Error::HashMismatch { .. }) => Ok(Some(Miss::Mismatch(e))),
        Err(e @ (Error::Registry { .. } | Error::Tool { .. } | Error::Definition { .. })) => {
            let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
            Ok(Some(Miss::Reason(format!("{at}: {}{hint}", first_line(&e)))))
        }
        Err(e) => Err(e),
    }
}

/// What an archive named as a recipe's source expects holds.
pub(crate) enum NamedArchive {
    /// One of the images the recipe pins.
    Holds,
    /// None of them: its name promises what its content is not. A hash mismatch (both
    /// digests, for one platform), or bad input when it holds no image for a platform the
    /// recipe pins.
    Mismatch(Error),
}

/// Whether the oci-archive or layout at `path`, named as `recipe`'s `sources` expect, holds one
/// of the images they pin (by manifest, or by the index holding it). Read without importing
/// anything; an error: it could not be read.
pub(crate) fn named_archive(path: &Path, recipe: &Recipe, sources: &[&Source]) -> Result<NamedArchive> {
    let tops = crate::pin::oci::read(path)?;
    let holds = |hash: &crate::digest::Hash| {
        tops.iter().any(|t| t.digest.to_hash() == *hash || t.images.iter().any(|i| i.digest.to_hash() == *hash))
    };
    if sources.iter().any(|s| holds(&s.hash)) {
        return Ok(NamedArchive::Holds);
    }
    let images: Vec<&crate::pin::oci::Image> = tops.iter().flat_map(|t| &t.images).collect();
    let same_platform = sources.iter().find_map(|s| {
        let image = images.iter().find(|i| s.platform.as_ref().is_none_or(|p| *p == i.platform))?;
        Some((s, image))
    });
    if let Some((source, image)) = same_platform {
        return Ok(NamedArchive::Mismatch(Error::HashMismatch {
            what: format!(
                "{} (named as recipe {}'s image for {}, {}); nothing was imported",
                path.display(),
                recipe.name,
                image.platform,
                recipe.file.display()
            ),
            expected: source.hash.clone(),
            found: image.digest.to_hash(),
        }));
    }
    let held: Vec<String> = images.iter().map(|i| format!("{} {}", i.platform, i.digest)).collect();
    let pinned: Vec<String> = sources
        .iter()
        .map(|s| format!("{} {}", s.platform.as_ref().map_or("any".into(), |p| p.to_string()), s.hash))
        .collect();
    Ok(NamedArchive::Mismatch(Error::BadArchive {
        archive: path.display().to_string(),
        message: format!(
            "named as recipe {}'s image ({}), but it holds no image for a platform the recipe pins ({}); it holds {}; nothing was imported",
            recipe.name,
            recipe.file.display(),
            pinned.join(", "),
            held.join(", ")
        ),
    }))
}
