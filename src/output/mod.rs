//! Outputs: where finished images go. Each format writes to a temporary path beside the
//! destination and renames it into place, so a reader never sees half an output.

pub mod archive;
pub mod layout;
pub mod vm;

use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::digest::Sha256Digest;
use crate::error::{IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// An OCI image layout directory.
    #[value(name = "oci")]
    OciLayout,
    /// The OCI layout as one tar file (`oci-archive:` for skopeo and podman).
    OciArchive,
    /// A tar file that `docker load` accepts (also holds the OCI layout).
    DockerArchive,
}

impl Format {
    pub fn is_archive(self) -> bool {
        self != Format::OciLayout
    }
}

/// One tagged image of an output.
#[derive(Debug, Clone)]
pub struct OutputImage {
    /// The tag (`node-1`), written as `org.opencontainers.image.ref.name`.
    pub tag: String,
    /// The manifest or index the tag points at.
    pub descriptor: Descriptor,
    /// Every blob the image needs (manifests, configs, layers, index).
    pub blobs: Vec<Sha256Digest>,
    /// For docker-archive: the single-platform config and layers.
    pub docker: Option<DockerImage>,
}

#[derive(Debug, Clone)]
pub struct DockerImage {
    pub repo_tag: String,
    pub config: Sha256Digest,
    pub layers: Vec<Sha256Digest>,
}

/// A temporary sibling of `dest`, unique to this process.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Replaces `dest` (file or directory) with `temp`.
pub fn replace(temp: &Path, dest: &Path) -> Result<()> {
    if dest.is_dir() {
        let old = dest.with_file_name(format!(
            ".{}.old-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(dest, &old).at(dest)?;
        std::fs::rename(temp, dest).at(dest)?;
        std::fs::remove_dir_all(&old).at(&old)?;
    } else {
        std::fs::rename(temp, dest).at(dest)?;
    }
    Ok(())
}

/// Writes `images` to `dest` in `format`.
pub fn write(
    store: &crate::store::Store,
    dest: &Path,
    format: Format,
    images: &[OutputImage],
    epoch: u64,
) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    match format {
        Format::OciLayout => layout::write(store, dest, images),
        Format::OciArchive | Format::DockerArchive => {
            archive::write(store, dest, images, format == Format::DockerArchive, epoch)
        }
    }
}
