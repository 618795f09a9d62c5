//! Writing a download into its partial file in the store, resuming where an earlier attempt
//! stopped: the bytes already on disk are hashed again with the rest (never trusted), and the
//! hash of the whole file is returned for the store to check against the pin. Shared by
//! tarball downloads and registry blobs.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use reqwest::header::HeaderMap;

use crate::digest::{Algorithm, Hash, Hasher};
use crate::error::{io_cause, Error};

/// Why one transfer did not complete.
pub(crate) enum Transfer {
    /// Another attempt may succeed (resuming): a dropped connection, a truncated body.
    Retry(String),
    /// This source will not give the file.
    Fatal(String),
    /// Writing the download on this machine failed: no other source can help.
    Local(Error),
}

/// A response body on its way into a partial file.
pub(crate) struct Body<R> {
    pub reader: R,
    /// Where the body starts in the file: the length already there when the server resumed,
    /// else 0 (the file is written again from the start).
    pub start: u64,
    /// The body's own length, when the server said it.
    pub length: Option<u64>,
}

/// Where a `Content-Range: bytes START-END/TOTAL` answer starts.
pub(crate) fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    value.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

fn local(path: &Path, e: io::Error) -> Transfer {
    Transfer::Local(Error::io(path, e))
}

/// Writes `body` into `partial` and returns the hash of the whole file. `progress` is told how
/// many bytes of the file are there, as they arrive.
pub(crate) fn write_resumable(
    partial: &Path,
    mut body: Body<impl Read>,
    algorithm: Algorithm,
    progress: &dyn Fn(u64),
) -> Result<Hash, Transfer> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(partial)
        .map_err(|e| local(partial, e))?;
    let mut hasher = Hasher::new(algorithm);
    let mut received = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    if body.start > 0 {
        let mut prefix = (&mut file).take(body.start);
        loop {
            let n = prefix.read(&mut buf).map_err(|e| local(partial, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            received += n as u64;
        }
        if received != body.start {
            return Err(Transfer::Retry(format!("the partial file holds {received} of {} bytes", body.start)));
        }
    } else {
        file.set_len(0).map_err(|e| local(partial, e))?;
    }
    file.seek(io::SeekFrom::Start(received)).map_err(|e| local(partial, e))?;
    let expected = body.length.map(|n| n + received);
    let mut writeback = crate::store::Writeback::starting_at(received);
    progress(received);
    loop {
        let n = match body.reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.sync_all();
                return Err(Transfer::Retry(format!("connection dropped after {received} bytes: {}", io_cause(&e))));
            }
        };
        file.write_all(&buf[..n]).map_err(|e| local(partial, e))?;
        hasher.update(&buf[..n]);
        received += n as u64;
        writeback.wrote(&file, received);
        progress(received);
    }
    if let Some(len) = expected {
        if received != len {
            let _ = file.sync_all();
            return Err(Transfer::Retry(format!("truncated: got {received} of {len} bytes")));
        }
    }
    file.sync_all().map_err(|e| local(partial, e))?;
    Ok(hasher.finish())
}
