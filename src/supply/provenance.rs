//! The provenance of an image: an in-toto Statement v1 whose predicate is SLSA Provenance v1.
//! It names the image (subject), the options that change bytes, every pinned input by URL and
//! hash, and carries the project files the image was built from (definition, recipes,
//! templates) whole, so that `verify` can rebuild from the provenance alone.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::BuildFacts;
use crate::compress::{Codec, Compressor};
use crate::digest::Sha256Digest;
use crate::error::{escape, Error, IoContext, Result};
use crate::image::StoredImage;
use crate::image_def::{ImageDef, Node};
use crate::platform::Platform;
use crate::recipe::RecipeKind;

pub(crate) const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub(crate) const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What `buildDefinition` means: imgbuild's parameters, below.
pub(crate) const BUILD_TYPE: &str = "urn:imgbuild:build-type:v1";
const BUILDER_ID: &str = "urn:imgbuild:builder";
/// The annotation that says what a project file is to the build.
const ROLE: &str = "imgbuild:role";

/// A file of the project, by its path in a project directory (`images/…`, `recipes/…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProjectFile {
    pub path: String,
    pub role: String,
    pub content: Vec<u8>,
}

/// The statement for `image` (tagged `cluster`, or a node's), serialized canonically.
pub(crate) fn statement(facts: &BuildFacts<'_>, image: &StoredImage, node: Option<&Node>) -> Result<Vec<u8>> {
    let files = project_files(facts.def)?;
    let mut dependencies: Vec<Value> = files.iter().map(carried).collect();
    dependencies.extend(inputs(facts));
    let platforms: Vec<String> = facts.platforms.iter().map(|(p, _)| p.to_string()).collect();
    let doc = json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects(facts.def, image),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "image": facts.def.name,
                    "definition": files[0].path,
                    "tag": image.tag,
                    "node": node.map(|n| n.id),
                    "platforms": platforms,
                    "compression": facts.compressor.codec.name(),
                    "level": facts.compressor.level,
                    "epoch": facts.epoch,
                },
                "internalParameters": { "layerFormat": crate::layer::FORMAT_VERSION },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": { "id": BUILDER_ID, "version": { "imgbuild": env!("CARGO_PKG_VERSION") } },
                "metadata": {},
            },
        },
    });
    Ok(crate::image::canonical_json(&doc))
}

/// The image by its digest and, for an index, each platform's manifest.
fn subjects(def: &ImageDef, image: &StoredImage) -> Vec<Value> {
    let mut subject = vec![json!({ "name": format!("{}:{}", def.name, image.tag), "digest": sha256(&image.digest) })];
    if image.platforms.len() > 1 {
        for p in &image.platforms {
            let name = format!("{}:{}@{}", def.name, image.tag, p.platform);
            subject.push(json!({ "name": name, "digest": sha256(&p.manifest_digest) }));
        }
    }
    subject
}

/// A project file as a resolved dependency that carries its content.
fn carried(f: &ProjectFile) -> Value {
    json!({
        "name": f.path,
        "digest": sha256(&Sha256Digest::of(&f.content)),
        "content": base64::engine::general_purpose::STANDARD.encode(&f.content),
        "annotations": { ROLE: f.role },
    })
}

fn sha256(d: &Sha256Digest) -> Value {
    json!({ "sha256": d.hex() })
}

/// Every pinned input of every platform, once each: tarballs by URL and hash, the base image by
/// repository and manifest digest.
fn inputs(facts: &BuildFacts<'_>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen = Vec::new();
    for (platform, _) in &facts.platforms {
        for recipe in facts.def.recipes() {
            let Some(source) = recipe.source_for(platform) else { continue };
            if seen.contains(&source.hash) {
                continue;
            }
            seen.push(source.hash.clone());
            let mut digest = serde_json::Map::new();
            digest.insert(source.hash.algorithm().name().to_string(), json!(source.hash.hex()));
            let mut entry = json!({
                "name": source.file_name,
                "digest": digest,
                "annotations": { ROLE: "input", "imgbuild:recipe": recipe.name, "imgbuild:platform": platform.to_string() },
            });
            match (&recipe.kind, source.urls.first()) {
                (RecipeKind::OciImage { reference: Some(r), .. }, _) => {
                    entry["uri"] = json!(format!("docker://{}@sha256:{}", r.name(), source.hash.hex()));
                }
                (_, Some(url)) => entry["uri"] = json!(url),
                _ => {}
            }
            if source.urls.len() > 1 {
                entry["annotations"]["imgbuild:mirrors"] = json!(source.urls[1..].join(" "));
            }
            out.push(entry);
        }
    }
    out
}

/// The files a project needs to build `def` again: its definition, the recipes it uses and its
/// templates, by their paths in a project directory. The definition comes first.
pub(crate) fn project_files(def: &ImageDef) -> Result<Vec<ProjectFile>> {
    let def_text = std::fs::read(&def.file).at(&def.file)?;
    let def_name = file_name(&def.file)?;
    let mut files =
        vec![ProjectFile { path: format!("images/{def_name}"), role: "definition".into(), content: def_text.clone() }];
    let mut recipes: Vec<ProjectFile> = Vec::new();
    for recipe in def.recipes() {
        let content = std::fs::read(&recipe.file).at(&recipe.file)?;
        recipes.push(ProjectFile {
            path: format!("recipes/{}", file_name(&recipe.file)?),
            role: "recipe".into(),
            content,
        });
    }
    recipes.sort_by(|a, b| a.path.cmp(&b.path));
    files.extend(recipes);
    // Templates as the definition names them (relative to its directory), with the text built.
    for (source, template) in template_sources(def, &def_text)?.into_iter().zip(&def.templates) {
        let path = format!("images/{source}");
        files.push(ProjectFile { path, role: "template".into(), content: template.text.clone().into_bytes() });
    }
    Ok(files)
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Internal(format!("{} has no file name", path.display())))
}

/// The `source` of each `[[template]]`, in order (the definition was parsed already).
fn template_sources(def: &ImageDef, text: &[u8]) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Sources {
        #[serde(default)]
        template: Vec<Source>,
    }
    #[derive(Deserialize)]
    struct Source {
        source: String,
    }
    let parsed: Sources = toml::from_str(&String::from_utf8_lossy(text))
        .map_err(|e| Error::Definition { file: def.file.clone(), message: format!("changed while building: {e}") })?;
    let sources: Vec<String> = parsed.template.into_iter().map(|t| t.source).collect();
    if sources.len() != def.templates.len() {
        return Err(Error::Definition { file: def.file.clone(), message: "changed while building".into() });
    }
    Ok(sources)
}

/// What `verify` needs from a provenance statement.
#[derive(Debug)]
pub(crate) struct Provenance {
    /// Every subject's sha256 digest.
    pub subjects: Vec<Sha256Digest>,
    pub image: String,
    /// The definition's path among `files`.
    pub definition: String,
    pub tag: String,
    pub node: Option<u32>,
    pub platforms: Vec<Platform>,
    pub compressor: Compressor,
    pub epoch: u64,
    pub imgbuild: String,
    pub files: Vec<ProjectFile>,
}

#[derive(Deserialize)]
struct StatementDoc {
    #[serde(rename = "_type")]
    statement_type: String,
    subject: Vec<SubjectDoc>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: PredicateDoc,
}

#[derive(Deserialize)]
struct SubjectDoc {
    digest: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PredicateDoc {
    #[serde(rename = "buildDefinition")]
    build_definition: BuildDefinitionDoc,
    #[serde(rename = "runDetails")]
    run_details: RunDetailsDoc,
}

#[derive(Deserialize)]
struct BuildDefinitionDoc {
    #[serde(rename = "buildType")]
    build_type: String,
    #[serde(rename = "externalParameters")]
    external: ExternalDoc,
    #[serde(rename = "resolvedDependencies", default)]
    dependencies: Vec<DependencyDoc>,
}

#[derive(Deserialize)]
struct ExternalDoc {
    image: String,
    definition: String,
    tag: String,
    node: Option<u32>,
    platforms: Vec<String>,
    /// Absent in statements written before zstd layers: those were gzip.
    #[serde(default = "gzip_name")]
    compression: String,
    level: u8,
    epoch: u64,
}

fn gzip_name() -> String {
    Codec::Gzip.name().to_string()
}

#[derive(Deserialize)]
struct DependencyDoc {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    digest: BTreeMap<String, String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct RunDetailsDoc {
    builder: BuilderDoc,
}

#[derive(Deserialize)]
struct BuilderDoc {
    #[serde(default)]
    version: BTreeMap<String, String>,
}

/// Reads a statement; anything it does not say the way imgbuild writes it is refused.
pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<Provenance> {
    let bad = |message: String| Error::BadArchive { archive: what.to_string(), message };
    let doc: StatementDoc =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not an imgbuild provenance statement: {e}")))?;
    if doc.statement_type != STATEMENT_TYPE || doc.predicate_type != PREDICATE_TYPE {
        return Err(bad(format!(
            "a statement of type `{}` with a `{}` predicate; expected {STATEMENT_TYPE} with {PREDICATE_TYPE}",
            escape(&doc.statement_type),
            escape(&doc.predicate_type)
        )));
    }
    let def = doc.predicate.build_definition;
    if def.build_type != BUILD_TYPE {
        return Err(bad(format!("build type `{}` is not imgbuild's ({BUILD_TYPE})", escape(&def.build_type))));
    }
    let subjects = doc
        .subject
        .iter()
        .filter_map(|s| s.digest.get("sha256"))
        .map(|hex| format!("sha256:{hex}").parse::<Sha256Digest>().map_err(|e| bad(format!("subject digest: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let ext = def.external;
    let platforms = ext
        .platforms
        .iter()
        .map(|p| p.parse::<Platform>().map_err(|e| bad(format!("platform `{}`: {e}", escape(p)))))
        .collect::<Result<Vec<_>>>()?;
    if platforms.is_empty() {
        return Err(bad("externalParameters: no platform".into()));
    }
    if ext.epoch > crate::date::MAX_EPOCH {
        return Err(bad(format!("externalParameters: epoch {} is after 9999-12-31T23:59:59Z", ext.epoch)));
    }
    let codec = match ext.compression.as_str() {
        "gzip" => Codec::Gzip,
        "zstd" => Codec::Zstd,
        other => return Err(bad(format!("externalParameters: compression `{}` is not gzip or zstd", escape(other)))),
    };
    let compressor = Compressor::new(codec, Some(ext.level)).map_err(|e| bad(format!("externalParameters: {e}")))?;
    let files = def
        .dependencies
        .iter()
        .filter(|d| d.content.is_some())
        .map(|d| project_file(d, &bad))
        .collect::<Result<Vec<_>>>()?;
    if !files.iter().any(|f| f.path == ext.definition) {
        return Err(bad(format!("the definition `{}` is not among the files it carries", escape(&ext.definition))));
    }
    Ok(Provenance {
        subjects,
        image: ext.image,
        definition: ext.definition,
        tag: ext.tag,
        node: ext.node,
        platforms,
        compressor,
        epoch: ext.epoch,
        imgbuild: doc.predicate.run_details.builder.version.get("imgbuild").cloned().unwrap_or_default(),
        files,
    })
}

/// A carried file: its content must hash to its digest, and its path must stay in a project.
fn project_file(d: &DependencyDoc, bad: &dyn Fn(String) -> Error) -> Result<ProjectFile> {
    let path = d.name.clone().ok_or_else(|| bad("a carried file has no name".into()))?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(d.content.as_deref().unwrap_or_default())
        .map_err(|e| bad(format!("`{}`: content is not base64: {e}", escape(&path))))?;
    let found = Sha256Digest::of(&content).hex();
    if d.digest.get("sha256") != Some(&found) {
        return Err(bad(format!("`{}`: the content carried does not hash to the digest recorded", escape(&path))));
    }
    if !inside_project(&path) {
        return Err(bad(format!("`{}` is not a path under images/ or recipes/", escape(&path))));
    }
    let role = d.annotations.get(ROLE).and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(ProjectFile { path, role, content })
}

/// Whether `path`, relative and read lexically (`a/../b` is `b`, as a template's `source` may
/// name it), is a file under `images/` or `recipes/`: never above them, never absolute.
fn inside_project(path: &str) -> bool {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir if parts.len() > 1 => {
                parts.pop();
            }
            _ => return false,
        }
    }
    parts.len() >= 2 && matches!(parts[0].to_str(), Some("images" | "recipes"))
}

/// Writes the carried files into the empty directory `dir` (each at its path as recorded, so a
/// template's `source` resolves as the definition names it); returns the definition's path.
pub(crate) fn materialize(provenance: &Provenance, dir: &Path) -> Result<PathBuf> {
    for f in &provenance.files {
        let path = dir.join(&f.path);
        let parent = path.parent().expect("under dir");
        std::fs::create_dir_all(parent).at(parent)?;
        std::fs::write(&path, &f.content).at(&path)?;
    }
    Ok(dir.join(&provenance.definition))
}

#[cfg(test)]
mod tests {
    use super::inside_project;

    #[test]
    fn carried_files_stay_under_images_or_recipes() {
        for ok in ["images/zk.toml", "recipes/zk.toml", "images/zk/zoo.cfg", "images/sub/../zoo.cfg", "images/./x"] {
            assert!(inside_project(ok), "{ok}");
        }
        for bad in
            ["/etc/passwd", "images", "images/..", "images/../x", "images/a/../../x", "other/x", "../images/x", ""]
        {
            assert!(!inside_project(bad), "{bad}");
        }
    }
}
