//! `imgbuild diff OLD NEW`: what changed between two images or two builds (see `crate::diff`).

use std::path::Path;

use super::push::RegistryArgs;
use super::sbom::open_named;
use super::GlobalArgs;
use crate::diff::{diff, show, Options, Side};
use crate::error::{Error, Result};
use crate::supply::image_name::{Fetch, ImageName};

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The old image (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker://REGISTRY/REPO[:TAG|@DIGEST])
    /// or build output (a directory or archive `imgbuild build` wrote: every image, by tag)
    pub old: String,
    /// The new image or build output, named the same way
    pub new: String,
    /// Only this node: its image and the configuration it renders
    #[arg(long, value_name = "N")]
    pub node: Option<u32>,
    /// For images of several platforms: which one [default: the host's, else the first]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<crate::platform::Platform>,
    /// Exit with 10 when the images differ (as `git diff --exit-code`; 0 otherwise)
    #[arg(long)]
    pub exit_code: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub(super) fn run(global: &GlobalArgs, args: &DiffArgs) -> Result<()> {
    let (store, old) = side(global, &args.old, &args.registry)?;
    let (_, new) = side(global, &args.new, &args.registry)?;
    let options = Options {
        node: args.node,
        platform: args.platform.as_ref().map(ToString::to_string),
        max_unpacked: super::build::max_unpacked()?,
    };
    let report = diff(&store, &old, &new, &options)?;
    if global.json {
        super::print_json(&serde_json::to_value(&report).expect("a report serializes"))?;
    } else {
        for line in show::lines(&report) {
            outln!("{line}")?;
        }
    }
    match args.exit_code && !report.same {
        true => Err(Error::Differs),
        false => Ok(()),
    }
}

/// An image by name, or every image of a build output (a path).
fn side(global: &GlobalArgs, text: &str, registry: &RegistryArgs) -> Result<(crate::store::Store, Side)> {
    let named = text.parse::<ImageName>();
    if named.is_err() && Path::new(text).exists() {
        let store = global.open_store()?;
        let side = {
            let _importing = store.build_lock_shared()?;
            crate::diff::open_output(&store, Path::new(text))?
        };
        return Ok((store, side));
    }
    let name = named.as_ref().map_err(|e| Error::Usage(format!("{e}, or the path of a build output")))?;
    let (store, opened) = open_named(global, text, registry, Fetch::Whole)?;
    let shown = match name {
        ImageName::Layout { tag: Some(t), .. } | ImageName::Archive { tag: Some(t), .. } => t.clone(),
        ImageName::Registry(r) => r.tag.clone().unwrap_or_else(|| "image".into()),
        _ => "image".into(),
    };
    Ok((store, Side { images: vec![(shown, opened.digest)], output: false }))
}
