//! oci-archive and docker-archive: the OCI layout as one tar stream, written in a fixed order
//! with fixed metadata. The docker-archive adds `manifest.json`, which `docker load` reads
//! (Docker 25 and later write this same combined form).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use tar::{EntryType, Header};

use super::layout::{all_blobs, index_json, OCI_LAYOUT};
use crate::error::{Error, IoContext, Result};
use crate::image::StoredImage;
use crate::store::Store;

fn header(entry_type: EntryType, mode: u32, size: u64, epoch: u64) -> Header {
    crate::layer::fixed_header(Header::new_ustar(), entry_type, mode, epoch, size)
}

/// `manifest.json`, which `docker load` reads: each image's config and layers, tagged `name:TAG`.
fn docker_manifest(images: &[StoredImage], name: &str) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    for img in images {
        let single = img.single_platform().ok_or_else(|| {
            Error::Usage(format!(
                "image `{}` has several platforms; docker-archive holds one (choose one with --platform)",
                img.tag
            ))
        })?;
        entries.push(serde_json::json!({
            "Config": format!("blobs/sha256/{}", single.config_digest.hex()),
            "RepoTags": [format!("{name}:{}", img.tag)],
            "Layers": single.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.0.hex())).collect::<Vec<_>>(),
        }));
    }
    Ok(serde_json::to_vec(&entries).expect("JSON serializes"))
}

/// Writes the archive; `docker` is the repository name when it is a docker-archive.
pub fn write(store: &Store, dest: &Path, images: &[StoredImage], docker: Option<&str>, epoch: u64) -> Result<()> {
    let docker_json = docker.map(|name| docker_manifest(images, name)).transpose()?;
    let temp = super::temp_sibling(dest);
    let file = File::create(&temp).at(&temp)?;
    let result = (|| -> io::Result<File> {
        let mut tar = tar::Builder::new(BufWriter::with_capacity(256 * 1024, file));
        for dir in ["blobs/", "blobs/sha256/"] {
            tar.append_data(&mut header(EntryType::Directory, 0o755, 0, epoch), dir, io::empty())?;
        }
        for digest in all_blobs(images) {
            let path = store.sha256_path(&digest);
            let blob = File::open(&path)?;
            let size = blob.metadata()?.len();
            tar.append_data(
                &mut header(EntryType::Regular, 0o644, size, epoch),
                format!("blobs/sha256/{}", digest.hex()),
                blob,
            )?;
        }
        let index = index_json(images).map_err(io::Error::other)?;
        tar.append_data(&mut header(EntryType::Regular, 0o644, index.len() as u64, epoch), "index.json", &index[..])?;
        if let Some(m) = &docker_json {
            tar.append_data(&mut header(EntryType::Regular, 0o644, m.len() as u64, epoch), "manifest.json", &m[..])?;
        }
        tar.append_data(
            &mut header(EntryType::Regular, 0o644, OCI_LAYOUT.len() as u64, epoch),
            "oci-layout",
            OCI_LAYOUT,
        )?;
        let mut w = tar.into_inner()?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())
    })();
    match result.and_then(|f| f.sync_all()) {
        Ok(()) => super::replace(&temp, dest),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(Error::io(dest, e))
        }
    }
}
