//! The supply chain of an image: what it is made of (an SPDX 2.3 and a CycloneDX 1.5 SBOM per
//! platform), how it was made (an in-toto statement with a SLSA provenance predicate), both
//! attached to it as OCI 1.1 referrers; and `verify`, which rebuilds an image from its
//! provenance and compares it byte for byte.
//!
//! Every document depends only on what the image's digests depend on and `SOURCE_DATE_EPOCH`:
//! no clock, no random identifier, no path or host of the build machine.

pub(crate) mod cyclonedx;
pub(crate) mod dpkg;
pub(crate) mod entries;
pub(crate) mod image_name;
pub(crate) mod inventory;
pub(crate) mod provenance;
pub(crate) mod spdx;
pub(crate) mod verify;

use crate::date::rfc3339;
use crate::error::{Error, Result};
use crate::image::{write_artifact, BaseImage, StoredImage};
use crate::image_def::{ImageDef, Node};
use crate::platform::Platform;
use crate::store::Store;

pub(crate) const SPDX_TYPE: &str = "application/spdx+json";
pub(crate) const CYCLONEDX_TYPE: &str = "application/vnd.cyclonedx+json";
pub(crate) const IN_TOTO_TYPE: &str = "application/vnd.in-toto+json";

/// What a build knows about every image it writes, for their documents.
pub(crate) struct BuildFacts<'a> {
    pub def: &'a ImageDef,
    /// Each platform built, in order, with its base image.
    pub platforms: Vec<(&'a Platform, Option<&'a BaseImage>)>,
    /// The recipe layers' compressor and level (`--compression`, `--level`).
    pub compressor: crate::compress::Compressor,
    pub epoch: u64,
    /// What reading a base layer (its packages) may unpack (`IMGBUILD_MAX_UNPACKED`).
    pub max_unpacked: u64,
}

/// Writes the SBOMs of each of `image`'s platforms and its provenance into the store, and
/// lists them as the image's referrers.
pub(crate) fn attach(
    store: &Store,
    facts: &BuildFacts<'_>,
    image: &mut StoredImage,
    node: Option<&Node>,
) -> Result<()> {
    let created = rfc3339(facts.epoch);
    let mut referrers = Vec::new();
    for written in &image.platforms {
        let (platform, base) = facts
            .platforms
            .iter()
            .find(|(p, _)| p.to_string() == written.platform)
            .ok_or_else(|| Error::Internal(format!("image platform {} was not built", written.platform)))?;
        let inventory = inventory::Inventory::of(store, facts, &image.tag, written, *base, platform)?;
        let subject = image.subject_descriptor(&written.manifest_digest).expect("a platform of the image");
        referrers.push(write_artifact(store, SPDX_TYPE, &subject, &spdx::document(&inventory), &created)?);
        referrers.push(write_artifact(store, CYCLONEDX_TYPE, &subject, &cyclonedx::document(&inventory), &created)?);
    }
    let statement = provenance::statement(facts, image, node)?;
    referrers.push(write_artifact(store, IN_TOTO_TYPE, &image.descriptor(), &statement, &created)?);
    image.referrers = referrers;
    Ok(())
}
