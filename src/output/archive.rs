//! oci-archive and docker-archive: the OCI layout as one tar stream, written in a fixed order
//! with fixed metadata. The docker-archive adds `manifest.json`, which `docker load` reads
//! (Docker 25 and later write this same combined form).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use tar::{EntryType, Header};

use super::layout::{all_blobs, index_json, OCI_LAYOUT};
use crate::error::{Error, IoContext, Result};
use crate::image::StoredImage;
use crate::store::Store;

fn header(entry_type: EntryType, mode: u32, epoch: u64, size: u64) -> Header {
    crate::layer::fixed_header(Header::new_ustar(), entry_type, mode, epoch, size)
}

/// The header `write` gives the entry `name`: directories end in `/`, everything else is a file.
fn header_of(name: &str, epoch: u64, size: u64) -> io::Result<Header> {
    let mut h = if name.ends_with('/') {
        header(EntryType::Directory, 0o755, epoch, size)
    } else {
        header(EntryType::Regular, 0o644, epoch, size)
    };
    h.set_path(name)?;
    h.set_cksum();
    Ok(h)
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

/// Writes the archive of `images` to `path` (a temporary file the caller renames into place);
/// `docker` is the repository name when it is a docker-archive.
pub(crate) fn write(
    store: &Store,
    path: &Path,
    images: &[StoredImage],
    docker: Option<&str>,
    epoch: u64,
) -> Result<()> {
    let options = crate::atomic_file::Options::REPLACE.mode(0o644);
    crate::atomic_file::write_with(path, options, |out| {
        write_to(store, out, path, images, docker, true, epoch).map(drop)
    })
}

/// Streams the archive into any writer (a file, or the stdin of `podman load`), blob by blob
/// from the store, and returns the writer flushed. Write errors name `dest`. Without
/// `oci_layout` (and with `docker`), it is a docker-archive only, which Podman cannot mistake
/// for an oci-archive and name after the layout's tags.
pub(crate) fn write_to<W: Write>(
    store: &Store,
    out: W,
    dest: &Path,
    images: &[StoredImage],
    docker: Option<&str>,
    oci_layout: bool,
    epoch: u64,
) -> Result<W> {
    let docker_json = docker.map(|name| docker_manifest(images, name)).transpose()?;
    // Referrers belong to the OCI layout; `manifest.json` has no place for them.
    let index = index_json(images, oci_layout)?;
    let mut tar = tar::Builder::new(out);
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append_data(&mut header(EntryType::Directory, 0o755, epoch, 0), dir, io::empty()).at(dest)?;
    }
    for digest in all_blobs(images, oci_layout) {
        let path = store.intact_path(&digest)?;
        let blob = File::open(&path).at(&path)?;
        let size = blob.metadata().at(&path)?.len();
        let name = format!("blobs/sha256/{}", digest.hex());
        tar.append_data(&mut header(EntryType::Regular, 0o644, epoch, size), name, blob).at(dest)?;
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
        tar.append_data(&mut header(EntryType::Regular, 0o644, epoch, data.len() as u64), name, data).at(dest)?;
    }
    let mut w = tar.into_inner().at(dest)?;
    w.flush().at(dest)?;
    Ok(w)
}

/// Whether `path` is an archive imgbuild wrote: exactly the entries `write` makes, in its
/// order, each with the header `write` gives it (one epoch for all). Another tool's tar (other
/// headers, times, owners) or one appended to is not.
pub(crate) fn is_imgbuild_archive(path: &Path) -> Result<bool> {
    let file = File::open(path).at(path)?;
    let mut archive = tar::Archive::new(file);
    let Ok(entries) = archive.entries_with_seek() else { return Ok(false) };
    let mut names = Vec::new();
    let mut epoch = None;
    // Raw: long-name and PAX entries stay visible (imgbuild writes none).
    for entry in entries.raw(true) {
        let Ok(mut entry) = entry else { return Ok(false) };
        let Ok(name) = String::from_utf8(entry.path_bytes().into_owned()) else { return Ok(false) };
        let (Ok(mtime), Ok(size)) = (entry.header().mtime(), entry.header().size()) else { return Ok(false) };
        let expected = header_of(&name, *epoch.get_or_insert(mtime), size);
        if !expected.is_ok_and(|h| h.as_bytes() == entry.header().as_bytes()) {
            return Ok(false);
        }
        if name == "oci-layout" {
            let mut content = Vec::new();
            if entry.by_ref().take(64).read_to_end(&mut content).is_err() || content != OCI_LAYOUT {
                return Ok(false);
            }
        }
        names.push(name);
    }
    Ok(in_written_order(&names))
}

/// `blobs/`, `blobs/sha256/`, the blobs by digest, `index.json`, `manifest.json` (docker-archive
/// only), `oci-layout`.
fn in_written_order(names: &[String]) -> bool {
    let [dir, sha_dir, rest @ ..] = names else { return false };
    let blobs: Vec<&str> = rest.iter().map_while(|n| n.strip_prefix("blobs/sha256/")).collect();
    let tail: Vec<&str> = rest[blobs.len()..].iter().map(String::as_str).collect();
    dir == "blobs/"
        && sha_dir == "blobs/sha256/"
        && blobs.iter().all(|b| crate::digest::is_sha256_hex(b))
        && blobs.windows(2).all(|w| w[0] < w[1])
        && (tail == ["index.json", "oci-layout"] || tail == ["index.json", "manifest.json", "oci-layout"])
}
