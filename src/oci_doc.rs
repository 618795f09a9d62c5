//! A permissive reader for the manifests and indexes imgbuild receives (from layouts, archives
//! and registries): OCI and Docker media types alike, only the fields that locate content.
//! (Documents imgbuild writes are built with oci-spec's strict types in `image.rs`.)

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Sha256Digest;

#[derive(Debug, Deserialize)]
pub(crate) struct Document {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// Present in an index (or Docker manifest list).
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// Present in an image manifest.
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default, deserialize_with = "capped_layers")]
    pub layers: Vec<Descriptor>,
    /// An OCI 1.1 artifact manifest: the manifest it is attached to, and what it carries.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
}

/// The most layers a manifest may list. Every layer may cost a command a request (`verify`,
/// `diff`); real images have tens (Docker's overlay stops at 127), a hostile one 3000 or more.
pub(crate) const MAX_LAYERS: usize = 1000;

fn capped_layers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Descriptor>, D::Error> {
    let layers = Vec::<Descriptor>::deserialize(d)?;
    if layers.len() > MAX_LAYERS {
        return Err(serde::de::Error::custom(format!(
            "the manifest lists {} layers, more than imgbuild reads (MAX_LAYERS {MAX_LAYERS})",
            layers.len()
        )));
    }
    Ok(layers)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Sha256Digest,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DescriptorPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl DescriptorPlatform {
    /// `linux/arm64/v8` form, as `--platform` takes it.
    pub(crate) fn text(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

impl Document {
    pub(crate) fn is_index(&self) -> bool {
        self.manifests.is_some()
            || matches!(
                self.media_type.as_deref(),
                Some(
                    "application/vnd.oci.image.index.v1+json"
                        | "application/vnd.docker.distribution.manifest.list.v2+json"
                )
            )
    }

    /// The media type to send it with: its own, or the OCI type its shape says.
    pub(crate) fn media_type(&self) -> String {
        self.media_type.clone().unwrap_or_else(|| {
            if self.is_index() {
                "application/vnd.oci.image.index.v1+json"
            } else {
                "application/vnd.oci.image.manifest.v1+json"
            }
            .to_string()
        })
    }

    /// The config and layers of an image manifest.
    pub(crate) fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(&self.layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: usize) -> Vec<u8> {
        let layer = serde_json::json!({ "mediaType": "x", "digest": format!("sha256:{}", "e".repeat(64)), "size": 1 });
        serde_json::json!({ "schemaVersion": 2, "layers": vec![layer; layers] }).to_string().into_bytes()
    }

    #[test]
    fn a_manifest_lists_at_most_max_layers() {
        let read = |n| serde_json::from_slice::<Document>(&manifest(n));
        assert_eq!(read(MAX_LAYERS).unwrap().layers.len(), MAX_LAYERS);
        let err = read(MAX_LAYERS + 1).unwrap_err().to_string();
        assert!(err.contains("lists 1001 layers") && err.contains("MAX_LAYERS 1000"), "{err}");
    }
}
