//! The whole pipeline for a cluster: recipe → fetch → store → layer → image → output.
//! Shared layers are built once per platform (and cached by derivation hash across runs);
//! each node adds only its identity layer, config and manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType};

use crate::digest::Sha256Digest;
use crate::error::{Error, MissingInput, Result};
use crate::fetch::{FetchSettings, Fetcher};
use crate::image::{
    descriptor, write_image, write_index, BaseImage, ImageInputs, ImageLayer, WrittenImage, DEFAULT_PATH,
};
use crate::image_def::{ImageDef, Node};
use crate::layer::{generated_layer, recipe_layer, LayerSettings, FORMAT_VERSION, MEDIA_TYPE_GZIP};
use crate::output::{DockerImage, OutputImage};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::recipe::{self, Recipe, RecipeKind};
use crate::store::Store;

/// A project: its recipes and one image definition.
pub struct Project {
    pub recipes: BTreeMap<String, Recipe>,
    pub image: ImageDef,
}

impl Project {
    /// Loads `DIR/recipes/*.toml` and the image `name` (or the only one) of `DIR/images/`.
    pub fn load(dir: &Path, image: Option<&str>) -> Result<Project> {
        let recipes_dir = dir.join("recipes");
        let images_dir = dir.join("images");
        if !images_dir.is_dir() {
            return Err(Error::Usage(format!(
                "{} has no images/ directory; run imgbuild in a project (or pass --project DIR)",
                dir.display()
            )));
        }
        let recipes = if recipes_dir.is_dir() { recipe::load_dir(&recipes_dir)? } else { BTreeMap::new() };
        let path = match image {
            Some(name) if name.ends_with(".toml") || name.contains('/') => PathBuf::from(name),
            Some(name) => images_dir.join(format!("{name}.toml")),
            None => {
                let all = crate::toml_file::toml_files_in(&images_dir)?;
                match all.as_slice() {
                    [only] => only.clone(),
                    _ => {
                        let names: Vec<String> = all
                            .iter()
                            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                            .collect();
                        return Err(Error::Usage(format!(
                            "choose an image with --image (one of: {})",
                            names.join(", ")
                        )));
                    }
                }
            }
        };
        if !path.is_file() {
            return Err(Error::Usage(format!("no image definition at {}", path.display())));
        }
        let image = ImageDef::load(&path, &recipes)?;
        Ok(Project { recipes, image })
    }
}

pub struct BuildSettings {
    pub platforms: Vec<Platform>,
    pub layer: LayerSettings,
    pub fetch: FetchSettings,
}

/// One node's finished image: one manifest per platform, under an index when there are several.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeImage {
    pub node: Node,
    pub tag: String,
    /// The manifest (one platform) or index (several) the tag points at.
    pub digest: Sha256Digest,
    pub media_type: String,
    pub size: u64,
    pub platforms: Vec<WrittenImage>,
}

impl NodeImage {
    pub fn descriptor(&self) -> Descriptor {
        descriptor(MediaType::from(self.media_type.as_str()), &self.digest, self.size)
    }

    /// What an output needs to hold this image.
    pub fn output(&self, image_name: &str) -> OutputImage {
        let mut blobs = vec![self.digest];
        for p in &self.platforms {
            blobs.push(p.manifest_digest);
            blobs.push(p.config_digest);
            blobs.extend(p.layers.iter().map(|l| l.digest.0));
        }
        blobs.sort();
        blobs.dedup();
        let docker = match self.platforms.as_slice() {
            [only] => Some(DockerImage {
                repo_tag: format!("{image_name}:{}", self.tag),
                config: only.config_digest,
                layers: only.layers.iter().map(|l| l.digest.0).collect(),
            }),
            _ => None,
        };
        OutputImage { tag: self.tag.clone(), descriptor: self.descriptor(), blobs, docker }
    }
}

/// Where the platform-specific inputs of one image come from, once fetched.
struct PlatformInputs {
    platform: Platform,
    base: Option<BaseImage>,
    layers: Vec<ImageLayer>,
    /// How many recipe layers were built now rather than found in the store.
    built: usize,
}

/// What a build produced.
#[derive(Debug, serde::Serialize)]
pub struct BuildResult {
    pub nodes: Vec<NodeImage>,
    /// Recipe layers built by this run; 0 when every layer came from the store.
    pub layers_built: usize,
}

/// Makes sure every source of every platform is in the store; reports all that are missing at once.
pub fn fetch_all(store: &Store, def: &ImageDef, settings: &BuildSettings, reporter: &dyn Reporter) -> Result<()> {
    let fetcher = Fetcher::new(store, &settings.fetch, reporter);
    let mut missing: Vec<MissingInput> = Vec::new();
    for platform in &settings.platforms {
        for recipe in def.recipes() {
            let source = source_for(recipe, platform)?;
            if let RecipeKind::OciImage { reference, .. } = &recipe.kind {
                if !store.has(&source.hash) {
                    let reference = reference.clone().unwrap_or_else(|| recipe.name.clone());
                    missing.push(MissingInput {
                        recipe: recipe.name.clone(),
                        platform: platform.to_string(),
                        file: format!("image {reference}"),
                        urls: vec![format!("docker://{reference}@{}", source.hash)],
                        hash: source.hash.to_string(),
                        reasons: vec!["not in the store (a build never contacts a registry by itself)".into()],
                        add: format!("imgbuild pull {reference}@{}", source.hash),
                    });
                }
                continue;
            }
            match fetcher.ensure(&recipe.name, &platform.to_string(), source) {
                Ok(()) => {}
                Err(Error::MissingInputs(m)) => missing.extend(m),
                Err(e) => return Err(e),
            }
        }
    }
    if missing.is_empty() {
        Ok(())
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
            Some(BaseImage::load(store, &digest)?)
        }
        None => None,
    };
    let mut layers = Vec::new();
    let mut built = 0;
    let tarball_base = def.base.iter().filter(|b| b.kind == RecipeKind::Tarball);
    for recipe in tarball_base.chain(&def.layers) {
        let source = source_for(recipe, platform)?;
        let (record, fresh) = recipe_layer(store, &recipe.name, source, &recipe.unpack, settings, reporter)?;
        built += usize::from(fresh);
        layers.push(ImageLayer {
            digest: record.digest,
            diff_id: record.diff_id,
            size: record.size,
            media_type: MEDIA_TYPE_GZIP.into(),
            created_by: format!("imgbuild recipe {} {} ({})", recipe.name, recipe.version, source.file_name),
        });
    }
    Ok(PlatformInputs { platform: platform.clone(), base, layers, built })
}

/// The image environment: the base's, then each recipe's in layer order, then the image's own.
fn environment(def: &ImageDef, base: Option<&BaseImage>) -> BTreeMap<String, String> {
    let mut env = base.map(BaseImage::env).unwrap_or_default();
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
    node: &Node,
    platform: &Platform,
    base: Option<&BaseImage>,
    epoch: u64,
) -> BTreeMap<String, String> {
    let mut labels = def.config.labels.clone();
    labels.insert("org.opencontainers.image.created".into(), crate::image::rfc3339(epoch));
    labels.insert("org.opencontainers.image.title".into(), def.name.clone());
    if let Some(d) = &def.description {
        labels.insert("org.opencontainers.image.description".into(), d.clone());
    }
    labels.insert("org.imgbuild.cluster".into(), def.name.clone());
    labels.insert("org.imgbuild.node.id".into(), node.id.to_string());
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

/// A layer of files imgbuild writes itself (cluster or identity), described for the image.
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

/// Builds the images of `nodes` (all of them when empty).
pub fn build(
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
    fetch_all(store, def, settings, reporter)?;
    let epoch = settings.layer.epoch;
    let mut per_platform = Vec::new();
    for platform in &settings.platforms {
        per_platform.push(platform_inputs(store, def, platform, &settings.layer, reporter)?);
    }
    let mut shared = Vec::new();
    if let Some(files) = crate::node::runtime_layer_files(def) {
        let version = env!("CARGO_PKG_VERSION");
        shared.push(own_layer(store, &files, &settings.layer, format!("imgbuild {version} runtime (entrypoint)"))?);
    }
    shared.push(own_layer(
        store,
        &crate::node::cluster_layer_files(def),
        &settings.layer,
        format!("imgbuild cluster {} (templates, topology)", def.name),
    )?);
    let mut images = Vec::new();
    for node in &nodes {
        reporter.status(&format!("node {}", node.id));
        let identity_layer = own_layer(
            store,
            &crate::node::identity_layer_files(node),
            &settings.layer,
            format!("imgbuild identity of node {}", node.id),
        )?;
        let mut written = Vec::new();
        for inputs in &per_platform {
            let mut layers = inputs.layers.clone();
            layers.extend(shared.iter().cloned());
            layers.push(identity_layer.clone());
            let mut annotations = BTreeMap::new();
            if let Some(b) = &inputs.base {
                annotations.insert("org.opencontainers.image.base.digest".to_string(), b.manifest_digest.to_string());
                if let Some(RecipeKind::OciImage { reference: Some(r), .. }) = def.base.as_ref().map(|b| &b.kind) {
                    annotations.insert("org.opencontainers.image.base.name".to_string(), r.clone());
                }
            }
            let image_inputs = ImageInputs {
                platform: &inputs.platform,
                base: inputs.base.as_ref(),
                layers,
                env: environment(def, inputs.base.as_ref()),
                config: &def.config,
                labels: labels(def, node, &inputs.platform, inputs.base.as_ref(), epoch),
                annotations,
                epoch,
            };
            written.push(write_image(store, &image_inputs)?);
        }
        let tag = format!("node-{}", node.id);
        let image = if written.len() == 1 {
            let w = &written[0];
            NodeImage {
                node: node.clone(),
                tag,
                digest: w.manifest_digest,
                media_type: MediaType::ImageManifest.to_string(),
                size: w.manifest_size,
                platforms: written,
            }
        } else {
            let pairs: Vec<(WrittenImage, Platform)> =
                written.iter().cloned().zip(per_platform.iter().map(|p| p.platform.clone())).collect();
            let mut annotations = BTreeMap::new();
            annotations.insert("org.imgbuild.node.id".to_string(), node.id.to_string());
            let (digest, size) = write_index(store, &pairs, &annotations)?;
            NodeImage {
                node: node.clone(),
                tag,
                digest,
                media_type: MediaType::ImageIndex.to_string(),
                size,
                platforms: written,
            }
        };
        images.push(image);
    }
    Ok(BuildResult { nodes: images, layers_built: per_platform.iter().map(|p| p.built).sum() })
}
