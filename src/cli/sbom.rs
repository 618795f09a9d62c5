//! `imgbuild sbom IMAGE`: prints the SBOM attached to an image (SPDX 2.3 or CycloneDX 1.5).

use std::io::Write;

use super::push::RegistryArgs;
use super::GlobalArgs;
use crate::error::{Error, IoContext, Result};
use crate::platform::Platform;
use crate::registry::Access;
use crate::supply::image_name::{open, read_document, Fetch, ImageName, OpenedImage};
use crate::supply::{CYCLONEDX_TYPE, SPDX_TYPE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SbomFormat {
    /// SPDX 2.3 JSON
    Spdx,
    /// CycloneDX 1.5 JSON
    Cyclonedx,
}

#[derive(clap::Args)]
pub struct SbomArgs {
    /// The image, as skopeo names it: oci:DIR[:TAG], oci-archive:FILE[:TAG] or
    /// docker://REGISTRY/REPO[:TAG|@DIGEST]
    pub image: String,
    /// The SBOM format
    #[arg(long, value_enum, default_value = "spdx")]
    pub format: SbomFormat,
    /// For an image of several platforms: which one [default: the only one, else the host's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Opens an image named on the command line: a layout or archive from disk, a registry image
/// over the network (never with --offline), as much of it as `fetch` says.
pub(super) fn open_named(
    global: &GlobalArgs,
    text: &str,
    registry: &RegistryArgs,
    fetch: Fetch,
) -> Result<(crate::store::Store, OpenedImage)> {
    let name: ImageName = text.parse().map_err(Error::Usage)?;
    let store = global.open_store()?;
    let client = match &name {
        ImageName::Registry(_) if global.offline => {
            return Err(Error::Usage("a docker:// image is read from its registry: it cannot be with --offline".into()))
        }
        ImageName::Registry(reference) => Some(registry.connect(global, reference, Access::Pull)?),
        _ => None,
    };
    let opened = {
        let _importing = store.build_lock_shared()?;
        open(&store, &name, client.as_ref(), fetch, global.reporter().as_ref())?
    };
    Ok((store, opened))
}

pub(super) fn run(global: &GlobalArgs, args: &SbomArgs) -> Result<()> {
    let (store, image) = open_named(global, &args.image, &args.registry, Fetch::Documents)?;
    let subject = platform_manifest(&store, &image, args.platform.as_ref())?;
    let wanted = match args.format {
        SbomFormat::Spdx => SPDX_TYPE,
        SbomFormat::Cyclonedx => CYCLONEDX_TYPE,
    };
    let found =
        image.referrers.iter().find(|r| r.artifact_type == wanted && r.subject == subject).ok_or_else(|| {
            Error::BadArchive {
                archive: format!("image {}", image.digest),
                message: format!("no {wanted} SBOM is attached to {subject}"),
            }
        })?;
    let document = crate::supply::verify::document_of(&store, &found.digest)?;
    let mut out = std::io::stdout().lock();
    let written = out.write_all(&document).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.at("standard output"),
    }
}

/// The manifest an SBOM describes: the image's own, or one platform's of an index.
fn platform_manifest(
    store: &crate::store::Store,
    image: &OpenedImage,
    platform: Option<&Platform>,
) -> Result<crate::digest::Sha256Digest> {
    let doc = read_document(store, &image.digest)?;
    let Some(children) = &doc.manifests else { return Ok(image.digest) };
    let texts: Vec<String> =
        children.iter().map(|c| c.platform.as_ref().map(|p| p.text()).unwrap_or_default()).collect();
    let wanted = match (platform, children.as_slice()) {
        (Some(p), _) => p.to_string(),
        (None, [only]) => return Ok(only.digest),
        (None, _) => Platform::host().to_string(),
    };
    texts.iter().position(|t| *t == wanted).map(|i| children[i].digest).ok_or_else(|| {
        Error::Usage(format!(
            "{} has no {wanted} manifest (it has: {}); choose one with --platform",
            image.digest,
            texts.join(", ")
        ))
    })
}
