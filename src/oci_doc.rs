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
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// An OCI 1.1 artifact manifest: the manifest it is attached to, and what it carries.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
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
