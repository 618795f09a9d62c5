//! Proposing recipes for files a user already has (`imgbuild recipe`): a tarball's hash, a name
//! and version from its file name and the `[unpack]` its layout suggests; an OCI archive's or
//! layout's images, by manifest digest and platform. Nothing here writes anywhere.

pub(crate) mod guard;
pub(crate) mod name;
pub(crate) mod oci;
mod render;
pub(crate) mod tarball;
pub(crate) mod update;

use std::path::Path;

use crate::digest::{Algorithm, Hash, Sha256Digest};
use crate::error::{Error, Result};
use crate::platform::Platform;

pub(crate) use render::{render, to_json};

/// How the recipe's source will name the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// Downloaded from this URL (or found under its file name in a `--mirror` directory).
    Url(String),
    /// A local file: found in a `--mirror` directory or the store, under this name.
    File(String),
}

/// A recipe to print, before it is text.
#[derive(Debug, Clone)]
pub(crate) struct Proposal {
    pub name: String,
    /// `None`: the file name does not say.
    pub version: Option<String>,
    /// The file it describes, as the user named it (for comments and `--json`).
    pub input: String,
    pub location: Location,
    pub kind: ProposalKind,
}

#[derive(Debug, Clone)]
pub(crate) enum ProposalKind {
    Tarball {
        /// The platform it is for (`--platform`, or from its file name); `None`: every platform.
        platform: Option<Platform>,
        hash: Hash,
        size: u64,
        layout: tarball::Layout,
        /// `--prefix`: the `[unpack]` is written out instead of suggested.
        prefix: Option<String>,
    },
    Image {
        /// Where the image is published, when the archive says (`docker.io/library/debian`).
        reference: Option<String>,
        index_digest: Option<Sha256Digest>,
        images: Vec<oci::Image>,
        skipped: Vec<String>,
    },
}

/// What the user chose instead of the guesses.
#[derive(Debug, Default, Clone)]
pub(crate) struct Choices {
    pub name: Option<String>,
    pub version: Option<String>,
    pub prefix: Option<String>,
    pub algorithm: Option<Algorithm>,
    /// `--platform`: `Some(None)` for every platform.
    pub platform: Option<Option<Platform>>,
}

/// The recipe for a tarball at `path` (read once: hashed and listed).
pub(crate) fn tarball(path: &Path, input: &str, location: Location, choices: &Choices) -> Result<Proposal> {
    check_file_name(&location)?;
    let algorithm = choices.algorithm.unwrap_or(Algorithm::Sha256);
    let inspected = tarball::inspect(path, algorithm, crate::layer::DEFAULT_MAX_UNPACKED)?;
    if inspected.layout == tarball::Layout::DockerArchive {
        return Err(Error::BadArchive {
            archive: input.to_string(),
            message: "an image saved by `docker save` (a docker-archive), not a tarball to unpack; make it an OCI \
                      archive: `skopeo copy docker-archive:FILE oci-archive:FILE.oci` or `podman save --format oci-archive`"
                .into(),
        });
    }
    let guess = name::guess(file_name_of(&location));
    let platform = choices.platform.clone().unwrap_or_else(|| name::guess_platform(file_name_of(&location)));
    Ok(Proposal {
        name: choices.name.clone().unwrap_or(guess.name),
        version: choices.version.clone().or(guess.version),
        input: input.to_string(),
        location,
        kind: ProposalKind::Tarball {
            platform,
            hash: inspected.hash,
            size: inspected.size,
            layout: inspected.layout,
            prefix: choices.prefix.clone(),
        },
    })
}

/// The recipes for the images of an OCI archive or layout at `path`: one recipe with a source
/// per platform, or one per entry of its `index.json` when two entries share a platform.
pub(crate) fn images(path: &Path, input: &str, location: Location, choices: &Choices) -> Result<Vec<Proposal>> {
    check_file_name(&location)?;
    let tops = oci::read(path)?;
    let guess = name::guess(file_name_of(&location));
    let all: Vec<&oci::Image> = tops.iter().flat_map(|t| &t.images).collect();
    let groups: Vec<Vec<&oci::TopEntry>> = if distinct_platforms(all.iter().copied()) {
        vec![tops.iter().collect()]
    } else {
        tops.iter().map(|t| vec![t]).collect()
    };
    if groups.len() > 1 && choices.name.is_some() {
        return Err(Error::Usage(format!(
            "{} holds {} images for the same platform: --name names only one (leave it out to get one recipe each)",
            crate::error::escape(input),
            groups.len()
        )));
    }
    let mut proposals: Vec<Proposal> = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let (images, skipped) = images_of(path, group)?;
        let reference = group.iter().find_map(|t| t.ref_name.as_deref()).map(split_reference);
        let name = match (&choices.name, groups.len()) {
            (Some(n), _) => n.clone(),
            (None, 1) => guess.name.clone(),
            (None, _) => {
                let from_reference = reference.as_ref().and_then(|(repo, tag)| repo.as_deref().or(tag.as_deref()));
                let base = from_reference.map_or_else(|| guess.name.clone(), |r| name::recipe_name(last_segment(r)));
                unique(base, i, &proposals)
            }
        };
        let version = choices
            .version
            .clone()
            .or_else(|| guess.version.clone())
            .or_else(|| reference.as_ref().and_then(|(_, tag)| tag.clone()));
        let index_digest = match group.as_slice() {
            [only] if only.is_index => Some(only.digest),
            _ => None,
        };
        proposals.push(Proposal {
            name,
            version,
            input: input.to_string(),
            location: location.clone(),
            kind: ProposalKind::Image {
                reference: reference.and_then(|(repo, _)| repo),
                index_digest,
                images,
                skipped,
            },
        });
    }
    Ok(proposals)
}

/// The images of one recipe (each once) and what was left out; at least one, one per platform.
fn images_of(path: &Path, group: &[&oci::TopEntry]) -> Result<(Vec<oci::Image>, Vec<String>)> {
    let bad = |message: String| Error::BadArchive { archive: path.display().to_string(), message };
    let mut images: Vec<oci::Image> = Vec::new();
    for image in group.iter().flat_map(|t| &t.images) {
        if !images.contains(image) {
            images.push(image.clone());
        }
    }
    if !distinct_platforms(images.iter()) {
        return Err(bad(format!("entry {} lists two different images for one platform", group[0].digest)));
    }
    let skipped: Vec<String> = group.iter().flat_map(|t| t.skipped.clone()).collect();
    if images.is_empty() {
        return Err(bad(format!("holds no linux image imgbuild can use (left out: {})", skipped.join("; "))));
    }
    Ok((images, skipped))
}

/// A recipe's `file` holds no control or invisible character (recipes/README.md), so a file
/// so named cannot be pinned as it is.
fn check_file_name(location: &Location) -> Result<()> {
    let name = file_name_of(location);
    if name.chars().any(crate::error::is_unsafe_char) {
        return Err(Error::Usage(format!(
            "`{}`: a recipe cannot name a file whose name holds control or invisible characters; rename it",
            crate::error::escape(name)
        )));
    }
    Ok(())
}

fn file_name_of(location: &Location) -> &str {
    match location {
        Location::Url(url) => crate::recipe::url_file_name(url),
        Location::File(name) => name,
    }
}

fn distinct_platforms<'a>(images: impl Iterator<Item = &'a oci::Image>) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    images.into_iter().all(|i| seen.insert(i.platform.clone()))
}

/// `name`, or `name-N` (N from 2, or after the group's position) when a recipe has it already.
fn unique(name: String, position: usize, taken: &[Proposal]) -> String {
    let mut candidate = name.clone();
    let mut n = position.max(1) + 1;
    while taken.iter().any(|p| p.name == candidate) {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    candidate
}

fn last_segment(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// `docker.io/library/debian:bookworm-slim` → (repository, tag); a bare `bookworm-slim`, as
/// OCI layouts usually name their entries, is only a tag.
fn split_reference(name: &str) -> (Option<String>, Option<String>) {
    let name = name.split('@').next().unwrap_or(name);
    let (repo, tag) = match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => (&name[..colon], Some(&name[colon + 1..])),
        _ => (name, None),
    };
    let clean = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty() && !s.chars().any(crate::error::is_unsafe_char));
    if repo.contains('/') {
        (clean(repo), tag.and_then(clean))
    } else {
        (None, tag.map_or_else(|| clean(repo), clean))
    }
}

/// Serializes a value by its `Display` text.
pub(crate) fn as_text<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        let s = |n: &str| split_reference(n);
        assert_eq!(
            s("docker.io/library/debian:bookworm-slim"),
            (Some("docker.io/library/debian".into()), Some("bookworm-slim".into()))
        );
        assert_eq!(s("localhost:5000/team/zk"), (Some("localhost:5000/team/zk".into()), None));
        assert_eq!(s("bookworm-slim"), (None, Some("bookworm-slim".into())));
        assert_eq!(s("registry/x@sha256:abc"), (Some("registry/x".into()), None));
    }
}
