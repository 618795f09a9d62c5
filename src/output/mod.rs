//! Outputs: where finished images go. Each format writes to a temporary path beside the
//! destination and renames it into place, so a reader never sees half an output; and only an
//! output imgbuild wrote is ever replaced ([`destination`]).

pub(crate) mod archive;
pub(crate) mod destination;
pub(crate) mod layout;
pub(crate) mod vm;

use crate::error::Result;
use crate::image::StoredImage;
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

/// Writes `images` in `format` to `dest` (checked before the build), replacing it whole;
/// `name` is the repository a docker-archive tags them in.
pub(crate) fn write(
    store: &crate::store::Store,
    dest: &Destination,
    format: Format,
    images: &[StoredImage],
    name: &str,
    epoch: u64,
) -> Result<()> {
    let temp = TempPath::beside(dest.path())?;
    match format {
        Format::OciLayout => {
            layout::write(store, temp.path(), images)?;
            Destination::record(temp.path())?;
        }
        Format::OciArchive | Format::DockerArchive => {
            let docker = (format == Format::DockerArchive).then_some(name);
            archive::write(store, temp.path(), images, docker, epoch)?
        }
    }
    dest.replace_with(temp)
}
