//! An OCI distribution API client over reqwest: the `/v2/` ping, Basic and Bearer auth,
//! blob HEAD / mount / upload (monolithic or chunked), manifests, and bounded retries.

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};

use super::auth::{parse_challenge, Challenge, Credentials, Secret};
use super::reference::Reference;
use crate::digest::Sha256Digest;
use crate::error::{http_cause as describe, Error, IoContext, Result};
use crate::progress::{ProgressReader, Task};
use std::sync::Arc;

/// Every manifest type imgbuild reads or writes.
pub const MANIFEST_TYPES: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

pub struct RegistrySettings {
    pub credentials: Option<Credentials>,
    /// A PEM file of extra CA certificates, trusted with the system's.
    pub ca_file: Option<PathBuf>,
    /// Plain HTTP; only for registries on loopback.
    pub insecure: bool,
    pub timeout: Duration,
    /// Blobs larger than this are uploaded in chunks of this size.
    pub chunk_size: u64,
    /// Attempts per request (and per blob upload) on 5xx, 429 and connection failures.
    pub attempts: u32,
}

pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    attempts: u32,
    pub chunk_size: u64,
    /// The `Authorization` value in use, once the registry has asked for one.
    authorization: RefCell<Option<Secret>>,
    challenge: RefCell<Option<Challenge>>,
    scopes: RefCell<Vec<String>>,
}

fn registry_error(registry: &str, message: impl Into<String>) -> Error {
    Error::Registry { registry: registry.to_string(), message: message.into() }
}

/// The registry's own explanation, from its JSON error body, if it gave one.
fn explain(response: Response) -> String {
    let status = response.status();
    let body = response.text().unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
        .map(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|d| !d.is_empty());
    match detail {
        Some(d) => format!("HTTP {status}: {d}"),
        None => format!("HTTP {status}"),
    }
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

impl Client {
    /// Connects to the registry of `reference` and checks it speaks the distribution API.
    pub fn connect(reference: &Reference, settings: &RegistrySettings) -> Result<Client> {
        if settings.insecure && !reference.is_loopback() {
            return Err(Error::Usage(format!(
                "--insecure (plain HTTP) is only allowed for registries on loopback, not {}",
                reference.registry
            )));
        }
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).at(ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Definition {
                file: ca.clone(),
                message: format!("not a PEM certificate bundle: {e}"),
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| Error::Usage(format!("cannot set up the HTTP client: {e}")))?;
        let scheme = if settings.insecure { "http" } else { "https" };
        let client = Client {
            http,
            base: format!("{scheme}://{}", reference.api_host()),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            credentials: settings.credentials.clone(),
            attempts: settings.attempts.max(1),
            chunk_size: settings.chunk_size.max(1),
            authorization: RefCell::new(None),
            challenge: RefCell::new(None),
            scopes: RefCell::new(vec![format!("repository:{}:pull,push", reference.repository)]),
        };
        let response = client.send(|| client.http.get(format!("{}/v2/", client.base)))?;
        if !response.status().is_success() {
            return Err(registry_error(&client.registry, format!("/v2/ answered {}", explain(response))));
        }
        Ok(client)
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Asks for pull access to another repository too (for cross-repository mounts).
    pub fn add_pull_scope(&self, repository: &str) -> Result<()> {
        let scope = format!("repository:{repository}:pull");
        if !self.scopes.borrow().contains(&scope) {
            self.scopes.borrow_mut().push(scope);
            if matches!(*self.challenge.borrow(), Some(Challenge::Bearer { .. })) {
                self.authenticate()?;
            }
        }
        Ok(())
    }

    /// Sets the `Authorization` value for the challenge the registry gave.
    fn authenticate(&self) -> Result<()> {
        let challenge = self.challenge.borrow().clone();
        let value = match challenge {
            None => return Ok(()),
            Some(Challenge::Basic) => {
                let creds = self.credentials.as_ref().ok_or_else(|| self.needs_credentials())?;
                creds.basic_header()
            }
            Some(Challenge::Bearer { realm, service }) => {
                let mut request = self.http.get(&realm);
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(s) = service {
                    query.push(("service", s));
                }
                for scope in self.scopes.borrow().iter() {
                    query.push(("scope", scope.clone()));
                }
                request = request.query(&query);
                if let Some(c) = &self.credentials {
                    request = request.header(AUTHORIZATION, c.basic_header().expose());
                }
                let response = request.send().map_err(|e| {
                    registry_error(&self.registry, format!("token request to {realm}: {}", describe(&e)))
                })?;
                if response.status() == StatusCode::UNAUTHORIZED || response.status() == StatusCode::FORBIDDEN {
                    return Err(self.auth_failed());
                }
                if !response.status().is_success() {
                    return Err(registry_error(
                        &self.registry,
                        format!("token request to {realm}: {}", explain(response)),
                    ));
                }
                let text = response.text().unwrap_or_default();
                let body: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
                    registry_error(&self.registry, format!("token request to {realm}: the answer is not JSON"))
                })?;
                let token =
                    body.get("token").or_else(|| body.get("access_token")).and_then(|t| t.as_str()).ok_or_else(
                        || registry_error(&self.registry, format!("token request to {realm}: no token in the answer")),
                    )?;
                Secret::new(format!("Bearer {token}"))
            }
        };
        *self.authorization.borrow_mut() = Some(value);
        Ok(())
    }

    fn needs_credentials(&self) -> Error {
        registry_error(
            &self.registry,
            "the registry asks for credentials; give --username with --password-stdin, set IMGBUILD_REGISTRY_USERNAME and IMGBUILD_REGISTRY_PASSWORD, or log in with docker",
        )
    }

    fn auth_failed(&self) -> Error {
        let who = self
            .credentials
            .as_ref()
            .map_or_else(|| "no credentials".to_string(), |c| format!("user `{}`", c.username));
        registry_error(&self.registry, format!("authentication failed ({who}): check the username and password"))
    }

    /// Sends one request once, answering an auth challenge once.
    fn send_once(&self, make: &dyn Fn() -> RequestBuilder) -> std::result::Result<Response, reqwest::Error> {
        self.authorized(make()).send()
    }

    /// Sends a request, authenticating when challenged and retrying (bounded) on 5xx, 429
    /// and connection failures. `make` builds the request afresh for every attempt.
    pub fn send(&self, make: impl Fn() -> RequestBuilder) -> Result<Response> {
        let mut authenticated_now = false;
        let mut last = String::new();
        let mut attempt = 0;
        while attempt < self.attempts {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
            }
            attempt += 1;
            match self.send_once(&make) {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                    if authenticated_now || (self.authorization.borrow().is_some() && self.challenge.borrow().is_none())
                    {
                        return Err(self.auth_failed());
                    }
                    let challenge =
                        r.headers().get(WWW_AUTHENTICATE).and_then(|h| h.to_str().ok()).and_then(parse_challenge);
                    let Some(challenge) = challenge else {
                        return Err(registry_error(
                            &self.registry,
                            "HTTP 401 without a usable WWW-Authenticate challenge",
                        ));
                    };
                    *self.challenge.borrow_mut() = Some(challenge);
                    self.authenticate()?;
                    authenticated_now = true;
                    attempt -= 1; // answering a challenge is not a failed attempt
                }
                Ok(r) if retryable(r.status()) => last = explain(r),
                Ok(r) => return Ok(r),
                Err(e) if e.is_builder() => return Err(registry_error(&self.registry, describe(&e))),
                Err(e) => last = describe(&e),
            }
        }
        Err(registry_error(&self.registry, format!("{last} (after {} attempts)", self.attempts)))
    }

    pub fn blob_exists(&self, digest: &Sha256Digest) -> Result<bool> {
        let r = self.send(|| self.http.head(self.url(&format!("blobs/{digest}"))))?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(registry_error(&self.registry, format!("checking blob {digest}: {}", explain(r)))),
        }
    }

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
            _ => Err(registry_error(&self.registry, format!("mounting {digest} from {from}: {}", explain(r)))),
        }
    }

    fn location(&self, r: &Response) -> Result<String> {
        let loc = r
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| registry_error(&self.registry, "upload answer without a Location"))?;
        Ok(if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else {
            format!("{}{loc}", self.base)
        })
    }

    fn with_digest(location: &str, digest: &Sha256Digest) -> String {
        let sep = if location.contains('?') { '&' } else { '?' };
        format!("{location}{sep}digest={digest}")
    }

    /// Uploads a blob from `path` (in the store), whole or in chunks. The whole protocol is
    /// started again, bounded, when any step fails in a way a retry can fix.
    pub fn upload(&self, digest: &Sha256Digest, path: &std::path::Path, size: u64, task: &Arc<dyn Task>) -> Result<()> {
        let mut last = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
                task.set_position(0);
            }
            match self.upload_once(digest, path, size, task) {
                Ok(()) => return Ok(()),
                Err(e @ Error::Registry { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn upload_once(
        &self,
        digest: &Sha256Digest,
        path: &std::path::Path,
        size: u64,
        task: &Arc<dyn Task>,
    ) -> Result<()> {
        let start = self.send(|| self.http.post(self.url("blobs/uploads/")).header(CONTENT_LENGTH, 0))?;
        if start.status() != StatusCode::ACCEPTED {
            return Err(registry_error(&self.registry, format!("starting the upload of {digest}: {}", explain(start))));
        }
        let mut location = self.location(&start)?;
        if size > self.chunk_size {
            let mut offset = 0u64;
            while offset < size {
                let len = self.chunk_size.min(size - offset);
                let body = file_part(path, offset, len, task)?;
                // A streamed body cannot be sent twice, so chunks are not retried one by one:
                // a failure starts the whole upload again (see `upload`).
                let response = self
                    .authorized(self.http.request(Method::PATCH, &location))
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
                    .header(CONTENT_LENGTH, len)
                    .body(body)
                    .send()
                    .map_err(|e| registry_error(&self.registry, format!("uploading {digest}: {}", describe(&e))))?;
                if response.status() != StatusCode::ACCEPTED {
                    return Err(registry_error(
                        &self.registry,
                        format!("uploading a chunk of {digest}: {}", explain(response)),
                    ));
                }
                location = self.location(&response)?;
                offset += len;
            }
            let done =
                self.authorized(self.http.put(Self::with_digest(&location, digest))).header(CONTENT_LENGTH, 0).send();
            return self.finished(done, digest);
        }
        let body = file_part(path, 0, size, task)?;
        let done = self
            .authorized(self.http.put(Self::with_digest(&location, digest)))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body)
            .send();
        self.finished(done, digest)
    }

    fn authorized(&self, r: RequestBuilder) -> RequestBuilder {
        match self.authorization.borrow().as_ref() {
            Some(a) => r.header(AUTHORIZATION, a.expose()),
            None => r,
        }
    }

    fn finished(&self, done: std::result::Result<Response, reqwest::Error>, digest: &Sha256Digest) -> Result<()> {
        let r = done.map_err(|e| registry_error(&self.registry, format!("uploading {digest}: {}", describe(&e))))?;
        if r.status() != StatusCode::CREATED {
            return Err(registry_error(&self.registry, format!("completing the upload of {digest}: {}", explain(r))));
        }
        Ok(())
    }

    /// PUTs a manifest or index; returns the digest the registry computed (checked against ours).
    pub fn put_manifest(&self, target: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
        let url = self.url(&format!("manifests/{target}"));
        let r = self.send(|| self.http.put(&url).header(CONTENT_TYPE, media_type).body(bytes.to_vec()))?;
        if r.status() != StatusCode::CREATED {
            return Err(registry_error(&self.registry, format!("putting manifest {target}: {}", explain(r))));
        }
        let ours = Sha256Digest::of(bytes);
        if let Some(theirs) = digest_header(r.headers()) {
            if theirs != ours {
                return Err(registry_error(
                    &self.registry,
                    format!("the registry stored manifest {target} as {theirs}, not {ours}"),
                ));
            }
        }
        Ok(())
    }

    /// GETs a manifest or index; the caller checks its digest.
    pub fn get_manifest(&self, target: &str) -> Result<(Vec<u8>, String)> {
        let url = self.url(&format!("manifests/{target}"));
        let r = self.send(|| self.http.get(&url).header(ACCEPT, MANIFEST_TYPES))?;
        if !r.status().is_success() {
            return Err(registry_error(&self.registry, format!("getting manifest {target}: {}", explain(r))));
        }
        let media_type = r.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let mut bytes = Vec::new();
        r.take(crate::store::MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| registry_error(&self.registry, format!("reading manifest {target}: {e}")))?;
        if bytes.len() as u64 > crate::store::MAX_DOCUMENT {
            return Err(registry_error(&self.registry, format!("manifest {target} is larger than 4 MiB")));
        }
        Ok((bytes, media_type))
    }

    /// GETs a blob as a stream.
    pub fn get_blob(&self, digest: &Sha256Digest) -> Result<Response> {
        let url = self.url(&format!("blobs/{digest}"));
        let r = self.send(|| self.http.get(&url))?;
        if !r.status().is_success() {
            return Err(registry_error(&self.registry, format!("getting blob {digest}: {}", explain(r))));
        }
        Ok(r)
    }
}

fn digest_header(headers: &HeaderMap) -> Option<Sha256Digest> {
    headers.get("docker-content-digest")?.to_str().ok()?.parse().ok()
}

/// `len` bytes of a file from `offset`, as a streamed request body that advances `task`.
fn file_part(path: &std::path::Path, offset: u64, len: u64, task: &Arc<dyn Task>) -> Result<reqwest::blocking::Body> {
    let mut file = File::open(path).at(path)?;
    file.seek(SeekFrom::Start(offset)).at(path)?;
    task.set_position(offset);
    Ok(reqwest::blocking::Body::sized(ProgressReader::new(file.take(len), Arc::clone(task)), len))
}
