//! Recipes: one TOML file per upstream artifact, pinned by hash (format in `recipes/README.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::digest::{Algorithm, Hash, Sha256Digest};
use crate::error::{escape, Error, Result};
use crate::image_path::inside_or_at;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::toml_file::{toml_files_in, TomlFile};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeToml {
    name: Spanned<String>,
    version: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    homepage: Option<String>,
    #[serde(default)]
    license: Option<String>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
    /// For `kind = "oci-image"`: the repository the image is fetched from.
    #[serde(default)]
    image: Option<Spanned<String>>,
    /// For `kind = "oci-image"`: other repositories holding the same image, tried after `image`.
    #[serde(default)]
    mirrors: Vec<Spanned<String>>,
    #[serde(default)]
    index_digest: Option<Spanned<String>>,
    source: Vec<Spanned<SourceToml>>,
    #[serde(default)]
    unpack: UnpackToml,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    path: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceToml {
    #[serde(default)]
    platform: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    mirrors: Vec<Spanned<String>>,
    #[serde(default)]
    file: Option<Spanned<String>>,
    #[serde(default)]
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    sha512: Option<Spanned<String>>,
    /// For OCI image sources: the manifest digest.
    #[serde(default)]
    digest: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UnpackToml {
    #[serde(default)]
    strip_components: u32,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    #[serde(default)]
    whiteouts: bool,
    #[serde(default)]
    skip_devices: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipeKind {
    /// A tarball unpacked into one layer.
    Tarball,
    /// An OCI image used as a base, its layers taken as they are: fetched by each source's
    /// digest from `reference`, then from `mirrors`.
    OciImage { reference: Option<Reference>, mirrors: Vec<Reference>, index_digest: Option<Sha256Digest> },
}

/// One downloadable file of a recipe.
#[derive(Debug, Clone)]
pub struct Source {
    /// `None`: the same file serves every platform.
    pub platform: Option<Platform>,
    /// The canonical URL first, then the mirrors, in the order tried.
    pub urls: Vec<String>,
    /// The upstream file name (what `--mirror DIR` and `store add` look for).
    pub file_name: String,
    pub hash: Hash,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Unpack {
    pub strip_components: u32,
    /// Absolute install directory inside the image, without the leading `/`; empty for `/`.
    pub prefix: String,
    pub exclude: Vec<String>,
    /// OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) in the source are kept, so the layer deletes
    /// files of the layers below; otherwise they are an error.
    pub whiteouts: bool,
    /// Device nodes and FIFOs in the source are left out (with a note); otherwise an error.
    pub skip_devices: bool,
}

#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub homepage: Option<String>,
    pub license: Option<String>,
    pub file: PathBuf,
    pub kind: RecipeKind,
    pub sources: Vec<Source>,
    pub unpack: Unpack,
    pub env: BTreeMap<String, String>,
    /// Directories prepended to `PATH`, in order.
    pub path: Vec<String>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe> {
        Self::from_file(TomlFile::<RecipeToml>::read(path)?)
    }

    /// Parses a recipe's text; `path` names it in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Recipe> {
        Self::from_file(TomlFile::<RecipeToml>::parse(path, text.to_string())?)
    }

    fn from_file(file: TomlFile<RecipeToml>) -> Result<Recipe> {
        let r = &file.value;
        let name = parse_name(&file)?;
        let kind = parse_kind(&file)?;
        let sources = parse_sources(&file, &name, &kind)?;
        Ok(Recipe {
            version: r.version.clone(),
            description: r.description.clone(),
            homepage: r.homepage.clone(),
            license: r.license.clone(),
            file: file.path.clone(),
            unpack: parse_unpack(&file, &r.unpack)?,
            env: parse_env(&file)?,
            path: parse_path(&file)?,
            name,
            kind,
            sources,
        })
    }

    /// The source for `platform`: its own, or the platform-independent one.
    pub fn source_for(&self, platform: &Platform) -> Option<&Source> {
        self.sources
            .iter()
            .find(|s| s.platform.as_ref() == Some(platform))
            .or_else(|| self.sources.iter().find(|s| s.platform.is_none()))
    }

    pub fn platforms(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.platform.as_ref().map_or_else(|| "any".to_string(), |p| p.to_string())).collect()
    }
}

fn parse_sha256_digest<T>(file: &TomlFile<T>, d: &Spanned<String>, field: &str) -> Result<Sha256Digest> {
    d.get_ref()
        .parse::<Sha256Digest>()
        .map_err(|e| file.error_at(d.span(), format!("field `{field}`: `{}`: {e}", d.get_ref())))
}

fn parse_name(file: &TomlFile<RecipeToml>) -> Result<String> {
    let name = &file.value.name;
    if !is_recipe_name(name.get_ref()) {
        return Err(file.error_at(
            name.span(),
            format!(
                "field `name`: `{}` must start with a-z or 0-9 and use only a-z, 0-9, `.`, `_`, `-`",
                crate::error::escape(name.get_ref())
            ),
        ));
    }
    Ok(name.get_ref().clone())
}

fn parse_kind(file: &TomlFile<RecipeToml>) -> Result<RecipeKind> {
    let r = &file.value;
    let kind = match r.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
        None | Some(("tarball", _)) => RecipeKind::Tarball,
        Some(("oci-image", _)) => RecipeKind::OciImage {
            reference: r.image.as_ref().map(|i| parse_repository(file, i, "image")).transpose()?,
            mirrors: r.mirrors.iter().map(|m| parse_repository(file, m, "mirrors")).collect::<Result<_>>()?,
            index_digest: r.index_digest.as_ref().map(|d| parse_sha256_digest(file, d, "index_digest")).transpose()?,
        },
        Some((other, span)) => {
            return Err(file
                .error_at(span, format!("field `kind`: unknown kind `{other}` (expected `tarball` or `oci-image`)")))
        }
    };
    if let (RecipeKind::Tarball, Some(m)) = (&kind, r.mirrors.first()) {
        return Err(file.error_at(
            m.span(),
            "a top-level `mirrors` list is for `kind = \"oci-image\"`; a tarball's mirrors go in its `[[source]]`",
        ));
    }
    Ok(kind)
}

/// The `[[source]]` tables: at least one, at most one per platform.
fn parse_sources(file: &TomlFile<RecipeToml>, name: &str, kind: &RecipeKind) -> Result<Vec<Source>> {
    if file.value.source.is_empty() {
        return Err(file.error_at(0..0, "missing `[[source]]`: a recipe needs at least one pinned source"));
    }
    let mut sources: Vec<Source> = Vec::new();
    for s in &file.value.source {
        let source = parse_source(file, s, name, kind)?;
        if sources.iter().any(|o| o.platform == source.platform) {
            let which = source.platform.as_ref().map_or("every platform".to_string(), |p| p.to_string());
            return Err(file.error_at(s.span(), format!("two sources for {which}")));
        }
        sources.push(source);
    }
    Ok(sources)
}

/// The `path` list: directories of the image, as `PATH` entries.
fn parse_path(file: &TomlFile<RecipeToml>) -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for p in &file.value.path {
        let dir = image_path(file, p, "path")?;
        // `PATH` separates its entries with `:`.
        if dir.contains(':') {
            return Err(file.error_at(p.span(), "field `path`: a directory of `PATH` cannot hold a `:`"));
        }
        dirs.push(format!("/{dir}"));
    }
    Ok(dirs)
}

fn parse_env(file: &TomlFile<RecipeToml>) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for (key, value) in &file.value.env {
        if key == "PATH" {
            return Err(file.error_at(
                value.span(),
                "field `env`: set `PATH` entries with the `path` list, so recipes can be combined",
            ));
        }
        if let Some(problem) = crate::entrypoint::env_name_problem(key) {
            return Err(file.error_at(value.span(), format!("field `env`: {problem}")));
        }
        env.insert(key.clone(), value.get_ref().clone());
    }
    Ok(env)
}

/// A repository (`docker.io/library/debian`): the digest of each source says what is fetched,
/// so a tag or digest here would be a second, conflicting pin.
fn parse_repository<T>(file: &TomlFile<T>, text: &Spanned<String>, field: &str) -> Result<Reference> {
    let reference: Reference =
        text.get_ref().parse().map_err(|e| file.error_at(text.span(), format!("field `{field}`: {e}")))?;
    if reference.tag.is_some() || reference.digest.is_some() {
        return Err(file.error_at(
            text.span(),
            format!("field `{field}`: name a repository (HOST/PATH), without a tag or digest: each `[[source]]` pins its `digest`"),
        ));
    }
    Ok(reference)
}

fn parse_source<T>(file: &TomlFile<T>, s: &Spanned<SourceToml>, name: &str, kind: &RecipeKind) -> Result<Source> {
    let src = s.get_ref();
    let platform = src
        .platform
        .as_ref()
        .map(|p| p.get_ref().parse::<Platform>().map_err(|e| file.error_at(p.span(), format!("field `platform`: {e}"))))
        .transpose()?;
    if let (RecipeKind::OciImage { .. }, Some(u)) = (kind, src.url.iter().chain(&src.mirrors).next()) {
        return Err(file.error_at(
            u.span(),
            "an oci-image is fetched from the recipe's `image` and `mirrors` (repositories), \
or from its `file` in a --mirror directory; `url` and `mirrors` in `[[source]]` are for tarballs",
        ));
    }
    let mut urls = Vec::new();
    for u in src.url.iter().chain(src.mirrors.iter()) {
        let url = u.get_ref();
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || url.len() <= "https://".len() {
            return Err(file.error_at(u.span(), format!("`{url}` is not an http:// or https:// URL")));
        }
        urls.push(url.clone());
    }
    let hash = match kind {
        RecipeKind::Tarball => {
            if src.digest.is_some() {
                return Err(file.error_at(
                    s.span(),
                    "field `digest` is for `kind = \"oci-image\"`; pin a tarball with `sha256` or `sha512`",
                ));
            }
            // A source with only a `file` is one the user supplies (`store add`, `--mirror`).
            if urls.is_empty() && src.file.is_none() {
                return Err(file.error_at(
                    s.span(),
                    "missing field `url` (or `file`, for a file added with `imgbuild store add` or found in `--mirror`) in `[[source]]`",
                ));
            }
            match (&src.sha256, &src.sha512) {
                (Some(h), None) => parse_hash(file, h, Algorithm::Sha256)?,
                (None, Some(h)) => parse_hash(file, h, Algorithm::Sha512)?,
                (None, None) => return Err(file.error_at(
                    s.span(),
                    "missing hash: every `[[source]]` needs `sha256` or `sha512`; `imgbuild prefetch URL` prints it",
                )),
                (Some(_), Some(h)) => return Err(file.error_at(h.span(), "give one of `sha256` or `sha512`, not both")),
            }
        }
        RecipeKind::OciImage { .. } => {
            let d = src.digest.as_ref().ok_or_else(|| {
                file.error_at(s.span(), "missing field `digest`: the image manifest's `sha256:…` digest")
            })?;
            parse_sha256_digest(file, d, "digest")?.to_hash()
        }
    };
    let file_name = match (&src.file, urls.first()) {
        (Some(f), _) => {
            let name = f.get_ref();
            if name.is_empty() || name.contains('/') || name == ".." || name == "." {
                return Err(file.error_at(f.span(), format!("field `file`: `{name}` must be a plain file name")));
            }
            name.clone()
        }
        (None, Some(url)) => url_file_name(url).to_string(),
        // An oci-image without `file`: an oci-archive (or layout) named after the recipe.
        (None, None) => format!("{name}.tar"),
    };
    Ok(Source { platform, urls, file_name, hash })
}

fn parse_hash<T>(file: &TomlFile<T>, h: &Spanned<String>, algorithm: Algorithm) -> Result<Hash> {
    Hash::parse_hex_or_sri(algorithm, &h.get_ref().to_ascii_lowercase_hex())
        .map_err(|e| file.error_at(h.span(), format!("field `{}`: {e}", algorithm.name())))
}

trait LowercaseHex {
    fn to_ascii_lowercase_hex(&self) -> String;
}

impl LowercaseHex for String {
    /// Hex may be written in either case; SRI base64 is case-sensitive and kept as is.
    fn to_ascii_lowercase_hex(&self) -> String {
        if self.chars().all(|c| c.is_ascii_hexdigit()) {
            self.to_ascii_lowercase()
        } else {
            self.clone()
        }
    }
}

fn parse_unpack<T>(file: &TomlFile<T>, u: &UnpackToml) -> Result<Unpack> {
    let prefix = match &u.prefix {
        Some(p) => image_path(file, p, "unpack.prefix")?,
        None => String::new(),
    };
    if let (Some(p), Some(own)) =
        (&u.prefix, crate::entrypoint::own_paths().into_iter().find(|o| inside_or_at(&prefix, o)))
    {
        return Err(file.error_at(
            p.span(),
            format!(
                "field `unpack.prefix`: `/{}` is at or inside /{own}, which imgbuild writes itself",
                escape(&prefix)
            ),
        ));
    }
    let mut exclude = Vec::new();
    for pattern in &u.exclude {
        globset::Glob::new(pattern.get_ref())
            .map_err(|e| file.error_at(pattern.span(), format!("field `unpack.exclude`: {e}")))?;
        exclude.push(pattern.get_ref().clone());
    }
    Ok(Unpack {
        strip_components: u.strip_components,
        prefix,
        exclude,
        whiteouts: u.whiteouts,
        skip_devices: u.skip_devices,
    })
}

/// A path in the image ([`crate::image_path`]), returned without its leading `/`.
fn image_path<T>(file: &TomlFile<T>, p: &Spanned<String>, field: &str) -> Result<String> {
    crate::image_path::parse(p.get_ref())
        .map_err(|why| file.error_at(p.span(), format!("field `{field}`: `{}` {why}", escape(p.get_ref()))))
}

/// A recipe's name: lowercase letters, digits, `.`, `_`, `-`, starting with a letter or digit
/// (so never `.`, `..` or an option-like `-x`); it appears in labels, SBOMs and file names.
pub(crate) fn is_recipe_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

pub(crate) fn url_file_name(url: &str) -> &str {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    without_query.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download")
}

/// Every recipe of a directory, by name.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Recipe>> {
    let mut recipes: BTreeMap<String, Recipe> = BTreeMap::new();
    for path in toml_files_in(dir)? {
        let recipe = Recipe::load(&path)?;
        if let Some(other) = recipes.get(&recipe.name) {
            return Err(Error::Definition {
                file: path,
                message: format!("recipe name `{}` is already used by {}", recipe.name, other.file.display()),
            });
        }
        recipes.insert(recipe.name.clone(), recipe);
    }
    Ok(recipes)
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "name = \"zk\"\nversion = \"1\"\nenv = { A = \"b\" }\npath = [\"/opt/zk/bin\"]\n\n[[source]]\nplatform = \"linux/amd64\"\nurl = \"https://example.org/zk.tgz\"\nmirrors = [\"http://mirror.example.org/zk.tgz\"]\nsha256 = \"7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27\"\n\n[unpack]\nstrip_components = 1\nprefix = \"/opt/zk\"\nexclude = [\"docs\"]\nwhiteouts = false\nskip_devices = true\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any text: a recipe or an error naming the file, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            if let Err(e) = Recipe::parse(Path::new("r.toml"), &text) {
                prop_assert!(e.to_string().starts_with("r.toml"));
            }
        }

        /// A valid recipe with bytes replaced, deleted or inserted: the same.
        #[test]
        fn mutated_recipes_never_panic(edits in prop::collection::vec((0usize..VALID.len(), any::<u8>(), 0u8..3), 1..8)) {
            let mut bytes = VALID.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let at = at.min(bytes.len().saturating_sub(1));
                match kind {
                    0 => bytes[at] = byte,
                    1 => { bytes.remove(at); }
                    _ => bytes.insert(at, byte),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = Recipe::parse(Path::new("r.toml"), &text) {
                prop_assert!(e.to_string().starts_with("r.toml"));
            }
        }
    }

    #[test]
    fn the_seed_recipe_parses() {
        assert!(Recipe::parse(Path::new("r.toml"), VALID).is_ok());
    }
}

#[cfg(test)]
mod oci_image_tests {
    use super::*;

    const DIGEST: &str = "sha256:362e64223cc0da95422b3b13c045186fc0a81250e765d31c025fbddf257f6143";

    fn parse(head: &str, source: &str) -> Result<Recipe> {
        let text = format!(
            "name = \"base\"\nversion = \"1\"\nkind = \"oci-image\"\n{head}\n[[source]]\ndigest = \"{DIGEST}\"\n{source}"
        );
        Recipe::parse(Path::new("r.toml"), &text)
    }

    #[test]
    fn an_image_is_fetched_from_its_repository_and_mirrors_by_its_file_name() {
        let r = parse("image = \"docker.io/library/debian\"\nmirrors = [\"mirror.example:5000/debian\"]", "").unwrap();
        let RecipeKind::OciImage { reference, mirrors, .. } = &r.kind else { panic!("not an image") };
        assert_eq!(reference.as_ref().unwrap().to_string(), "docker.io/library/debian");
        assert_eq!(mirrors[0].to_string(), "mirror.example:5000/debian");
        assert_eq!(r.sources[0].file_name, "base.tar");
        assert_eq!(parse("", "file = \"saved.tar\"").unwrap().sources[0].file_name, "saved.tar");
    }

    #[test]
    fn what_a_build_could_not_use_is_refused_with_its_line() {
        for (head, source, line, needle) in [
            ("image = \"debian:bookworm\"", "", 4, "without a tag or digest"),
            ("mirrors = [\"Not A Ref\"]", "", 4, "field `mirrors`"),
            ("", "url = \"https://example.org/base.tar\"", 7, "for tarballs"),
            ("", "mirrors = [\"https://example.org/base.tar\"]", 7, "for tarballs"),
        ] {
            let e = parse(head, source).unwrap_err().to_string();
            assert!(e.starts_with(&format!("r.toml:{line}:")) && e.contains(needle), "{e}");
        }
        let tarball = "name = \"t\"\nversion = \"1\"\nmirrors = [\"x\"]\n[[source]]\nurl = \"https://e.org/t.tgz\"\nsha256 = \"7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27\"\n";
        let e = Recipe::parse(Path::new("r.toml"), tarball).unwrap_err().to_string();
        assert!(e.starts_with("r.toml:3:") && e.contains("top-level `mirrors`"), "{e}");
    }
}

#[cfg(test)]
mod names {
    use super::is_recipe_name;

    #[test]
    fn recipe_names_are_what_the_docs_say() {
        for ok in ["zookeeper", "temurin-jdk8", "debian-bookworm-slim", "a", "0day", "x.y_z"] {
            assert!(is_recipe_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "-x", "_x", "Kafka", "a/b", "a b", "zk\u{1b}"] {
            assert!(!is_recipe_name(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod image_paths {
    use super::*;
    use proptest::prelude::*;

    /// A recipe whose `[unpack]` is `unpack` (line 7 on), with `head` after its version (line 3).
    fn recipe(head: &str, unpack: &str) -> Result<Recipe> {
        let text = format!(
            "name = \"r\"\nversion = \"1\"\n{head}\n[[source]]\nurl = \"https://example.org/r.tgz\"\nsha256 = \"7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27\"\n[unpack]\n{unpack}\n"
        );
        Recipe::parse(Path::new("r.toml"), &text)
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-z0-9][a-z0-9._-]{0,10}",
            2 => prop::sample::select(vec![".wh.etc", ".wh..wh..opq", ".wh.y", "a.wh.", ":", "bin:x"]).prop_map(String::from),
            1 => prop::sample::select(vec![".", "..", "a\u{1b}b"]).prop_map(String::from),
            2 => (250usize..=260).prop_map(|n| "c".repeat(n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// `prefix` and every `path` entry follow the one image-path rule; a `path` entry holds
        /// no `:` either (PATH would split it).
        #[test]
        fn prefix_and_path_follow_the_image_path_rule(parts in prop::collection::vec(component(), 1..20)) {
            let path = format!("/opt/{}", parts.join("/"));
            let rule = crate::image_path::parse(&path);
            match recipe("", &format!("prefix = {}", crate::toml_file::quoted(&path))) {
                Ok(r) => prop_assert_eq!(Ok(r.unpack.prefix), rule.clone()),
                Err(e) => {
                    prop_assert!(rule.is_err(), "{}", e);
                    prop_assert!(e.to_string().starts_with("r.toml:8:"), "{}", e);
                }
            }
            match recipe(&format!("path = [{}]", crate::toml_file::quoted(&path)), "") {
                Ok(r) => prop_assert!(rule.is_ok() && !path.contains(':') && r.path == [path.clone()]),
                Err(e) => {
                    prop_assert!(rule.is_err() || path.contains(':'), "{}", e);
                    prop_assert!(e.to_string().starts_with("r.toml:3:"), "{}", e);
                }
            }
        }
    }

    #[test]
    fn a_prefix_never_writes_imgbuilds_own_files() {
        for own in [
            "/etc/imgbuild",
            "/etc/imgbuild/templates",
            "/usr/local/bin/imgbuild-init",
            "/usr/local/sbin/imgbuild-vm-init",
            "/usr/local/sbin/imgbuild-vm-init/x",
        ] {
            let e = recipe("", &format!("prefix = \"{own}\"")).unwrap_err().to_string();
            assert!(e.starts_with("r.toml:8:") && e.contains("which imgbuild writes itself"), "{own}: {e}");
        }
        for fine in ["/", "/etc", "/etc/imgbuild-x", "/usr/local/bin", "/usr/local/sbin/other"] {
            assert!(recipe("", &format!("prefix = \"{fine}\"")).is_ok(), "{fine}");
        }
    }

    #[test]
    fn a_recipe_environment_never_sets_what_a_boot_reads() {
        for name in
            ["NODE_ID", "ZOO_MY_ID", "KAFKA_BROKER_ID", "PEERS", "ADVERTISED_HOST", "HOSTNAME", "IMGBUILD_VAR_x"]
        {
            let e = recipe(&format!("env = {{ {name} = \"1\" }}"), "").unwrap_err().to_string();
            assert!(e.starts_with("r.toml:3:") && e.contains("read by the entrypoint at boot"), "{e}");
        }
        let e = recipe("env = { \"A=B\" = \"1\" }", "").unwrap_err().to_string();
        assert!(e.starts_with("r.toml:3:") && e.contains("not a variable name"), "{e}");
        assert_eq!(recipe("env = { JAVA_HOME = \"/opt/java\" }", "").unwrap().env["JAVA_HOME"], "/opt/java");
    }

    #[test]
    fn no_string_of_a_recipe_holds_a_control_or_reordering_character() {
        let e = recipe("description = \"x\"\nlicense = \"MIT\\u001b[31m\"", "").unwrap_err().to_string();
        assert!(e.starts_with("r.toml:4:11: field `license`: `MIT\\u{1b}[31m` holds an escape character"), "{e}");
        let text = "name = \"r\"\nversion = \"1\\u001b]0;PWNED\\u0007\\nfake line\"\n[[source]]\nurl = \"https://example.org/r.tgz\"\nsha256 = \"7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27\"\n";
        let e = Recipe::parse(Path::new("r.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("r.toml:2:11: field `version`:") && !e.contains('\u{1b}'), "{e}");
        let e = recipe("", "exclude = [\"docs\", \"a\u{202e}b\"]").unwrap_err().to_string();
        assert!(e.starts_with("r.toml:8:22: field `unpack.exclude[1]`"), "{e}");
    }
}
