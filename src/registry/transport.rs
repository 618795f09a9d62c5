//! The HTTP side of a registry connection: the reqwest client with the trust of `tls`, and what
//! a failed request means: worth another attempt (a dropped connection, a timeout) or not (a
//! certificate, a server that does not speak TLS), with the next step to take.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::Response;

use super::reference::Reference;
use crate::error::{escape, http_cause, Error, Result};

pub(crate) fn registry_error(registry: &str, message: impl Into<String>) -> Error {
    Error::Registry { registry: registry.to_string(), message: message.into(), hint: None }
}

/// An HTTP client for one registry: plain HTTP when `insecure` (loopback only), else TLS that
/// trusts what `tls::client_config` says.
pub(crate) fn http_client(
    reference: &Reference,
    insecure: bool,
    ca_files: &[PathBuf],
    timeout: Duration,
) -> Result<reqwest::blocking::Client> {
    if insecure && !reference.is_loopback() {
        return Err(Error::Usage(format!(
            "plain HTTP (--insecure, --insecure-registry) is only allowed for registries on loopback, not {}",
            escape(&reference.registry)
        )));
    }
    let mut builder = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")));
    if !insecure {
        builder = builder.use_preconfigured_tls(super::tls::client_config(&reference.registry, ca_files)?);
    }
    builder.build().map_err(|e| Error::Internal(format!("cannot set up the HTTP client: {e}")))
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
    if e.is_builder() {
        return Failure::Fatal(registry_error(registry, http_cause(e)));
    }
    let Some(tls) = super::tls::tls_cause(e) else { return Failure::Transient(http_cause(e)) };
    let (message, hint) = (super::tls::sentence(tls), super::tls::hint(tls, reference));
    Failure::Fatal(Error::Registry { registry: registry.clone(), message, hint: Some(hint) })
}

/// The registry's own explanation, from its JSON error body, if it gave one. It is the
/// server's text: escaped, so it cannot drive the terminal or forge lines.
pub(crate) fn explain(response: Response) -> String {
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
        Some(d) => format!("HTTP {status}: {}", escape(&d)),
        None => format!("HTTP {status}"),
    }
}

pub(crate) fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}
