//! The HTTP side of a registry connection: the reqwest client with the trust of `tls`, the one
//! rule for plain HTTP ([`Transport`]), and what a failed request means: worth another attempt
//! (a dropped connection, a timeout) or not (a certificate, a server that does not speak TLS, a
//! scheme downgrade), with the next step to take.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::Response;
use reqwest::Url;

use crate::error::{escape, http_cause, Error, Result};
use crate::net::Redirects;
use crate::reference::{is_loopback_host, Reference};

pub(crate) fn registry_error(registry: &str, message: impl Into<String>) -> Error {
    Error::Registry { registry: registry.to_string(), message: message.into(), hint: None }
}

/// Which URLs a registry connection may use. Every request imgbuild makes for a registry (to
/// it, to the token realm it names, to an upload location it gives, to where it redirects) is
/// HTTPS, unless `--insecure` allowed plain HTTP, which it does only for a loopback registry
/// and then only to loopback hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transport {
    pub plain_http: bool,
}

impl Transport {
    /// Whether `url` may be requested; the refusal names it (escaped) and says why.
    pub(crate) fn check(&self, url: &Url) -> std::result::Result<(), String> {
        let loopback = url.host_str().is_some_and(is_loopback_host);
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.plain_http && loopback => Ok(()),
            "http" if self.plain_http => Err(format!(
                "refusing plain HTTP to {}: --insecure allows it only to hosts on loopback",
                escape(url.as_str())
            )),
            "http" => Err(format!(
                "refusing plain HTTP to {}: the registry is spoken to over HTTPS, and nothing it names \
                 may downgrade that (--insecure allows plain HTTP only to a registry on loopback)",
                escape(url.as_str())
            )),
            other => Err(format!("refusing {}: `{}` is not HTTPS", escape(url.as_str()), escape(other))),
        }
    }

    /// `url` (absolute, or relative to `base`), if it may be requested.
    pub(crate) fn resolve(&self, base: &str, url: &str) -> std::result::Result<Url, String> {
        let base = Url::parse(base).map_err(|e| format!("{}: {e}", escape(base)))?;
        let url = base.join(url).map_err(|e| format!("`{}` is not a URL: {e}", escape(url)))?;
        self.check(&url)?;
        Ok(url)
    }
}

pub(crate) use crate::net::same_origin;

/// The HTTP clients of one registry connection, with the same TLS trust.
pub(crate) struct HttpClients {
    /// For the registry's own API: redirects followed as `crate::net` and [`Transport`] allow
    /// (reqwest drops `Authorization` on a redirect to another host or port).
    pub follow: reqwest::blocking::Client,
    /// For token requests, which carry a password or identity token: no redirect followed.
    pub direct: reqwest::blocking::Client,
}

/// The HTTP clients for one registry: plain HTTP when `insecure` (loopback only), else TLS that
/// trusts what `tls::client_config` says.
pub(crate) fn http_client(
    reference: &Reference,
    insecure: bool,
    ca_files: &[PathBuf],
    timeout: Duration,
    reach: &crate::net::Reach,
) -> Result<HttpClients> {
    if insecure && !reference.is_loopback() {
        return Err(Error::Usage(format!(
            "plain HTTP (--insecure, --insecure-registry) is only allowed for registries on loopback, not {}",
            escape(&reference.registry)
        )));
    }
    let transport = Transport { plain_http: insecure };
    let tls = match insecure {
        true => None,
        false => Some(super::tls::client_config(&reference.registry, ca_files)?),
    };
    let build = |redirects| {
        let mut builder = reach.apply(crate::net::client_builder(timeout, redirects));
        if let Some(tls) = &tls {
            builder = builder.use_preconfigured_tls(tls.clone());
        }
        builder.build().map_err(|e| Error::Internal(format!("cannot set up the HTTP client: {e}")))
    };
    let rule = reach.clone();
    let follow = build(Redirects::Follow(Box::new(move |url| transport.check(url).and_then(|()| rule.check(url)))))?;
    Ok(HttpClients { follow, direct: build(Redirects::None)? })
}

/// A request that got no answer.
pub(crate) enum Failure {
    /// Another attempt may succeed: a refused or dropped connection, a timeout.
    Transient(String),
    /// No attempt will: the error to report now.
    Fatal(Error),
}

/// What a failed request to `reference`'s registry means.
pub(crate) fn classify(reference: &Reference, e: &reqwest::Error) -> Failure {
    let registry = &reference.registry;
    if e.is_builder() || e.is_redirect() {
        return Failure::Fatal(registry_error(registry, http_cause(e)));
    }
    let Some(tls) = super::tls::tls_cause(e) else { return Failure::Transient(http_cause(e)) };
    let (message, hint) = (super::tls::sentence(tls), super::tls::hint(tls, reference));
    Failure::Fatal(Error::Registry { registry: registry.clone(), message, hint: Some(hint) })
}

/// A registry's answer that is not what was asked for: what it says, escaped (it is the
/// server's text: it cannot drive the terminal or forge lines), the error codes of its JSON
/// body, and how long it asks to wait (`Retry-After`).
pub(crate) struct Refused {
    pub status: reqwest::StatusCode,
    pub text: String,
    pub codes: Vec<String>,
    pub retry_after: Option<Duration>,
}

impl Refused {
    pub(crate) fn read(response: Response) -> Refused {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::retry::retry_after);
        // Only an explanation: a body too long or too slow is left unread, not waited for.
        let body = crate::net::read_small(response, crate::net::MAX_ERROR_BODY, crate::net::ERROR_BODY_DEADLINE)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let errors = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
            .unwrap_or_default();
        let codes = errors.iter().map(|e| e["code"].as_str().unwrap_or("?").to_string()).collect::<Vec<_>>();
        let detail = errors
            .iter()
            .zip(&codes)
            .map(|(e, code)| format!("{code}: {}", e["message"].as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; ");
        let text =
            if detail.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {}", escape(&detail)) };
        Refused { status, text, codes, retry_after }
    }

    /// Whether the registry says so with one of `codes`.
    pub(crate) fn says(&self, codes: &[&str]) -> bool {
        self.codes.iter().any(|c| codes.contains(&c.as_str()))
    }
}

/// The registry's own explanation, from its JSON error body, if it gave one.
pub(crate) fn explain(response: Response) -> String {
    Refused::read(response).text
}

pub(crate) fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// A registry error that gave up after retries, with what the retries were.
pub(crate) fn gave_up(gave: crate::retry::GaveUp<Error>) -> Error {
    gave.describe(|e, tail| match (e, tail) {
        (Error::Registry { registry, message, hint }, Some(tail)) => {
            Error::Registry { registry, message: format!("{message} {tail}"), hint }
        }
        (e, _) => e,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn host() -> impl Strategy<Value = (String, bool)> {
        prop_oneof![
            Just(("127.0.0.1".to_string(), true)),
            Just(("127.0.0.2".to_string(), true)),
            Just(("localhost".to_string(), true)),
            Just(("[::1]".to_string(), true)),
            Just(("registry.example.org".to_string(), false)),
            Just(("10.0.0.1".to_string(), false)),
            Just(("[2001:db8::1]".to_string(), false)),
            "[a-z]{1,8}\\.example".prop_map(|h| (h, false)),
        ]
    }

    proptest! {
        /// HTTPS always; plain HTTP only with --insecure and only to loopback; nothing else.
        #[test]
        fn only_https_or_insecure_loopback_http_is_requested(
            scheme in prop_oneof![Just("https"), Just("http"), Just("ftp"), Just("file")],
            (host, loopback) in host(),
            port in proptest::option::of(1u16..65535),
            path in "(/[a-z0-9%]{0,6}){0,3}",
            plain_http: bool,
        ) {
            let port = port.map_or_else(String::new, |p| format!(":{p}"));
            let Ok(url) = Url::parse(&format!("{scheme}://{host}{port}{path}")) else { return Ok(()) };
            let allowed = Transport { plain_http }.check(&url);
            let expected = scheme == "https" || (scheme == "http" && plain_http && loopback);
            prop_assert_eq!(allowed.is_ok(), expected, "{}: {:?}", url, allowed);
            if let Err(why) = allowed {
                prop_assert!(why.contains(&escape(url.as_str())), "{}", why);
            }
        }
    }

    #[test]
    fn a_url_the_registry_gives_is_resolved_against_it_and_checked() {
        let tls = Transport { plain_http: false };
        let base = "https://127.0.0.1:5000";
        assert_eq!(
            tls.resolve(base, "/v2/x/blobs/uploads/u1").unwrap().as_str(),
            "https://127.0.0.1:5000/v2/x/blobs/uploads/u1"
        );
        assert_eq!(tls.resolve(base, "//other.example/u").unwrap().as_str(), "https://other.example/u");
        let refused = tls.resolve(base, "http://127.0.0.2:5002/upload/u1\u{1b}[2J").unwrap_err();
        assert!(
            refused.contains("refusing plain HTTP to http://127.0.0.2:5002/upload/u1") && !refused.contains('\u{1b}')
        );
        let plain = Transport { plain_http: true };
        assert!(plain.resolve("http://127.0.0.1:5000", "/token").is_ok());
        assert!(plain.resolve("http://127.0.0.1:5000", "http://registry.example.org/token").is_err());
        let a = Url::parse("https://127.0.0.1:5000/v2/").unwrap();
        assert!(same_origin(&a, &Url::parse("https://127.0.0.1:5000/upload?x=1").unwrap()));
        for other in ["https://localhost:5000/", "https://127.0.0.1:5001/", "http://127.0.0.1:5000/"] {
            assert!(!same_origin(&a, &Url::parse(other).unwrap()), "{other}");
        }
    }
}
