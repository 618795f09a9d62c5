//! The whole pipeline for a cluster: recipe → fetch → store → layer → image.
//! Shared layers are built once per platform (and cached by derivation hash across runs);
//! each node adds only its identity layer, config and manifest. The result says which layers
//! every node shares and which one is a node's own, so no output has to guess.

use std::collections::BTreeMap;

use crate::digest::Hash;
use crate::error::{Error, MissingInput, Result};
use crate::fetch::{FetchSettings, Fetcher};
use crate::image::{write_image, BaseImage, ImageInputs, ImageLayer, StoredImage, WrittenImage, DEFAULT_PATH};
use crate::image_def::{ImageDef, Node};
use crate::layer::{generated_layer, recipe_layer, LayerSettings, FORMAT_VERSION, MEDIA_TYPE_GZIP};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::recipe::{self, Recipe, RecipeKind};
use crate::store::Store;

pub(crate) struct BuildSettings {
    pub platforms: Vec<Platform>,
    /// Layer settings; their `cache` is this run's `cache`, seen as layers known elsewhere.
    pub layer: LayerSettings,
    pub fetch: FetchSettings,
    /// The shared cache (`--cache`), for what only the cache does: substituting before the
    /// fetch and reporting.
    pub cache: Option<std::sync::Arc<crate::cache::Cache>>,
}

/// The tag of the image that takes its whole identity at boot.
pub(crate) const CLUSTER_TAG: &str = "cluster";

/// What a build produced.
#[derive(Debug, serde::Serialize)]
pub(crate) struct BuildResult {
    /// Per platform, the layers every node shares.
    pub shared: Vec<SharedLayers>,
    /// The image without an identity layer: a node learns at boot which one it is (tag `cluster`).
    pub cluster: StoredImage,
    /// One image per node asked for, in the definition's order.
    pub nodes: Vec<NodeImage>,
    /// Recipe layers built by this run; 0 when every layer came from the store.
    pub layers_built: usize,
}

/// One platform's layers that every node of the cluster has, in order: the base image's, one
/// per recipe, imgbuild's runtime and the cluster layer.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SharedLayers {
    pub platform: Platform,
    /// The base image's manifest digest, when the image has a base.
    pub base: Option<crate::digest::Sha256Digest>,
    pub layers: Vec<ImageLayer>,
}

/// One node's image: the shared layers plus the node's own identity layer.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct NodeImage {
    pub node: Node,
    /// The node's own layer (its baked id): the only layer it does not share.
    pub identity_layer: ImageLayer,
    #[serde(flatten)]
    pub image: StoredImage,
}

impl BuildResult {
    /// Every image the build wrote: the node-less cluster image, then each node's.
    pub(crate) fn images(&self) -> Vec<StoredImage> {
        std::iter::once(self.cluster.clone()).chain(self.nodes.iter().map(|n| n.image.clone())).collect()
    }

    /// What an output of this build needs kept in the store: what it holds (`held`) and every
    /// pinned input it was built from.
    pub(crate) fn needs(&self, store: &Store, def: &ImageDef, held: &[StoredImage]) -> Vec<Hash> {
        let mut hashes: Vec<Hash> = held.iter().flat_map(StoredImage::blobs).map(|d| d.to_hash()).collect();
        for shared in &self.shared {
            for recipe in def.recipes() {
                if let Some(source) = recipe.source_for(&shared.platform) {
                    hashes.extend(crate::gc::source_blobs(store, recipe, source));
                }
            }
        }
        hashes
    }
}

/// How many inputs are downloaded at once.
const PARALLEL_FETCHES: usize = 4;

/// How many node images are written at once.
const PARALLEL_IMAGES: usize = 8;

/// Makes sure every source of every platform is in the store (tarballs and base images alike),
/// building each tarball's layer as it streams in; reports all that are missing at once.
/// Returns how many layers were built on the way. A tarball found in a `--mirror` directory
/// is copied at CPU speed, so its layer is CPU work like any other: such inputs go at most
/// as many at once as [`layers_at_once`] allows, the largest first; the others are
/// downloaded up to `PARALLEL_FETCHES` at once, each layer keeping pace with its download.
pub(crate) fn fetch_all(
    store: &Store,
    def: &ImageDef,
    settings: &BuildSettings,
    reporter: &dyn Reporter,
) -> Result<usize> {
    // A source whose every layer is in the store, or the cache (`--cache`) gave, is not needed.
    let substituted =
        crate::cache::substitute(store, def, &settings.platforms, settings.cache.as_deref(), &settings.layer, reporter);
    // Each pinned input once, in a fixed order (a file that serves every platform is one input).
    let mut inputs: Vec<(&Recipe, &Platform, &recipe::Source)> = Vec::new();
    for platform in &settings.platforms {
        for recipe in def.recipes() {
            let source = source_for(recipe, platform)?;
            if !inputs.iter().any(|(_, _, s)| s.hash == source.hash) && !substituted.contains(&source.hash) {
                inputs.push((recipe, platform, source));
            }
        }
    }
    let fetcher = Fetcher::new(store, &settings.fetch, reporter);
    let local_size = |(recipe, _, source): &(&Recipe, &Platform, &recipe::Source)| {
        let file = fetcher.mirror_file(source).filter(|_| recipe.kind == RecipeKind::Tarball)?;
        Some(std::fs::metadata(file).map_or(0, |m| m.len()))
    };
    let mut local: Vec<(u64, usize)> = (0..inputs.len()).filter_map(|i| Some((local_size(&inputs[i])?, i))).collect();
    local.sort_by_key(|&(size, i)| (std::cmp::Reverse(size), i));
    let local: Vec<usize> = local.into_iter().map(|(_, i)| i).collect();
    let remote: Vec<usize> = (0..inputs.len()).filter(|i| !local.contains(i)).collect();
    let local_at_once = layers_at_once(&settings.layer, local.len());
    // Each tarball's layer is built while it arrives (not when no layer is reused: the layers
    // are built once, after the fetch), its memory shared with the others built at once.
    let at_once = local_at_once + remote.len().min(PARALLEL_FETCHES);
    let shared = LayerSettings { parallelism: settings.layer.parallelism.shared_by(at_once), ..settings.layer.clone() };
    let fetcher = if settings.layer.reuse_layers { fetcher.building_layers(&shared) } else { fetcher };
    let ensure = |&i: &usize| {
        let (recipe, platform, source) = inputs[i];
        (i, fetcher.ensure(recipe, &platform.to_string(), source))
    };
    let (mut results, remote_results) = std::thread::scope(|scope| {
        let local = scope.spawn(|| crate::fetch::run_bounded(&local, local_at_once, ensure));
        let remote = crate::fetch::run_bounded(&remote, PARALLEL_FETCHES, ensure);
        (local.join().expect("the local fetches do not panic"), remote)
    });
    results.extend(remote_results);
    // Reported in the inputs' order, whichever finished first.
    results.sort_by_key(|(i, _)| *i);
    let mut missing: Vec<MissingInput> = Vec::new();
    for (_, result) in results {
        match result {
            Ok(()) => {}
            Err(Error::MissingInputs(m)) => missing.extend(m),
            Err(e) => return Err(e),
        }
    }
    if missing.is_empty() {
        Ok(fetcher.layers_built())
    } else {
        Err(Error::MissingInputs(missing))
    }
}

fn source_for<'r>(recipe: &'r Recipe, platform: &Platform) -> Result<&'r recipe::Source> {
    recipe.source_for(platform).ok_or_else(|| Error::Definition {
        file: recipe.file.clone(),
        message: format!(
            "recipe `{}` has no source for {platform} (it has: {})",
            recipe.name,
            recipe.platforms().join(", ")
        ),
    })
}

/// At most this many recipe layers are built at once: each holds a few MiB of buffers, and
/// beyond the cores more layers only share the same CPUs.
const MAX_PARALLEL_LAYERS: usize = 4;

/// How many of `layers` recipe layers are built side by side: one per compression thread, at
/// most `MAX_PARALLEL_LAYERS` (each decompresses on its own thread).
fn layers_at_once(settings: &LayerSettings, layers: usize) -> usize {
    settings.parallelism.threads.clamp(1, MAX_PARALLEL_LAYERS).min(layers.max(1))
}

fn platform_inputs(
    store: &Store,
    def: &ImageDef,
    platform: &Platform,
    settings: &LayerSettings,
    reporter: &dyn Reporter,
) -> Result<PlatformInputs> {
    let base = match &def.base {
        // A root-filesystem tarball base is the first recipe layer.
        Some(recipe) if recipe.kind == RecipeKind::Tarball => None,
        Some(recipe) => {
            let source = source_for(recipe, platform)?;
            let digest = source.hash.as_sha256().expect("oci-image sources are sha256");
            let base = BaseImage::load(store, &digest)?;
            base.check_layers(store)?;
            let dropped: Vec<String> =
                base.env().into_iter().filter(|(k, v)| !base_env_kept(k, v)).map(|(k, _)| k).collect();
            if !dropped.is_empty() {
                reporter.warn(&format!(
                    "base `{}` ({platform}) sets {} in its environment: left out of the images (the entrypoint reads these at boot, or they hold control or invisible characters)",
                    recipe.name,
                    crate::error::escape(&dropped.join(", "))
                ));
            }
            Some(base)
        }
        None => None,
    };
    let tarball_base = def.base.iter().filter(|b| b.kind == RecipeKind::Tarball);
    let recipes = tarball_base
        .chain(&def.layers)
        .map(|recipe| Ok((recipe, source_for(recipe, platform)?)))
        .collect::<Result<Vec<_>>>()?;
    // Independent inputs are built side by side (each decompresses on its own thread), the
    // largest source first so that it never starts last; the layers keep the definition's order.
    let at_once = layers_at_once(settings, recipes.len());
    let shared = LayerSettings { parallelism: settings.parallelism.shared_by(at_once), ..settings.clone() };
    let size = |source: &recipe::Source| std::fs::metadata(store.blob_path(&source.hash)).map_or(0, |m| m.len());
    let mut largest_first: Vec<usize> = (0..recipes.len()).collect();
    largest_first.sort_by_key(|&i| std::cmp::Reverse(size(recipes[i].1)));
    // Once a layer fails, no other starts (those under way finish and are kept in the store).
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mut built_layers: Vec<_> = crate::fetch::run_bounded(&largest_first, at_once, |&i| {
        if failed.load(std::sync::atomic::Ordering::SeqCst) {
            return (i, None);
        }
        let (recipe, source) = recipes[i];
        let result = recipe_layer(store, &recipe.name, source, &recipe.unpack, &shared, reporter);
        failed.fetch_or(result.is_err(), std::sync::atomic::Ordering::SeqCst);
        (i, Some(result))
    });
    built_layers.sort_by_key(|(i, _)| *i);
    // The first failure in the definition's order is the one reported.
    let results: Vec<_> = built_layers.into_iter().filter_map(|(_, result)| result).collect::<Result<_>>()?;
    let mut layers = Vec::new();
    let mut built = 0;
    for ((recipe, source), (record, fresh)) in recipes.iter().zip(results) {
        built += usize::from(fresh);
        layers.push(ImageLayer {
            digest: record.digest,
            diff_id: record.diff_id,
            size: record.size,
            media_type: settings.compressor.media_type().into(),
            created_by: format!("imgbuild recipe {} {} ({})", recipe.name, recipe.version, source.file_name),
        });
    }
    Ok(PlatformInputs { platform: platform.clone(), base, layers, built })
}

/// The image environment: the base's, then each recipe's in layer order, then the image's own.
/// Whether a base image's variable reaches the images. What the entrypoint reads at boot never
/// comes from the image: a base that set `NODE_ID` or `PEERS` would give every node one
/// identity (recipes and definitions are refused for it); and no name or value may hold what
/// recipes and definitions may not (control or invisible characters).
fn base_env_kept(name: &str, value: &str) -> bool {
    crate::entrypoint::env_name_problem(name).is_none()
        && !name.chars().chain(value.chars()).any(crate::error::is_unsafe_char)
}

fn environment(def: &ImageDef, base: Option<&BaseImage>) -> BTreeMap<String, String> {
    let mut env = base.map(BaseImage::env).unwrap_or_default();
    env.retain(|name, value| base_env_kept(name, value));
    let base_path = env.remove("PATH").unwrap_or_else(|| DEFAULT_PATH.to_string());
    for recipe in &def.layers {
        env.extend(recipe.env.clone());
    }
    let mut path: Vec<String> = def.layers.iter().flat_map(|r| r.path.iter().cloned()).collect();
    path.push(base_path);
    env.insert("PATH".into(), path.join(":"));
    env.extend(def.config.env.clone());
    env
}

fn labels(
    def: &ImageDef,
    node: Option<&Node>,
    platform: &Platform,
    base: Option<&BaseImage>,
    epoch: u64,
) -> BTreeMap<String, String> {
    let mut labels = def.config.labels.clone();
    labels.insert("org.opencontainers.image.created".into(), crate::date::rfc3339(epoch));
    labels.insert("org.opencontainers.image.title".into(), def.name.clone());
    if let Some(d) = &def.description {
        labels.insert("org.opencontainers.image.description".into(), d.clone());
    }
    labels.insert("org.imgbuild.cluster".into(), def.name.clone());
    if let Some(node) = node {
        labels.insert("org.imgbuild.node.id".into(), node.id.to_string());
    }
    labels.insert("org.imgbuild.layer-format".into(), FORMAT_VERSION.to_string());
    for recipe in def.recipes() {
        if let Some(source) = recipe.source_for(platform) {
            labels.insert(format!("org.imgbuild.input.{}", recipe.name), source.hash.to_string());
            labels.insert(format!("org.imgbuild.input.{}.version", recipe.name), recipe.version.clone());
        }
    }
    if let Some(b) = base {
        labels.insert("org.opencontainers.image.base.digest".into(), b.manifest_digest.to_string());
    }
    labels
}

/// A layer of files imgbuild writes itself (cluster or identity, always gzip), described for the image.
fn own_layer(
    store: &Store,
    files: &BTreeMap<String, crate::layer::GeneratedEntry>,
    settings: &LayerSettings,
    created_by: String,
) -> Result<ImageLayer> {
    let record = generated_layer(store, files, settings, &created_by)?;
    Ok(ImageLayer {
        digest: record.digest,
        diff_id: record.diff_id,
        size: record.size,
        media_type: MEDIA_TYPE_GZIP.into(),
        created_by,
    })
}

/// Where the platform-specific inputs of one image come from, once fetched.
struct PlatformInputs {
    platform: Platform,
    base: Option<BaseImage>,
    layers: Vec<ImageLayer>,
    /// How many recipe layers were built now rather than found in the store.
    built: usize,
}

/// Builds the cluster image and the images of `nodes` (all of them when empty).
pub(crate) fn build(
    store: &Store,
    def: &ImageDef,
    nodes: &[u32],
    settings: &BuildSettings,
    reporter: &dyn Reporter,
) -> Result<BuildResult> {
    let nodes: Vec<Node> = if nodes.is_empty() {
        def.nodes.clone()
    } else {
        nodes.iter().map(|id| def.node(*id).cloned()).collect::<Result<_>>()?
    };
    let built_while_fetching = fetch_all(store, def, settings, reporter)?;
    let mut inputs = Vec::new();
    for platform in &settings.platforms {
        inputs.push(platform_inputs(store, def, platform, &settings.layer, reporter)?);
    }
    let own = own_shared_layers(store, def, &settings.layer)?;
    let images = ImageWriter {
        store,
        def,
        inputs: &inputs,
        own: &own,
        epoch: settings.layer.epoch,
        compressor: settings.layer.compressor,
        max_unpacked: settings.layer.max_unpacked,
    };
    // The images are written side by side: each is a few small files, and what they cost is
    // mostly waiting for the disk to confirm each one (fsync), which writes at once share.
    let (cluster, node_images) = std::thread::scope(|scope| {
        let cluster = scope.spawn(|| images.write(None));
        let nodes = crate::fetch::run_bounded(&nodes, PARALLEL_IMAGES, |node| {
            let identity_layer = own_layer(
                store,
                &crate::node::identity_layer_files(node),
                &settings.layer,
                format!("imgbuild identity of node {}", node.id),
            )?;
            let image = images.write(Some((node, &identity_layer)))?;
            reporter.status(&format!("node {}", node.id));
            Ok(NodeImage { node: node.clone(), identity_layer, image })
        });
        (cluster.join(), nodes)
    });
    let cluster = cluster.map_err(|_| Error::Internal("writing the cluster image panicked".into()))??;
    let node_images = node_images.into_iter().collect::<Result<Vec<_>>>()?;
    let shared = inputs
        .iter()
        .map(|i| SharedLayers {
            platform: i.platform.clone(),
            base: i.base.as_ref().map(|b| b.manifest_digest),
            layers: i.base.iter().flat_map(|b| b.layers.iter()).chain(&i.layers).chain(&own).cloned().collect(),
        })
        .collect();
    Ok(BuildResult {
        shared,
        cluster,
        nodes: node_images,
        layers_built: built_while_fetching + inputs.iter().map(|p| p.built).sum::<usize>(),
    })
}

/// The layers imgbuild writes itself that every node shares: the runtime (entrypoint) and the
/// cluster layer (topology, templates).
fn own_shared_layers(store: &Store, def: &ImageDef, settings: &LayerSettings) -> Result<Vec<ImageLayer>> {
    let mut own = Vec::new();
    if let Some(files) = crate::node::runtime_layer_files(def) {
        let version = env!("CARGO_PKG_VERSION");
        own.push(own_layer(store, &files, settings, format!("imgbuild {version} runtime (entrypoint)"))?);
    }
    own.push(own_layer(
        store,
        &crate::node::cluster_layer_files(def),
        settings,
        format!("imgbuild cluster {} (templates, topology)", def.name),
    )?);
    Ok(own)
}

/// Writes one image (every platform) from the shared inputs plus, for a node, its identity layer.
struct ImageWriter<'a> {
    store: &'a Store,
    def: &'a ImageDef,
    inputs: &'a [PlatformInputs],
    own: &'a [ImageLayer],
    epoch: u64,
    compressor: crate::compress::Compressor,
    max_unpacked: u64,
}

impl ImageWriter<'_> {
    fn write(&self, node: Option<(&Node, &ImageLayer)>) -> Result<StoredImage> {
        let mut written: Vec<(WrittenImage, Platform)> = Vec::new();
        for inputs in self.inputs {
            let mut layers = inputs.layers.clone();
            layers.extend(self.own.iter().cloned());
            layers.extend(node.map(|(_, identity)| identity.clone()));
            let image_inputs = ImageInputs {
                platform: &inputs.platform,
                base: inputs.base.as_ref(),
                layers,
                env: environment(self.def, inputs.base.as_ref()),
                config: &self.def.config,
                labels: labels(self.def, node.map(|(n, _)| n), &inputs.platform, inputs.base.as_ref(), self.epoch),
                annotations: self.base_annotations(inputs.base.as_ref()),
                epoch: self.epoch,
            };
            written.push((write_image(self.store, &image_inputs)?, inputs.platform.clone()));
        }
        let (tag, annotations) = match node {
            Some((n, _)) => {
                (format!("node-{}", n.id), BTreeMap::from([("org.imgbuild.node.id".to_string(), n.id.to_string())]))
            }
            None => (CLUSTER_TAG.to_string(), BTreeMap::new()),
        };
        let mut image = StoredImage::write(self.store, tag, written, &annotations)?;
        // Its SBOMs and provenance, attached as referrers.
        let facts = crate::supply::BuildFacts {
            def: self.def,
            platforms: self.inputs.iter().map(|i| (&i.platform, i.base.as_ref())).collect(),
            compressor: self.compressor,
            epoch: self.epoch,
            max_unpacked: self.max_unpacked,
        };
        crate::supply::attach(self.store, &facts, &mut image, node.map(|(n, _)| n))?;
        Ok(image)
    }

    fn base_annotations(&self, base: Option<&BaseImage>) -> BTreeMap<String, String> {
        let mut annotations = BTreeMap::new();
        if let Some(b) = base {
            annotations.insert("org.opencontainers.image.base.digest".to_string(), b.manifest_digest.to_string());
            if let Some(RecipeKind::OciImage { reference: Some(r), .. }) = self.def.base.as_ref().map(|b| &b.kind) {
                annotations.insert("org.opencontainers.image.base.name".to_string(), r.to_string());
            }
        }
        annotations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SHA: &str = "7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27";

    fn recipe(name: &str, extra: &str) -> Recipe {
        let text = format!(
            "name = \"{name}\"\nversion = \"1.{name}\"\n{extra}\n[[source]]\nurl = \"https://example.org/{name}.tgz\"\nsha256 = \"{SHA}\"\n[unpack]\nprefix = \"/opt/{name}\"\n"
        );
        Recipe::parse(Path::new("r.toml"), &text).unwrap()
    }

    /// A definition over a JDK-like and an app recipe, with `config` as its `[config]` table.
    fn def(config: &str) -> ImageDef {
        let recipes: BTreeMap<String, Recipe> = [
            recipe("jdk", "env = { JAVA_HOME = \"/opt/jdk\", SHARED = \"jdk\" }\npath = [\"/opt/jdk/bin\"]"),
            recipe("app", "env = { SHARED = \"app\" }\npath = [\"/opt/app/bin\"]"),
        ]
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
        let text = format!(
            "name = \"demo\"\nlayers = [\"jdk\", \"app\"]\n[config]\n{config}\n[[cluster.node]]\nid = 1\nhost = \"h1\"\n[[cluster.node]]\nid = 2\nhost = \"h2\"\n"
        );
        ImageDef::parse(Path::new("images/demo.toml"), &text, &recipes).unwrap()
    }

    fn base(env: &[&str]) -> BaseImage {
        // No `history`: optional in the spec, and absent from many minimal images.
        let json = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": { "Env": env },
            "rootfs": { "type": "layers", "diff_ids": [] },
        });
        let config = crate::image::parse_config(json.to_string().as_bytes()).unwrap();
        let digest = crate::digest::Sha256Digest::of(b"base");
        BaseImage { manifest_digest: digest, config_digest: digest, config, layers: vec![] }
    }

    #[test]
    fn the_environment_is_the_bases_then_each_recipes_in_layer_order_then_the_images() {
        let env = environment(&def(""), Some(&base(&["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "SHARED=base"])));
        assert_eq!(env["PATH"], "/opt/jdk/bin:/opt/app/bin:/usr/bin:/bin", "recipes' dirs first, in layer order");
        assert_eq!(env["SHARED"], "app", "a later layer's recipe wins");
        assert_eq!((env["LANG"].as_str(), env["JAVA_HOME"].as_str()), ("C.UTF-8", "/opt/jdk"));
        let own = environment(&def("env = { SHARED = \"image\" }"), None);
        assert_eq!(own["SHARED"], "image", "the image's own env is set last");
        assert!(own["PATH"].ends_with(DEFAULT_PATH), "without a base, the usual PATH follows the recipes'");
    }

    #[test]
    fn labels_name_every_input_and_the_node_only_in_a_node_image() {
        let d = def("labels = { \"org.imgbuild.cluster\" = \"spoofed\", team = \"infra\" }");
        let platform: Platform = "linux/amd64".parse().unwrap();
        let node = d.node(2).unwrap().clone();
        let node_labels = labels(&d, Some(&node), &platform, None, 86_400);
        assert_eq!(node_labels["org.imgbuild.node.id"], "2");
        assert_eq!(node_labels["org.imgbuild.input.jdk"], format!("sha256:{SHA}"));
        assert_eq!(node_labels["org.imgbuild.input.app.version"], "1.app");
        assert_eq!(node_labels["org.opencontainers.image.created"], "1970-01-02T00:00:00Z");
        assert_eq!(node_labels["team"], "infra");
        assert_eq!(node_labels["org.imgbuild.cluster"], "demo", "imgbuild's own labels cannot be overridden");
        let cluster_labels = labels(&d, None, &platform, None, 0);
        assert!(!cluster_labels.contains_key("org.imgbuild.node.id"));
    }
}
