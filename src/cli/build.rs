//! `imgbuild build` and `imgbuild node --id N`.

use std::path::PathBuf;

use crate::build::{build, BuildResult, BuildSettings};
use crate::cache::CacheReport;
use crate::compress::{default_threads, Codec, Compressor, Parallelism};
use crate::error::{Error, Result};
use crate::layer::LayerSettings;
use crate::output::{self, Destination, Force, Format};
use crate::platform::Platform;
use crate::project::Project;

use super::GlobalArgs;

/// Which image to build, for what, and how fast: shared by `build`, `node` and `push`.
#[derive(clap::Args)]
pub struct ImageChoice {
    /// The image definition: a name in images/ or a path [default: the only one]
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// Platforms to build, comma-separated (e.g. linux/amd64,linux/arm64) [default: the host's]
    #[arg(long, value_name = "LIST")]
    pub platform: Option<String>,
    /// Compression threads (only the speed changes, never the bytes) [default: every core]
    #[arg(long, env = "IMGBUILD_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Compression of the recipe layers; part of every layer's digest
    #[arg(long, env = "IMGBUILD_COMPRESSION", value_enum, default_value_t = Codec::Gzip)]
    pub compression: Codec,
    /// Compression level: gzip 1 (fastest) to 9 (smallest), zstd 1 to 19; part of every
    /// layer's digest [default: gzip 1, zstd 3]
    #[arg(long, env = "IMGBUILD_LEVEL", value_name = "N")]
    pub level: Option<u8>,
}

#[derive(clap::Args)]
pub struct BuildOptions {
    #[command(flatten)]
    pub choice: ImageChoice,
    /// Output format
    #[arg(long, value_enum, default_value = "oci")]
    pub format: Format,
    /// Output path, replaced only if imgbuild wrote it [default: out/IMAGE (build) or
    /// out/IMAGE-node-N (node), `.tar` for archives]
    #[arg(long, short, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub options: BuildOptions,
}

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's id in the cluster definition
    #[arg(long)]
    pub id: u32,
    #[command(flatten)]
    pub options: BuildOptions,
}

/// `SOURCE_DATE_EPOCH`, or 0: the one time every output carries.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) if v.is_empty() => Ok(0),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(epoch) if epoch <= crate::date::MAX_EPOCH => Ok(epoch),
            Ok(_) => Err(Error::Usage(format!(
                "SOURCE_DATE_EPOCH={v} is after 9999-12-31T23:59:59Z ({}), the last time image configs can hold",
                crate::date::MAX_EPOCH
            ))),
            Err(_) => Err(Error::Usage(format!("SOURCE_DATE_EPOCH=`{v}` is not a whole number of seconds"))),
        },
    }
}

/// `IMGBUILD_MAX_UNPACKED` (bytes), or the default limit.
pub(super) fn max_unpacked() -> Result<u64> {
    match std::env::var("IMGBUILD_MAX_UNPACKED") {
        Err(_) => Ok(crate::layer::DEFAULT_MAX_UNPACKED),
        Ok(v) => {
            v.trim().parse().map_err(|_| Error::Usage(format!("IMGBUILD_MAX_UNPACKED=`{v}` is not a number of bytes")))
        }
    }
}

pub(super) fn settings(global: &GlobalArgs, choice: &ImageChoice) -> Result<BuildSettings> {
    let platforms = match &choice.platform {
        Some(list) => Platform::parse_list(list).map_err(Error::Usage)?,
        None => vec![Platform::host()],
    };
    let threads = choice.threads.unwrap_or_else(default_threads);
    if threads == 0 {
        return Err(Error::Usage("--threads must be at least 1".into()));
    }
    let compressor = Compressor::new(choice.compression, choice.level).map_err(Error::Usage)?;
    let cache = global.cache(compressor.media_type())?;
    Ok(BuildSettings {
        platforms,
        layer: LayerSettings {
            epoch: source_date_epoch()?,
            compressor,
            parallelism: Parallelism::threads(threads),
            max_unpacked: max_unpacked()?,
            cache: cache.clone().map(|c| c as std::sync::Arc<dyn crate::layer::KnownLayers>),
            reuse_layers: true,
        },
        fetch: global.fetch_settings()?,
        cache,
    })
}

fn run(global: &GlobalArgs, options: &BuildOptions, node: Option<u32>) -> Result<()> {
    let settings = settings(global, &options.choice)?;
    if options.format == Format::DockerArchive && settings.platforms.len() > 1 {
        return Err(Error::Usage("docker-archive holds one platform; pass a single --platform".into()));
    }
    let project = Project::load(&global.project, options.choice.image.as_deref())?;
    let def = &project.image;
    if let Some(id) = node {
        def.node(id)?;
    }
    let out = match &options.out {
        Some(out) => out.clone(),
        None => default_out(def, node, options.format)?,
    };
    // Before any work: a path that is not imgbuild's own output is refused, untouched.
    let dest = Destination::check(&out, options.format.shape(), Force::NotOffered)?;
    let store = global.open_store()?;
    let _building = store.build_lock_shared()?;
    let reporter = global.reporter();
    let nodes: Vec<u32> = node.into_iter().collect();
    let result = build(&store, def, &nodes, &settings, reporter.as_ref())?;
    // `node --id N` writes that node's image; `build` also the node-less `cluster` image.
    let images = match node {
        Some(_) => result.nodes.iter().map(|n| n.image.clone()).collect(),
        None => result.images(),
    };
    output::write(&store, &dest, options.format, &images, &def.name, settings.layer.epoch)?;
    store.add_root(&out, result.needs(&store, def, &images))?;
    let cache = settings.cache.as_ref().map(|c| c.report());
    report(global, def, &out, options.format, &result, node.is_none(), cache.as_ref())
}

/// `out/IMAGE` (every node) or `out/IMAGE-node-N`, with `.tar` for archives.
fn default_out(def: &crate::image_def::ImageDef, node: Option<u32>, format: Format) -> Result<PathBuf> {
    let stem = match node {
        Some(id) => format!("{}-node-{id}", def.name),
        None => def.name.clone(),
    };
    let name = if format.is_archive() { format!("{stem}.tar") } else { stem };
    crate::tree_path::default_out(&name)
}

fn report(
    global: &GlobalArgs,
    def: &crate::image_def::ImageDef,
    out: &std::path::Path,
    format: Format,
    result: &BuildResult,
    with_cluster: bool,
    cache: Option<&CacheReport>,
) -> Result<()> {
    let images = &result.nodes;
    if global.json {
        return super::print_json(&serde_json::json!({
            "image": def.name,
            "output": out,
            "format": format,
            "layers_built": result.layers_built,
            "cache": cache,
            "cluster": result.cluster,
            "nodes": images,
        }));
    }
    for img in images {
        outln!("{}\t{}\t{}", img.image.tag, img.image.digest, out.display())?;
    }
    // The image Kubernetes runs (every pod learns its node at boot): its digest goes in manifests.
    if with_cluster {
        outln!("{}\t{}\t{}", result.cluster.tag, result.cluster.digest, out.display())?;
    }
    if !global.quiet {
        let shared: u64 = result.shared.iter().flat_map(|s| s.layers.iter().map(|l| l.size)).sum();
        errln!(
            "wrote {} node image(s) of `{}` and its node-less image (tag `cluster`) to {} ({} of shared layers)",
            images.len(),
            def.name,
            out.display(),
            human_bytes(shared)
        );
        if let Some(c) = cache {
            errln!(
                "cache {}: {} layer(s) pulled, {} pushed, {} missing, {} refused, {} not trusted, {} replaced{}",
                c.repository,
                c.pulled,
                c.pushed,
                c.missing,
                c.refused,
                c.untrusted,
                c.replaced,
                if c.unavailable.is_some() { " (unavailable)" } else { "" }
            );
        }
    }
    Ok(())
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(super) fn run_build(global: &GlobalArgs, args: &BuildArgs) -> Result<()> {
    run(global, &args.options, None)
}

pub(super) fn run_node(global: &GlobalArgs, args: &NodeArgs) -> Result<()> {
    run(global, &args.options, Some(args.id))
}
