//! Getting pinned sources into the store: local mirror directories first, then the URL and
//! its mirrors in order. Downloads are hashed as they arrive, resumed where the server allows,
//! and only a file whose hash matches the pin is moved into the store.

mod image;
mod overlap;
pub(crate) mod policy;

pub(crate) use image::{named_archive, NamedArchive};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::resume::{self, write_resumable, Body, Transfer};

use crate::digest::{Algorithm, Hash};
use crate::error::{http_cause as describe, Error, IoContext, MissingInput, Result};
use crate::progress::{Reporter, Task};
use crate::recipe::{Recipe, RecipeKind, Source};
use crate::reference::RegistryMirror;
use crate::retry::Again;
use crate::store::Store;

/// How many times one URL is tried again after a dropped connection (resuming each time).
const ATTEMPTS_PER_URL: u32 = 3;

/// How a build reaches registries for its base images.
#[derive(Default)]
pub struct RegistryAccess {
    /// `--registry-mirror HOST=MIRROR`: tried, in order, before the registry they stand for.
    pub mirrors: Vec<RegistryMirror>,
    /// `--insecure-registry HOST[:PORT]`: registries on loopback spoken to in plain HTTP.
    pub insecure: Vec<String>,
    /// `--ca-file`: certificates to trust besides the system's and certs.d.
    pub ca_files: Vec<PathBuf>,
}

pub struct FetchSettings {
    pub offline: bool,
    /// Directories holding files named as upstream (`--mirror`, `IMGBUILD_MIRROR`).
    pub mirror_dirs: Vec<PathBuf>,
    /// Longest wait for a connection or for the next bytes of a response.
    pub timeout: Duration,
    pub registries: RegistryAccess,
    /// Set by `verify`: which URLs and repositories may be asked (`None`: every one a recipe names).
    pub url_policy: Option<std::sync::Arc<policy::UrlPolicy>>,
}

impl FetchSettings {
    /// Why `url` may not be asked, under the policy.
    fn refuses_url(&self, url: &str) -> Option<String> {
        self.url_policy.as_ref().and_then(|p| p.refuses_url(url))
    }
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            offline: false,
            mirror_dirs: Vec::new(),
            timeout: Duration::from_secs(30),
            registries: RegistryAccess::default(),
            url_policy: None,
        }
    }
}

/// Fetches sources into the store; shared by the threads of a build's parallel fetches.
pub(crate) struct Fetcher<'a> {
    store: &'a Store,
    /// Set by a build: a tarball's layer is built while the tarball arrives (downloaded or
    /// copied from a `--mirror` directory).
    layers: Option<&'a crate::layer::LayerSettings>,
    /// Layers built (and recorded) while their sources arrived.
    layers_built: std::sync::atomic::AtomicUsize,
    settings: &'a FetchSettings,
    reporter: &'a dyn Reporter,
    client: OnceLock<reqwest::blocking::Client>,
}

/// Where one attempt gets a source's bytes from.
enum Origin<'s> {
    /// A file of a `--mirror` directory.
    Mirror(PathBuf),
    /// The recipe's URL or one of its mirrors.
    Url(&'s str),
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Mirror(file) => write!(f, "{}", file.display()),
            Origin::Url(url) => f.write_str(url),
        }
    }
}

/// A mirror's file, read by `write_resumable`: a read failure is kept, to be reported with the
/// file's path (the transfer only says it as a dropped connection).
struct MirrorFile {
    file: File,
    error: Option<std::io::Error>,
}

impl std::io::Read for MirrorFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf).map_err(|e| {
            let told = std::io::Error::new(e.kind(), e.to_string());
            self.error = Some(e);
            told
        })
    }
}

/// Why one attempt did not produce the file.
enum AttemptError {
    /// The server sent bytes, but not the pinned ones.
    Mismatch(Error),
    /// Nothing usable: the next URL may have it.
    Failed(String),
    /// This machine could not write (disk full, read-only store): no other URL can help.
    Local(Error),
}

impl<'a> Fetcher<'a> {
    pub(crate) fn new(store: &'a Store, settings: &'a FetchSettings, reporter: &'a dyn Reporter) -> Self {
        Fetcher { store, layers: None, layers_built: 0.into(), settings, reporter, client: OnceLock::new() }
    }

    /// A fetcher that builds each tarball's layer (made with `settings`) while it arrives.
    pub(crate) fn building_layers(self, settings: &'a crate::layer::LayerSettings) -> Self {
        Fetcher { layers: Some(settings), ..self }
    }

    /// How many layers were built while their sources arrived.
    pub(crate) fn layers_built(&self) -> usize {
        self.layers_built.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn client(&self) -> Result<&reqwest::blocking::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        // Where a download is redirected is checked as where it starts, and its names resolve
        // only to the addresses the policy allows.
        let reach = self.settings.url_policy.as_ref().map(policy::UrlPolicy::reach).unwrap_or_default();
        let rule = reach.clone();
        let redirects = crate::net::Redirects::Follow(Box::new(move |to| rule.check(to)));
        let client = reach
            .apply(crate::net::client_builder(self.settings.timeout, redirects))
            .build()
            .map_err(|e| Error::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Makes sure `recipe`'s `source` (a tarball, or a base image with all its blobs) is in the
    /// store. On failure returns what is missing and why, or a hash mismatch when some server
    /// (or mirror file) had different bytes.
    pub(crate) fn ensure(&self, recipe: &Recipe, platform: &str, source: &Source) -> Result<()> {
        match &recipe.kind {
            RecipeKind::Tarball => self.ensure_file(recipe, platform, source),
            RecipeKind::OciImage { reference, mirrors, .. } => {
                image::ensure(self, recipe, platform, reference.as_ref(), mirrors, source)
            }
        }
    }

    /// Where the `--mirror` directories would hold `source`, in the order they are tried.
    fn mirror_candidates<'s>(&'s self, source: &'s Source) -> impl Iterator<Item = PathBuf> + 's {
        self.settings.mirror_dirs.iter().map(|dir| dir.join(&source.file_name))
    }

    /// The first `--mirror` directory's file for `source`, if one holds it.
    pub(crate) fn mirror_file(&self, source: &Source) -> Option<PathBuf> {
        self.mirror_candidates(source).find(|candidate| candidate.is_file())
    }

    fn ensure_file(&self, recipe: &Recipe, platform: &str, source: &Source) -> Result<()> {
        let hash = &source.hash;
        if self.store.has(hash) {
            return Ok(());
        }
        let _lock = self.store.lock(&format!("fetch-{}-{}", hash.algorithm().name(), hash.hex()))?;
        if self.store.has(hash) {
            return Ok(()); // another build fetched it while we waited
        }
        let mut reasons = Vec::new();
        let mut mismatch = None;
        let mut origins = Vec::new();
        for candidate in self.mirror_candidates(source) {
            if candidate.is_file() {
                origins.push(Origin::Mirror(candidate));
            } else {
                reasons.push(format!("{}: not there", candidate.display()));
            }
        }
        if self.settings.offline {
            reasons.push("offline: not downloaded".into());
        } else {
            for url in &source.urls {
                match self.settings.refuses_url(url) {
                    Some(why) => reasons.push(format!("{url}: not fetched: {why}")),
                    None => origins.push(Origin::Url(url)),
                }
            }
        }
        let mut task = None;
        for origin in &origins {
            let outcome = match origin {
                Origin::Mirror(file) => {
                    let into = self.store.temp_path("mirror");
                    let arrival = overlap::Arrival::MirrorCopy { into: &into };
                    overlap::fetch_and_build(self, recipe, source, arrival, |tap| {
                        self.copy_from_mirror(file, &into, source, tap)
                    })?
                }
                Origin::Url(url) => {
                    let task =
                        task.get_or_insert_with(|| self.reporter.task(&format!("fetch {}", source.file_name), None));
                    overlap::fetch_and_build(self, recipe, source, overlap::Arrival::Download, |tap| {
                        self.download(url, source, task, tap)
                    })?
                }
            };
            match outcome {
                (Ok(()), built) => {
                    self.layers_built.fetch_add(usize::from(built), std::sync::atomic::Ordering::SeqCst);
                    return Ok(());
                }
                // The last mirror file with other bytes, else the first URL's, is the one reported.
                (Err(AttemptError::Mismatch(e)), _) if matches!(origin, Origin::Mirror(_)) => mismatch = Some(e),
                (Err(AttemptError::Mismatch(e)), _) => {
                    reasons.push(format!("{origin}: different content"));
                    mismatch.get_or_insert(e);
                }
                (Err(AttemptError::Failed(why)), _) => reasons.push(format!("{origin}: {why}")),
                (Err(AttemptError::Local(e)), _) => return Err(e),
            }
        }
        if let Some(e) = mismatch {
            return Err(e);
        }
        Err(Error::MissingInputs(vec![MissingInput {
            recipe: recipe.name.clone(),
            platform: platform.to_string(),
            file: source.file_name.clone(),
            urls: source.urls.clone(),
            hash: hash.to_string(),
            reasons,
            add: format!("imgbuild store add {}", source.file_name),
        }]))
    }

    /// Copies a `--mirror` directory's `file` into `into` (telling `tap` how it grows), and
    /// into the store if it hashes to the pin. A file that cannot be read fails the build, as
    /// `store add` of it would.
    fn copy_from_mirror(
        &self,
        file: &Path,
        into: &Path,
        source: &Source,
        tap: Option<&overlap::Tap>,
    ) -> Result<(), AttemptError> {
        let mut reader = MirrorFile { file: File::open(file).at(file).map_err(AttemptError::Local)?, error: None };
        // No length: what the file holds when read is hashed, and the pin decides.
        let body = Body { reader: &mut reader, start: 0, length: None };
        let written = write_resumable(into, body, source.hash.algorithm(), &|n| {
            if let Some(tap) = tap {
                tap.grew(n);
            }
        });
        let found = match (written, reader.error.take()) {
            (Ok(found), _) => found,
            (Err(failed), read) => {
                let _ = std::fs::remove_file(into);
                return Err(AttemptError::Local(match (failed, read) {
                    (_, Some(read)) => Error::io(file, read),
                    (Transfer::Local(e), None) => e,
                    (Transfer::Retry(why) | Transfer::Fatal(why), None) => {
                        Error::Internal(format!("copying {}: {why}", file.display()))
                    }
                }));
            }
        };
        self.commit_source(into, found, source, &file.display().to_string())
    }

    /// Moves a source's file, written and hashed as `found`, into the store if it is the
    /// pinned one: other bytes are this attempt's mismatch, anything else the store's error.
    fn commit_source(&self, file: &Path, found: Hash, source: &Source, what: &str) -> Result<(), AttemptError> {
        self.store.commit_file(file, found, Some(&source.hash), what).map(|_| ()).map_err(|e| match e {
            e @ Error::HashMismatch { .. } => AttemptError::Mismatch(e),
            other => AttemptError::Local(other),
        })
    }

    /// Downloads `url` into the source's partial file (telling `tap` how it grows), and into
    /// the store if it hashes to the pin.
    fn download(
        &self,
        url: &str,
        source: &Source,
        task: &std::sync::Arc<dyn Task>,
        tap: Option<&overlap::Tap>,
    ) -> Result<(), AttemptError> {
        let partial = self.store.partial_path(&source.hash);
        let attempts = crate::retry::Policy::attempts(ATTEMPTS_PER_URL);
        crate::retry::run(&attempts, |_| match self.download_once(url, &partial, source.hash.algorithm(), task, tap) {
            Ok(found) => self.commit_source(&partial, found, source, url).map_err(Again::Stop),
            Err(Transfer::Local(e)) => Err(Again::Stop(AttemptError::Local(e))),
            Err(Transfer::Fatal(why)) => Err(Again::Stop(AttemptError::Failed(why))),
            Err(Transfer::Retry(why)) => Err(Again::retry(AttemptError::Failed(why))),
        })
        .map_err(|gave| {
            gave.describe(|e, tail| match (e, tail) {
                (AttemptError::Failed(why), Some(tail)) => AttemptError::Failed(format!("{why} {tail}")),
                (e, _) => e,
            })
        })
    }

    /// One HTTP request, resuming `partial` if it holds a prefix. Returns the hash of the whole file.
    fn download_once(
        &self,
        url: &str,
        partial: &std::path::Path,
        algorithm: Algorithm,
        task: &std::sync::Arc<dyn Task>,
        tap: Option<&overlap::Tap>,
    ) -> Result<Hash, Transfer> {
        let client = self.client().map_err(|e| Transfer::Fatal(e.to_string()))?;
        let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let mut request = client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        // A certificate refused is refused again: said in a sentence, and not retried.
        // A redirect refused (out of HTTPS) is refused again: not retried either.
        let response = request.send().map_err(|e| match crate::registry::tls::tls_cause(&e) {
            Some(tls) => Transfer::Fatal(crate::registry::tls::sentence(tls)),
            None if e.is_redirect() => Transfer::Fatal(describe(&e)),
            None => Transfer::Retry(describe(&e)),
        })?;
        let status = response.status();
        let resumed = have > 0
            && status == reqwest::StatusCode::PARTIAL_CONTENT
            && resume::range_start(response.headers()) == Some(have);
        if !status.is_success() {
            let why = format!("HTTP {status}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Transfer::Retry(why)
            } else {
                Transfer::Fatal(why)
            });
        }
        if status == reqwest::StatusCode::PARTIAL_CONTENT && !resumed {
            return Err(Transfer::Fatal("server sent a range that was not asked for".into()));
        }
        let length = response.content_length();
        let start = if resumed { have } else { 0 };
        if let Some(n) = length {
            task.set_total(start + n);
        }
        // A source must keep MIN_RATE after one timeout: a drip ends.
        let body = Body { reader: crate::net::MinRate::new(response, self.settings.timeout), start, length };
        write_resumable(partial, body, algorithm, &|n| {
            task.set_position(n);
            if let Some(tap) = tap {
                tap.grew(n);
            }
        })
    }

    /// Downloads a URL into the store without a pin and returns its hash (`imgbuild prefetch`).
    pub(crate) fn prefetch(&self, url: &str, algorithm: Algorithm) -> Result<(Hash, u64)> {
        let temp = self.store.temp_path("prefetch");
        let task = self.reporter.task(&format!("fetch {}", crate::recipe::url_file_name(url)), None);
        let result = self.download_once(url, &temp, algorithm, &task, None);
        let hash = match result {
            Ok(h) => h,
            Err(Transfer::Local(e)) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
            Err(Transfer::Fatal(why) | Transfer::Retry(why)) => {
                let _ = std::fs::remove_file(&temp);
                return Err(Error::MissingInputs(vec![MissingInput {
                    recipe: "prefetch".into(),
                    platform: "-".into(),
                    file: crate::recipe::url_file_name(url).into(),
                    urls: vec![url.into()],
                    hash: "unknown".into(),
                    reasons: vec![why],
                    // The file, had by other means, is read where it is: this works in any mode.
                    add: format!("imgbuild prefetch {}", crate::recipe::url_file_name(url)),
                }]));
            }
        };
        let size = std::fs::metadata(&temp).at(&temp)?.len();
        self.store.commit_file(&temp, hash.clone(), None, url)?;
        Ok((hash, size))
    }
}

/// Runs `work` on every item, at most `limit` at a time, and returns the results in the
/// items' order (so what is reported does not depend on which finished first).
pub(crate) fn run_bounded<T: Sync, R: Send>(items: &[T], limit: usize, work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..limit.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                let result = work(item);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.into_iter().map(|r| r.expect("every item was worked on")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_runs_keep_the_items_order_and_the_bound() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let items: Vec<u64> = (0..20).collect();
        let out = run_bounded(&items, 4, |n| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20 - n));
            running.fetch_sub(1, Ordering::SeqCst);
            n * 2
        });
        assert_eq!(out, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 4);
        assert!(run_bounded(&Vec::<u8>::new(), 4, |_| ()).is_empty());
    }
}
