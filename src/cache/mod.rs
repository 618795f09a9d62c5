//! A team's shared layer cache in an OCI registry (`--cache REPO`), as Nix binary caches and
//! BuildKit's registry cache share build results. After building a recipe layer, a build pushes
//! its blob and a record tagged `deriv-<hex>` (the layer's derivation hash, [`record`]); a
//! build that lacks a layer looks for its record, pulls the blob and checks its size, digest
//! and diff_id as it streams in ([`receive`]), and does no layer work.
//!
//! Trust: whoever can write to the repository can change the layers of every image built from
//! it (a record whose blob and diff_id agree is taken, whatever files it holds). So a layer the
//! cache gave is used only by builds that name that cache: the store keeps it apart from the
//! layers built here (`caches/` beside `layers/`), and a build without `--cache` (as `imgbuild
//! verify` is) rebuilds it from the pinned source.
//!
//! A cache never fails a build: one that is down or refuses is reported and not asked again in
//! that run, an entry that is missing or refused is reported, and the layer is built here.

mod receive;
mod record;
pub(crate) use receive::Limits;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::digest::{Hash, Sha256Digest};
use crate::error::{Error, IoContext, Result};
use crate::image_def::ImageDef;
use crate::layer::{derivation, LayerSettings};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::recipe::{Recipe, RecipeKind, Source};
use crate::registry::{push, Access, Client, Reference, RegistrySettings};
use crate::store::{LayerRecord, Store};

/// Attempts per request: a cache that does not answer is not worth the wait of a push's five.
const ATTEMPTS: u32 = 2;
/// Layers pulled at once before the sources are fetched (as many as downloads).
const PARALLEL_PULLS: usize = 4;

/// Where the cache is and how to reach it (certificates and credentials are found as for push).
pub struct CacheSettings {
    /// The repository: `REGISTRY/PATH`, without tag or digest.
    pub repository: Reference,
    pub ca_files: Vec<PathBuf>,
    /// Plain HTTP (`--insecure-registry`, loopback only).
    pub insecure: bool,
    pub timeout: Duration,
    /// `--offline`: layers the cache gave earlier are used; the registry is never asked.
    pub offline: bool,
}

/// What a run did with the cache, for the build's report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CacheReport {
    pub repository: String,
    /// Layers pulled from the cache (each checked).
    pub pulled: usize,
    /// Layers the cache did not have.
    pub missing: usize,
    /// Entries refused (a record or blob that did not check out); those layers were built here.
    pub refused: usize,
    /// Layers pushed to the cache.
    pub pushed: usize,
    /// Why the cache was not asked (any more) in this run.
    pub unavailable: Option<String>,
    /// Why pushes stopped in this run.
    pub push_failed: Option<String>,
}

/// A cache in use by one run: its connections, and what happened so far.
pub struct Cache {
    settings: CacheSettings,
    /// Idle connections, by the access each asked for.
    idle: Mutex<Vec<(Access, Client)>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    report: CacheReport,
    /// Derivations already looked up in this run: none is asked for twice.
    asked: HashSet<Sha256Digest>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cache({})", self.settings.repository)
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    pub fn new(settings: CacheSettings) -> Cache {
        let report = CacheReport { repository: settings.repository.name(), ..CacheReport::default() };
        Cache { settings, idle: Mutex::new(Vec::new()), state: Mutex::new(State { report, ..State::default() }) }
    }

    pub fn report(&self) -> CacheReport {
        locked(&self.state).report.clone()
    }

    fn name(&self) -> String {
        self.settings.repository.name()
    }

    /// Runs `work` on an idle connection with `access`, or on a new one.
    fn with_client<T>(&self, access: Access, work: impl FnOnce(&Client) -> Result<T>) -> Result<T> {
        let idle = {
            let mut idle = locked(&self.idle);
            idle.iter().position(|(a, _)| *a == access).map(|i| idle.swap_remove(i).1)
        };
        let client = match idle {
            Some(client) => client,
            None => Client::connect(&self.settings.repository, &self.registry_settings(access))?,
        };
        let result = work(&client);
        locked(&self.idle).push((access, client));
        result
    }

    fn registry_settings(&self, access: Access) -> RegistrySettings {
        RegistrySettings {
            credentials: None,
            ca_files: self.settings.ca_files.clone(),
            insecure: self.settings.insecure,
            timeout: self.settings.timeout,
            chunk_size: 64 << 20,
            attempts: ATTEMPTS,
            access,
        }
    }

    /// Whether to look `derivation` up: not offline, the cache still answering, and not asked
    /// for it before in this run.
    fn should_ask(&self, derivation: &Sha256Digest) -> bool {
        let mut state = locked(&self.state);
        !self.settings.offline && state.report.unavailable.is_none() && state.asked.insert(*derivation)
    }

    fn unavailable(&self, why: &Error, reporter: &dyn Reporter) {
        let mut state = locked(&self.state);
        if state.report.unavailable.is_none() {
            state.report.unavailable = Some(why.to_string());
            reporter.status(&format!("cache {} is unavailable ({why}): layers are built here", self.name()));
        }
    }

    fn refused(&self, recipe: &str, derivation: &Sha256Digest, why: &str, reporter: &dyn Reporter) {
        locked(&self.state).report.refused += 1;
        reporter.status(&format!(
            "layer {recipe}: refused the cache's entry {}:{}: {why}; building it here",
            self.name(),
            record::tag(derivation)
        ));
    }

    /// The layer of `derivation` from the cache, checked, into the store; `None` (reported)
    /// when the cache lacks it, refuses, or its entry does not check out. Errors are the store's.
    pub(crate) fn pull(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        recipe: &str,
        limits: Limits,
        reporter: &dyn Reporter,
    ) -> Result<Option<LayerRecord>> {
        if !self.should_ask(derivation) {
            return Ok(None);
        }
        let bytes = match self.with_client(Access::Pull, |c| c.find_manifest(&record::tag(derivation))) {
            Ok(Some((bytes, _))) => bytes,
            Ok(None) => {
                locked(&self.state).report.missing += 1;
                reporter.status(&format!("layer {recipe}: not in the cache {}", self.name()));
                return Ok(None);
            }
            Err(e) => {
                self.unavailable(&e, reporter);
                return Ok(None);
            }
        };
        let layer = match record::parse(&bytes, derivation, limits.max_unpacked) {
            Ok(layer) => layer,
            Err(why) => {
                self.refused(recipe, derivation, &format!("its record: {why}"), reporter);
                return Ok(None);
            }
        };
        let verdict = if store.has_sha256(&layer.digest.0) {
            receive::check_stored(store, &layer, limits)?
        } else {
            let task = reporter.task(&format!("cache {recipe}"), Some(layer.size));
            match self.with_client(Access::Pull, |c| c.get_blob(&layer.digest.0, 0)) {
                Ok((body, _)) => receive::receive(store, body, &layer, limits, &task)?,
                Err(e) => Err(format!("getting its blob: {e}")),
            }
        };
        if let Err(why) = verdict {
            self.refused(recipe, derivation, &why, reporter);
            return Ok(None);
        }
        self.mark(store, derivation, &layer)?;
        locked(&self.state).report.pulled += 1;
        reporter.status(&format!("layer {recipe}: from the cache {}", self.name()));
        Ok(Some(layer))
    }

    /// Puts a layer built here into the cache, unless the store knows the cache holds it. A
    /// failure is reported, and stops pushes for the rest of the run; errors are the store's.
    pub fn push(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        layer: &LayerRecord,
        recipe: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let held = self.marked(store, derivation);
        if held.is_some_and(|h| h.digest == layer.digest) || self.settings.offline {
            return Ok(());
        }
        {
            let state = locked(&self.state);
            if state.report.unavailable.is_some() || state.report.push_failed.is_some() {
                return Ok(());
            }
        }
        let empty = store.add_bytes(record::EMPTY_CONFIG)?;
        let manifest = record::manifest(derivation, layer)?;
        let pushed = self.with_client(Access::Push, |client| {
            // The two-byte config goes up unannounced; the layer with its progress.
            let config = (empty, record::EMPTY_CONFIG.len() as u64, &crate::progress::SilentReporter as &dyn Reporter);
            let blobs = |_attempt| {
                for (digest, size, shown) in [config, (layer.digest.0, layer.size, reporter)] {
                    if !client.blob_exists(&digest)? {
                        let task = shown.task(&format!("cache push {recipe}"), Some(size));
                        client.upload(&digest, &store.intact_path(&digest)?, size, &task)?;
                    }
                }
                Ok(())
            };
            // Other builds push to the cache at the same time: `put_complete` retries the
            // manifest when the registry does not know its blobs yet.
            let tag = record::tag(derivation);
            push::put_complete(client, blobs, || client.try_put_manifest(&tag, record::MANIFEST_TYPE, &manifest))
                .map(drop)
        });
        if let Err(e) = pushed {
            let mut state = locked(&self.state);
            state.report.push_failed = Some(e.to_string());
            reporter.status(&format!("layer {recipe}: not pushed to the cache {} ({e}); no more pushes", self.name()));
            return Ok(());
        }
        self.mark(store, derivation, layer)?;
        locked(&self.state).report.pushed += 1;
        match held {
            Some(other) => reporter.status(&format!(
                "layer {recipe}: pushed to the cache {}, replacing its entry (layer {}) with the one built here",
                self.name(),
                other.digest
            )),
            None => reporter.status(&format!("layer {recipe}: pushed to the cache {}", self.name())),
        }
        Ok(())
    }

    /// Where the store notes what this cache holds: `caches/<repository>/<derivation>.json`.
    fn marks_dir(&self, store: &Store) -> PathBuf {
        store.cache_notes_dir(&self.name())
    }

    /// The layer the cache holds for `derivation`, as this store last checked (pulled) or put
    /// (pushed) it; `None` if unknown, or if its blob has left the store.
    fn marked(&self, store: &Store, derivation: &Sha256Digest) -> Option<LayerRecord> {
        let path = self.marks_dir(store).join(format!("{}.json", derivation.hex()));
        let record: LayerRecord = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        store.has_sha256(&record.digest.0).then_some(record)
    }

    fn mark(&self, store: &Store, derivation: &Sha256Digest, layer: &LayerRecord) -> Result<()> {
        let dir = self.marks_dir(store);
        std::fs::create_dir_all(&dir).at(&dir)?;
        let data = serde_json::to_vec(layer).expect("a layer record serializes");
        store.write_atomic(&dir.join(format!("{}.json", derivation.hex())), &data)
    }
}

/// The layer of `derivation` if the store has it: built here, or given earlier by `cache` (the
/// cache in use; without one, only layers built here count). A layer built here that the cache
/// is not known to hold is pushed to it.
pub fn known_layer(
    store: &Store,
    derivation: &Sha256Digest,
    cache: Option<&Cache>,
    recipe: &str,
    reporter: &dyn Reporter,
) -> Result<Option<LayerRecord>> {
    if let Some(layer) = store.layer(derivation) {
        if let Some(cache) = cache {
            cache.push(store, derivation, &layer, recipe, reporter)?;
        }
        return Ok(Some(layer));
    }
    Ok(cache.and_then(|c| c.marked(store, derivation)))
}

/// Before the sources are fetched: every recipe layer of `def` the store lacks is looked up in
/// the cache of `settings` (a few at once) and pulled. Returns the sources no layer needs any
/// more: every layer made from them is in the store. Without a cache, none.
pub fn substitute(
    store: &Store,
    def: &ImageDef,
    platforms: &[Platform],
    settings: &LayerSettings,
    reporter: &dyn Reporter,
) -> BTreeSet<Hash> {
    let Some(cache) = settings.cache.as_deref() else { return BTreeSet::new() };
    // Each layer once: a source that serves several platforms makes one layer.
    let mut layers: Vec<(&Recipe, &Source, Sha256Digest)> = Vec::new();
    for platform in platforms {
        for recipe in def.recipes().filter(|r| r.kind == RecipeKind::Tarball) {
            if let Some(source) = recipe.source_for(platform) {
                let key = derivation(&source.hash, &recipe.unpack, settings);
                if !layers.iter().any(|(_, _, k)| *k == key) {
                    layers.push((recipe, source, key));
                }
            }
        }
    }
    // The cores are shared between the pulls at once: each inflates on its share (on two
    // cores, three pulls inflate one thread each, as fast as zlib-rs goes).
    let at_once = layers.len().clamp(1, PARALLEL_PULLS);
    let limits = Limits { threads: settings.parallelism.threads / at_once, ..Limits::of(settings) };
    let found = crate::fetch::run_bounded(&layers, PARALLEL_PULLS, |(recipe, _, key)| {
        have_layer(store, cache, key, &recipe.name, limits, reporter)
    });
    let mut needed = BTreeSet::new();
    for ((_, source, _), found) in layers.iter().zip(found) {
        // A store error here is met again, and reported, when the layer is made.
        if !matches!(found, Ok(true)) {
            needed.insert(source.hash.clone());
        }
    }
    layers.iter().map(|(_, s, _)| s.hash.clone()).filter(|h| !needed.contains(h)).collect()
}

/// Whether the layer is in the store now, pulling it from the cache if need be (under the
/// layer's lock, as `layer::recipe_layer` builds it).
fn have_layer(
    store: &Store,
    cache: &Cache,
    key: &Sha256Digest,
    recipe: &str,
    limits: Limits,
    reporter: &dyn Reporter,
) -> Result<bool> {
    if known_layer(store, key, Some(cache), recipe, reporter)?.is_some() {
        return Ok(true);
    }
    let _lock = store.lock(&format!("layer-{}", key.hex()))?;
    if known_layer(store, key, Some(cache), recipe, reporter)?.is_some() {
        return Ok(true);
    }
    Ok(cache.pull(store, key, recipe, limits, reporter)?.is_some())
}
