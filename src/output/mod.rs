//! Outputs: where finished images go. Each format writes to a temporary path beside the
//! destination and renames it into place, so a reader never sees half an output.

pub mod archive;
pub mod layout;
pub mod vm;

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::image::StoredImage;

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

/// Writes `images` to `dest` in `format`; `name` is the repository a docker-archive tags them in.
pub fn write(
    store: &crate::store::Store,
    dest: &Path,
    format: Format,
    images: &[StoredImage],
    name: &str,
    epoch: u64,
) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    match format {
        Format::OciLayout => layout::write(store, dest, images),
        Format::OciArchive | Format::DockerArchive => {
            let docker = (format == Format::DockerArchive).then_some(name);
            archive::write(store, dest, images, docker, epoch)
        }
    }
}
