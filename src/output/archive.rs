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
    let temp = super::temp_sibling(dest);
    let file = File::create(&temp).at(&temp)?;
    let result = (|| -> Result<File> {
        let out = BufWriter::with_capacity(256 * 1024, file);
        let w = write_to(store, out, dest, images, docker, true, epoch)?;
        w.into_inner().map_err(|e| Error::io(dest, e.into_error()))
    })();
    match result.and_then(|f| f.sync_all().at(dest)) {
        Ok(()) => super::replace(&temp, dest),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Streams the archive into any writer (a file, or the stdin of `podman load`), blob by blob
/// from the store, and returns the writer flushed. Write errors name `dest`. Without
/// `oci_layout` (and with `docker`), it is a docker-archive only, which Podman cannot mistake
/// for an oci-archive and name after the layout's tags.
pub fn write_to<W: Write>(
    store: &Store,
    out: W,
    dest: &Path,
    images: &[StoredImage],
    docker: Option<&str>,
    oci_layout: bool,
    epoch: u64,
) -> Result<W> {
    let docker_json = docker.map(|name| docker_manifest(images, name)).transpose()?;
    let index = index_json(images)?;
    let mut tar = tar::Builder::new(out);
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append_data(&mut header(EntryType::Directory, 0o755, 0, epoch), dir, io::empty()).at(dest)?;
    }
    for digest in all_blobs(images) {
        let path = store.sha256_path(&digest);
        let blob = File::open(&path).at(&path)?;
        let size = blob.metadata().at(&path)?.len();
        let name = format!("blobs/sha256/{}", digest.hex());
        tar.append_data(&mut header(EntryType::Regular, 0o644, size, epoch), name, blob).at(dest)?;
    }
    let mut files: Vec<(&str, &[u8])> = Vec::new();
    if oci_layout {
        files.push(("index.json", &index));
    }
    if let Some(m) = &docker_json {
        files.push(("manifest.json", m));
    }
    if oci_layout {
        files.push(("oci-layout", OCI_LAYOUT));
    }
    for (name, data) in files {
        tar.append_data(&mut header(EntryType::Regular, 0o644, data.len() as u64, epoch), name, data).at(dest)?;
    }
    let mut w = tar.into_inner().at(dest)?;
    w.flush().at(dest)?;
    Ok(w)
}
