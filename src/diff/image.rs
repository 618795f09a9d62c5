//! One image as `diff` reads it: the platform manifest compared, its labels (imgbuild's carry
//! every recipe input's hash and version), its layers by role (from the history imgbuild
//! writes), and the files its layers leave under `/etc/imgbuild/` for the render.

use std::collections::{BTreeMap, HashMap};
use std::io;

use serde_json::Value;

use super::layers::{layer_error, MAX_TEXT_FILE};
use super::render::ConfFiles;
use crate::digest::Sha256Digest;
use crate::entrypoint::CONF_DIR;
use crate::error::{Error, Result};
use crate::layer::tar_guard::TarGuard;
use crate::store::Store;
use crate::supply::entries::{entry_path, hashed_layer};
use crate::supply::image_name::read_document;

/// One layer and what it is for.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub digest: Sha256Digest,
    /// What pairs it with a layer of the other image: `recipe NAME`, `runtime`, `cluster`,
    /// `identity`, or `layer N` (a base image's, by its place among them).
    pub role: String,
    /// The history's words for it.
    pub created_by: String,
}

/// What `diff` compares of one image.
#[derive(Debug, Clone)]
pub(crate) struct ImageFacts {
    pub platform: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub layers: Vec<Layer>,
}

/// Reads the image `top` (for an index: the `platform` manifest, else the host's, else the first).
pub(crate) fn read(store: &Store, top: &Sha256Digest, platform: Option<&str>) -> Result<ImageFacts> {
    let doc = read_document(store, top)?;
    let (manifest, platform) = match &doc.manifests {
        None => (*top, None),
        Some(children) => {
            let text = |c: &crate::oci_doc::Descriptor| c.platform.as_ref().map(|p| p.text());
            let host = crate::platform::Platform::host().to_string();
            let wanted = platform.unwrap_or(&host);
            let chosen = children.iter().find(|c| text(c).as_deref() == Some(wanted)).or(children.first());
            let chosen = chosen.ok_or_else(|| bad(top, "an index without manifests"))?;
            (chosen.digest, text(chosen))
        }
    };
    let doc = read_document(store, &manifest)?;
    let config = doc.config.as_ref().ok_or_else(|| bad(&manifest, "not an image manifest"))?;
    let config: Value = serde_json::from_slice(&store.read_blob(&config.digest)?)
        .map_err(|e| bad(&config.digest, &format!("the image configuration is not JSON: {e}")))?;
    let labels = config["config"]["Labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let history: Vec<String> = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                .map(|e| e["created_by"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let named = history.len() == doc.layers.len();
    let mut others = 0;
    let layers = doc
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let created_by = if named { history[i].clone() } else { String::new() };
            let role = role(&created_by).unwrap_or_else(|| {
                others += 1;
                format!("layer {others}")
            });
            Layer { digest: d.digest, role, created_by }
        })
        .collect();
    Ok(ImageFacts { platform, labels, layers })
}

fn bad(digest: &Sha256Digest, message: &str) -> Error {
    Error::BadArchive { archive: format!("image {digest}"), message: message.into() }
}

/// The role of a layer imgbuild wrote, from its history entry (see `build.rs`).
fn role(created_by: &str) -> Option<String> {
    let rest = created_by.strip_prefix("imgbuild ")?;
    if let Some(recipe) = rest.strip_prefix("recipe ") {
        return recipe.split(' ').next().map(|name| format!("recipe {name}"));
    }
    if rest.starts_with("cluster ") {
        return Some("cluster".into());
    }
    if rest.starts_with("identity of node ") {
        return Some("identity".into());
    }
    rest.ends_with(" runtime (entrypoint)").then(|| "runtime".into())
}

/// Most files under `/etc/imgbuild/` read (the cluster layer holds its templates and one more).
const MAX_CONF_FILES: usize = 1024;
/// Most bytes of them in all (templates are at most 1 MiB in all).
const MAX_CONF_BYTES: usize = 4 << 20;

/// What one layer does under `/etc/imgbuild/` and to the entrypoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfLayer {
    /// Whiteouts (`.wh.NAME`: removes NAME; an opaque one removes a directory's contents),
    /// each as the path prefix it removes.
    removed: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    entrypoint: Option<Sha256Digest>,
}

/// What an image's layers leave under `/etc/imgbuild/`, and its entrypoint's hash. Each layer
/// is read once per `diff` (`seen`), however many images share it.
pub(crate) fn conf_files(
    store: &Store,
    image: &ImageFacts,
    max_unpacked: u64,
    seen: &mut HashMap<Sha256Digest, ConfLayer>,
) -> Result<(ConfFiles, Option<Sha256Digest>)> {
    let (mut files, mut entrypoint) = (ConfFiles::new(), None);
    for layer in &image.layers {
        let conf = match seen.entry(layer.digest) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(conf_layer(store, &layer.digest, max_unpacked).map_err(|e| layer_error(&layer.digest, e))?)
            }
        };
        for prefix in &conf.removed {
            files.retain(|path, _| !(path == prefix || path.starts_with(&format!("{prefix}/")) || prefix.is_empty()));
        }
        files.extend(conf.files.iter().cloned());
        entrypoint = conf.entrypoint.or(entrypoint);
    }
    Ok((files, entrypoint))
}

/// Reads one layer's part in the render (`CONF_DIR` paths relative to it; an empty prefix is
/// the whole directory).
fn conf_layer(store: &Store, digest: &Sha256Digest, max_unpacked: u64) -> io::Result<ConfLayer> {
    let reader = hashed_layer(store, digest, max_unpacked).map_err(|e| io::Error::other(e.to_string()))?;
    let mut archive = tar::Archive::new(TarGuard::for_image_layer(reader));
    let (mut out, mut bytes) = (ConfLayer::default(), 0usize);
    let entrypoint = crate::entrypoint::DEFAULT_ENTRYPOINT.trim_start_matches('/');
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry_path(&entry)?;
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let removed = if hidden == ".wh..opq" { dir.to_string() } else { format!("{dir}/{hidden}") };
            let removed = removed.trim_start_matches('/');
            if let Some(rel) = under_conf(removed) {
                out.removed.push(rel.to_string());
            } else if CONF_DIR.starts_with(&format!("{removed}/")) || removed.is_empty() {
                out.removed.push(String::new()); // an ancestor of the directory
            }
            continue;
        }
        let is_file = entry.header().entry_type().is_file();
        if is_file && path == entrypoint {
            out.entrypoint = crate::supply::entries::summarize(&mut entry)?.content;
            continue;
        }
        let Some(rel) = under_conf(&path).filter(|r| !r.is_empty()) else { continue };
        if !is_file {
            // A link or anything else but a directory hides a file of that name below it.
            if !entry.header().entry_type().is_dir() {
                out.removed.push(rel.to_string());
            }
            continue;
        }
        if entry.size() > MAX_TEXT_FILE * 4 || out.files.len() == MAX_CONF_FILES {
            return Err(io::Error::other(format!("/{CONF_DIR}/ holds more or larger files than imgbuild writes")));
        }
        let mut data = Vec::new();
        io::Read::read_to_end(&mut entry, &mut data)?;
        bytes += data.len();
        if bytes > MAX_CONF_BYTES {
            return Err(io::Error::other(format!("/{CONF_DIR}/ holds more than {MAX_CONF_BYTES} bytes")));
        }
        out.files.push((rel.to_string(), data));
    }
    Ok(out)
}

/// `path` relative to `CONF_DIR` when it is in it (empty for the directory itself).
fn under_conf(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(CONF_DIR)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_paired_by_the_role_their_history_names() {
        assert_eq!(role("imgbuild recipe zookeeper 3.4.10 (zookeeper-3.4.10.tar.gz)").unwrap(), "recipe zookeeper");
        assert_eq!(role("imgbuild 0.1.0 runtime (entrypoint)").unwrap(), "runtime");
        assert_eq!(role("imgbuild cluster zk-kafka (templates, topology)").unwrap(), "cluster");
        assert_eq!(role("imgbuild identity of node 2").unwrap(), "identity");
        assert_eq!(role("/bin/sh -c apt-get install"), None);
        assert_eq!(under_conf("etc/imgbuild/templates/x"), Some("templates/x"));
        assert_eq!(under_conf("etc/imgbuildx"), None);
    }

    /// A plain tar layer in `store`: files (path, text), or symlinks when the text starts with `->`.
    fn layer(store: &Store, entries: &[(&str, &str)]) -> Layer {
        let mut b = tar::Builder::new(Vec::new());
        for (path, text) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match text.strip_prefix("->") {
                Some(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
                None => {
                    h.set_size(text.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, text.as_bytes()).unwrap();
                }
            }
        }
        let digest = store.add_bytes(&b.into_inner().unwrap()).unwrap();
        Layer { digest, role: String::new(), created_by: String::new() }
    }

    #[test]
    fn the_render_sees_etc_imgbuild_as_the_layers_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let base =
            layer(&store, &[("etc/imgbuild/cluster.env", "old"), ("etc/imgbuild/stale", "x"), ("etc/other", "y")]);
        let cluster = layer(
            &store,
            &[
                ("etc/imgbuild/.wh..wh..opq", ""),
                ("etc/imgbuild/cluster.env", "new"),
                ("etc/imgbuild/templates/t", "t"),
            ],
        );
        let upper = layer(&store, &[("etc/imgbuild/templates/.wh.t", ""), ("etc/imgbuild/node-id", "->/etc/passwd")]);
        let identity =
            layer(&store, &[("etc/imgbuild/node-id", "1\n"), ("usr/local/bin/imgbuild-init", "#!/bin/sh\n")]);
        let files = |layers: Vec<Layer>| {
            let image = ImageFacts { platform: None, labels: BTreeMap::new(), layers };
            let (files, entrypoint) = conf_files(&store, &image, u64::MAX, &mut HashMap::new()).unwrap();
            let names: Vec<(String, String)> =
                files.into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect();
            (names, entrypoint)
        };
        let pairs =
            |list: &[(&str, &str)]| list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let (seen, entrypoint) = files(vec![base.clone(), cluster.clone()]);
        assert_eq!(
            seen,
            pairs(&[("cluster.env", "new"), ("templates/t", "t")]),
            "an opaque directory hides what is below"
        );
        assert_eq!(entrypoint, None);
        let (seen, entrypoint) = files(vec![base, cluster, identity.clone(), upper]);
        assert_eq!(seen, pairs(&[("cluster.env", "new")]), "a whiteout and a link hide a file");
        assert_eq!(entrypoint, Some(Sha256Digest::of(b"#!/bin/sh\n")));
    }
}
