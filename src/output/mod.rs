//! Outputs: where finished images go. Each format writes to a temporary path beside the
//! destination and renames it into place, so a reader never sees half an output; and only an
//! output imgbuild wrote is ever replaced ([`destination`]).

pub mod archive;
pub(crate) mod destination;
pub mod layout;
pub mod vm;

use oci_spec::image::Descriptor;

use crate::digest::Sha256Digest;
use crate::error::Result;
pub(crate) use destination::{Destination, Force, Shape, TempPath};

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

    pub(crate) fn shape(self) -> Shape {
        if self.is_archive() {
            Shape::Archive
        } else {
            Shape::Directory
        }
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

/// Whether `name` is 64 lowercase hex digits: a sha256 blob's file name.
pub(crate) fn is_sha256_hex(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes `images` in `format` to `dest` (checked before the build), replacing it whole.
pub(crate) fn write(
    store: &crate::store::Store,
    dest: &Destination,
    format: Format,
    images: &[OutputImage],
    epoch: u64,
) -> Result<()> {
    let temp = TempPath::beside(dest.path())?;
    match format {
        Format::OciLayout => {
            layout::write(store, temp.path(), images)?;
            Destination::record(temp.path())?;
        }
        Format::OciArchive | Format::DockerArchive => {
            archive::write(store, temp.path(), images, format == Format::DockerArchive, epoch)?
        }
    }
    dest.replace_with(temp)
}
