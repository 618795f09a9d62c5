//! What one platform's image of one node is made of, as both SBOM formats describe it: the
//! image itself, one package per recipe, the base image and the base's Debian packages.

use crate::digest::{Hash, Sha256Digest};
use crate::image::{BaseImage, WrittenImage};
use crate::platform::Platform;
use crate::recipe::{Recipe, RecipeKind};
use crate::store::Store;

use super::dpkg::{base_packages, DebPackage};
use super::BuildFacts;

/// The image an SBOM describes.
pub(crate) struct ImageSubject {
    /// The image definition's name.
    pub name: String,
    pub tag: String,
    pub platform: Platform,
    /// The platform's manifest digest.
    pub digest: Sha256Digest,
    pub epoch: u64,
}

/// One recipe's input for this platform.
pub(crate) struct RecipePackage {
    pub name: String,
    pub version: String,
    pub file_name: String,
    /// The canonical URL, when the recipe has one.
    pub url: Option<String>,
    pub hash: Hash,
    pub license: Option<String>,
    pub homepage: Option<String>,
}

/// The base image, by its manifest digest.
pub(crate) struct BasePackage {
    pub name: String,
    pub version: String,
    /// `registry/repository`, when the recipe names one.
    pub repository: Option<String>,
    pub digest: Sha256Digest,
    pub os_id: Option<String>,
    pub debs: Vec<DebPackage>,
}

pub(crate) struct Inventory {
    pub image: ImageSubject,
    pub recipes: Vec<RecipePackage>,
    pub base: Option<BasePackage>,
}

impl Inventory {
    /// The inventory of `written` (one platform of the image tagged `tag`).
    pub(crate) fn of(
        store: &Store,
        facts: &BuildFacts<'_>,
        tag: &str,
        written: &WrittenImage,
        base: Option<&BaseImage>,
        platform: &Platform,
    ) -> crate::error::Result<Inventory> {
        let recipes = facts.def.layers.iter().filter_map(|r| recipe_package(r, platform)).collect();
        let base = match (base, &facts.def.base) {
            (Some(image), Some(recipe)) => {
                let found = base_packages(store, image, facts.max_unpacked)?;
                let repository = match &recipe.kind {
                    RecipeKind::OciImage { reference: Some(r), .. } => Some(r.name()),
                    _ => None,
                };
                Some(BasePackage {
                    name: recipe.name.clone(),
                    version: recipe.version.clone(),
                    repository,
                    digest: image.manifest_digest,
                    os_id: found.os_id,
                    debs: found.debs,
                })
            }
            _ => None,
        };
        let image = ImageSubject {
            name: facts.def.name.clone(),
            tag: tag.to_string(),
            platform: platform.clone(),
            digest: written.manifest_digest,
            epoch: facts.epoch,
        };
        Ok(Inventory { image, recipes, base })
    }

    /// `pkg:oci/NAME@sha256%3A…?arch=…&tag=…`: the image itself.
    pub(crate) fn image_purl(&self) -> String {
        let i = &self.image;
        let mut qualifiers = vec![("arch", i.platform.architecture.clone())];
        qualifiers.push(("tag", i.tag.clone()));
        purl("oci", None, &i.name, &i.digest.to_string(), &qualifiers)
    }
}

impl RecipePackage {
    /// `pkg:generic/NAME@VERSION?checksum=…&download_url=…`.
    pub(crate) fn purl(&self) -> String {
        let mut qualifiers = vec![("checksum", self.hash.to_string())];
        if let Some(url) = &self.url {
            qualifiers.push(("download_url", url.clone()));
        }
        purl("generic", None, &self.name, &self.version, &qualifiers)
    }
}

impl BasePackage {
    /// `pkg:oci/NAME@sha256%3A…?repository_url=…`.
    pub(crate) fn purl(&self) -> String {
        let name = self.repository.as_deref().and_then(|r| r.rsplit('/').next()).unwrap_or(&self.name);
        let qualifiers: Vec<(&str, String)> = self.repository.iter().map(|r| ("repository_url", r.clone())).collect();
        purl("oci", None, &name.to_ascii_lowercase(), &self.digest.to_string(), &qualifiers)
    }

    /// `pkg:deb/debian/NAME@VERSION?arch=…` (the namespace is the base's os-release `ID`).
    pub(crate) fn deb_purl(&self, deb: &DebPackage) -> String {
        let namespace = self.os_id.as_deref().unwrap_or("debian");
        let qualifiers: Vec<(&str, String)> =
            Some(&deb.arch).filter(|a| !a.is_empty()).map(|a| ("arch", a.clone())).into_iter().collect();
        purl("deb", Some(namespace), &deb.name, &deb.version, &qualifiers)
    }
}

fn recipe_package(recipe: &Recipe, platform: &Platform) -> Option<RecipePackage> {
    let source = recipe.source_for(platform)?;
    Some(RecipePackage {
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        file_name: source.file_name.clone(),
        url: source.urls.first().cloned(),
        hash: source.hash.clone(),
        license: recipe.license.clone(),
        homepage: recipe.homepage.clone(),
    })
}

/// A package URL (purl-spec): each part percent-encoded, qualifiers sorted by key.
pub(crate) fn purl(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    version: &str,
    qualifiers: &[(&str, String)],
) -> String {
    let mut text = format!("pkg:{kind}/");
    if let Some(ns) = namespace {
        text.push_str(&percent_encode(ns, ""));
        text.push('/');
    }
    text.push_str(&percent_encode(name, ""));
    text.push('@');
    text.push_str(&percent_encode(version, ""));
    let mut sorted: Vec<&(&str, String)> = qualifiers.iter().filter(|(_, v)| !v.is_empty()).collect();
    sorted.sort_by_key(|(k, _)| *k);
    for (i, (key, value)) in sorted.iter().enumerate() {
        text.push(if i == 0 { '?' } else { '&' });
        text.push_str(&format!("{key}={}", percent_encode(value, "/:")));
    }
    text
}

/// Percent-encodes every byte but ASCII letters, digits, `-._~` and those in `keep`.
fn percent_encode(text: &str, keep: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.as_bytes().contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_encode_versions_and_sort_qualifiers() {
        assert_eq!(
            purl("deb", Some("debian"), "zlib1g", "1:1.2.13+dfsg-1", &[("arch", "amd64".into())]),
            "pkg:deb/debian/zlib1g@1%3A1.2.13%2Bdfsg-1?arch=amd64"
        );
        let q = [("tag", "node-1".to_string()), ("arch", "arm64".to_string())];
        assert_eq!(purl("oci", None, "zk", "sha256:ab", &q), "pkg:oci/zk@sha256%3Aab?arch=arm64&tag=node-1");
        let q = [("download_url", "https://h.example/a b.tgz".to_string())];
        assert_eq!(purl("generic", None, "x", "1", &q), "pkg:generic/x@1?download_url=https://h.example/a%20b.tgz");
    }
}
