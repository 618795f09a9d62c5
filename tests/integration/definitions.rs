//! Anything `imgbuild check` accepts renders at boot. Definitions are generated with hostile
//! text in their vars, lists and templates; imgbuild's parser must accept exactly those the
//! documented rules (a reference written here) accept, and the real entrypoint, under `dash`
//! and busybox `sh`, must render each accepted one as the reference renderer does.

use std::collections::BTreeMap;
use std::path::Path;

use imgbuild::error::ExitCode;
use imgbuild::testing::ImageDef;
use proptest::prelude::*;

use super::entrypoint::{err, Boot, SHELLS};

/// The language as `images/README.md` states it: every `{{` opens a reference `{{ name }}`
/// (spaces only around it) that ends at the first `}}`; `value` gives each name's text.
/// None when `text` breaks the language or names something `value` does not know.
pub fn reference_render(text: &str, value: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let mut parts = text.split("{{");
    let mut out = parts.next().unwrap_or("").to_string();
    for part in parts {
        let (inner, rest) = part.split_once("}}")?;
        let name = inner.trim_matches(' ');
        let name_ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return None;
        }
        out.push_str(&value(name)?);
        out.push_str(rest);
    }
    Some(out)
}

/// Every name of `scope` stands for an empty text (enough to tell whether a text is valid).
fn in_scope(scope: Vec<&str>) -> impl Fn(&str) -> Option<String> {
    let scope: Vec<String> = scope.into_iter().map(String::from).collect();
    move |name| scope.iter().any(|s| s == name).then(String::new)
}

/// No control character except those `allowed`.
fn characters_ok(text: &str, allowed: &[char]) -> bool {
    text.chars().all(|c| !c.is_control() || allowed.contains(&c))
}

/// A string of the definition's TOML: no control character nor one that reorders or hides
/// text, except those `allowed`.
fn toml_characters_ok(text: &str, allowed: &[char]) -> bool {
    text.chars().all(|c| !imgbuild::testing::is_unsafe_char(c) || allowed.contains(&c))
}

/// A value substituted into a properties file: it may not end with a backslash, which would
/// join the next line to it.
fn no_final_backslash(text: &str) -> bool {
    !text.ends_with('\\')
}

/// Pieces of text an attacker (or a careless user) would try; `names` are references likely
/// to be in scope.
fn fragment(names: &[&str]) -> impl Strategy<Value = String> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let reference = (prop::sample::select(names), 0..4usize).prop_map(|(n, style)| match style {
        0 => format!("{{{{{n}}}}}"),
        1 => format!("{{{{ {n} }}}}"),
        2 => format!("{{{{{n}  }}}}"),
        _ => format!("{{{{  {n}}}}}}}"),
    });
    let shell = prop::sample::select(vec![
        "'", "\"", "$", "`", "\\", "$(id)", "${x}", "%s", "%", "%%", "}}", "}", "*", "?", "[a]", "~", "#", ";", "&",
        "|", "<", ">", "\\n", "-n", "-e", "ünï", "日本", "🦀", "\u{a0}", "\u{202e}", "'\\''",
    ]);
    // Each of these breaks the rules (or does next to a reference, as `{` does).
    let breaking = prop::sample::select(vec![
        "{{",
        "{{}}",
        "{{ }}",
        "{{\tnode_id}}",
        "{{A}}",
        "{{1x}}",
        "{{a-b}}",
        "{{nowhere}}",
        "{",
        "\n",
        "\t",
        "\r",
        "\0",
        "\u{1b}",
        "\u{7f}",
        "\u{85}",
    ]);
    prop_oneof![
        60 => "[a-zA-Z0-9 =.:,/_-]{0,12}",
        50 => reference,
        50 => shell.prop_map(String::from),
        3 => breaking.prop_map(String::from),
        5 => Just("x".repeat(3000)),
    ]
}

/// A text made of `fragment`s.
pub fn hostile_text(names: &[&str]) -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(names), 0..6).prop_map(|f| f.concat())
}

/// Template bytes: lines of fragments, sometimes not UTF-8, with or without a final newline.
fn template_bytes(names: &[&str]) -> impl Strategy<Value = Vec<u8>> {
    let line = hostile_text(names);
    (prop::collection::vec(line, 0..5), any::<bool>(), prop::bool::weighted(1.0 / 32.0)).prop_map(
        |(lines, final_newline, raw)| {
            let mut text = lines.join("\n").into_bytes();
            if final_newline {
                text.push(b'\n');
            }
            if raw {
                text.extend_from_slice(b"\xff\xfe");
            }
            text
        },
    )
}

#[derive(Debug, Clone)]
struct GenList {
    name: String,
    item: String,
    self_item: Option<String>,
    join: Option<String>,
}

/// A generated definition; `boot` is the index of the node rendered.
#[derive(Debug, Clone)]
struct GenDef {
    vars: Vec<(String, String)>,
    lists: Vec<GenList>,
    templates: Vec<Vec<u8>>,
    nodes: Vec<(u32, String)>,
    boot: usize,
}

const VAR_NAMES: [&str; 4] = ["a", "port", "b_2", "_x"];
const LIST_NAMES: [&str; 2] = ["servers", "peers"];
const HOSTS: [&str; 4] = ["127.0.1.1", "zk-b", "fd00::3", "zk-4.ns.svc"];

fn gen_def() -> impl Strategy<Value = GenDef> {
    let var_names = prop::sample::subsequence(VAR_NAMES.to_vec(), 0..=4);
    let list_names = prop::sample::subsequence(LIST_NAMES.to_vec(), 0..=2);
    let ids = prop::sample::subsequence(vec![0u32, 1, 2, 7, 10, 42, u32::MAX], 1..=3).prop_shuffle();
    (var_names, list_names, ids).prop_flat_map(|(vars, lists, ids)| {
        let values = prop::collection::vec(hostile_text(&["node_id", "node_host"]), vars.len());
        let item_scope: Vec<&str> = vars.iter().copied().chain(["id", "host"]).collect();
        let join = prop_oneof![Just("\n".to_string()), Just(",".to_string()), hostile_text(&["x"])];
        let list = (hostile_text(&item_scope), prop::option::of(hostile_text(&item_scope)), prop::option::of(join));
        let list_parts = prop::collection::vec(list, lists.len());
        let template_scope: Vec<&str> =
            ["node_id", "node_host"].into_iter().chain(vars.iter().copied()).chain(lists.iter().copied()).collect();
        let templates = prop::collection::vec(template_bytes(&template_scope), 1..=3);
        let nodes: Vec<(u32, String)> = ids.iter().zip(HOSTS).map(|(id, h)| (*id, h.to_string())).collect();
        let boot = 0..nodes.len();
        (Just(vars), values, Just(lists), list_parts, templates, Just(nodes), boot).prop_map(
            |(vars, values, lists, parts, templates, nodes, boot)| GenDef {
                vars: vars.iter().map(|n| n.to_string()).zip(values).collect(),
                lists: lists
                    .iter()
                    .zip(parts)
                    .map(|(name, (item, self_item, join))| GenList { name: name.to_string(), item, self_item, join })
                    .collect(),
                templates,
                nodes,
                boot,
            },
        )
    })
}

/// A TOML basic string holding `text` exactly.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl GenDef {
    fn toml(&self) -> String {
        let mut t = String::from("name = \"gen\"\n\n[vars]\n");
        for (k, v) in &self.vars {
            t += &format!("{k} = {}\n", toml_string(v));
        }
        for l in &self.lists {
            t += &format!("\n[lists.{}]\nitem = {}\n", l.name, toml_string(&l.item));
            if let Some(s) = &l.self_item {
                t += &format!("self_item = {}\n", toml_string(s));
            }
            if let Some(j) = &l.join {
                t += &format!("join = {}\n", toml_string(j));
            }
        }
        for i in 0..self.templates.len() {
            t += &format!("\n[[template]]\nsource = \"gen/t{i}\"\ntarget = \"/conf/t{i}\"\n");
        }
        for (id, host) in &self.nodes {
            t += &format!("\n[[cluster.node]]\nid = {id}\nhost = \"{host}\"\n");
        }
        t
    }

    /// Whether the documented rules accept it.
    fn valid(&self) -> bool {
        let value_scope = in_scope(vec!["node_id", "node_host"]);
        let vars: Vec<&str> = self.vars.iter().map(|v| v.0.as_str()).collect();
        let item_scope = in_scope(vars.iter().copied().chain(["id", "host"]).collect());
        let lists = self.lists.iter().map(|l| l.name.as_str());
        let template_scope =
            in_scope(["node_id", "node_host"].into_iter().chain(vars.iter().copied()).chain(lists).collect());
        let renders = |text: &str, allowed: &[char], scope: &dyn Fn(&str) -> Option<String>| {
            characters_ok(text, allowed) && reference_render(text, scope).is_some()
        };
        let value_ok = |text: &str, scope: &dyn Fn(&str) -> Option<String>| {
            toml_characters_ok(text, &[]) && no_final_backslash(text) && renders(text, &[], scope)
        };
        self.vars.iter().all(|(_, v)| value_ok(v, &value_scope))
            && self.lists.iter().all(|l| {
                std::iter::once(&l.item).chain(&l.self_item).all(|t| value_ok(t, &item_scope))
                    && l.join.as_deref().is_none_or(|j| toml_characters_ok(j, &['\n']))
            })
            && self
                .templates
                .iter()
                .all(|t| std::str::from_utf8(t).is_ok_and(|t| renders(t, &['\t', '\n'], &template_scope)))
    }

    /// What node `boot` renders for each template, as the reference renderer says.
    fn rendered(&self) -> Vec<String> {
        let (id, host) = &self.nodes[self.boot];
        let (id, host) = (id.to_string(), host.clone());
        let builtin = |name: &str| match name {
            "node_id" => Some(id.clone()),
            "node_host" => Some(host.clone()),
            _ => None,
        };
        let vars: BTreeMap<String, String> =
            self.vars.iter().map(|(k, v)| (k.clone(), reference_render(v, &builtin).unwrap())).collect();
        let mut values = vars.clone();
        for l in &self.lists {
            let items: Vec<String> = self
                .nodes
                .iter()
                .map(|(n, h)| {
                    let text = if n.to_string() == id { l.self_item.as_ref().unwrap_or(&l.item) } else { &l.item };
                    let item = |name: &str| match name {
                        "id" => Some(n.to_string()),
                        "host" => Some(h.clone()),
                        _ => vars.get(name).cloned(),
                    };
                    reference_render(text, &item).unwrap()
                })
                .collect();
            values.insert(l.name.clone(), items.join(l.join.as_deref().unwrap_or(",")));
        }
        let all = |name: &str| builtin(name).or_else(|| values.get(name).cloned());
        self.templates.iter().map(|t| reference_render(std::str::from_utf8(t).unwrap(), &all).unwrap()).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, failure_persistence: None, ..ProptestConfig::default() })]

    /// The parser accepts exactly what the rules accept, and every accepted definition renders
    /// at boot under each shell as the reference renders it.
    #[test]
    fn anything_the_parser_accepts_renders_at_boot_as_the_reference_says(def in gen_def()) {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("gen")).unwrap();
        for (i, t) in def.templates.iter().enumerate() {
            std::fs::write(images.join(format!("gen/t{i}")), t).unwrap();
        }
        let path = images.join("gen.toml");
        let text = def.toml();
        std::fs::write(&path, &text).unwrap();
        match ImageDef::parse(&path, &text, &BTreeMap::new()) {
            Err(e) => {
                prop_assert!(!def.valid(), "refused what the rules accept: {}\n{}", e, text);
                prop_assert_eq!(e.exit_code(), ExitCode::Input);
                let msg = e.to_string();
                prop_assert!(msg.starts_with(&path.display().to_string()) || msg.starts_with(&images.join("gen/t").display().to_string()), "{}", msg);
                prop_assert!(!msg.chars().any(|c| c.is_control() && c != '\n'), "{:?}", msg);
            }
            Ok(image) => {
                prop_assert!(def.valid(), "accepted what the rules refuse:\n{}", text);
                let want = def.rendered();
                let boot = Boot::with_files(&imgbuild::testing::cluster_layer_files(&image));
                let node = def.nodes[def.boot].0.to_string();
                for shell in SHELLS {
                    let out = boot.render(shell, &[("NODE_ID", &node)]);
                    prop_assert!(out.status.success(), "{:?}: {}\n{}", shell, err(&out), text);
                    for (i, w) in want.iter().enumerate() {
                        let got = std::fs::read(boot.path(&format!("conf/t{i}"))).unwrap();
                        prop_assert_eq!(String::from_utf8_lossy(&got), w.as_str(), "{:?} t{}\n{}", shell, i, text);
                    }
                }
            }
        }
    }
}

/// A definition through the binary: the CLI's exit code and message for one bad template.
#[test]
fn imgbuild_check_names_the_template_file_and_line_with_exit_1() {
    let p = super::harness::TestProject::new();
    let zoo = p.root.join("images/zk-kafka/zoo.cfg");
    let good = std::fs::read_to_string(&zoo).unwrap();
    std::fs::write(&zoo, good.replacen("tickTime={{tick_time}}", "tickTime={{tick_tme}}", 1)).unwrap();
    let out = p.run(&["check"]);
    super::harness::assert_exit(&out, 1);
    let e = super::harness::stderr(&out);
    let line = good.lines().position(|l| l.starts_with("tickTime=")).unwrap() + 1;
    assert!(
        e.contains(&format!("images/zk-kafka/zoo.cfg:{line}:10: the template for /usr/local/zookeeper/conf/zoo.cfg: `{{{{tick_tme}}}}` is not defined here")),
        "{e}"
    );
    std::fs::write(&zoo, good).unwrap();
    super::harness::assert_ok(&p.run(&["check"]));
}

#[test]
fn the_seed_definition_renders_the_same_under_every_shell() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipes = imgbuild::testing::load_dir(&root.join("recipes")).unwrap();
    let def = ImageDef::load(&root.join("images/zk-kafka.toml"), &recipes).unwrap();
    let boot = Boot::with_files(&imgbuild::testing::cluster_layer_files(&def));
    let mut outputs = Vec::new();
    for shell in SHELLS {
        boot.forget(&["var/lib/zookeeper/myid"]);
        let out = boot.render(shell, &[("NODE_ID", "1")]);
        assert!(out.status.success(), "{shell:?}: {}", err(&out));
        outputs.push(
            ["usr/local/zookeeper/conf/zoo.cfg", "usr/local/kafka/config/server.properties", "var/lib/zookeeper/myid"]
                .map(|f| boot.read(f)),
        );
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(outputs[0][0]
        .ends_with("server.0=127.0.1.1:2888:3888\nserver.1=0.0.0.0:2888:3888\nserver.2=127.0.1.3:2888:3888\n"));
    assert_eq!(outputs[0][2], "1\n");
}

/// A Podman whose images and containers live in the test's directory, reading a layout
/// through a lowercase link (Podman names the image after the path); what the test created
/// is removed when dropped, also when the test fails.
struct OwnPodman {
    storage: std::path::PathBuf,
    containers: Vec<String>,
    link: std::path::PathBuf,
}

impl OwnPodman {
    fn new(dir: &Path, layout: &Path) -> OwnPodman {
        let link = std::env::temp_dir().join(format!("imgbuild-opaque-{}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(layout, &link).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let storage = dir.join("storage.conf");
        let conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("podman/root").display(),
            dir.join("podman/run").display()
        );
        std::fs::write(&storage, conf).unwrap();
        OwnPodman { storage, containers: Vec::new(), link }
    }

    fn cmd(&self) -> std::process::Command {
        let mut c = super::ensemble::podman();
        c.env("CONTAINERS_STORAGE_CONF", &self.storage);
        c
    }

    /// The files of the layout's image `tag` as a container of it sees them (`podman export`).
    fn files(&mut self, tag: &str) -> Vec<String> {
        let name = format!("imgbuild-opaque-{}-{tag}", std::process::id());
        self.containers.push(name.clone());
        let image = format!("oci:{}:{tag}", self.link.display());
        super::harness::tool(self.cmd().args(["create", "--name", &name, &image]));
        let exported = self.cmd().args(["export", &name]).output().unwrap();
        assert!(exported.status.success(), "podman export: {}", String::from_utf8_lossy(&exported.stderr));
        let mut archive = tar::Archive::new(&exported.stdout[..]);
        let entries = archive.entries().unwrap();
        entries.map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }
}

impl Drop for OwnPodman {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let _ = self.cmd().args(["rm", "--force"]).args(&self.containers).output();
        }
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
        let _ = std::fs::remove_file(&self.link);
    }
}

/// Files in `dir` (a relative path ending in `/`) of a list of paths, without `dir` itself.
fn under(paths: &[String], dir: &str) -> Vec<String> {
    let mut found: Vec<String> = paths
        .iter()
        .map(|p| p.trim_start_matches("./").to_string())
        .filter(|p| p.starts_with(dir) && p.len() > dir.len())
        .map(|p| p[dir.len()..].trim_end_matches('/').to_string())
        .filter(|p| !p.contains('/'))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A base image whose own `/etc/imgbuild/` holds a baked node id and other files: the cluster
/// layer makes that directory opaque, so the node-less `cluster` image has no id, a node's
/// image only its own, and umoci, Podman and `imgbuild vm` show nothing of the base there.
#[test]
fn nothing_a_base_puts_in_imgbuilds_directory_survives_in_images_or_disks() {
    use super::fixtures::Entry;
    use super::harness::{assert_ok, require_tool, tool, TestProject};

    let p = TestProject::new();
    let file = |path: &str, data: &str| Entry::File(path.into(), data.as_bytes().to_vec(), 0o644);
    let layer = super::fixtures::tar(&[
        Entry::Dir("etc/"),
        file("etc/os-release", "ID=testbase\n"),
        Entry::Dir("etc/imgbuild/"),
        file("etc/imgbuild/node-id", "2\n"),
        file("etc/imgbuild/leftover", "from the base\n"),
        Entry::Dir("etc/imgbuild/templates/"),
        file("etc/imgbuild/templates/stale.cfg", "old\n"),
    ]);
    let base = p.path("hostile-base");
    let digest = super::fixtures::layered_layout(&base, &[layer]);
    p.write_recipe(
        "debian-bookworm-slim.toml",
        &format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n"),
    );
    assert_ok(&p.run(&["store", "add", base.to_str().unwrap()]));
    assert_ok(&p.run(&["build", "--platform", "linux/amd64"]));
    let layout = p.root.join("out/zk-kafka");
    let own = ["cluster.env", "templates"];

    require_tool("umoci");
    let cluster = super::core::unpack(&layout, "cluster", &p.path("bundle-cluster"));
    let listed = |dir: &Path| {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(listed(&cluster.join("etc/imgbuild")), own, "umoci: the cluster image");
    assert!(!cluster.join("etc/imgbuild/templates/stale.cfg").exists());
    assert_eq!(std::fs::read_to_string(cluster.join("etc/os-release")).unwrap(), "ID=testbase\n", "the rest stays");
    let node = super::core::unpack(&layout, "node-1", &p.path("bundle-node"));
    assert_eq!(listed(&node.join("etc/imgbuild")), ["cluster.env", "node-id", "templates"], "umoci: node 1");
    assert_eq!(std::fs::read_to_string(node.join("etc/imgbuild/node-id")).unwrap(), "1\n");

    require_tool("podman");
    let mut podman = OwnPodman::new(&p.path("own-podman"), &layout);
    let cluster = podman.files("cluster");
    assert_eq!(under(&cluster, "etc/imgbuild/"), own, "podman: the cluster image");
    let node = podman.files("node-1");
    assert_eq!(under(&node, "etc/imgbuild/"), ["cluster.env", "node-id", "templates"], "podman: node 1");
    assert_eq!(under(&node, "etc/imgbuild/templates/"), ["usr", "var"], "podman: only the definition's templates");

    for t in ["mke2fs", "debugfs", "qemu-img", "xorriso"] {
        require_tool(t);
    }
    assert_ok(&p.run(&["vm", "--all", "--raw", "--out", "vm"]));
    let ls =
        tool(std::process::Command::new("debugfs").args(["-R", "ls /etc/imgbuild"]).arg(p.root.join("vm/base.raw")));
    let mut names: Vec<&str> =
        ls.split_whitespace().filter(|w| !w.chars().all(|c| c.is_ascii_digit() || c == '(' || c == ')')).collect();
    names.retain(|n| *n != "." && *n != "..");
    names.sort();
    // The disk adds one file of imgbuild's own: the node's process from the image config.
    assert_eq!(names, ["cluster.env", "templates", "vm-process"], "imgbuild vm: the shared disk");
}

/// Through the binary: a recipe whose version would drive the terminal, a prefix that would
/// make whiteouts or write imgbuild's own files, an environment that would give every
/// container the same identity: `imgbuild check` refuses each with exit 1 at its line, and
/// prints nothing raw.
#[test]
fn check_refuses_hostile_recipe_and_definition_values_with_their_line() {
    let p = super::harness::TestProject::new();
    let zk = p.root.join("recipes/zookeeper.toml");
    let good = std::fs::read_to_string(&zk).unwrap();
    let def = p.root.join("images/zk-kafka.toml");
    let good_def = std::fs::read_to_string(&def).unwrap();
    for (file, from, to, needle) in [
        (
            &zk,
            "version = \"3.4.10\"",
            "version = \"1\\u001b]0;PWNED\\u0007\\u001b[31mRED\\nfake line\"",
            "zookeeper.toml:2:11: field `version`",
        ),
        (
            &zk,
            "prefix = \"/usr/local/zookeeper\"",
            "prefix = \"/opt/.wh.y\"",
            "zookeeper.toml:12:10: field `unpack.prefix`: `/opt/.wh.y` has a component `.wh.y` that is an OCI whiteout",
        ),
        (&zk, "prefix = \"/usr/local/zookeeper\"", "prefix = \"/.wh..wh..opq\"", "zookeeper.toml:12:10"),
        (&zk, "prefix = \"/usr/local/zookeeper\"", "prefix = \"/etc/imgbuild\"", "which imgbuild writes itself"),
        (
            &def,
            "env = { EXTRA_ARGS = \"-name kafkaServer\" }",
            "env = { NODE_ID = \"1\" }",
            "zk-kafka.toml:18:19: [config.env]: `NODE_ID` is read by the entrypoint at boot",
        ),
        (
            &def,
            "env = { EXTRA_ARGS = \"-name kafkaServer\" }",
            "env = { A = \"x\\u0085y\" }",
            "zk-kafka.toml:18:13: field `config.env.A`",
        ),
        (
            &def,
            "target = \"/var/lib/zookeeper/myid\"",
            "target = \"/etc/.wh.passwd\"",
            "`/etc/.wh.passwd` has a component `.wh.passwd` that is an OCI whiteout",
        ),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(file, text.replacen(from, to, 1)).unwrap();
        let out = p.run(&["check"]);
        super::harness::assert_exit(&out, 1);
        let e = super::harness::stderr(&out);
        assert!(e.contains(needle), "`{needle}` not in: {e}");
        let all = [&out.stdout[..], &out.stderr[..]].concat();
        assert!(
            !String::from_utf8_lossy(&all).chars().any(|c| imgbuild::testing::is_unsafe_char(c) && c != '\n'),
            "{e:?}"
        );
        std::fs::write(&zk, &good).unwrap();
        std::fs::write(&def, &good_def).unwrap();
    }
    super::harness::assert_ok(&p.run(&["check"]));
}

/// A base image's environment may hold what the entrypoint reads at boot (a node's id, its
/// peers, `IMGBUILD_*`) or values with control or invisible characters: those never reach the
/// images, and the build says which it left out; the rest of the base's environment stays.
#[test]
fn what_the_entrypoint_reads_at_boot_never_comes_from_a_base_images_environment() {
    use super::harness::{assert_ok, json, stderr, TestProject};
    use proptest::test_runner::{Config, TestRunner};

    let reserved = ["NODE_ID", "ZOO_MY_ID", "KAFKA_BROKER_ID", "PEERS", "ADVERTISED_HOST", "HOSTNAME"];
    let names = prop_oneof![
        proptest::sample::select(reserved.to_vec()).prop_map(String::from),
        "IMGBUILD_[A-Z_]{0,12}",
        "[A-Z][A-Z0-9_]{0,8}",
    ];
    let mut runner = TestRunner::new(Config { cases: 10, ..Config::default() });
    let p = TestProject::new();
    let round = std::cell::Cell::new(0);
    runner
        .run(&proptest::collection::btree_map(names, prop_oneof!["[a-z0-9=,:. ]{0,12}", "[a-z]{0,3}[\u{202e}\u{1b}\n\u{85}][a-z]{0,3}"], 1..6), |env| {
            round.set(round.get() + 1);
            let round = round.get();
            let mut pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.push("PATH=/usr/bin:/bin".into());
            let text: Vec<&str> = pairs.iter().map(String::as_str).collect();
            let base = p.path(&format!("base-{round}"));
            let layer = super::fixtures::tar(&[super::fixtures::Entry::Dir("etc/")]);
            let digest = super::fixtures::layered_layout_with_env(&base, &[layer], &text);
            p.write_recipe(
                "debian-bookworm-slim.toml",
                &format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{digest}\"\n"),
            );
            assert_ok(&p.run(&["store", "add", base.to_str().unwrap()]));
            let out = p.run(&["--json", "build", "--platform", "linux/amd64", "--out", &format!("out/env-{round}")]);
            let built = json(&out);
            let config_digest = built["nodes"][0]["platforms"][0]["config_digest"].as_str().unwrap().to_string();
            let config: serde_json::Value = serde_json::from_slice(
                &std::fs::read(p.root.join(format!("out/env-{round}/blobs/sha256/{}", &config_digest[7..]))).unwrap(),
            )
            .unwrap();
            let image_env: Vec<String> =
                config["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            for (name, value) in &env {
                let boot = reserved.contains(&name.as_str())
                    || name.starts_with("IMGBUILD_")
                    || value.chars().any(imgbuild::testing::is_unsafe_char);
                let carried = image_env.iter().any(|kv| kv.split_once('=').map(|(k, _)| k) == Some(name.as_str()));
                prop_assert_eq!(carried, !boot, "{}={} in {:?}", name, value, image_env);
                if boot {
                    prop_assert!(stderr(&out).contains(name.as_str()), "the build names {}: {}", name, stderr(&out));
                }
            }
            Ok(())
        })
        .unwrap();
}
