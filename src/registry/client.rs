//! An OCI distribution API client over reqwest: the `/v2/` ping, Basic and Bearer auth,
//! manifests and blobs, and bounded retries of what a retry can fix. Uploads are in `upload`.

use std::cell::{OnceCell, RefCell};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

use super::auth::{parse_challenge, Challenge, Credentials, Secret};
use super::token::{Refusal, TokenRequest};
use super::transport::{
    classify, explain, gave_up, http_client, registry_error, retryable, same_origin, Failure, Refused, Transport,
};
use crate::digest::Sha256Digest;
use crate::error::{escape, Error, Result};
use crate::net::MinRate;
use crate::reference::Reference;
use crate::retry::{Again, Policy};

/// Every manifest type imgbuild reads or writes.
pub(crate) const MANIFEST_TYPES: &str =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The error codes of a manifest refused for naming what the registry does not know (yet): a
/// blob or child manifest (`MANIFEST_BLOB_UNKNOWN`, `BLOB_UNKNOWN`, `MANIFEST_UNKNOWN`), or,
/// from `docker-registry` 2.x, `DIGEST_INVALID`: its filesystem storage rewrites a repository's
/// link files in place (truncate, then write), so a manifest checked while another push re-links
/// one of its blobs reads an empty link.
const UNKNOWN_CONTENT: &[&str] = &["MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "DIGEST_INVALID"];

/// How a manifest PUT ended, when the registry answered.
#[derive(Debug)]
pub(crate) enum Put {
    /// With the `OCI-Subject` the registry answered, if any (a registry with the referrers API
    /// says so for a manifest with a `subject`).
    Stored { subject: Option<String> },
    /// Refused for content it does not know, or overwritten by another writer: checking the
    /// content again and another attempt may succeed.
    Again(Error),
}

/// What a connection may do: the token scope it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

pub struct RegistrySettings {
    /// Credentials from the command line; without them, the user's credential files are read
    /// (`credentials::lookup`) when the registry first asks.
    pub credentials: Option<Credentials>,
    /// PEM files of certificates to trust besides the system's (`--ca-file`); the registry's
    /// certs.d directory is added for each connection.
    pub ca_files: Vec<PathBuf>,
    /// Plain HTTP; only for registries on loopback.
    pub insecure: bool,
    pub timeout: Duration,
    /// Blobs larger than this are uploaded in chunks of this size.
    pub chunk_size: u64,
    /// Attempts per request (and per blob upload) on 5xx, 429 and connection failures.
    pub attempts: u32,
    pub access: Access,
    /// The command's policy for where the registry may send it (redirects, token realm,
    /// upload locations) and which addresses its names may resolve to (`verify`'s).
    pub reach: crate::net::Reach,
}

pub struct Client {
    pub(super) http: reqwest::blocking::Client,
    /// For token requests: follows no redirect, so a password or identity token goes only to
    /// the realm the registry named.
    token_http: reqwest::blocking::Client,
    pub(super) base: String,
    /// Where plain HTTP is allowed: only with `--insecure`, only on loopback.
    pub(super) transport: Transport,
    pub(crate) reference: Reference,
    explicit_credentials: Option<Credentials>,
    /// The credentials in use, looked up once when the registry first asks.
    credentials: OnceCell<Option<Credentials>>,
    pub(super) retry: Policy,
    pub chunk_size: u64,
    /// The `Authorization` value in use, once the registry has asked for one.
    authorization: RefCell<Option<Secret>>,
    challenge: RefCell<Option<Challenge>>,
    scopes: RefCell<Vec<String>>,
    /// What this command's walks of indexes and referrers have fetched here.
    pub(crate) budget: super::budget::Budget,
    /// The whole-request deadline of a small document's body (`--timeout`).
    pub(super) timeout: Duration,
    reach: crate::net::Reach,
}

impl Client {
    /// Connects to the registry of `reference` and checks it speaks the distribution API.
    pub fn connect(reference: &Reference, settings: &RegistrySettings) -> Result<Client> {
        let clients = http_client(reference, settings.insecure, &settings.ca_files, settings.timeout, &settings.reach)?;
        let scheme = if settings.insecure { "http" } else { "https" };
        let actions = match settings.access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let client = Client {
            http: clients.follow,
            token_http: clients.direct,
            base: format!("{scheme}://{}", reference.api_host()),
            transport: Transport { plain_http: settings.insecure },
            reference: reference.clone(),
            explicit_credentials: settings.credentials.clone(),
            credentials: OnceCell::new(),
            retry: Policy::attempts(settings.attempts.max(1)),
            chunk_size: settings.chunk_size.max(1),
            authorization: RefCell::new(None),
            challenge: RefCell::new(None),
            scopes: RefCell::new(vec![format!("repository:{}:{actions}", reference.repository)]),
            budget: Default::default(),
            timeout: settings.timeout,
            reach: settings.reach.clone(),
        };
        let response = client.send(|| client.http.get(format!("{}/v2/", client.base)))?;
        if response.status() == StatusCode::BAD_REQUEST && settings.insecure {
            return Err(Error::Registry {
                registry: client.reference.registry.clone(),
                message: format!("/v2/ answered {} to plain HTTP", explain(response)),
                hint: Some("the registry may serve HTTPS: leave out --insecure".into()),
            });
        }
        if !response.status().is_success() {
            return Err(client.error(format!("/v2/ answered {}", explain(response))));
        }
        Ok(client)
    }

    pub fn registry(&self) -> &str {
        &self.reference.registry
    }

    pub fn repository(&self) -> &str {
        &self.reference.repository
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> Error {
        registry_error(&self.reference.registry, message)
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.reference.repository)
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

    /// The command line's credentials, or the user's for this registry (read once).
    fn credentials(&self) -> Result<Option<&Credentials>> {
        if self.credentials.get().is_none() {
            let found = match &self.explicit_credentials {
                Some(c) => Some(c.clone()),
                None => super::credentials::lookup(&self.reference.registry, &self.reference.repository)?,
            };
            let _ = self.credentials.set(found);
        }
        Ok(self.credentials.get().and_then(Option::as_ref))
    }

    /// Sets the `Authorization` value for the challenge the registry gave.
    fn authenticate(&self) -> Result<()> {
        let challenge = self.challenge.borrow().clone();
        let value = match challenge {
            None => return Ok(()),
            Some(Challenge::Basic) => {
                let creds = self.credentials()?.ok_or_else(|| self.needs_credentials())?;
                if creds.as_identity_token().is_some() {
                    return Err(self.error(format!(
                        "the registry asks for a password (Basic auth), but {} is an identity token",
                        creds.origin
                    )));
                }
                creds.basic_header()
            }
            Some(Challenge::Bearer { realm, service }) => {
                let scopes = self.scopes.borrow().clone();
                let realm = self.resolve("token realm", &realm)?;
                let request = TokenRequest {
                    http: &self.token_http,
                    reference: &self.reference,
                    realm: &realm,
                    service: service.as_deref(),
                    scopes: &scopes,
                    credentials: self.credentials()?,
                    deadline: self.timeout,
                };
                match request.fetch() {
                    Ok(token) => token,
                    Err(Refusal::Unauthorized) => return Err(self.auth_failed()),
                    Err(Refusal::Other(e)) => return Err(e),
                }
            }
        };
        *self.authorization.borrow_mut() = Some(value);
        Ok(())
    }

    fn needs_credentials(&self) -> Error {
        Error::Registry {
            registry: self.reference.registry.clone(),
            message: "the registry asks for credentials and none were found".into(),
            hint: Some(format!(
                "log in with `podman login {0}` or `docker login {0}` (imgbuild reads {1}); \
                 push and pull also take --username with --password-stdin",
                self.reference.registry,
                super::credentials::auth_files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    fn auth_failed(&self) -> Error {
        let who = match self.credentials.get().and_then(Option::as_ref) {
            Some(c) => c.describe(),
            None => "no credentials".to_string(),
        };
        self.error(format!("authentication failed ({who}): check the username and password"))
    }

    pub(super) fn authorized(&self, r: RequestBuilder) -> RequestBuilder {
        match self.authorization.borrow().as_ref() {
            Some(a) => r.header(AUTHORIZATION, a.expose()),
            None => r,
        }
    }

    /// A request to `url`, which the registry gave (an upload location, checked by
    /// [`Client::resolve`]): with the registry's `Authorization` only when it is the registry
    /// itself (same scheme, host and port), so a token never goes to another host.
    pub(super) fn request_to(&self, method: Method, url: &Url) -> RequestBuilder {
        let request = self.http.request(method, url.clone());
        match Url::parse(&self.base) {
            Ok(base) if same_origin(&base, url) => self.authorized(request),
            _ => request,
        }
    }

    /// A URL the registry gave as `what` (absolute, or relative to it), if it may be
    /// requested: HTTPS, or plain HTTP only as `--insecure` allows. The refusal names it.
    pub(super) fn resolve(&self, what: &str, url: &str) -> Result<Url> {
        let checked = self.transport.resolve(&self.base, url);
        let checked = checked.and_then(|url| self.reach.check(&url).map(|()| url));
        checked.map_err(|why| self.error(format!("{what}: {why}")))
    }

    /// Sends a request, authenticating when challenged and retrying (`retry::run`) what a
    /// retry can fix: 5xx, 429 (after its `Retry-After`), refused or dropped connections,
    /// timeouts. A certificate error, a refused login (401 after authenticating) or a 403 fails
    /// at once. `make` builds the request afresh for every attempt.
    pub fn send(&self, make: impl Fn() -> RequestBuilder) -> Result<Response> {
        crate::retry::run(&self.retry, |_| self.send_once(&make)).map_err(gave_up)
    }

    /// One attempt of `send`; answering a challenge is part of the attempt, not another one.
    fn send_once(&self, make: &dyn Fn() -> RequestBuilder) -> std::result::Result<Response, Again<Error>> {
        let mut authenticated_now = false;
        loop {
            match self.authorized(make()).send() {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                    self.challenged_by_registry(&r)?;
                    if authenticated_now || (self.authorization.borrow().is_some() && self.challenge.borrow().is_none())
                    {
                        return Err(Again::Stop(self.auth_failed()));
                    }
                    let challenge =
                        r.headers().get(WWW_AUTHENTICATE).and_then(|h| h.to_str().ok()).and_then(parse_challenge);
                    let Some(challenge) = challenge else {
                        return Err(Again::Stop(self.error("HTTP 401 without a usable WWW-Authenticate challenge")));
                    };
                    *self.challenge.borrow_mut() = Some(challenge);
                    self.authenticate()?;
                    authenticated_now = true;
                }
                Ok(r) if r.status() == StatusCode::FORBIDDEN => return Err(Again::Stop(self.forbidden(r))),
                Ok(r) if retryable(r.status()) => {
                    let refusal = Refused::read(r);
                    return Err(Again::Retry { error: self.error(refusal.text), after: refusal.retry_after });
                }
                Ok(r) => return Ok(r),
                Err(e) => match classify(&self.reference, &e) {
                    Failure::Fatal(e) => return Err(Again::Stop(e)),
                    Failure::Transient(why) => return Err(Again::retry(self.error(why))),
                },
            }
        }
    }

    /// Fails unless a 401 came from the registry's own origin: after a redirect to another
    /// host (blob storage, a CDN), a challenge is that host's, and no credential answers it.
    fn challenged_by_registry(&self, r: &Response) -> Result<()> {
        match Url::parse(&self.base) {
            Ok(base) if same_origin(&base, r.url()) => Ok(()),
            _ => Err(self.error(format!(
                "a redirect led to {}, which asked for credentials (HTTP 401); imgbuild sends the \
                 registry's credentials only to the registry itself, and sent none there",
                crate::net::origin(r.url())
            ))),
        }
    }

    fn forbidden(&self, r: Response) -> Error {
        let who = match self.credentials.get().and_then(Option::as_ref) {
            Some(c) => c.describe(),
            None => "anonymous".to_string(),
        };
        let scopes = self.scopes.borrow().join(" ");
        self.error(format!("{} for {who} (asked for {})", explain(r), escape(&scopes)))
    }

    pub fn blob_exists(&self, digest: &Sha256Digest) -> Result<bool> {
        let r = self.send(|| self.http.head(self.url(&format!("blobs/{digest}"))))?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error(format!("checking blob {digest}: {}", explain(r)))),
        }
    }

    /// PUTs a manifest or index, and checks that the registry stored it under our digest.
    pub fn put_manifest(&self, target: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
        match self.try_put_manifest(target, media_type, bytes)? {
            Put::Stored { .. } => Ok(()),
            Put::Again(e) => Err(e),
        }
    }

    /// PUTs a manifest or index; [`Put::Again`] when the registry does not know some of what it
    /// names (`push::put_complete` checks that again and retries).
    pub(crate) fn try_put_manifest(&self, target: &str, media_type: &str, bytes: &[u8]) -> Result<Put> {
        let url = self.url(&format!("manifests/{target}"));
        let r = self.send(|| self.http.put(&url).header(CONTENT_TYPE, media_type).body(bytes.to_vec()))?;
        if r.status() != StatusCode::CREATED {
            let refusal = Refused::read(r);
            let e = self.error(format!("putting manifest {target}: {}", refusal.text));
            return if refusal.says(UNKNOWN_CONTENT) { Ok(Put::Again(e)) } else { Err(e) };
        }
        let ours = Sha256Digest::of(bytes);
        if let Some(theirs) = digest_header(r.headers()) {
            if theirs != ours {
                return Err(self.error(format!("the registry stored manifest {target} as {theirs}, not {ours}")));
            }
        }
        let subject = r.headers().get("oci-subject").and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Put::Stored { subject })
    }

    /// GETs a manifest or index; the caller checks its digest.
    pub fn get_manifest(&self, target: &str) -> Result<(Vec<u8>, String)> {
        self.find_manifest(target)?
            .ok_or_else(|| self.error(format!("{} has no manifest {target}", self.reference.name())))
    }

    /// GETs a manifest or index, `None` when the repository has none under `target` (a 404);
    /// the caller checks its digest.
    pub fn find_manifest(&self, target: &str) -> Result<Option<(Vec<u8>, String)>> {
        let url = self.url(&format!("manifests/{target}"));
        let r = self.send(|| self.http.get(&url).header(ACCEPT, MANIFEST_TYPES))?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(self.error(format!("getting manifest {target}: {}", explain(r))));
        }
        let media_type = r.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = crate::net::read_small(r, crate::store::MAX_DOCUMENT, self.timeout)
            .map_err(|e| self.error(format!("reading manifest {target}: {e}")))?;
        Ok(Some((bytes, media_type)))
    }

    /// GETs a blob as a stream, from byte `offset` on (a resumed download). Returns the
    /// response and whether it starts at `offset` (else it is the whole blob).
    /// The body must keep [`crate::net::MIN_RATE`] after one timeout.
    pub(crate) fn get_blob(&self, digest: &Sha256Digest, offset: u64) -> Result<(MinRate<Response>, bool)> {
        let url = self.url(&format!("blobs/{digest}"));
        let r = self.send(|| {
            let request = self.http.get(&url);
            if offset > 0 {
                request.header(RANGE, format!("bytes={offset}-"))
            } else {
                request
            }
        })?;
        if !r.status().is_success() {
            return Err(self.error(format!("getting blob {digest}: {}", explain(r))));
        }
        let resumed = offset > 0
            && r.status() == StatusCode::PARTIAL_CONTENT
            && crate::resume::range_start(r.headers()) == Some(offset);
        if offset > 0 && r.status() == StatusCode::PARTIAL_CONTENT && !resumed {
            return Err(self.error(format!("getting blob {digest}: the registry sent a range that was not asked for")));
        }
        Ok((MinRate::new(r, self.timeout), resumed))
    }
}

fn digest_header(headers: &HeaderMap) -> Option<Sha256Digest> {
    headers.get("docker-content-digest")?.to_str().ok()?.parse().ok()
}
