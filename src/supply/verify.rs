//! `imgbuild verify`: reads an image's provenance and compares the image with its rebuild
//! (`crate::verify`, above `build`, makes it from the files and pins the provenance records). Every digest must match byte for byte; otherwise it names what
//! differs first: a platform, a layer (and which file in it, from the two entry lists as they
//! stream), the config, the manifest, the index, or an attached document.
//!
//! The provenance is not trusted: it only says what to build. Whatever it claims, the image
//! passes only if building those inputs gives exactly its bytes.

use std::io;
use std::path::Path;

use serde_json::Value;

use super::entries::{hashed_layer, summarize};
use super::image_name::{read_document, subjects, OpenedImage};
use super::provenance::{self, Provenance};
use super::{CYCLONEDX_TYPE, IN_TOTO_TYPE, SPDX_TYPE};
use crate::digest::Sha256Digest;
use crate::error::{escape, Error, IoContext, Result};
use crate::image::{StoredImage, WrittenImage};
use crate::layer::tar_guard::TarGuard;
use crate::store::Store;

/// What a successful verification established.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Verified {
    pub digest: Sha256Digest,
    pub image: String,
    pub tag: String,
    pub node: Option<u32>,
    pub platforms: Vec<String>,
    pub layers: usize,
    /// Attached documents (SBOMs, provenance) found identical to the rebuilt ones.
    pub documents: usize,
    /// The imgbuild version the provenance names (the rebuild used this one).
    pub built_by: String,
}

/// The provenance attached to `image` that names it as its subject.
pub(crate) fn provenance_of(store: &Store, image: &OpenedImage) -> Result<Provenance> {
    let attached: Vec<_> =
        image.referrers.iter().filter(|r| r.artifact_type == IN_TOTO_TYPE && r.subject == image.digest).collect();
    let Some(first) = attached.first() else {
        return Err(Error::BadArchive {
            archive: format!("image {}", image.digest),
            message: "carries no provenance (no application/vnd.in-toto+json referrer): it was not built by \
imgbuild, or its referrers were not copied with it"
                .into(),
        });
    };
    let provenance = provenance::parse(&document_of(store, &first.digest)?, &format!("provenance {}", first.digest))?;
    if !provenance.subjects.contains(&image.digest) {
        let named: Vec<String> = provenance.subjects.iter().map(ToString::to_string).collect();
        return Err(Error::Mismatch(format!(
            "the provenance attached to {} names another image as its subject ({})",
            image.digest,
            named.join(", ")
        )));
    }
    Ok(provenance)
}

/// The document an artifact manifest carries (its one layer).
pub(crate) fn document_of(store: &Store, artifact: &Sha256Digest) -> Result<Vec<u8>> {
    let doc = read_document(store, artifact)?;
    let layer = match doc.layers.as_slice() {
        [only] => only.digest,
        _ => {
            return Err(Error::Store {
                path: store.sha256_path(artifact),
                message: "an artifact manifest that does not carry exactly one document".into(),
            })
        }
    };
    store.read_blob(&layer)
}

/// A new directory (for the project a provenance carries, for a render of `diff`), removed
/// when dropped. It is under the system's temporary directory, not the store's `tmp/`, which
/// holds only files.
pub(crate) struct TempProject(tempfile::TempDir);

impl TempProject {
    /// A new scratch directory under the system's temporary directory: a random name, made
    /// with mode 0700 and create-new, so nothing another user planted there is ever written
    /// through; removed with everything in it when dropped.
    pub(crate) fn create(what: &str) -> Result<TempProject> {
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new().prefix(&format!("imgbuild-{what}-")).tempdir_in(&tmp).at(&tmp)?;
        Ok(TempProject(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Compares the image with its rebuild: the image, then every attached document imgbuild writes.
/// Explaining a difference reads layers; each may unpack `limit` bytes (`IMGBUILD_MAX_UNPACKED`).
pub(crate) fn compare(
    store: &Store,
    image: &OpenedImage,
    provenance: &Provenance,
    rebuilt: &StoredImage,
    limit: u64,
) -> Result<Verified> {
    if image.digest != rebuilt.digest {
        let why = explain_image(store, &image.digest, rebuilt, limit)?;
        return Err(Error::Mismatch(format!(
            "{} is not what its provenance builds (rebuilt: {}): {why}",
            image.digest, rebuilt.digest
        )));
    }
    let documents = compare_documents(store, image, rebuilt)?;
    Ok(Verified {
        digest: image.digest,
        image: provenance.image.clone(),
        tag: provenance.tag.clone(),
        node: provenance.node,
        platforms: rebuilt.platforms.iter().map(|p| p.platform.clone()).collect(),
        layers: rebuilt.platforms.iter().map(|p| p.layers.len()).sum(),
        documents,
        built_by: provenance.imgbuild.clone(),
    })
}

/// Every document imgbuild writes that is attached to the image (or its platform manifests)
/// must be the one the rebuild attached; returns how many there are.
fn compare_documents(store: &Store, image: &OpenedImage, rebuilt: &StoredImage) -> Result<usize> {
    let subjects = subjects(store, &image.digest)?;
    let mut documents = 0;
    for attached in image.referrers.iter().filter(|r| subjects.contains(&r.subject)) {
        if ![SPDX_TYPE, CYCLONEDX_TYPE, IN_TOTO_TYPE].contains(&attached.artifact_type.as_str()) {
            continue; // Not one of imgbuild's (a signature, say): not ours to judge.
        }
        let ours = rebuilt
            .referrers
            .iter()
            .find(|r| r.artifact_type == attached.artifact_type && r.subject == attached.subject);
        let Some(ours) = ours else {
            return Err(Error::Mismatch(format!(
                "a {} document is attached to {}, where the rebuild has none",
                escape(&attached.artifact_type),
                attached.subject
            )));
        };
        if ours.digest != attached.digest {
            let why = json_difference(&document_of(store, &attached.digest)?, &store.read_blob(&ours.document)?);
            return Err(Error::Mismatch(format!(
                "the {} document attached to {} differs from the rebuilt one: {why}",
                attached.artifact_type, attached.subject
            )));
        }
        documents += 1;
    }
    Ok(documents)
}

/// What differs first between the image `theirs` and its rebuild.
fn explain_image(store: &Store, theirs: &Sha256Digest, rebuilt: &StoredImage, limit: u64) -> Result<String> {
    let doc = read_document(store, theirs)?;
    let manifests: Vec<(Option<String>, Sha256Digest)> = match &doc.manifests {
        Some(children) => children.iter().map(|c| (c.platform.as_ref().map(|p| p.text()), c.digest)).collect(),
        None => vec![(None, *theirs)],
    };
    if manifests.len() != rebuilt.platforms.len() {
        return Ok(format!(
            "the image has {} platform manifest(s), the rebuild {} ({})",
            manifests.len(),
            rebuilt.platforms.len(),
            rebuilt.platforms.iter().map(|p| p.platform.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    for (ours, (platform, digest)) in rebuilt.platforms.iter().zip(&manifests) {
        if platform.as_ref().is_some_and(|p| *p != ours.platform) {
            return Ok(format!(
                "the image has a {} manifest where the rebuild has {}",
                escape_opt(platform),
                ours.platform
            ));
        }
        if *digest != ours.manifest_digest {
            return Ok(format!("{}: {}", ours.platform, explain_manifest(store, digest, ours, limit)?));
        }
    }
    Ok(format!("the index differs {}", json_difference(&store.read_blob(theirs)?, &store.read_blob(&rebuilt.digest)?)))
}

fn escape_opt(text: &Option<String>) -> String {
    escape(text.as_deref().unwrap_or(""))
}

fn explain_manifest(store: &Store, theirs: &Sha256Digest, ours: &WrittenImage, limit: u64) -> Result<String> {
    let doc = read_document(store, theirs)?;
    let Some(config) = &doc.config else {
        return Ok(format!("{theirs} is not an image manifest"));
    };
    for (n, (layer, rebuilt)) in doc.layers.iter().zip(&ours.layers).enumerate() {
        if layer.digest != rebuilt.digest.0 {
            return Ok(format!(
                "layer {} of {} ({}) differs: {}",
                n + 1,
                ours.layers.len(),
                rebuilt.created_by,
                explain_layer(store, &layer.digest, &rebuilt.digest.0, limit)
            ));
        }
    }
    if doc.layers.len() != ours.layers.len() {
        return Ok(format!("the image has {} layers, the rebuild {}", doc.layers.len(), ours.layers.len()));
    }
    if config.digest != ours.config_digest {
        let why = json_difference(&store.read_blob(&config.digest)?, &store.read_blob(&ours.config_digest)?);
        return Ok(format!("the same layers, but the config differs {why}"));
    }
    let why = json_difference(&store.read_blob(theirs)?, &store.read_blob(&ours.manifest_digest)?);
    Ok(format!("the same layers and config, but the manifest differs {why}"))
}

/// Which entry differs first between two layers, read side by side as they stream; or, when
/// every entry is the same, whether the tar stream or only its compression differs.
fn explain_layer(store: &Store, theirs: &Sha256Digest, ours: &Sha256Digest, limit: u64) -> String {
    match compare_layers(store, theirs, ours, limit) {
        Ok(why) => why,
        Err(e) => format!("the image's layer {theirs} cannot be read as a tar stream ({e})"),
    }
}

fn compare_layers(store: &Store, theirs: &Sha256Digest, ours: &Sha256Digest, limit: u64) -> Result<String> {
    let mut a = tar::Archive::new(TarGuard::for_image_layer(hashed_layer(store, theirs, limit)?));
    let mut b = tar::Archive::new(TarGuard::for_image_layer(hashed_layer(store, ours, limit)?));
    let read_err = |e: io::Error| Error::BadArchive { archive: format!("layer {theirs}"), message: e.to_string() };
    {
        let mut ea = a.entries().map_err(read_err)?;
        let mut eb = b.entries().map_err(read_err)?;
        loop {
            match (ea.next(), eb.next()) {
                (None, None) => break,
                (Some(x), None) => {
                    let x = summarize(&mut x.map_err(read_err)?).map_err(read_err)?;
                    return Ok(format!(
                        "`{}` is in the image only (the rebuilt layer ends before it)",
                        escape(&x.path)
                    ));
                }
                (None, Some(y)) => {
                    let y = summarize(&mut y.map_err(read_err)?).map_err(read_err)?;
                    return Ok(format!("the image's layer ends where the rebuild has `{}`", escape(&y.path)));
                }
                (Some(x), Some(y)) => {
                    let x = summarize(&mut x.map_err(read_err)?).map_err(read_err)?;
                    let y = summarize(&mut y.map_err(read_err)?).map_err(read_err)?;
                    if let Some(why) = x.difference(&y) {
                        return Ok(why);
                    }
                }
            }
        }
    }
    let (ta, tb) = (
        a.into_inner().into_inner().finish().map_err(read_err)?,
        b.into_inner().into_inner().finish().map_err(read_err)?,
    );
    Ok(if ta == tb {
        "the same files and the same tar stream, compressed differently (another gzip --level, or another compressor)"
            .to_string()
    } else {
        "the same files, but the tar stream differs (headers, padding or extension records)".to_string()
    })
}

/// `at PATH: the image has A, the rebuild B` for the first place two JSON documents differ.
pub(crate) fn json_difference(theirs: &[u8], ours: &[u8]) -> String {
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b);
    match (parse(theirs), parse(ours)) {
        (Ok(a), Ok(b)) => first_difference(&a, &b, "").unwrap_or_else(|| "(in its encoding only)".to_string()),
        _ => "(one of the two is not JSON)".to_string(),
    }
}

fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                first_difference(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &format!("{at}.{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            let found =
                x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}[{i}]")));
            found.or_else(|| {
                (x.len() != y.len())
                    .then(|| format!("at `{}`: {} items in the image, {} rebuilt", escape(at), x.len(), y.len()))
            })
        }
        _ if a == b => None,
        _ => Some(format!("at `{}`: {} in the image, {} rebuilt", escape(at), shown(a), shown(b))),
    }
}

/// A JSON value, shortened for a message.
fn shown(v: &Value) -> String {
    let text = if v.is_null() { "nothing".to_string() } else { v.to_string() };
    let short: String = text.chars().take(120).collect();
    let more = if short.len() < text.len() { "…" } else { "" };
    format!("{}{more}", escape(&short))
}

#[cfg(test)]
mod tests {
    use super::json_difference;

    #[test]
    fn json_differences_name_the_first_path_that_differs() {
        let a = br#"{"config":{"Labels":{"id":"1","x":"y"}},"layers":[1,2]}"#;
        let b = br#"{"config":{"Labels":{"id":"2","x":"y"}},"layers":[1,2,3]}"#;
        assert_eq!(json_difference(a, b), r#"at `.config.Labels.id`: "1" in the image, "2" rebuilt"#);
        let c = br#"{"config":{"Labels":{"id":"1","x":"y"}},"layers":[1,2,3]}"#;
        assert_eq!(json_difference(a, c), "at `.layers`: 2 items in the image, 3 rebuilt");
        assert_eq!(json_difference(b"{}", br#"{"k":1}"#), "at `.k`: nothing in the image, 1 rebuilt");
    }
}
