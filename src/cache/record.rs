//! The record a cache keeps for one layer: an OCI artifact manifest tagged `deriv-<hex>` (the
//! layer's derivation hash), whose one layer is the layer's blob and whose annotations name the
//! derivation and the layer's diff_id. Listing the blob as a layer keeps it in the registry for
//! as long as the record (a registry's garbage collection keeps what a tagged manifest names).
//!
//! A record read back is only a claim: `parse` checks that it is one of imgbuild's, for the
//! derivation asked for and in the layer format this build writes, and returns its signature
//! (the annotation `org.imgbuild.signature`, over [`super::sign::fingerprint`]), which the
//! cache checks against the keys the user trusts; the blob's digest is checked as it streams
//! in (`receive`).

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{ImageManifestBuilder, MediaType};

use crate::digest::{BlobDigest, DiffId, Sha256Digest};
use crate::error::{escape, Error, Result};
use crate::image::{canonical_json, descriptor};
use crate::layer::FORMAT_VERSION;
use crate::store::LayerRecord;

/// The artifact type of a layer record.
pub(crate) const ARTIFACT_TYPE: &str = "application/vnd.imgbuild.layer.v1";
pub(crate) const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty JSON object the image spec's artifact guidance uses as an artifact's config.
pub(crate) const EMPTY_CONFIG: &[u8] = b"{}";

const DERIVATION: &str = "org.imgbuild.derivation";
const DIFF_ID: &str = "org.imgbuild.layer.diff_id";
const FORMAT: &str = "org.imgbuild.layer-format";
const SIGNATURE: &str = "org.imgbuild.signature";

/// A record as read: the layer it names and the signature it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub layer: LayerRecord,
    pub signature: Option<String>,
}

/// The tag a layer's record is put under.
pub(crate) fn tag(derivation: &Sha256Digest) -> String {
    format!("deriv-{}", derivation.hex())
}

/// The record of `layer` (a blob of `media_type`), built for `derivation` and signed with
/// `signature`: the same bytes on every machine.
pub(crate) fn manifest(
    derivation: &Sha256Digest,
    media_type: &str,
    layer: &LayerRecord,
    signature: &str,
) -> Result<Vec<u8>> {
    let annotations: HashMap<String, String> = [
        (DERIVATION, derivation.to_string()),
        (DIFF_ID, layer.diff_id.0.to_string()),
        (FORMAT, FORMAT_VERSION.to_string()),
        (SIGNATURE, signature.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let empty = Sha256Digest::of(EMPTY_CONFIG);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(ARTIFACT_TYPE.to_string()))
        .config(descriptor(MediaType::EmptyJSON, &empty, EMPTY_CONFIG.len() as u64))
        .layers(vec![descriptor(MediaType::from(media_type), &layer.digest.0, layer.size)])
        .annotations(annotations)
        .build()
        .map_err(|e| Error::Internal(format!("building a cache record: {e}")))?;
    // canonical_json sorts the annotations, so the bytes do not depend on a hash map's order.
    Ok(canonical_json(&manifest))
}

#[derive(serde::Deserialize)]
struct Received {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    #[serde(default)]
    layers: Vec<crate::oci_doc::Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The layer a record names, if it is imgbuild's record of `derivation` in this layer format,
/// for a blob of `media_type` of at most `max_size` bytes; else why it is refused.
pub(crate) fn parse(bytes: &[u8], derivation: &Sha256Digest, media_type: &str, max_size: u64) -> Result<Entry, String> {
    let received: Received =
        serde_json::from_slice(bytes).map_err(|e| format!("not an OCI manifest: {}", escape(&e.to_string())))?;
    if received.schema_version != 2 {
        return Err(format!("schemaVersion {} (expected 2)", received.schema_version));
    }
    match received.artifact_type.as_deref() {
        Some(ARTIFACT_TYPE) => {}
        other => return Err(format!("artifactType {} (expected {ARTIFACT_TYPE})", shown(other))),
    }
    let annotation = |key: &str| received.annotations.get(key).map(String::as_str);
    if annotation(DERIVATION) != Some(derivation.to_string().as_str()) {
        return Err(format!("it is the record of derivation {}, not {derivation}", shown(annotation(DERIVATION))));
    }
    if annotation(FORMAT) != Some(FORMAT_VERSION.to_string().as_str()) {
        return Err(format!("layer format {} (this build writes {FORMAT_VERSION})", shown(annotation(FORMAT))));
    }
    let diff_id: Sha256Digest = annotation(DIFF_ID)
        .ok_or_else(|| format!("no {DIFF_ID} annotation"))?
        .parse()
        .map_err(|e| format!("{DIFF_ID}: {}", escape(&format!("{e}"))))?;
    let [layer] = received.layers.as_slice() else {
        return Err(format!("{} layers (expected one)", received.layers.len()));
    };
    if layer.media_type != media_type {
        return Err(format!("a layer of type {} (expected {media_type})", shown(Some(&layer.media_type))));
    }
    if layer.size == 0 || layer.size > max_size {
        return Err(format!("a layer of {} bytes (at most {max_size})", layer.size));
    }
    let layer = LayerRecord { digest: BlobDigest(layer.digest), diff_id: DiffId(diff_id), size: layer.size };
    Ok(Entry { layer, signature: annotation(SIGNATURE).map(str::to_string) })
}

fn shown(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("`{}`", escape(v)),
        None => "missing".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{MEDIA_TYPE_GZIP as GZIP, MEDIA_TYPE_ZSTD as ZSTD};
    use proptest::prelude::*;

    fn layer() -> LayerRecord {
        LayerRecord {
            digest: BlobDigest(Sha256Digest::of(b"blob")),
            diff_id: DiffId(Sha256Digest::of(b"tar")),
            size: 1234,
        }
    }

    const SIGNED: &str = "team-1:c2lnbmF0dXJl";

    fn key() -> Sha256Digest {
        Sha256Digest::of(b"derivation")
    }

    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value =
            serde_json::from_slice(&manifest(&key(), GZIP, &layer(), SIGNED).unwrap()).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_record_reads_back_as_the_layer_it_was_written_for() {
        let bytes = manifest(&key(), GZIP, &layer(), SIGNED).unwrap();
        let read = parse(&bytes, &key(), GZIP, 1 << 20).unwrap();
        assert_eq!(read, Entry { layer: layer(), signature: Some(SIGNED.into()) });
        let zstd = manifest(&key(), ZSTD, &layer(), SIGNED).unwrap();
        assert_eq!(parse(&zstd, &key(), ZSTD, 1 << 20).unwrap().layer, layer());
        assert!(parse(&zstd, &key(), GZIP, 1 << 20).unwrap_err().contains("type"));
        assert_eq!(bytes, manifest(&key(), GZIP, &layer(), SIGNED).unwrap(), "the same bytes every time");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""artifactType":"application/vnd.imgbuild.layer.v1""#), "{text}");
        assert!(text.contains(r#""mediaType":"application/vnd.oci.empty.v1+json""#), "{text}");
        assert_eq!(tag(&key()).len(), "deriv-".len() + 64);
    }

    #[test]
    fn a_record_for_something_else_is_refused() {
        let other = Sha256Digest::of(b"other derivation");
        assert!(parse(&manifest(&key(), GZIP, &layer(), SIGNED).unwrap(), &other, GZIP, 1 << 20)
            .unwrap_err()
            .contains("derivation"));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (edited(|v| v["artifactType"] = "application/vnd.other".into()), "artifactType"),
            (edited(|v| v["annotations"]["org.imgbuild.layer-format"] = "1".into()), "layer format"),
            (edited(|v| v["annotations"]["org.imgbuild.layer.diff_id"] = "sha256:12".into()), "diff_id"),
            (edited(|v| v["annotations"].as_object_mut().unwrap().clear()), "derivation"),
            (edited(|v| v["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into()), "type"),
            (edited(|v| v["layers"][0]["size"] = 0.into()), "bytes"),
            (edited(|v| v["layers"][0]["size"] = (2u64 << 20).into()), "at most"),
            (edited(|v| v["layers"].as_array_mut().unwrap().clear()), "0 layers"),
            (edited(|v| v["schemaVersion"] = 1.into()), "schemaVersion"),
            (b"{\"layers\": 3}".to_vec(), "not an OCI manifest"),
        ];
        for (bytes, why) in cases {
            let refused = parse(&bytes, &key(), GZIP, 1 << 20).unwrap_err();
            assert!(refused.contains(why), "{why}: {refused}");
        }
    }

    #[test]
    fn values_from_a_record_are_escaped() {
        let bytes = edited(|v| v["artifactType"] = "evil\u{1b}[2J".into());
        let refused = parse(&bytes, &key(), GZIP, 1 << 20).unwrap_err();
        assert!(!refused.contains('\u{1b}'), "{refused}");
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, &key(), GZIP, 1 << 20);
        }

        #[test]
        fn any_change_to_a_record_is_refused_or_reads_as_what_it_says(
            at in 0usize..600, byte in 0x20u8..0x7f
        ) {
            let mut bytes = manifest(&key(), GZIP, &layer(), SIGNED).unwrap();
            let at = at % bytes.len();
            bytes[at] = byte;
            if let Ok(read) = parse(&bytes, &key(), GZIP, 1 << 20) {
                // Whatever a changed record names is what is then checked against the blob.
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let digest = |v: &serde_json::Value| v.as_str().unwrap().parse::<Sha256Digest>().unwrap();
                let read = read.layer;
                prop_assert_eq!(read.digest.0, digest(&value["layers"][0]["digest"]));
                prop_assert_eq!(read.size, value["layers"][0]["size"].as_u64().unwrap());
                prop_assert_eq!(read.diff_id.0, digest(&value["annotations"]["org.imgbuild.layer.diff_id"]));
            }
        }
    }
}
