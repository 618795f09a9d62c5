//! OCI 1.1 referrers on a registry: listed through the referrers API where the registry has
//! one, else through the fallback tag `sha256-<hex>` (an index of the referrers) that
//! registries without it (Debian's `docker-registry` 2.8) serve; pushed the same two ways.

use reqwest::header::ACCEPT;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::budget::Budget;
use super::client::{Client, Put};
use super::transport::explain;
use crate::digest::Sha256Digest;
use crate::error::Result;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The fallback tag of `subject`'s referrers: `sha256-<hex>`.
pub(crate) fn fallback_tag(subject: &Sha256Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// One artifact manifest a registry lists as attached to a subject: a hint, until it is
/// fetched and names the subject itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub digest: Sha256Digest,
    /// The type the listing gives it (the referrers API and the fallback tag both carry it).
    pub artifact_type: Option<String>,
}

/// The artifact manifests attached to `subject`, each digest once: from the referrers API, or
/// from the fallback tag when the registry has no such API. Each is still to be fetched and
/// checked. Every listing is counted in the client's budget.
pub(crate) fn list(client: &Client, subject: &Sha256Digest) -> Result<Vec<Listed>> {
    let url = client.url(&format!("referrers/{subject}"));
    client.budget.document().map_err(|why| client.error(why))?;
    let r = client.send(|| client.http.get(&url).header(ACCEPT, INDEX))?;
    let index = if r.status().is_success() {
        Some(read_index(client, r, "the referrers API", Some(&client.budget))?)
    } else if matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) {
        fallback_index(client, subject, Some(&client.budget))?
    } else {
        return Err(client.error(format!("listing the referrers of {subject}: {}", explain(r))));
    };
    let manifests = index.as_ref().and_then(|i| i["manifests"].as_array()).cloned().unwrap_or_default();
    let (mut listed, mut seen) = (Vec::new(), std::collections::HashSet::new());
    for d in &manifests {
        let Some(digest) = d["digest"].as_str().and_then(|s| s.parse::<Sha256Digest>().ok()) else { continue };
        if seen.insert(digest) {
            listed.push(Listed { digest, artifact_type: d["artifactType"].as_str().map(str::to_string) });
        }
    }
    Ok(listed)
}

/// The index the fallback tag of `subject` holds, if there is one; counted in `budget` when
/// the registry's listing is walked (not when a push adds to it: that is the pusher's own).
fn fallback_index(client: &Client, subject: &Sha256Digest, budget: Option<&Budget>) -> Result<Option<Value>> {
    let url = client.url(&format!("manifests/{}", fallback_tag(subject)));
    budget.map_or(Ok(()), Budget::document).map_err(|why| client.error(why))?;
    let r = client.send(|| client.http.get(&url).header(ACCEPT, INDEX))?;
    match r.status() {
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => Ok(Some(read_index(client, r, "the referrers tag", budget)?)),
        _ => Err(client.error(format!("getting {}: {}", fallback_tag(subject), explain(r)))),
    }
}

fn read_index(client: &Client, r: reqwest::blocking::Response, what: &str, budget: Option<&Budget>) -> Result<Value> {
    let bytes = crate::net::read_small(r, crate::store::MAX_DOCUMENT, client.timeout)
        .map_err(|e| client.error(format!("reading {what}: {e}")))?;
    budget.map_or(Ok(()), |b| b.bytes(bytes.len() as u64)).map_err(|why| client.error(why))?;
    serde_json::from_slice(&bytes).map_err(|e| client.error(format!("{what} answered what is not an index: {e}")))
}

/// Puts the artifact manifest `bytes` (attached to `subject`) by its digest. A registry with the
/// referrers API says so with `OCI-Subject`; for any other, the manifest is added to the
/// fallback tag's index (created when missing; left alone when it lists the manifest already).
/// That index is read, changed and written back, so two pushes adding different referrers at
/// once may lose one: it is read again, and [`Put::Again`] (retry) when it lacks the manifest.
pub(crate) fn put(client: &Client, bytes: &[u8], subject: &Sha256Digest, artifact_type: &str) -> Result<Put> {
    let digest = Sha256Digest::of(bytes);
    let stored = client.try_put_manifest(&digest.to_string(), MANIFEST, bytes)?;
    let Put::Stored { subject: indexed } = &stored else { return Ok(stored) };
    if indexed.as_deref() == Some(&subject.to_string()) {
        return Ok(stored);
    }
    let listed = |index: &Value| {
        index["manifests"].as_array().is_some_and(|m| m.iter().any(|d| d["digest"] == digest.to_string()))
    };
    let mut index = fallback_index(client, subject, None)?
        .unwrap_or_else(|| json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": [] }));
    if listed(&index) {
        return Ok(stored);
    }
    let entry = json!({ "mediaType": MANIFEST, "digest": digest.to_string(), "size": bytes.len(), "artifactType": artifact_type });
    match index["manifests"].as_array_mut() {
        Some(manifests) => manifests.push(entry),
        None => index["manifests"] = json!([entry]),
    }
    let body = crate::image::canonical_json(&index);
    let tag = fallback_tag(subject);
    let stored = client.try_put_manifest(&tag, INDEX, &body)?;
    let Put::Stored { .. } = stored else { return Ok(stored) };
    match fallback_index(client, subject, None)? {
        Some(index) if listed(&index) => Ok(stored),
        _ => Ok(Put::Again(client.error(format!("{tag}: another push replaced the index without {digest}")))),
    }
}
