//! Putting blobs into a registry: cross-repository mounts, and uploads whole or in chunks,
//! started again (`retry::run`) when a step fails in a way a retry can fix, the upload
//! session lost by a registry that restarted among them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use reqwest::blocking::Response;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};

use super::client::Client;
use super::transport::{classify, explain, gave_up, retryable, Failure, Refused};
use crate::digest::Sha256Digest;
use crate::error::{Error, IoContext, Result};
use crate::progress::{ProgressReader, Task};
use crate::retry::Again;

/// One failed upload attempt; errors of `Client::send` already had their retries (`?` stops).
type Attempt = Again<Error>;

/// What a registry answers for an upload session it no longer has (it restarted, or
/// expired the session): the upload starts again.
const SESSION_GONE: &[&str] = &["BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"];

impl Client {
    /// Asks the registry to link a blob from another repository; false when it cannot.
    pub fn mount(&self, digest: &Sha256Digest, from: &str) -> Result<bool> {
        self.add_pull_scope(from)?;
        let url = self.url("blobs/uploads/");
        let r = self.send(|| {
            self.http
                .post(&url)
                .query(&[("mount", digest.to_string()), ("from", from.to_string())])
                .header(CONTENT_LENGTH, 0)
        })?;
        match r.status() {
            StatusCode::CREATED => Ok(true),
            // 202: the registry started an ordinary upload instead; abandon it.
            StatusCode::ACCEPTED => Ok(false),
            _ => Err(self.error(format!("mounting {digest} from {from}: {}", explain(r)))),
        }
    }

    /// Uploads a blob from `path` (in the store), whole or in chunks.
    pub fn upload(&self, digest: &Sha256Digest, path: &Path, size: u64, task: &Arc<dyn Task>) -> Result<()> {
        crate::retry::run(&self.retry, |n| {
            if n > 1 {
                task.set_position(0);
            }
            self.upload_once(digest, path, size, task)
        })
        .map_err(gave_up)
    }

    fn upload_once(
        &self,
        digest: &Sha256Digest,
        path: &Path,
        size: u64,
        task: &Arc<dyn Task>,
    ) -> std::result::Result<(), Attempt> {
        let start = self.send(|| self.http.post(self.url("blobs/uploads/")).header(CONTENT_LENGTH, 0))?;
        if start.status() != StatusCode::ACCEPTED {
            return Err(Attempt::Stop(self.error(format!("starting the upload of {digest}: {}", explain(start)))));
        }
        let mut location = self.location(&start)?;
        if size > self.chunk_size {
            let mut offset = 0u64;
            while offset < size {
                let len = self.chunk_size.min(size - offset);
                let body = file_part(path, offset, len, task)?;
                // A streamed body cannot be sent twice, so chunks are not retried one by one:
                // a failure starts the whole upload again (see `upload`).
                let sent = self
                    .request_to(Method::PATCH, &location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
                    .header(CONTENT_LENGTH, len)
                    .body(body)
                    .send();
                let response = self.answered(sent, digest, StatusCode::ACCEPTED, "uploading a chunk of")?;
                location = self.location(&response)?;
                offset += len;
            }
            let done = self.request_to(Method::PUT, &with_digest(&location, digest)).header(CONTENT_LENGTH, 0).send();
            return self.answered(done, digest, StatusCode::CREATED, "completing the upload of").map(drop);
        }
        let body = file_part(path, 0, size, task)?;
        let done = self
            .request_to(Method::PUT, &with_digest(&location, digest))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body)
            .send();
        self.answered(done, digest, StatusCode::CREATED, "uploading").map(drop)
    }

    /// The answer to one step of an upload, when it is `expected`.
    fn answered(
        &self,
        sent: std::result::Result<Response, reqwest::Error>,
        digest: &Sha256Digest,
        expected: StatusCode,
        doing: &str,
    ) -> std::result::Result<Response, Attempt> {
        let response = sent.map_err(|e| match classify(&self.reference, &e) {
            Failure::Fatal(e) => Attempt::Stop(e),
            Failure::Transient(why) => Attempt::retry(self.error(format!("{doing} {digest}: {why}"))),
        })?;
        if response.status() == expected {
            return Ok(response);
        }
        let refused = Refused::read(response);
        let e = self.error(format!("{doing} {digest}: {}", refused.text));
        // A 401 here is an access token that expired during a long upload: the next attempt
        // starts with `send`, which answers the new challenge. A 404 or a session the registry
        // does not know: it restarted, or dropped the session; a new one starts.
        let status = refused.status;
        let again = retryable(status)
            || status == StatusCode::UNAUTHORIZED
            || status == StatusCode::NOT_FOUND
            || refused.says(SESSION_GONE);
        Err(if again { Attempt::Retry { error: e, after: refused.retry_after } } else { Attempt::Stop(e) })
    }

    /// Where the upload goes on: the answer's `Location`, absolute or relative to the
    /// registry, and only as the connection's transport allows (never a downgrade to HTTP).
    fn location(&self, r: &Response) -> Result<Url> {
        let loc = r
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| self.error("upload answer without a Location"))?;
        self.resolve("upload location", loc)
    }
}

fn with_digest(location: &Url, digest: &Sha256Digest) -> Url {
    let mut url = location.clone();
    url.query_pairs_mut().append_pair("digest", &digest.to_string());
    url
}

/// `len` bytes of a file from `offset`, as a streamed request body that advances `task`.
fn file_part(path: &Path, offset: u64, len: u64, task: &Arc<dyn Task>) -> Result<reqwest::blocking::Body> {
    let mut file = File::open(path).at(path)?;
    file.seek(SeekFrom::Start(offset)).at(path)?;
    task.set_position(offset);
    Ok(reqwest::blocking::Body::sized(ProgressReader::new(file.take(len), Arc::clone(task)), len))
}
