//! `imgbuild verify IMAGE`: rebuilds an image from its provenance and compares it byte for byte.

use super::build::{settings, ImageChoice};
use super::push::RegistryArgs;
use super::sbom::open_named;
use super::GlobalArgs;
use crate::error::Result;
use crate::fetch::policy::UrlPolicy;
use crate::fetch::FetchSettings;
use crate::project::Project;
use crate::supply::image_name::Fetch;
use crate::supply::verify::{compare, provenance_of};
use crate::verify::rebuild;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image, as skopeo names it: oci:DIR[:TAG], oci-archive:FILE[:TAG] or
    /// docker://REGISTRY/REPO[:TAG|@DIGEST]
    pub image: String,
    /// Compression threads of the rebuild (only the speed changes, never the bytes)
    /// [default: every core]
    #[arg(long, env = "IMGBUILD_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Also download the URLs (and repositories) that only the provenance names, not this
    /// project's recipes or mirrors; never from a non-public address (loopback, private,
    /// link-local) unless --allow-host names it
    #[arg(long)]
    pub provenance_urls: bool,
    /// A host (HOST or HOST:PORT) the provenance's URLs may be downloaded from, whatever its
    /// address
    #[arg(long, value_name = "HOST")]
    pub allow_host: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// What the rebuild may download: the provenance's author chose its URLs, so only those this
/// project's recipes and the user's mirrors name, unless the command line says more.
fn url_policy(global: &GlobalArgs, args: &VerifyArgs, fetch: &FetchSettings) -> Result<UrlPolicy> {
    let mut policy =
        UrlPolicy { others: args.provenance_urls, named_hosts: args.allow_host.clone(), ..UrlPolicy::default() };
    policy.trust_recipes(Project::recipes_in(&global.project)?.values());
    policy.trusted_registries.extend(fetch.registries.mirrors.iter().map(|m| m.host.clone()));
    Ok(policy)
}

pub(super) fn run(global: &GlobalArgs, args: &VerifyArgs) -> Result<()> {
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
    settings.cache = None;
    // Nor a layer this store recorded: a tampered record would otherwise vouch for itself.
    settings.layer.reuse_layers = false;
    settings.fetch.url_policy = Some(std::sync::Arc::new(url_policy(global, args, &settings.fetch)?));
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
