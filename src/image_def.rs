//! Image definitions (`images/*.toml`): what a node is made of and the cluster's topology.
//! The format, and every rule checked here, is documented in `images/README.md`.
//!
//! A definition is hostile input: what it names stays inside the project (template sources
//! inside the definition's directory, targets away from imgbuild's own files), and what it
//! hands the entrypoint is text the entrypoint renders exactly as the rules here say, so that
//! anything `imgbuild check` accepts renders at boot.

pub(crate) mod boot_cost;
pub(crate) mod deploy;
mod host;
pub(crate) mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub(crate) use self::host::host_key;
pub use self::host::is_host;
use self::template::{Piece, TextError};
use crate::error::{escape, line_col, Error, IoContext, Result};
use crate::image_path::{inside_or_at, nests};
use crate::recipe::{Recipe, RecipeKind};
use crate::toml_file::TomlFile;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageToml {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    base: Option<Spanned<String>>,
    #[serde(default)]
    layers: Vec<Spanned<String>>,
    #[serde(default)]
    config: ConfigToml,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    lists: BTreeMap<String, Spanned<ListToml>>,
    #[serde(default)]
    template: Vec<Spanned<TemplateToml>>,
    #[serde(default)]
    service: Vec<Spanned<ServiceToml>>,
    #[serde(default)]
    identity_check: Vec<Spanned<IdentityCheckToml>>,
    cluster: ClusterToml,
    #[serde(default)]
    deploy: deploy::DeployToml,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityCheckToml {
    file: Spanned<String>,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigToml {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    workdir: Option<Spanned<String>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    stop_signal: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListToml {
    item: String,
    #[serde(default)]
    self_item: Option<String>,
    #[serde(default = "default_join")]
    join: String,
}

fn default_join() -> String {
    ",".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateToml {
    source: Spanned<String>,
    target: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    /// An identity file (such as `myid`): never overwritten with a different value at boot.
    #[serde(default)]
    guard: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceToml {
    name: Spanned<String>,
    command: Vec<String>,
    #[serde(default)]
    data_dirs: Vec<Spanned<String>>,
    /// Run inside the node: exit 0 means the service serves (see `crate::health`).
    #[serde(default)]
    health: Option<Vec<String>>,
    /// Run inside the node: prints the node's role in the service (`leader`, `follower`, …).
    #[serde(default)]
    role: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterToml {
    node: Vec<Spanned<NodeToml>>,
    /// Whether a deployment may run fewer nodes than defined (`imgbuild deploy --replicas`).
    #[serde(default)]
    scalable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeToml {
    id: u32,
    host: Spanned<String>,
}

type Doc = TomlFile<ImageToml>;

/// The variables every template may use without declaring them; the entrypoint sets them at boot.
pub(crate) const BUILTIN_VARS: &[&str] = &["node_id", "node_host"];
/// The names a list's items use for the node they stand for.
const ITEM_VARS: &[&str] = &["id", "host"];

/// The most template text a definition may have, in one file or all together: the entrypoint
/// renders every template at every boot.
pub(crate) const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

pub(crate) use crate::entrypoint::DEFAULT_ENTRYPOINT;

/// Signals a runtime can be told to stop a container with (`stop_signal`), as Linux names them.
const SIGNALS: &[&str] = &[
    "SIGABRT",
    "SIGALRM",
    "SIGBUS",
    "SIGCHLD",
    "SIGCONT",
    "SIGFPE",
    "SIGHUP",
    "SIGILL",
    "SIGINT",
    "SIGIO",
    "SIGKILL",
    "SIGPIPE",
    "SIGPROF",
    "SIGPWR",
    "SIGQUIT",
    "SIGSEGV",
    "SIGSTKFLT",
    "SIGSTOP",
    "SIGSYS",
    "SIGTERM",
    "SIGTRAP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGUSR1",
    "SIGUSR2",
    "SIGVTALRM",
    "SIGWINCH",
    "SIGXCPU",
    "SIGXFSZ",
];

#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// A joined list over the cluster's nodes, e.g. ZooKeeper's `server.N=host:2888:3888` lines.
#[derive(Debug, Clone)]
pub struct PeerList {
    pub item: String,
    pub self_item: Option<String>,
    pub join: String,
}

#[derive(Debug, Clone)]
pub struct Template {
    /// Contents, read when the definition is loaded.
    pub text: String,
    /// Absolute target path in the image, without the leading `/`.
    pub target: String,
    pub mode: u32,
    pub guard: bool,
}

/// A `KEY=value` file that, when present, must name this node (Kafka's `meta.properties`).
#[derive(Debug, Clone)]
pub struct IdentityCheck {
    pub file: String,
    pub key: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub command: Vec<String>,
    pub data_dirs: Vec<String>,
    /// A command whose exit 0 means "serving" (not merely "listening").
    pub health: Option<Vec<String>>,
    /// A command that prints the node's role in the service on its first line.
    pub role: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    pub id: u32,
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct ImageDef {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    pub base: Option<Recipe>,
    /// Recipes in layer order.
    pub layers: Vec<Recipe>,
    pub config: ImageConfig,
    pub vars: BTreeMap<String, String>,
    pub lists: BTreeMap<String, PeerList>,
    pub templates: Vec<Template>,
    pub services: Vec<Service>,
    pub identity_checks: Vec<IdentityCheck>,
    /// In the order of `[[cluster.node]]` (a node's index is its place here).
    pub nodes: Vec<Node>,
    /// A deployment may run fewer nodes than `nodes` (`[cluster] scalable = true`).
    pub scalable: bool,
    /// `[deploy]`: resources and environment of each node of a deployment.
    pub deploy: deploy::Deploy,
}

impl ImageDef {
    pub fn load(path: &Path, recipes: &BTreeMap<String, Recipe>) -> Result<ImageDef> {
        Self::parse(path, &crate::toml_file::read_text(path)?, recipes)
    }

    /// Parses and validates `text` as the definition at `path`; its templates are read from
    /// the directory `path` is in.
    pub fn parse(path: &Path, text: &str, recipes: &BTreeMap<String, Recipe>) -> Result<ImageDef> {
        let file = TomlFile::<ImageToml>::parse_allowing_line_breaks(path, text.to_string(), &["lists.*.join"])?;
        let t = &file.value;
        let name = parse_name(&file, &t.name)?;
        let (base, layers) = parse_recipes(&file, t, recipes)?;
        let nodes = parse_cluster(&file, &t.cluster)?;
        let vars = parse_vars(&file, &t.vars)?;
        let lists = parse_lists(&file, &t.lists, &vars)?;
        let templates = parse_templates(&file, &t.template, &template_scope(&vars, &lists))?;
        boot_cost::check(&vars, &lists, &templates, &nodes)
            .map_err(|message| Error::Definition { file: path.to_path_buf(), message })?;
        let services = parse_services(&file, &t.service, &templates)?;
        let identity_checks = parse_identity_checks(&file, &t.identity_check)?;
        let config = parse_config(&file, &t.config, &templates)?;
        let deploy = deploy::parse(&file, &t.deploy)?;
        Ok(ImageDef {
            name,
            description: t.description.clone(),
            file: path.to_path_buf(),
            base,
            layers,
            config,
            vars,
            lists,
            templates,
            services,
            identity_checks,
            nodes,
            scalable: t.cluster.scalable,
            deploy,
        })
    }

    pub fn node(&self, id: u32) -> Result<&Node> {
        self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<String> = self.nodes.iter().map(|n| n.id.to_string()).collect();
            Error::Usage(format!("node {id} is not in cluster `{}` (its nodes: {})", self.name, ids.join(", ")))
        })
    }

    /// Every recipe the image uses, base first.
    pub fn recipes(&self) -> impl Iterator<Item = &Recipe> {
        self.base.iter().chain(self.layers.iter())
    }
}

/// An OCI repository path component (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`): usable in image
/// references and as a file name (`out/NAME`; never `.`, `..` or an option-like `-x`).
pub(crate) fn is_image_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let separator_ok = |s: &str| matches!(s, "." | "_" | "__") || s.chars().all(|c| c == '-');
    (1..=128).contains(&name.len())
        && name.chars().all(|c| alnum(c) || "._-".contains(c))
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.split(alnum).all(separator_ok)
}

fn parse_name(file: &Doc, name: &Spanned<String>) -> Result<String> {
    if !is_image_name(name.get_ref()) {
        return Err(file.error_at(
            name.span(),
            format!(
                "field `name`: `{}` must be a-z and 0-9 words joined by `.`, `_`, `__` or `-` (at most 128 characters)",
                escape(name.get_ref())
            ),
        ));
    }
    Ok(name.get_ref().clone())
}

fn parse_recipes(
    file: &Doc,
    t: &ImageToml,
    recipes: &BTreeMap<String, Recipe>,
) -> Result<(Option<Recipe>, Vec<Recipe>)> {
    let lookup = |r: &Spanned<String>| -> Result<Recipe> {
        recipes.get(r.get_ref()).cloned().ok_or_else(|| {
            let known: Vec<&str> = recipes.keys().map(String::as_str).collect();
            file.error_at(r.span(), format!("unknown recipe `{}` (known: {})", escape(r.get_ref()), known.join(", ")))
        })
    };
    let mut base = None;
    if let Some(b) = &t.base {
        let recipe = lookup(b)?;
        // A root-filesystem tarball is a base too: it must unpack at `/`.
        if recipe.kind == RecipeKind::Tarball && !recipe.unpack.prefix.is_empty() {
            return Err(file.error_at(
                b.span(),
                format!(
                    "`base` must name an `oci-image` recipe or a root-filesystem tarball; `{}` unpacks at `/{}` (list it in `layers`)",
                    recipe.name,
                    escape(&recipe.unpack.prefix)
                ),
            ));
        }
        base = Some(recipe);
    }
    let mut layers = Vec::new();
    for l in &t.layers {
        let recipe = lookup(l)?;
        if recipe.kind != RecipeKind::Tarball {
            return Err(file.error_at(l.span(), format!("`{}` is an OCI image; use it as `base`", recipe.name)));
        }
        if layers.iter().any(|r: &Recipe| r.name == recipe.name) {
            return Err(file.error_at(l.span(), format!("recipe `{}` is listed twice", recipe.name)));
        }
        layers.push(recipe);
    }
    Ok((base, layers))
}

fn parse_cluster(file: &Doc, cluster: &ClusterToml) -> Result<Vec<Node>> {
    let mut nodes: Vec<Node> = Vec::new();
    for n in &cluster.node {
        let NodeToml { id, host } = n.get_ref();
        if nodes.iter().any(|o| o.id == *id) {
            return Err(file.error_at(n.span(), format!("duplicate node id {id}")));
        }
        if !is_host(host.get_ref()) {
            return Err(file.error_at(
                host.span(),
                format!(
                    "node {id}: `{}` is not an IP address or a host name (RFC 1123: dot-separated labels of letters, digits and `-`)",
                    escape(host.get_ref())
                ),
            ));
        }
        if let Some(other) = nodes.iter().find(|o| host_key(&o.host) == host_key(host.get_ref())) {
            let same = match other.host == *host.get_ref() {
                true => String::new(),
                false => format!(" (node {}'s `{}`, spelled otherwise)", other.id, other.host),
            };
            return Err(file.error_at(
                host.span(),
                format!("duplicate host `{}`{same}: every node needs its own address", host.get_ref()),
            ));
        }
        nodes.push(Node { id: *id, host: host.get_ref().clone() });
    }
    if nodes.is_empty() {
        return Err(file.error_at(0..0, "the cluster needs at least one `[[cluster.node]]`"));
    }
    if let Some(n) = cluster.node.get(boot_cost::MAX_NODES) {
        return Err(
            file.error_at(n.span(), format!("more than {} nodes: each boot reads them all", boot_cost::MAX_NODES))
        );
    }
    Ok(nodes)
}

fn parse_vars(file: &Doc, vars: &BTreeMap<String, Spanned<String>>) -> Result<BTreeMap<String, String>> {
    // A var's value may name this node, but no other var, so expansion always ends.
    let scope: BTreeSet<&str> = BUILTIN_VARS.iter().copied().collect();
    let mut out = BTreeMap::new();
    for (k, v) in vars {
        check_var_name(file, k, v.span())?;
        check_text(file, v.span(), &format!("var `{k}`"), v.get_ref(), &[], &scope)?;
        check_no_final_backslash(file, v.span(), &format!("var `{k}`"), v.get_ref())?;
        out.insert(k.clone(), v.get_ref().clone());
    }
    Ok(out)
}

fn parse_lists(
    file: &Doc,
    lists: &BTreeMap<String, Spanned<ListToml>>,
    vars: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, PeerList>> {
    // Items may use a node's `id` and `host` and every var.
    let mut scope: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
    scope.extend(ITEM_VARS);
    let mut out = BTreeMap::new();
    for (k, l) in lists {
        check_var_name(file, k, l.span())?;
        if vars.contains_key(k) {
            return Err(file.error_at(l.span(), format!("`{k}` is both a var and a list")));
        }
        let list = l.get_ref();
        for text in std::iter::once(&list.item).chain(list.self_item.iter()) {
            check_text(file, l.span(), &format!("list `{k}`"), text, &[], &scope)?;
            check_no_final_backslash(file, l.span(), &format!("list `{k}`"), text)?;
        }
        check_characters(file, l.span(), &format!("list `{k}`: `join`"), &list.join, &['\n'])?;
        out.insert(
            k.clone(),
            PeerList { item: list.item.clone(), self_item: list.self_item.clone(), join: list.join.clone() },
        );
    }
    Ok(out)
}

/// What a template may use: this node's builtins, every var and every list.
fn template_scope<'a>(vars: &'a BTreeMap<String, String>, lists: &'a BTreeMap<String, PeerList>) -> BTreeSet<&'a str> {
    let mut scope: BTreeSet<&str> = BUILTIN_VARS.iter().copied().collect();
    scope.extend(vars.keys().map(String::as_str));
    scope.extend(lists.keys().map(String::as_str));
    scope
}

fn parse_templates(file: &Doc, templates: &[Spanned<TemplateToml>], scope: &BTreeSet<&str>) -> Result<Vec<Template>> {
    let dir = definition_dir(&file.path)?;
    if let Some(t) = templates.get(boot_cost::MAX_TEMPLATES) {
        let most = boot_cost::MAX_TEMPLATES;
        return Err(file.error_at(t.span(), format!("more than {most} templates: each boot renders them all")));
    }
    let mut out: Vec<Template> = Vec::new();
    let mut bytes = 0;
    for tt in templates {
        let tmpl = tt.get_ref();
        let (source, text) = read_template_source(file, &dir, &tmpl.source)?;
        bytes += text.len() as u64;
        if bytes > MAX_TEMPLATE_BYTES {
            return Err(file.error_at(
                tmpl.source.span(),
                format!(
                    "the templates hold {bytes} bytes up to this one; at most {MAX_TEMPLATE_BYTES} in all are rendered at every boot"
                ),
            ));
        }
        let target = image_path(file, &tmpl.target)?;
        // The cluster layer keeps the template under imgbuild's directory: that path too.
        let kept = format!("/{}/templates/{target}", crate::entrypoint::CONF_DIR);
        if kept.len() >= crate::image_path::PATH_MAX {
            return Err(file.error_at(
                tmpl.target.span(),
                format!("template target /{target}: imgbuild keeps the template at a path as long as it ({} bytes), which Linux cannot hold", kept.len()),
            ));
        }
        if let Some(own) = crate::entrypoint::own_paths().into_iter().find(|r| nests(&target, r)) {
            return Err(file.error_at(
                tmpl.target.span(),
                format!("template target /{target} would change /{own}, which imgbuild writes itself"),
            ));
        }
        if let Some(other) = out.iter().find(|o| nests(&target, &o.target)) {
            let how = if other.target == target {
                "two templates write"
            } else {
                "one template's target is inside another's:"
            };
            return Err(file.error_at(tmpl.target.span(), format!("{how} /{target} and /{}", other.target)));
        }
        check_template_text(&source, &text, &format!("the template for /{target}"), scope)?;
        let mode = match &tmpl.mode {
            None => 0o644,
            Some(m) => parse_mode(m.get_ref()).ok_or_else(|| {
                file.error_at(
                    m.span(),
                    format!("field `mode`: `{}` is not an octal mode like \"0644\"", escape(m.get_ref())),
                )
            })?,
        };
        out.push(Template { text, target, mode, guard: tmpl.guard });
    }
    Ok(out)
}

/// `"0644"` or `"644"`: three or four octal digits, at most 0777 (no setuid, setgid or sticky bit).
fn parse_mode(text: &str) -> Option<u32> {
    let digits_ok = (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    digits_ok.then(|| u32::from_str_radix(text, 8).ok()).flatten().filter(|m| *m <= 0o777)
}

/// The directory templates are read from, with every link resolved.
fn definition_dir(definition: &Path) -> Result<PathBuf> {
    let dir = match definition.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.canonicalize().at(dir)
}

/// A template's text, read from `source` inside `dir` (links followed); a file anywhere else is
/// refused, so a definition cannot put a file of the build host into an image. What is checked
/// is the file actually opened (its path as the kernel resolved it, `/proc/self/fd/N`), so
/// swapping a link in between cannot change what is read. Returns where messages say it is.
fn read_template_source(file: &Doc, dir: &Path, source: &Spanned<String>) -> Result<(PathBuf, String)> {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    let text = source.get_ref();
    let shown = file.path.parent().unwrap_or(Path::new("")).join(text);
    let refuse = |why: String| file.error_at(source.span(), format!("template `{}`: {why}", escape(text)));
    if text.is_empty() || Path::new(text).is_absolute() {
        return Err(refuse(format!("`source` is a path relative to {}", dir.display())));
    }
    // Non-blocking, so that a FIFO put there neither blocks nor is read.
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC;
    let opened = rustix::fs::open(dir.join(text), flags, rustix::fs::Mode::empty())
        .map_err(|e| refuse(format!("{}: {}", shown.display(), std::io::Error::from(e))))?;
    let mut opened = std::fs::File::from(opened);
    let fd_link = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
    let real = std::fs::read_link(&fd_link).at(&fd_link)?;
    if !real.starts_with(dir) {
        return Err(refuse(format!(
            "resolves to a file outside {} (templates stay inside the image definition's directory)",
            dir.display()
        )));
    }
    let metadata = opened.metadata().at(&shown)?;
    if !metadata.is_file() {
        return Err(refuse(format!("{} is not a file", shown.display())));
    }
    let too_big = |size: u64| Error::Definition {
        file: shown.clone(),
        message: format!("a template of {size} bytes; at most {MAX_TEMPLATE_BYTES} are rendered at boot"),
    };
    if metadata.len() > MAX_TEMPLATE_BYTES {
        return Err(too_big(metadata.len()));
    }
    let mut bytes = Vec::new();
    (&mut opened).take(MAX_TEMPLATE_BYTES + 1).read_to_end(&mut bytes).at(&shown)?;
    if bytes.len() as u64 > MAX_TEMPLATE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    let text = crate::toml_file::decode_text(&shown, bytes)?;
    Ok((shown, text))
}

/// A template file's text: errors name the template file and its line (not the definition's).
fn check_template_text(path: &Path, text: &str, what: &str, scope: &BTreeSet<&str>) -> Result<()> {
    let at = |e: TextError| {
        let (line, column) = line_col(text, e.offset);
        Error::Parse { file: path.to_path_buf(), line, column, message: format!("{what}: {}", e.message) }
    };
    template::check_characters(text, &['\t', '\n']).map_err(at)?;
    let pieces = template::parse(text).map_err(at)?;
    undefined_reference(&pieces, scope).map_or(Ok(()), |e| Err(at(e)))
}

/// A definition's value that the entrypoint renders: `allowed` control characters only,
/// references only to `scope`.
fn check_text(
    file: &Doc,
    span: Range<usize>,
    what: &str,
    text: &str,
    allowed: &[char],
    scope: &BTreeSet<&str>,
) -> Result<()> {
    check_characters(file, span.clone(), what, text, allowed)?;
    let at = |e: TextError| file.error_at(span.clone(), format!("{what}: {}", e.message));
    let pieces = template::parse(text).map_err(at)?;
    undefined_reference(&pieces, scope).map_or(Ok(()), |e| Err(at(e)))
}

/// A value substituted into a configuration file may not end with a backslash: Java's
/// properties reader (ZooKeeper's, Kafka's) would join the next line of the file to it.
fn check_no_final_backslash(file: &Doc, span: Range<usize>, what: &str, text: &str) -> Result<()> {
    if text.ends_with('\\') {
        return Err(file.error_at(
            span,
            format!("{what}: ends with a backslash, which would join the next line of a properties file to it"),
        ));
    }
    Ok(())
}

fn check_characters(file: &Doc, span: Range<usize>, what: &str, text: &str, allowed: &[char]) -> Result<()> {
    template::check_characters(text, allowed).map_err(|e| file.error_at(span, format!("{what}: {}", e.message)))
}

fn undefined_reference(pieces: &[Piece<'_>], scope: &BTreeSet<&str>) -> Option<TextError> {
    pieces.iter().find_map(|p| match p {
        Piece::Reference { name, offset } if !scope.contains(name) => {
            let known: Vec<&str> = scope.iter().copied().collect();
            Some(TextError {
                offset: *offset,
                message: format!("`{{{{{name}}}}}` is not defined here (defined: {})", known.join(", ")),
            })
        }
        _ => None,
    })
}

fn parse_services(file: &Doc, services: &[Spanned<ServiceToml>], templates: &[Template]) -> Result<Vec<Service>> {
    let mut out: Vec<Service> = Vec::new();
    for s in services {
        let svc = s.get_ref();
        let name = svc.name.get_ref();
        check_var_name(file, name, svc.name.span())?;
        for (field, words) in
            [("command", Some(&svc.command)), ("health", svc.health.as_ref()), ("role", svc.role.as_ref())]
        {
            let Some(words) = words else { continue };
            if words.is_empty() {
                return Err(file.error_at(s.span(), format!("service `{name}`: `{field}` is empty")));
            }
            for word in words {
                check_characters(file, s.span(), &format!("service `{name}`: `{field}`"), word, &[])?;
            }
        }
        if out.iter().any(|o| &o.name == name) {
            return Err(file.error_at(svc.name.span(), format!("service `{name}` is defined twice")));
        }
        let mut data_dirs = Vec::new();
        for d in &svc.data_dirs {
            data_dirs.push(format!("/{}", directory_path(file, d, templates)?));
        }
        out.push(Service {
            name: name.clone(),
            command: svc.command.clone(),
            data_dirs,
            health: svc.health.clone(),
            role: svc.role.clone(),
        });
    }
    Ok(out)
}

fn parse_identity_checks(file: &Doc, checks: &[Spanned<IdentityCheckToml>]) -> Result<Vec<IdentityCheck>> {
    let mut out = Vec::new();
    for c in checks {
        let check = c.get_ref();
        let key_ok =
            !check.key.is_empty() && check.key.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
        if !key_ok {
            return Err(file.error_at(
                c.span(),
                format!("identity_check key `{}` must use only A-Z, a-z, 0-9, `.`, `_`, `-`", escape(&check.key)),
            ));
        }
        out.push(IdentityCheck { file: format!("/{}", image_path(file, &check.file)?), key: check.key.clone() });
    }
    Ok(out)
}

fn parse_config(file: &Doc, c: &ConfigToml, templates: &[Template]) -> Result<ImageConfig> {
    let mut ports = Vec::new();
    for p in &c.ports {
        ports.push(parse_port(file, p)?);
    }
    let mut volumes = Vec::new();
    for v in &c.volumes {
        volumes.push(format!("/{}", directory_path(file, v, templates)?));
    }
    let mut env = BTreeMap::new();
    for (k, v) in &c.env {
        // Control characters in values are refused with every other string of the file.
        if let Some(problem) = crate::entrypoint::env_name_problem(k) {
            return Err(file.error_at(v.span(), format!("[config.env]: {problem}")));
        }
        env.insert(k.clone(), v.get_ref().clone());
    }
    let workdir = match &c.workdir {
        None => "/".to_string(),
        Some(w) => format!(
            "/{}",
            crate::image_path::parse(w.get_ref())
                .map_err(|why| file.error_at(w.span(), format!("`workdir`: `{}` {why}", escape(w.get_ref()))))?
        ),
    };
    let stop_signal = c.stop_signal.as_ref().map(|s| parse_signal(file, s)).transpose()?;
    Ok(ImageConfig {
        entrypoint: c.entrypoint.clone().unwrap_or_else(|| vec![DEFAULT_ENTRYPOINT.to_string()]),
        cmd: c.cmd.clone(),
        workdir,
        user: c.user.clone().unwrap_or_else(|| "0:0".into()),
        ports,
        volumes,
        env,
        labels: c.labels.clone(),
        stop_signal,
    })
}

/// `SIGTERM` (a name Linux knows) or a signal number from 1 to 64.
fn parse_signal(file: &Doc, s: &Spanned<String>) -> Result<String> {
    let text = s.get_ref();
    let ok = SIGNALS.contains(&text.as_str())
        || (!text.starts_with('0') && text.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n)));
    if !ok {
        return Err(file.error_at(
            s.span(),
            format!("`stop_signal`: `{}` is not a signal (a name such as \"SIGTERM\", or 1 to 64)", escape(text)),
        ));
    }
    Ok(text.clone())
}

fn check_var_name(file: &Doc, name: &str, span: Range<usize>) -> Result<()> {
    if !template::is_reference_name(name) {
        return Err(file.error_at(span, format!("`{}`: names use a-z, 0-9 and `_`, not first a digit", escape(name))));
    }
    if BUILTIN_VARS.contains(&name) || ITEM_VARS.contains(&name) || name.contains("__") {
        return Err(file.error_at(span, format!("`{name}` is set by imgbuild at boot and cannot be redefined")));
    }
    Ok(())
}

/// A directory the image or the entrypoint creates (a volume, a service's data directory):
/// never at or inside a template's file or imgbuild's own files.
fn directory_path(file: &Doc, p: &Spanned<String>, templates: &[Template]) -> Result<String> {
    let path = image_path(file, p)?;
    let files = templates.iter().map(|t| t.target.as_str()).chain(crate::entrypoint::own_paths());
    if let Some(clash) = files.into_iter().find(|f| inside_or_at(&path, f)) {
        return Err(file.error_at(p.span(), format!("directory /{path} would be at or inside the file /{clash}")));
    }
    Ok(path)
}

/// A path the entrypoint writes or reads at boot ([`crate::image_path`]'s rule, and not `/`).
fn image_path(file: &Doc, p: &Spanned<String>) -> Result<String> {
    let text = p.get_ref();
    // The entrypoint lists these paths in shell variables: keep them to portable characters.
    if !text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c)) {
        return Err(
            file.error_at(p.span(), format!("`{}`: use only A-Z, a-z, 0-9 and `/._-+@` in image paths", escape(text)))
        );
    }
    match crate::image_path::parse(text) {
        Err(why) => Err(file.error_at(p.span(), format!("`{text}` {why}"))),
        Ok(path) if path.is_empty() => {
            Err(file.error_at(p.span(), format!("`{text}` must be an absolute path inside the image, not `/`")))
        }
        Ok(path) => Ok(path),
    }
}

fn parse_port(file: &Doc, p: &Spanned<String>) -> Result<String> {
    let text = p.get_ref();
    let (num, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let ok = !num.starts_with(['+', '0'])
        && num.parse::<u16>().is_ok_and(|n| n > 0)
        && matches!(proto, "tcp" | "udp" | "sctp");
    if !ok {
        return Err(file.error_at(p.span(), format!("port `{}` is not PORT[/tcp|udp|sctp]", escape(text))));
    }
    Ok(format!("{num}/{proto}"))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile_tests;
