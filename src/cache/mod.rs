//! A team's shared layer cache in an OCI registry (`--cache REPO`), as Nix binary caches and
//! BuildKit's registry cache share build results. After building a recipe layer, a build pushes
//! its blob and a record tagged `deriv-<hex>` (the layer's derivation hash, [`record`]), signed
//! with the user's secret key ([`sign`]); a build that lacks a layer looks for its record, and
//! uses it only if a key the user trusts signed it ([`config`]): then it pulls the blob,
//! checks its size and digest as it streams in ([`receive`]) and takes the signed diff_id, with
//! no layer work and nothing inflated.
//!
//! Trust: whoever can write to the repository can put any record and blob there, but not sign
//! them. An entry without a valid signature by a trusted key is never used (said once per run
//! and signer). What the store remembers of a cache (a mark: the record it pulled or pushed) is
//! checked against the registry's current record once per run, so a replaced or revoked entry
//! is noticed: a pulled layer is then no longer used, a pushed one is put back. A layer the
//! cache gave is still used only by builds that name that cache (the store keeps it apart from
//! the layers built here, `caches/` beside `layers/`), and `imgbuild verify` rebuilds it.
//!
//! A cache never fails a build: one that is down or refuses is reported and not asked again in
//! that run, an entry that is missing or refused is reported, and the layer is built here.

mod config;
mod receive;
mod record;
mod sign;
pub(crate) use config::{load as load_keys, user_file, Keys, PROJECT_FILE};
pub(crate) use sign::{generate as generate_key, PublicKey, TrustedKeys};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::digest::{Hash, Sha256Digest};
use crate::error::{Error, IoContext, Result};
use crate::image_def::ImageDef;
use crate::layer::{derivation, KnownLayers, LayerSettings};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::recipe::{Recipe, RecipeKind, Source};
use crate::registry::{push, Access, Client, Reference, RegistrySettings};
use crate::store::{LayerRecord, Store};
use record::Entry;
use sign::Signed;

/// Attempts per request: a cache that does not answer is not worth the wait of a push's five.
const ATTEMPTS: u32 = 2;
/// Layers pulled at once before the sources are fetched (as many as downloads).
const PARALLEL_PULLS: usize = 4;

/// Where the cache is, how to reach it (certificates and credentials are found as for push),
/// and whom it trusts.
pub struct CacheSettings {
    /// The repository: `REGISTRY/PATH`, without tag or digest.
    pub repository: Reference,
    pub ca_files: Vec<PathBuf>,
    /// Plain HTTP (`--insecure-registry`, loopback only).
    pub insecure: bool,
    pub timeout: Duration,
    /// `--offline`: layers the cache gave earlier are used; the registry is never asked.
    pub offline: bool,
    /// The media type of this run's layers (`--compression`): records name it, and it is signed.
    pub media_type: &'static str,
    /// The keys whose signatures are trusted, and the one that signs what is pushed (whose own
    /// signatures are trusted too).
    pub keys: Keys,
}

/// What a run did with the cache, for the build's report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CacheReport {
    pub repository: String,
    /// Layers pulled from the cache (each signed by a trusted key, its blob checked).
    pub pulled: usize,
    /// Layers the cache did not have.
    pub missing: usize,
    /// Entries refused (a record or blob that did not check out); those layers were built here.
    pub refused: usize,
    /// Entries not used because no trusted key signed them; those layers were built here.
    pub untrusted: usize,
    /// Entries this store had pulled or pushed that the cache no longer holds as they were.
    pub replaced: usize,
    /// Layers pushed to the cache.
    pub pushed: usize,
    /// Why the cache was not asked (any more) in this run.
    pub unavailable: Option<String>,
    /// Why pushes stopped in this run (or never started: no signing key).
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
    /// The registry's record of each derivation asked for in this run (asked once).
    current: HashMap<Sha256Digest, Current>,
    /// Derivations already pulled (or tried) in this run: none is tried twice.
    tried: HashSet<Sha256Digest>,
    /// Signers (or `unsigned`) whose entries were said not to be used.
    said: HashSet<Signed>,
}

/// What the registry holds for a derivation, as asked once per run.
#[derive(Debug, Clone)]
enum Current {
    /// Not asked: offline, or the cache is unavailable.
    Unknown,
    Missing,
    /// A record that is not a record of this layer (why).
    Bad(String),
    /// A record and what its signature is worth; `record` is the digest of its bytes.
    Found {
        entry: Entry,
        signed: Signed,
        record: Sha256Digest,
    },
}

impl Current {
    /// The layer, if a trusted key signed it.
    fn trusted(&self) -> Option<&LayerRecord> {
        match self {
            Current::Found { entry, signed: Signed::Trusted(_), .. } => Some(&entry.layer),
            _ => None,
        }
    }
}

impl fmt::Display for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Current::Unknown => write!(f, "not known"),
            Current::Missing => write!(f, "no entry"),
            Current::Bad(why) => write!(f, "a record that is refused: {why}"),
            Current::Found { entry, signed, .. } => write!(f, "layer {}, {signed}", entry.layer.digest),
        }
    }
}

/// What a store remembers of a cache's entry: the record it pulled (or pushed) and its
/// signature, so that it can be checked again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Mark {
    layer: LayerRecord,
    media_type: String,
    /// The sha256 of the record's bytes.
    record: Sha256Digest,
    signature: String,
    /// Pulled from the cache (else pushed from this store).
    pulled: bool,
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
    pub fn new(mut settings: CacheSettings) -> Cache {
        // A store trusts what it signs itself (else it would push its own entries every run).
        if let Some(key) = &settings.keys.signing {
            settings.keys.trusted = settings.keys.trusted.with(key.public());
        }
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
            reach: Default::default(),
        }
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

    /// An entry no trusted key signed: counted, and said once per signer in a run.
    fn untrusted(&self, signed: &Signed, reporter: &dyn Reporter) {
        locked(&self.state).report.untrusted += 1;
        self.say_untrusted(signed, reporter);
    }

    /// Says, once per signer in a run, that entries signed so are not used.
    fn say_untrusted(&self, signed: &Signed, reporter: &dyn Reporter) {
        let mut state = locked(&self.state);
        if state.said.insert(signed.clone()) {
            reporter.status(&format!(
                "cache {}: not using its entries {} (keys are trusted with --cache-trusted-key or in {PROJECT_FILE}); their layers are built here",
                self.name(),
                signed.entries()
            ));
        }
    }

    /// The registry's record of `derivation`, asked once per run (`Unknown` offline, or once
    /// the cache is unavailable).
    fn current(&self, derivation: &Sha256Digest, reporter: &dyn Reporter) -> Current {
        {
            let state = locked(&self.state);
            if self.settings.offline || state.report.unavailable.is_some() {
                return Current::Unknown;
            }
            if let Some(known) = state.current.get(derivation) {
                return known.clone();
            }
        }
        let current = match self.with_client(Access::Pull, |c| c.find_manifest(&record::tag(derivation))) {
            Ok(Some((bytes, _))) => self.judge(derivation, &bytes),
            Ok(None) => Current::Missing,
            Err(e) => {
                self.unavailable(&e, reporter);
                return Current::Unknown;
            }
        };
        locked(&self.state).current.insert(*derivation, current.clone());
        current
    }

    fn judge(&self, derivation: &Sha256Digest, bytes: &[u8]) -> Current {
        judge(&self.settings.keys.trusted, self.settings.media_type, derivation, bytes)
    }

    /// Counts a push and says what it replaced: an entry this store had put there before
    /// (`replaced`), or another.
    fn say_pushed(&self, recipe: &str, current: &Current, replaced: bool, reporter: &dyn Reporter) {
        let mut state = locked(&self.state);
        state.report.pushed += 1;
        let name = self.name();
        match (current, replaced) {
            (_, true) => {
                state.report.replaced += 1;
                reporter.status(&format!(
                    "layer {recipe}: the cache {name}'s entry was replaced since this store put it there (it held {current}); pushed the one built here again"
                ));
            }
            (Current::Missing, _) => reporter.status(&format!("layer {recipe}: pushed to the cache {name}")),
            _ => reporter.status(&format!(
                "layer {recipe}: pushed to the cache {name}, replacing its entry ({current}) with the one built here"
            )),
        }
    }

    /// Whether pushes go on in this run: the cache answers, none failed, and there is a key to
    /// sign with (its lack is said once).
    fn may_push(&self, reporter: &dyn Reporter) -> bool {
        let mut state = locked(&self.state);
        if state.report.unavailable.is_some() || state.report.push_failed.is_some() {
            return false;
        }
        if self.settings.keys.signing.is_none() {
            let why = "no signing key (--cache-signing-key, or signing-key in your config file): nothing is pushed";
            state.report.push_failed = Some(why.into());
            reporter.status(&format!("cache {}: {why}", self.name()));
            return false;
        }
        true
    }

    /// Sends the blob (and the empty config) if the registry lacks them, then the record.
    fn upload(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        layer: &LayerRecord,
        manifest: &[u8],
        recipe: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let empty = store.add_bytes(record::EMPTY_CONFIG)?;
        self.with_client(Access::Push, |client| {
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
            push::put_complete(client, blobs, || client.try_put_manifest(&tag, record::MANIFEST_TYPE, manifest))
                .map(drop)
        })
    }

    /// The layer the cache gave this store for `derivation` earlier, if it still stands: its
    /// blob is in the store, its signature is by a key trusted now, and the registry's current
    /// record is the one pulled (or, offline or when the cache is down, cannot be asked). A
    /// mark the registry no longer holds is said so, and dropped.
    fn marked(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        recipe: &str,
        reporter: &dyn Reporter,
    ) -> Option<LayerRecord> {
        let mark = self.read_mark(store, derivation)?;
        let fingerprint = sign::fingerprint(derivation, &mark.media_type, &mark.layer);
        match self.settings.keys.trusted.check(&fingerprint, Some(&mark.signature)) {
            Signed::Trusted(_) if mark.media_type == self.settings.media_type => {}
            Signed::Trusted(_) => return None,
            signed => {
                // Counted when the cache is asked for the layer (unless offline).
                self.say_untrusted(&signed, reporter);
                return None;
            }
        }
        let current = self.current(derivation, reporter);
        match &current {
            Current::Unknown => return Some(mark.layer),
            Current::Found { record, .. } if *record == mark.record => return Some(mark.layer),
            _ if current.trusted() == Some(&mark.layer) => return Some(mark.layer),
            _ => {}
        }
        locked(&self.state).report.replaced += 1;
        reporter.status(&format!(
            "layer {recipe}: the cache {}'s entry changed since this store took layer {} from it (it now holds {current}); not using it",
            self.name(),
            mark.layer.digest
        ));
        let _ = std::fs::remove_file(self.mark_path(store, derivation));
        None
    }

    /// Where the store notes what this cache holds: `caches/<repository>/<derivation>.json`.
    fn mark_path(&self, store: &Store, derivation: &Sha256Digest) -> PathBuf {
        store.cache_notes_dir(&self.name()).join(format!("{}.json", derivation.hex()))
    }

    /// The mark of `derivation`, if there is one (of this format) and its blob is in the store.
    fn read_mark(&self, store: &Store, derivation: &Sha256Digest) -> Option<Mark> {
        let mark: Mark = serde_json::from_slice(&std::fs::read(self.mark_path(store, derivation)).ok()?).ok()?;
        store.has_sha256(&mark.layer.digest.0).then_some(mark)
    }

    fn new_mark(&self, layer: LayerRecord, record: Sha256Digest, signature: Option<String>, pulled: bool) -> Mark {
        let media_type = self.settings.media_type.to_string();
        Mark { layer, media_type, record, signature: signature.unwrap_or_default(), pulled }
    }

    fn mark(&self, store: &Store, derivation: &Sha256Digest, mark: &Mark) -> Result<()> {
        let path = self.mark_path(store, derivation);
        let dir = path.parent().expect("a mark has a directory");
        std::fs::create_dir_all(dir).at(dir)?;
        let data = serde_json::to_vec(mark).expect("a mark serializes");
        store.write_atomic(&path, &data)
    }
}

/// How the layer builder meets the cache (it knows the trait, not the cache).
impl KnownLayers for Cache {
    /// The layer of `derivation` if the store has it: built here, or given earlier by this
    /// cache, whose current record still names it. A layer built here that the cache does not
    /// hold is pushed to it.
    fn known(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        recipe: &str,
        reporter: &dyn Reporter,
    ) -> Result<Option<LayerRecord>> {
        if let Some(layer) = store.layer(derivation) {
            self.push(store, derivation, &layer, recipe, reporter)?;
            return Ok(Some(layer));
        }
        Ok(self.marked(store, derivation, recipe, reporter))
    }

    /// The layer of `derivation` from the cache, checked, into the store; `None` (reported)
    /// when the cache lacks it, refuses, no trusted key signed it, or its blob does not check
    /// out. Blobs over `max_size` bytes are refused. Errors are the store's.
    fn pull(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        recipe: &str,
        max_size: u64,
        reporter: &dyn Reporter,
    ) -> Result<Option<LayerRecord>> {
        if !locked(&self.state).tried.insert(*derivation) {
            return Ok(None);
        }
        let (entry, signer, record) = match self.current(derivation, reporter) {
            Current::Unknown => return Ok(None),
            Current::Missing => {
                locked(&self.state).report.missing += 1;
                reporter.status(&format!("layer {recipe}: not in the cache {}", self.name()));
                return Ok(None);
            }
            Current::Bad(why) => {
                self.refused(recipe, derivation, &format!("its record: {why}"), reporter);
                return Ok(None);
            }
            Current::Found { signed: Signed::Trusted(signer), entry, record } => (entry, signer, record),
            Current::Found { signed, .. } => {
                self.untrusted(&signed, reporter);
                return Ok(None);
            }
        };
        let layer = entry.layer;
        let verdict = if layer.size > max_size {
            Err(format!("a layer of {} bytes (at most {max_size}, IMGBUILD_MAX_UNPACKED)", layer.size))
        } else if store.has_sha256(&layer.digest.0) {
            receive::check_stored(store, &layer)?
        } else {
            let task = reporter.task(&format!("cache {recipe}"), Some(layer.size));
            match self.with_client(Access::Pull, |c| c.get_blob(&layer.digest.0, 0)) {
                Ok((body, _)) => receive::receive(store, body, &layer, &task)?,
                Err(e) => Err(format!("getting its blob: {e}")),
            }
        };
        if let Err(why) = verdict {
            self.refused(recipe, derivation, &why, reporter);
            return Ok(None);
        }
        self.mark(store, derivation, &self.new_mark(layer, record, entry.signature, true))?;
        locked(&self.state).report.pulled += 1;
        reporter.status(&format!("layer {recipe}: from the cache {} (signed by `{signer}`)", self.name()));
        Ok(Some(layer))
    }

    /// Puts a layer built here into the cache, signed, unless the cache holds it already (as
    /// the registry's current record, signed by a trusted key, says). A record replaced since
    /// this store pushed it is said so and put back. A failure is reported, and stops pushes
    /// for the rest of the run; errors are the store's.
    fn push(
        &self,
        store: &Store,
        derivation: &Sha256Digest,
        layer: &LayerRecord,
        recipe: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        if self.settings.offline || !self.may_push(reporter) {
            return Ok(());
        }
        let current = self.current(derivation, reporter);
        if matches!(current, Current::Unknown) {
            return Ok(());
        }
        let mark = self.read_mark(store, derivation);
        if current.trusted() == Some(layer) {
            // Held as built here (perhaps signed by another trusted key): noted, not pushed.
            if let Current::Found { entry, record, .. } = &current {
                if mark.as_ref().is_none_or(|m| m.record != *record) {
                    self.mark(store, derivation, &self.new_mark(*layer, *record, entry.signature.clone(), false))?;
                }
            }
            return Ok(());
        }
        let Some(key) = self.settings.keys.signing.as_ref() else { return Ok(()) };
        let media_type = self.settings.media_type;
        let signature = key.sign(&sign::fingerprint(derivation, media_type, layer));
        let manifest = record::manifest(derivation, media_type, layer, &signature)?;
        if let Err(e) = self.upload(store, derivation, layer, &manifest, recipe, reporter) {
            let mut state = locked(&self.state);
            state.report.push_failed = Some(e.to_string());
            reporter.status(&format!("layer {recipe}: not pushed to the cache {} ({e}); no more pushes", self.name()));
            return Ok(());
        }
        self.mark(store, derivation, &self.new_mark(*layer, Sha256Digest::of(&manifest), Some(signature), false))?;
        let replaced = mark.is_some_and(|m| !matches!(current, Current::Found { record, .. } if record == m.record));
        self.say_pushed(recipe, &current, replaced, reporter);
        locked(&self.state).current.insert(*derivation, self.judge(derivation, &manifest));
        Ok(())
    }
}

/// Before the sources are fetched: every recipe layer of `def` the store lacks is looked up in
/// `cache` (a few at once) and pulled. Returns the sources no layer needs any
/// more: every layer made from them is in the store. Without a cache, none.
pub(crate) fn substitute(
    store: &Store,
    def: &ImageDef,
    platforms: &[Platform],
    cache: Option<&Cache>,
    settings: &LayerSettings,
    reporter: &dyn Reporter,
) -> BTreeSet<Hash> {
    let Some(cache) = cache else { return BTreeSet::new() };
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
    let found = crate::fetch::run_bounded(&layers, PARALLEL_PULLS, |(recipe, _, key)| {
        have_layer(store, cache, key, &recipe.name, settings.max_unpacked, reporter)
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
    max_size: u64,
    reporter: &dyn Reporter,
) -> Result<bool> {
    if cache.known(store, key, recipe, reporter)?.is_some() {
        return Ok(true);
    }
    let _lock = store.lock(&format!("layer-{}", key.hex()))?;
    if cache.known(store, key, recipe, reporter)?.is_some() {
        return Ok(true);
    }
    Ok(cache.pull(store, key, recipe, max_size, reporter)?.is_some())
}

/// A record's bytes read as the record of `derivation` (a blob of `media_type`), and its
/// signature checked against `trusted`.
fn judge(trusted: &TrustedKeys, media_type: &str, derivation: &Sha256Digest, bytes: &[u8]) -> Current {
    match record::parse(bytes, derivation, media_type, u64::MAX) {
        Ok(entry) => {
            let fingerprint = sign::fingerprint(derivation, media_type, &entry.layer);
            let signed = trusted.check(&fingerprint, entry.signature.as_deref());
            Current::Found { entry, signed, record: Sha256Digest::of(bytes) }
        }
        Err(why) => Current::Bad(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{MEDIA_TYPE_GZIP, MEDIA_TYPE_ZSTD};
    use crate::digest::{BlobDigest, DiffId};
    use proptest::prelude::*;
    use sign::SecretKey;

    /// A key pair, made once for all cases.
    fn team() -> &'static (SecretKey, PublicKey) {
        static TEAM: std::sync::OnceLock<(SecretKey, PublicKey)> = std::sync::OnceLock::new();
        TEAM.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let (secret, public) = (dir.path().join("t.secret"), dir.path().join("t.public"));
            let public = sign::generate("team", &secret, &public).unwrap();
            (SecretKey::load(&secret).unwrap(), public)
        })
    }

    fn signed_record(derivation: &Sha256Digest, media_type: &str, layer: &LayerRecord) -> Vec<u8> {
        let signature = team().0.sign(&sign::fingerprint(derivation, media_type, layer));
        record::manifest(derivation, media_type, layer, &signature).unwrap()
    }

    proptest! {
        /// Whatever an attacker changes in a signed record (one byte anywhere, any value), it
        /// is refused, or no longer trusted, or still names exactly the layer that was signed.
        #[test]
        fn a_changed_record_is_refused_untrusted_or_the_signed_layer(
            at in 0usize..2000, byte in any::<u8>(), size in 1u64..1 << 40, zstd in any::<bool>()
        ) {
            let media_type = if zstd { MEDIA_TYPE_ZSTD } else { MEDIA_TYPE_GZIP };
            let derivation = Sha256Digest::of(b"derivation");
            let layer = LayerRecord {
                digest: BlobDigest(Sha256Digest::of(b"blob")),
                diff_id: DiffId(Sha256Digest::of(b"tar")),
                size,
            };
            let trusted = TrustedKeys::new(vec![team().1.clone()]);
            let mut bytes = signed_record(&derivation, media_type, &layer);
            let honest = judge(&trusted, media_type, &derivation, &bytes);
            prop_assert_eq!(honest.trusted(), Some(&layer));
            let at = at % bytes.len();
            bytes[at] = byte;
            if let Some(found) = judge(&trusted, media_type, &derivation, &bytes).trusted() {
                prop_assert_eq!(found, &layer);
            }
            // Nor is it trusted as the record of another derivation or compression.
            let other = if zstd { MEDIA_TYPE_GZIP } else { MEDIA_TYPE_ZSTD };
            let honest = signed_record(&derivation, media_type, &layer);
            prop_assert!(judge(&trusted, other, &derivation, &honest).trusted().is_none());
            prop_assert!(judge(&trusted, media_type, &Sha256Digest::of(b"x"), &honest).trusted().is_none());
        }
    }
}
