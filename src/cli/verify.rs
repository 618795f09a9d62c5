//! `imgbuild verify IMAGE`: rebuilds an image from its provenance and compares it byte for byte.

use super::build::{settings, ImageChoice};
use super::push::RegistryArgs;
use super::sbom::open_named;
use super::GlobalArgs;
use crate::error::Result;
use crate::supply::image_name::Fetch;
use crate::supply::verify::{compare, provenance_of, rebuild};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image, as skopeo names it: oci:DIR[:TAG], oci-archive:FILE[:TAG] or
    /// docker://REGISTRY/REPO[:TAG|@DIGEST]
    pub image: String,
    /// Compression threads of the rebuild (only the speed changes, never the bytes)
    /// [default: every core]
    #[arg(long, env = "IMGBUILD_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(global: &GlobalArgs, args: &VerifyArgs) -> Result<()> {
    let (store, image) = open_named(global, &args.image, &args.registry, Fetch::Whole)?;
    let provenance = provenance_of(&store, &image)?;
    // The options that change bytes are the provenance's, never this machine's.
    let platforms: Vec<String> = provenance.platforms.iter().map(ToString::to_string).collect();
    let choice = ImageChoice {
        image: None,
        platform: Some(platforms.join(",")),
        threads: args.threads,
        compression: provenance.compressor.codec,
        level: Some(provenance.compressor.level),
    };
    let mut settings = settings(global, &choice)?;
    settings.layer.epoch = provenance.epoch;
    // Rebuilt from the pins alone: never a layer a cache (`--cache`) gives, which is what
    // catches a poisoned cache entry.
    settings.layer.cache = None;
    // Nor a layer this store recorded: a tampered record would otherwise vouch for itself.
    settings.layer.reuse_layers = false;
    let reporter = global.reporter();
    let rebuilt = {
        let _building = store.build_lock_shared()?;
        rebuild(&store, &provenance, &settings, reporter.as_ref())?
    };
    let verified = compare(&store, &image, &provenance, &rebuilt, settings.layer.max_unpacked)?;
    if global.json {
        return super::print_json(&serde_json::json!({ "verified": verified }));
    }
    outln!("{}\t{}", verified.digest, args.image)?;
    if !global.quiet {
        let what = match verified.node {
            Some(id) => format!("node {id} of `{}`", verified.image),
            None => format!("the node-less image of `{}`", verified.image),
        };
        errln!(
            "verified: {} is {what} (tag {}, {}), rebuilt byte for byte from its provenance: {} layer(s), {} attached document(s)",
            args.image,
            verified.tag,
            verified.platforms.join(", "),
            verified.layers,
            verified.documents
        );
        if verified.built_by != env!("CARGO_PKG_VERSION") {
            errln!(
                "note: it was built by imgbuild {}, and rebuilt by {}",
                crate::error::escape(&verified.built_by),
                env!("CARGO_PKG_VERSION")
            );
        }
    }
    Ok(())
}
