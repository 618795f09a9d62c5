//! Getting pinned sources into the store: local mirror directories first, then the URL and
//! its mirrors in order. Downloads are hashed as they arrive, resumed where the server allows,
//! and only a file whose hash matches the pin is moved into the store.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digest::{Algorithm, Hash, Hasher, Sha256Digest};
use crate::error::{http_cause as describe, io_cause, Error, IoContext, MissingInput, Result};
use crate::progress::Reporter;
use crate::recipe::Source;
use crate::registry::Reference;
use crate::store::Store;

/// How many times one URL is tried again after a dropped connection (resuming each time).
const ATTEMPTS_PER_URL: u32 = 3;

pub struct FetchSettings {
    pub offline: bool,
    /// Directories holding files named as upstream (`--mirror`, `IMGBUILD_MIRROR`).
    pub mirror_dirs: Vec<PathBuf>,
    /// Longest wait for a connection or for the next bytes of a response.
    pub timeout: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings { offline: false, mirror_dirs: Vec::new(), timeout: Duration::from_secs(30) }
    }
}

pub struct Fetcher<'a> {
    store: &'a Store,
    settings: &'a FetchSettings,
    reporter: &'a dyn Reporter,
    client: std::cell::OnceCell<reqwest::blocking::Client>,
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
    pub fn new(store: &'a Store, settings: &'a FetchSettings, reporter: &'a dyn Reporter) -> Self {
        Fetcher { store, settings, reporter, client: std::cell::OnceCell::new() }
    }

    fn client(&self) -> Result<&reqwest::blocking::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(self.settings.timeout)
            .connect_timeout(self.settings.timeout)
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Makes sure `source` is in the store. On failure returns what is missing and why, or a
    /// hash mismatch when some server (or mirror file) had different bytes.
    pub fn ensure(&self, recipe: &str, platform: &str, source: &Source) -> Result<(), Error> {
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
        for dir in &self.settings.mirror_dirs {
            let candidate = dir.join(&source.file_name);
            if candidate.is_file() {
                match self.store.add_file(&candidate, hash.algorithm(), Some(hash)) {
                    Ok(_) => return Ok(()),
                    Err(e @ Error::HashMismatch { .. }) => mismatch = Some(e),
                    Err(e) => return Err(e),
                }
            } else {
                reasons.push(format!("{}: not there", candidate.display()));
            }
        }
        if !self.settings.offline {
            for url in &source.urls {
                match self.download(url, source) {
                    Ok(()) => return Ok(()),
                    Err(AttemptError::Mismatch(e)) => {
                        reasons.push(format!("{url}: different content"));
                        mismatch.get_or_insert(e);
                    }
                    Err(AttemptError::Failed(why)) => reasons.push(format!("{url}: {why}")),
                    Err(AttemptError::Local(e)) => return Err(e),
                }
            }
        } else {
            reasons.push("offline: not downloaded".into());
        }
        if let Some(e) = mismatch {
            return Err(e);
        }
        Err(Error::MissingInputs(vec![MissingInput {
            recipe: recipe.to_string(),
            platform: platform.to_string(),
            file: source.file_name.clone(),
            urls: source.urls.clone(),
            hash: hash.to_string(),
            reasons,
            add: format!("imgbuild store add {}", source.file_name),
        }]))
    }

    fn download(&self, url: &str, source: &Source) -> Result<(), AttemptError> {
        let partial = self.store.partial_path(&source.hash);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS_PER_URL {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            match self.download_once(url, &partial, source.hash.algorithm()) {
                Ok(found) => {
                    return self.store.commit_file(&partial, found, Some(&source.hash), url).map(|_| ()).map_err(|e| {
                        match e {
                            e @ Error::HashMismatch { .. } => AttemptError::Mismatch(e),
                            other => AttemptError::Local(other),
                        }
                    });
                }
                Err(Transfer::Local(e)) => return Err(AttemptError::Local(e)),
                Err(Transfer::Fatal(why)) => return Err(AttemptError::Failed(why)),
                Err(Transfer::Retry(why)) => last = why,
            }
        }
        Err(AttemptError::Failed(format!("{last} (after {ATTEMPTS_PER_URL} attempts)")))
    }

    /// One HTTP request, resuming `partial` if it holds a prefix. Returns the hash of the whole file.
    fn download_once(&self, url: &str, partial: &Path, algorithm: Algorithm) -> Result<Hash, Transfer> {
        let client = self.client().map_err(|e| Transfer::Fatal(e.to_string()))?;
        let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let mut request = client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut response = request.send().map_err(|e| Transfer::Retry(describe(&e)))?;
        let status = response.status();
        let resumed =
            have > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT && content_range_start(&response) == Some(have);
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
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(partial)
            .map_err(|e| io_fatal(partial, e))?;
        let mut hasher = Hasher::new(algorithm);
        let mut received = 0u64;
        if resumed {
            // Never trust the earlier part: it is hashed again with the rest.
            let mut prefix = (&mut file).take(have);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = prefix.read(&mut buf).map_err(|e| io_fatal(partial, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                received += n as u64;
            }
        } else {
            file.set_len(0).map_err(|e| io_fatal(partial, e))?;
        }
        file.seek(io::SeekFrom::Start(received)).map_err(|e| io_fatal(partial, e))?;
        let expected_len = response.content_length().map(|n| n + received);
        let task = self.reporter.task(&format!("fetch {}", crate::recipe::url_file_name(url)), expected_len);
        task.set_position(received);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match response.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.sync_all();
                    return Err(Transfer::Retry(format!(
                        "connection dropped after {received} bytes: {}",
                        io_cause(&e)
                    )));
                }
            };
            file.write_all(&buf[..n]).map_err(|e| io_fatal(partial, e))?;
            hasher.update(&buf[..n]);
            received += n as u64;
            task.advance(n as u64);
        }
        if let Some(len) = expected_len {
            if received != len {
                return Err(Transfer::Retry(format!("truncated: got {received} of {len} bytes")));
            }
        }
        file.sync_all().map_err(|e| io_fatal(partial, e))?;
        Ok(hasher.finish())
    }

    /// Downloads a URL into the store without a pin and returns its hash (`imgbuild prefetch`).
    pub fn prefetch(&self, url: &str, algorithm: Algorithm) -> Result<(Hash, u64)> {
        let temp = self.store.temp_path("prefetch");
        let result = self.download_once(url, &temp, algorithm);
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
                    add: format!("imgbuild prefetch {url}"),
                }]));
            }
        };
        let size = std::fs::metadata(&temp).at(&temp)?.len();
        self.store.commit_file(&temp, hash.clone(), None, url)?;
        Ok((hash, size))
    }
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
        file: format!("image {}", repository.map_or_else(|| file.to_string(), pinned)),
        urls: repository.map(|r| format!("docker://{}", pinned(r))).into_iter().collect(),
        hash: digest.map_or_else(|| "unknown".to_string(), |d| d.to_string()),
        reasons,
        add: format!("imgbuild store add {file}{copy}"),
    }
}

enum Transfer {
    Retry(String),
    Fatal(String),
    /// Writing the download on this machine failed.
    Local(Error),
}

fn io_fatal(path: &Path, e: io::Error) -> Transfer {
    Transfer::Local(Error::io(path, e))
}

fn content_range_start(response: &reqwest::blocking::Response) -> Option<u64> {
    let value = response.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.parse().ok()
}
