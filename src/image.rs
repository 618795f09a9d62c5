//! OCI image documents: config, manifest and index, built with oci-spec and serialized
//! canonically (sorted keys, no whitespace) so the same inputs always give the same digests.

use std::collections::BTreeMap;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;

use crate::date::rfc3339;
use crate::digest::{BlobDigest, DiffId, Sha256Digest};
use crate::error::{escape, Error, Result};
use crate::image_def::ImageConfig;
use crate::layer::Compression;
use crate::platform::Platform;
use crate::store::Store;

pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One layer of an image, as its manifest and config describe it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ImageLayer {
    pub digest: BlobDigest,
    pub diff_id: DiffId,
    pub size: u64,
    pub media_type: String,
    /// History line: which recipe (or imgbuild part) made it.
    pub created_by: String,
}

/// A base image taken from the store, its layers used as they are.
#[derive(Clone)]
pub(crate) struct BaseImage {
    pub manifest_digest: Sha256Digest,
    pub config_digest: Sha256Digest,
    pub config: ImageConfiguration,
    pub layers: Vec<ImageLayer>,
}

impl BaseImage {
    pub(crate) fn load(store: &Store, manifest_digest: &Sha256Digest) -> Result<BaseImage> {
        let store_err = |message: String| Error::Store { path: store.sha256_path(manifest_digest), message };
        let bytes = store.read_blob(manifest_digest)?;
        // An artifact (an SBOM, a signature) is not an image, whatever a recipe pins.
        let received: crate::oci_doc::Document = serde_json::from_slice(&bytes)
            .map_err(|e| store_err(format!("base manifest {manifest_digest} is not an OCI image manifest: {e}")))?;
        let config_type = received.config.as_ref().map(|c| c.media_type.as_str()).unwrap_or_default();
        if received.artifact_type.is_some() || !crate::import::IMAGE_CONFIGS.contains(&config_type) {
            return Err(Error::BadArchive {
                archive: format!("base image {manifest_digest}"),
                message: format!(
                    "the pinned manifest is an artifact (`{}`), not an image: pin the image's manifest",
                    escape(received.artifact_type.as_deref().unwrap_or(config_type))
                ),
            });
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| store_err(format!("base manifest {manifest_digest} is not an OCI image manifest: {e}")))?;
        let config_digest = Sha256Digest::from_oci(manifest.config().digest()).map_err(|e| store_err(e.to_string()))?;
        let config = parse_config(&store.read_blob(&config_digest)?)
            .map_err(|e| store_err(format!("base config {config_digest}: {e}")))?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(Error::BadArchive {
                archive: format!("base image {manifest_digest}"),
                message: format!(
                    "its config lists {} layer diff_ids, its manifest {} layers",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (i, (desc, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
            let digest = Sha256Digest::from_oci(desc.digest()).map_err(|e| store_err(e.to_string()))?;
            if !store.has_sha256(&digest) {
                return Err(store_err(format!(
                    "base layer {digest} is missing from the store; `imgbuild store add` the base image again"
                )));
            }
            let diff_id = diff_id.parse().map_err(|e| store_err(format!("diff_id `{diff_id}`: {e}")))?;
            layers.push(ImageLayer {
                digest: BlobDigest(digest),
                diff_id: DiffId(diff_id),
                size: desc.size(),
                media_type: desc.media_type().to_string(),
                created_by: format!("base layer {i}"),
            });
        }
        Ok(BaseImage { manifest_digest: *manifest_digest, config_digest, config, layers })
    }

    /// Checks that each layer's content, decompressed as its media type says, hashes to the
    /// diff_id its config gives: runtimes check it on pull and load, so an image with a wrong one
    /// would build here and fail there. Each layer is read once per store (`diff_ids/`).
    pub(crate) fn check_layers(&self, store: &Store) -> Result<()> {
        for (i, layer) in self.layers.iter().enumerate() {
            if store.diff_id_checked(&layer.digest) == Some(layer.diff_id) {
                continue;
            }
            let bad = |message: String| Error::BadArchive {
                archive: format!("base image {}", self.manifest_digest),
                message: format!("layer {} of {} ({}): {message}", i + 1, self.layers.len(), layer.digest),
            };
            let declared = layer_compression(&layer.media_type)
                .ok_or_else(|| bad(format!("media type `{}` is not a layer's", escape(&layer.media_type))))?;
            let mut input = std::io::BufReader::new(store.open_blob(&layer.digest.0.to_hash())?);
            let head = std::io::BufRead::fill_buf(&mut input).map_err(|e| bad(format!("cannot read: {e}")))?;
            let found = Compression::detect(head);
            if found != declared {
                return Err(bad(format!(
                    "its media type `{}` says {}, its content is {}",
                    layer.media_type,
                    compression_name(declared),
                    compression_name(found)
                )));
            }
            let reader = declared.reader(input, crate::layer::DEFAULT_MAX_UNPACKED);
            let (hash, _) = crate::digest::hash_reader(crate::digest::Algorithm::Sha256, reader)
                .map_err(|e| bad(format!("cannot be decompressed: {}", escape(&e.to_string()))))?;
            let content = hash.as_sha256().expect("a sha256 hash");
            if content != layer.diff_id.0 {
                return Err(bad(format!("its config says diff_id {}, its content hashes to {content}", layer.diff_id)));
            }
            store.record_diff_id(&layer.digest, &layer.diff_id)?;
        }
        Ok(())
    }

    /// The base's environment as ordered pairs.
    pub(crate) fn env(&self) -> BTreeMap<String, String> {
        let env = self.config.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default();
        env.iter().filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
    }
}

fn compression_name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "an uncompressed tar",
        compressed => compressed.name(),
    }
}

/// How a layer of `media_type` is compressed (OCI and Docker names); `None` if it is not a layer.
fn layer_compression(media_type: &str) -> Option<Compression> {
    let oci = media_type
        .strip_prefix("application/vnd.oci.image.layer.")
        .and_then(|t| t.strip_prefix("v1.").or_else(|| t.strip_prefix("nondistributable.v1.")));
    match (oci, media_type) {
        (Some("tar"), _) => Some(Compression::None),
        (Some("tar+gzip"), _) | (_, "application/vnd.docker.image.rootfs.diff.tar.gzip") => Some(Compression::Gzip),
        (Some("tar+zstd"), _) | (_, "application/vnd.docker.image.rootfs.diff.tar.zstd") => Some(Compression::Zstd),
        (_, "application/vnd.docker.image.rootfs.diff.tar") => Some(Compression::None),
        _ => None,
    }
}

/// An image configuration as other tools write it. The spec makes `history` optional (many
/// minimal images have none); the oci-spec types require it, so a missing one reads as empty.
pub(crate) fn parse_config(bytes: &[u8]) -> serde_json::Result<ImageConfiguration> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
    if let Some(fields) = value.as_object_mut() {
        fields.entry("history").or_insert_with(|| serde_json::json!([]));
    }
    serde_json::from_value(value)
}

/// Everything one platform's image of one node is made of.
pub(crate) struct ImageInputs<'a> {
    pub platform: &'a Platform,
    pub base: Option<&'a BaseImage>,
    pub layers: Vec<ImageLayer>,
    pub env: BTreeMap<String, String>,
    pub config: &'a ImageConfig,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub epoch: u64,
}

/// One platform's image, written to the store: its manifest, config and layers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WrittenImage {
    pub platform: String,
    pub manifest_digest: Sha256Digest,
    pub manifest_size: u64,
    pub config_digest: Sha256Digest,
    pub layers: Vec<ImageLayer>,
}

/// A tagged image whose every blob is in the store: one platform's manifest, or an index over
/// several. What every output (layout, archive, registry) takes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredImage {
    pub tag: String,
    /// The manifest (one platform) or index (several) the tag points at.
    pub digest: Sha256Digest,
    pub media_type: String,
    pub size: u64,
    pub platforms: Vec<WrittenImage>,
    /// Documents attached to the image or its platform manifests (SBOMs, provenance).
    pub referrers: Vec<Referrer>,
}

/// An OCI 1.1 artifact attached to an image: one document (an SBOM, a provenance statement)
/// carried as the single layer of an artifact manifest whose `subject` is the image.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Referrer {
    pub artifact_type: String,
    /// The artifact manifest's digest and size.
    pub digest: Sha256Digest,
    pub size: u64,
    /// The manifest or index it is attached to.
    pub subject: Sha256Digest,
    /// The document it carries.
    pub document: Sha256Digest,
}

/// The empty JSON object the image spec's artifact guidance uses as an artifact's config.
pub(crate) const EMPTY_JSON: &[u8] = b"{}";

impl StoredImage {
    /// Writes `images` (one per platform, in order) as one image: the manifest itself for one
    /// platform, else an index over them carrying `index_annotations`.
    pub(crate) fn write(
        store: &Store,
        tag: String,
        images: Vec<(WrittenImage, Platform)>,
        index_annotations: &BTreeMap<String, String>,
    ) -> Result<StoredImage> {
        if let [(only, _)] = images.as_slice() {
            return Ok(StoredImage {
                tag,
                digest: only.manifest_digest,
                media_type: MediaType::ImageManifest.to_string(),
                size: only.manifest_size,
                platforms: vec![only.clone()],
                referrers: Vec::new(),
            });
        }
        let (digest, size) = write_index(store, &images, index_annotations)?;
        Ok(StoredImage {
            tag,
            digest,
            media_type: MediaType::ImageIndex.to_string(),
            size,
            platforms: images.into_iter().map(|(w, _)| w).collect(),
            referrers: Vec::new(),
        })
    }

    pub(crate) fn descriptor(&self) -> Descriptor {
        descriptor(MediaType::from(self.media_type.as_str()), &self.digest, self.size)
    }

    /// Every blob the image needs (index, manifests, configs, layers) and, with
    /// `with_referrers`, every blob of its referrers; sorted, once each.
    pub(crate) fn blobs_of(&self, with_referrers: bool) -> Vec<Sha256Digest> {
        let mut blobs = vec![self.digest];
        for p in &self.platforms {
            blobs.push(p.manifest_digest);
            blobs.push(p.config_digest);
            blobs.extend(p.layers.iter().map(|l| l.digest.0));
        }
        if with_referrers {
            for r in &self.referrers {
                blobs.extend([r.digest, r.document, Sha256Digest::of(EMPTY_JSON)]);
            }
        }
        blobs.sort();
        blobs.dedup();
        blobs
    }

    /// Every blob of the image and its referrers.
    pub(crate) fn blobs(&self) -> Vec<Sha256Digest> {
        self.blobs_of(true)
    }

    /// The descriptor of the manifest or index `digest` of this image (the top or a platform's).
    pub(crate) fn subject_descriptor(&self, digest: &Sha256Digest) -> Option<Descriptor> {
        if *digest == self.digest {
            return Some(self.descriptor());
        }
        let p = self.platforms.iter().find(|p| p.manifest_digest == *digest)?;
        Some(descriptor(MediaType::ImageManifest, &p.manifest_digest, p.manifest_size))
    }

    /// The single platform's image, for formats that hold one (docker-archive).
    pub(crate) fn single_platform(&self) -> Option<&WrittenImage> {
        match self.platforms.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// Serializes any oci-spec document canonically: going through `serde_json::Value` sorts every
/// map, including the ones oci-spec keeps in a `HashMap`.
pub(crate) fn canonical_json(value: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("OCI documents serialize");
    serde_json::to_vec(&value).expect("JSON values serialize")
}

fn spec_err(e: oci_spec::OciSpecError) -> Error {
    Error::Internal(format!("building an OCI document: {e}"))
}

pub(crate) fn descriptor(media_type: MediaType, digest: &Sha256Digest, size: u64) -> Descriptor {
    Descriptor::new(media_type, size, digest.to_oci())
}

pub(crate) fn write_image(store: &Store, inputs: &ImageInputs<'_>) -> Result<WrittenImage> {
    let created = rfc3339(inputs.epoch);
    let mut all_layers: Vec<ImageLayer> = inputs.base.map(|b| b.layers.clone()).unwrap_or_default();
    all_layers.extend(inputs.layers.iter().cloned());

    let mut history = Vec::new();
    if let Some(base) = inputs.base {
        history.extend(base.config.history().iter().cloned());
    }
    for layer in &inputs.layers {
        history.push(
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(layer.created_by.clone())
                .build()
                .map_err(spec_err)?,
        );
    }

    let c = inputs.config;
    let env: Vec<String> = inputs.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut config = ConfigBuilder::default()
        .user(c.user.clone())
        .env(env)
        .entrypoint(c.entrypoint.clone())
        .working_dir(c.workdir.clone())
        .labels(inputs.labels.clone().into_iter().collect::<std::collections::HashMap<_, _>>());
    if !c.cmd.is_empty() {
        config = config.cmd(c.cmd.clone());
    }
    if !c.ports.is_empty() {
        config = config.exposed_ports(c.ports.clone());
    }
    if !c.volumes.is_empty() {
        config = config.volumes(c.volumes.clone());
    }
    if let Some(sig) = &c.stop_signal {
        config = config.stop_signal(sig.clone());
    }
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(all_layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)?;
    let mut image_config = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(inputs.platform.architecture.as_str()))
        .os(Os::from(inputs.platform.os.as_str()))
        .config(config.build().map_err(spec_err)?)
        .rootfs(rootfs)
        .history(history);
    if let Some(v) = &inputs.platform.variant {
        image_config = image_config.variant(v.clone());
    }
    let config_bytes = canonical_json(&image_config.build().map_err(spec_err)?);
    let config_digest = store.add_bytes(&config_bytes)?;

    let layer_descs: Vec<Descriptor> =
        all_layers.iter().map(|l| descriptor(MediaType::from(l.media_type.as_str()), &l.digest.0, l.size)).collect();
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_digest, config_bytes.len() as u64))
        .layers(layer_descs);
    if !inputs.annotations.is_empty() {
        manifest =
            manifest.annotations(inputs.annotations.clone().into_iter().collect::<std::collections::HashMap<_, _>>());
    }
    let manifest_bytes = canonical_json(&manifest.build().map_err(spec_err)?);
    let manifest_digest = store.add_bytes(&manifest_bytes)?;
    Ok(WrittenImage {
        platform: inputs.platform.to_string(),
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        config_digest,
        layers: all_layers,
    })
}

/// Stores `document` and an artifact manifest of `artifact_type` carrying it, attached to
/// `subject`; `created` (from `SOURCE_DATE_EPOCH`) is its only timestamp.
pub(crate) fn write_artifact(
    store: &Store,
    artifact_type: &str,
    subject: &Descriptor,
    document: &[u8],
    created: &str,
) -> Result<Referrer> {
    let document_digest = store.add_bytes(document)?;
    let empty = store.add_bytes(EMPTY_JSON)?;
    let layer = descriptor(MediaType::Other(artifact_type.to_string()), &document_digest, document.len() as u64);
    let annotations = [("org.opencontainers.image.created".to_string(), created.to_string())];
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(artifact_type.to_string()))
        .config(descriptor(MediaType::EmptyJSON, &empty, EMPTY_JSON.len() as u64))
        .layers(vec![layer])
        .subject(subject.clone())
        .annotations(annotations.into_iter().collect::<std::collections::HashMap<_, _>>())
        .build()
        .map_err(spec_err)?;
    let bytes = canonical_json(&manifest);
    let subject = Sha256Digest::from_oci(subject.digest()).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Referrer {
        artifact_type: artifact_type.to_string(),
        digest: store.add_bytes(&bytes)?,
        size: bytes.len() as u64,
        subject,
        document: document_digest,
    })
}

pub(crate) fn platform_descriptor(image: &WrittenImage, platform: &Platform) -> Result<Descriptor> {
    let mut p = PlatformBuilder::default()
        .architecture(Arch::from(platform.architecture.as_str()))
        .os(Os::from(platform.os.as_str()));
    if let Some(v) = &platform.variant {
        p = p.variant(v.clone());
    }
    DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(image.manifest_digest.to_oci())
        .size(image.manifest_size)
        .platform(p.build().map_err(spec_err)?)
        .build()
        .map_err(spec_err)
}

/// An image index over one node's platform manifests; returns its digest and size.
pub(crate) fn write_index(
    store: &Store,
    images: &[(WrittenImage, Platform)],
    annotations: &BTreeMap<String, String>,
) -> Result<(Sha256Digest, u64)> {
    let manifests = images.iter().map(|(img, p)| platform_descriptor(img, p)).collect::<Result<Vec<_>>>()?;
    let mut index =
        ImageIndexBuilder::default().schema_version(2u32).media_type(MediaType::ImageIndex).manifests(manifests);
    if !annotations.is_empty() {
        index = index.annotations(annotations.clone().into_iter().collect::<std::collections::HashMap<_, _>>());
    }
    let bytes = canonical_json(&index.build().map_err(spec_err)?);
    Ok((store.add_bytes(&bytes)?, bytes.len() as u64))
}
