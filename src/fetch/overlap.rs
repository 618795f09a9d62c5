//! Building a tarball's layer while the tarball arrives, downloaded or copied from a `--mirror`
//! directory. The layer normalizer reads the file the bytes are written into as it grows, and
//! writes the layer into a staging store of its own under the store's `tmp/`. Only once the
//! file hashes to its pin and the source has entered the store is the layer's blob moved into
//! the store and its record written; an attempt that fails, does not match its pin, or starts
//! again from its first byte discards the work. So nothing unverified is ever recorded: not the
//! source, not the layer, not the layer record.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::layer::{derivation, normalize_tarball};
use crate::recipe::{Recipe, Source};
use crate::store::{LayerRecord, Store};

use super::Fetcher;

/// What the attempt has done so far, as the layer builder sees it.
#[derive(Default)]
struct Progress {
    /// Bytes of the file written (and safe to read).
    written: u64,
    /// The download started the file again from its first byte: what was read is not its.
    restarted: bool,
    /// `Some(true)`: the file is whole and verified; `Some(false)`: the download gave up.
    end: Option<bool>,
}

#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    grew: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The attempt's side: told how much of the file is there, and how the attempt ended.
pub(crate) struct Tap {
    shared: Arc<Shared>,
}

impl Tap {
    /// `written` bytes of the file are there (fewer than before: it was started again).
    pub(crate) fn grew(&self, written: u64) {
        let mut progress = self.shared.lock();
        if written < progress.written {
            progress.restarted = true;
        }
        progress.written = written;
        self.shared.grew.notify_all();
    }

    fn end(&self, verified: bool) {
        let mut progress = self.shared.lock();
        progress.end.get_or_insert(verified);
        self.shared.grew.notify_all();
    }

    fn restarted(&self) -> bool {
        self.shared.lock().restarted
    }
}

/// Ends the attempt as failed if nothing else ended it (an error or a panic on the way), so
/// the layer builder never waits for bytes that will not come.
struct EndGuard<'t>(&'t Tap);

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

/// The layer builder's side: the file the attempt writes, read as it grows.
struct GrowingFile {
    shared: Arc<Shared>,
    /// The file the attempt writes, and where it is once the store took it (if the attempt
    /// ended before this reader opened it).
    paths: [PathBuf; 2],
    file: Option<File>,
    position: u64,
}

impl GrowingFile {
    /// Waits until there are bytes past `position`; `None` at the end of the verified file.
    fn available(&self) -> io::Result<Option<u64>> {
        let mut progress = self.shared.lock();
        loop {
            if progress.restarted {
                return Err(io::Error::other("the file started again from its first byte"));
            }
            if progress.written > self.position {
                return Ok(Some(progress.written));
            }
            match progress.end {
                Some(true) => return Ok(None),
                Some(false) => return Err(io::Error::other("the file did not arrive whole")),
                None => progress = self.shared.grew.wait(progress).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    fn open(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            let opened = File::open(&self.paths[0]).or_else(|_| File::open(&self.paths[1]))?;
            self.file = Some(opened);
        }
        Ok(self.file.as_ref().expect("opened"))
    }
}

impl Read for GrowingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(written) = self.available()? else { return Ok(0) };
        let want = buf.len().min(usize::try_from(written - self.position).unwrap_or(usize::MAX));
        let position = self.position;
        let n = self.open()?.read_at(&mut buf[..want], position)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file is shorter than written"));
        }
        self.position += n as u64;
        Ok(n)
    }
}

/// A store of its own under the store's `tmp/` (which `store gc` empties), removed when dropped.
struct Staging(Store);

impl Staging {
    fn open(store: &Store) -> Result<Staging> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = store.root().join("tmp").join(format!("layer-staging.{}.{n}", std::process::id()));
        Ok(Staging(Store::open(&dir)?))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.root());
    }
}

/// How one attempt brings a source's bytes into the store.
#[derive(Clone, Copy)]
pub(crate) enum Arrival<'p> {
    /// From a URL, into the source's partial file (which a later attempt may resume).
    Download,
    /// From a file of a `--mirror` directory, into `into` (a temporary file of the store).
    MirrorCopy { into: &'p Path },
}

impl Arrival<'_> {
    /// The file the attempt writes.
    fn file(self, store: &Store, source: &Source) -> PathBuf {
        match self {
            Arrival::Download => store.partial_path(&source.hash),
            Arrival::MirrorCopy { into } => into.to_path_buf(),
        }
    }

    /// What the attempt is doing, and what it brings, in the messages.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Arrival::Download => ("downloading", "the download"),
            Arrival::MirrorCopy { .. } => ("copying from the mirror", "the mirror's file"),
        }
    }
}

/// Runs `attempt` (which writes the source's bytes into the file `arrival` says, tells `Tap`
/// how it grows, and is `Ok` when the source is in the store, verified) and, at the same time,
/// builds `recipe`'s layer from the bytes as they come. Returns what `attempt` returned, and
/// whether the layer was built and recorded.
pub(crate) fn fetch_and_build<E>(
    fetcher: &Fetcher<'_>,
    recipe: &Recipe,
    source: &Source,
    arrival: Arrival<'_>,
    attempt: impl FnOnce(Option<&Tap>) -> Result<(), E>,
) -> Result<(Result<(), E>, bool)> {
    let store = fetcher.store;
    let Some(settings) = fetcher.layers.filter(|_| recipe.kind == crate::recipe::RecipeKind::Tarball) else {
        return Ok((attempt(None), false));
    };
    let key = derivation(&source.hash, &recipe.unpack, settings);
    if store.layer(&key).is_some() {
        return Ok((attempt(None), false));
    }
    // Held until the layer is recorded or discarded: a concurrent build waits, then finds it.
    let _lock = store.lock(&format!("layer-{}", key.hex()))?;
    if store.layer(&key).is_some() {
        return Ok((attempt(None), false));
    }
    let staging = Staging::open(store)?;
    let tap = Tap { shared: Arc::new(Shared::default()) };
    let reader = GrowingFile {
        shared: Arc::clone(&tap.shared),
        paths: [arrival.file(store, source), store.blob_path(&source.hash)],
        file: None,
        position: 0,
    };
    let archive = format!("{} ({})", source.file_name, recipe.name);
    let (into, unpack) = (&staging.0, &recipe.unpack);
    let (arrived, built) = std::thread::scope(|scope| {
        let builder = scope.spawn(move || {
            let input = BufReader::with_capacity(256 * 1024, reader);
            normalize_tarball(into, input, &archive, unpack, settings)
        });
        let arrived = {
            let guard = EndGuard(&tap);
            let arrived = attempt(Some(&tap));
            guard.0.end(arrived.is_ok());
            arrived
        };
        (arrived, builder.join())
    });
    let built = built.map_err(|_| Error::Internal(format!("building the layer of {} panicked", recipe.name)))?;
    let reporter = fetcher.reporter;
    let (doing, what) = arrival.words();
    let discarded = |why: &str| {
        reporter.status(&format!("layer {}: the work done while {doing} is discarded: {why}", recipe.name));
    };
    if arrived.is_err() {
        if tap.shared.lock().written > 0 {
            discarded(&format!("{what} is not the pinned source"));
        }
        return Ok((arrived, false));
    }
    if tap.restarted() {
        discarded(&format!("{what} started again from its first byte"));
        return Ok((arrived, false));
    }
    // A refused archive is built again from the stored source, which reports what is wrong.
    let Ok((layer, counts)) = built else { return Ok((arrived, false)) };
    adopt(store, &staging, &key, &layer, &recipe.name)?;
    if let Some(cache) = settings.cache.as_deref() {
        cache.push(store, &key, &layer, &recipe.name, reporter)?;
    }
    reporter.status(&format!("layer {}: built while {doing}", recipe.name));
    crate::layer::report_skipped(reporter, &recipe.name, &counts);
    Ok((arrived, true))
}

/// Moves the layer's blob from the staging store into the store, then records it.
fn adopt(store: &Store, staging: &Staging, key: &Sha256Digest, layer: &LayerRecord, recipe: &str) -> Result<()> {
    let digest = layer.digest.0.to_hash();
    let what = format!("layer {recipe}");
    store.commit_file(&staging.0.blob_path(&digest), digest.clone(), Some(&digest), &what)?;
    store.record_layer(key, layer)
}
