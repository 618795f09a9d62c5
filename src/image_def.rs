//! Image definitions (`images/*.toml`): what a node is made of and the cluster's topology.
//! The format is documented in `images/README.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
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
    workdir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    stop_signal: Option<String>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterToml {
    node: Vec<Spanned<NodeToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeToml {
    id: u32,
    host: String,
}

/// The variables every template may use without declaring them; the entrypoint sets them at boot.
pub const BUILTIN_VARS: &[&str] = &["node_id", "node_host"];

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
    pub nodes: Vec<Node>,
}

/// The entrypoint every node image runs unless the definition names another.
pub const DEFAULT_ENTRYPOINT: &str = "/usr/local/bin/imgbuild-init";

impl ImageDef {
    pub fn load(path: &Path, recipes: &BTreeMap<String, Recipe>) -> Result<ImageDef> {
        let file = TomlFile::<ImageToml>::read(path)?;
        let t = &file.value;
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = t.name.get_ref().clone();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
            return Err(
                file.error_at(t.name.span(), format!("field `name`: `{name}` must use only a-z, 0-9, `.`, `_`, `-`"))
            );
        }

        let lookup = |r: &Spanned<String>| -> Result<Recipe> {
            recipes.get(r.get_ref()).cloned().ok_or_else(|| {
                let known: Vec<&str> = recipes.keys().map(String::as_str).collect();
                file.error_at(r.span(), format!("unknown recipe `{}` (known: {})", r.get_ref(), known.join(", ")))
            })
        };
        let base = t.base.as_ref().map(lookup).transpose()?;
        if let (Some(b), Some(span)) = (&base, t.base.as_ref().map(|b| b.span())) {
            // A root-filesystem tarball is a base too: it must unpack at `/`.
            if b.kind == RecipeKind::Tarball && !b.unpack.prefix.is_empty() {
                return Err(file.error_at(
                    span,
                    format!(
                        "`base` must name an `oci-image` recipe or a root-filesystem tarball; `{}` unpacks at `/{}` (list it in `layers`)",
                        b.name, b.unpack.prefix
                    ),
                ));
            }
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

        let mut nodes: Vec<Node> = Vec::new();
        for n in &t.cluster.node {
            let node = n.get_ref();
            if nodes.iter().any(|o| o.id == node.id) {
                return Err(file.error_at(n.span(), format!("duplicate node id {}", node.id)));
            }
            if node.host.is_empty() || node.host.chars().any(|c| c.is_whitespace() || c == ',' || c == '/') {
                return Err(
                    file.error_at(n.span(), format!("node {}: `{}` is not a host name or address", node.id, node.host))
                );
            }
            if nodes.iter().any(|o| o.host == node.host) {
                return Err(file
                    .error_at(n.span(), format!("duplicate host `{}`: every node needs its own address", node.host)));
            }
            nodes.push(Node { id: node.id, host: node.host.clone() });
        }
        if nodes.is_empty() {
            return Err(file.error_at(0..0, "the cluster needs at least one `[[cluster.node]]`"));
        }

        let mut vars = BTreeMap::new();
        for (k, v) in &t.vars {
            check_var_name(&file, k, v.span())?;
            if v.get_ref().contains('\n') {
                return Err(file.error_at(v.span(), format!("var `{k}`: values are single lines")));
            }
            vars.insert(k.clone(), v.get_ref().clone());
        }
        let mut lists = BTreeMap::new();
        for (k, l) in &t.lists {
            check_var_name(&file, k, l.span())?;
            if vars.contains_key(k) {
                return Err(file.error_at(l.span(), format!("`{k}` is both a var and a list")));
            }
            let list = l.get_ref();
            // Items may use a node's `id` and `host` and every var.
            let mut item_scope: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
            item_scope.extend(["id", "host"]);
            for text in std::iter::once(&list.item).chain(list.self_item.iter()) {
                check_references(&file, l.span(), &format!("list `{k}`"), text, &item_scope)?;
            }
            lists.insert(
                k.clone(),
                PeerList { item: list.item.clone(), self_item: list.self_item.clone(), join: list.join.clone() },
            );
        }

        let mut scope: BTreeSet<&str> = BUILTIN_VARS.iter().copied().collect();
        scope.extend(vars.keys().map(String::as_str));
        scope.extend(lists.keys().map(String::as_str));
        let mut templates = Vec::new();
        for tt in &t.template {
            let tmpl = tt.get_ref();
            let source_path = dir.join(tmpl.source.get_ref());
            let text = std::fs::read_to_string(&source_path)
                .map_err(|e| file.error_at(tmpl.source.span(), format!("template `{}`: {e}", source_path.display())))?;
            check_references(&file, tmpl.source.span(), &format!("template {}", tmpl.source.get_ref()), &text, &scope)?;
            let target = image_path(&file, &tmpl.target)?;
            if templates.iter().any(|o: &Template| o.target == target) {
                return Err(file.error_at(tmpl.target.span(), format!("two templates write /{target}")));
            }
            let mode = match &tmpl.mode {
                None => 0o644,
                Some(m) => u32::from_str_radix(m.get_ref(), 8).ok().filter(|m| *m <= 0o777).ok_or_else(|| {
                    file.error_at(
                        m.span(),
                        format!("field `mode`: `{}` is not an octal mode like \"0644\"", m.get_ref()),
                    )
                })?,
            };
            templates.push(Template { text, target, mode, guard: tmpl.guard });
        }

        let mut services = Vec::new();
        for s in &t.service {
            let svc = s.get_ref();
            if svc.command.is_empty() {
                return Err(file.error_at(s.span(), format!("service `{}`: `command` is empty", svc.name.get_ref())));
            }
            if services.iter().any(|o: &Service| &o.name == svc.name.get_ref()) {
                return Err(
                    file.error_at(svc.name.span(), format!("service `{}` is defined twice", svc.name.get_ref()))
                );
            }
            check_var_name(&file, svc.name.get_ref(), svc.name.span())?;
            let mut data_dirs = Vec::new();
            for d in &svc.data_dirs {
                data_dirs.push(format!("/{}", image_path(&file, d)?));
            }
            services.push(Service { name: svc.name.get_ref().clone(), command: svc.command.clone(), data_dirs });
        }
        let mut identity_checks = Vec::new();
        for c in &t.identity_check {
            let check = c.get_ref();
            let key_ok =
                !check.key.is_empty() && check.key.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
            if !key_ok {
                return Err(file.error_at(
                    c.span(),
                    format!("identity_check key `{}` must use only A-Z, a-z, 0-9, `.`, `_`, `-`", check.key),
                ));
            }
            identity_checks
                .push(IdentityCheck { file: format!("/{}", image_path(&file, &check.file)?), key: check.key.clone() });
        }

        let c = &t.config;
        let mut ports = Vec::new();
        for p in &c.ports {
            ports.push(parse_port(&file, p)?);
        }
        let mut volumes = Vec::new();
        for v in &c.volumes {
            volumes.push(format!("/{}", image_path(&file, v)?));
        }
        let config = ImageConfig {
            entrypoint: c.entrypoint.clone().unwrap_or_else(|| vec![DEFAULT_ENTRYPOINT.to_string()]),
            cmd: c.cmd.clone(),
            workdir: c.workdir.clone().unwrap_or_else(|| "/".into()),
            user: c.user.clone().unwrap_or_else(|| "0:0".into()),
            ports,
            volumes,
            env: c.env.clone(),
            labels: c.labels.clone(),
            stop_signal: c.stop_signal.clone(),
        };

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

fn check_var_name<T>(file: &TomlFile<T>, name: &str, span: std::ops::Range<usize>) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(file.error_at(span, format!("`{name}`: variable names use a-z, 0-9 and `_`")));
    }
    if BUILTIN_VARS.contains(&name) || name == "id" || name == "host" || name.contains("__") {
        return Err(file.error_at(span, format!("`{name}` is set by imgbuild at boot and cannot be redefined")));
    }
    Ok(())
}

/// The `{{name}}` references of a template text.
pub fn template_references(text: &str) -> Vec<&str> {
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        refs.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    refs
}

fn check_references<T>(
    file: &TomlFile<T>,
    span: std::ops::Range<usize>,
    what: &str,
    text: &str,
    scope: &BTreeSet<&str>,
) -> Result<()> {
    for r in template_references(text) {
        if !scope.contains(r) {
            let known: Vec<&str> = scope.iter().copied().collect();
            return Err(file.error_at(
                span,
                format!("{what} uses `{{{{{r}}}}}`, which is not defined (defined: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

fn image_path<T>(file: &TomlFile<T>, p: &Spanned<String>) -> Result<String> {
    let text = p.get_ref();
    let path = Path::new(text);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir if parts.is_empty() => {}
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            _ => return Err(file.error_at(p.span(), format!("`{text}` must be an absolute path without `.` or `..`"))),
        }
    }
    if !path.is_absolute() || parts.is_empty() {
        return Err(file.error_at(p.span(), format!("`{text}` must be an absolute path inside the image")));
    }
    // The entrypoint lists these paths in shell variables: keep them to portable characters.
    if !text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c)) {
        return Err(file.error_at(p.span(), format!("`{text}`: use only A-Z, a-z, 0-9 and `/._-+@` in image paths")));
    }
    Ok(parts.join("/"))
}

fn parse_port<T>(file: &TomlFile<T>, p: &Spanned<String>) -> Result<String> {
    let text = p.get_ref();
    let (num, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let ok = num.parse::<u16>().is_ok_and(|n| n > 0) && matches!(proto, "tcp" | "udp" | "sctp");
    if !ok {
        return Err(file.error_at(p.span(), format!("port `{text}` is not PORT[/tcp|udp|sctp]")));
    }
    Ok(format!("{num}/{proto}"))
}
