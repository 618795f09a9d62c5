//! The rules of an image definition, each checked on the parser directly.

use super::*;
use crate::error::ExitCode;
use crate::recipe::Recipe;

pub(super) const DEF: &str = r#"name = "demo"
layers = ["zookeeper"]

[config]
volumes = ["/var/lib/zk"]

[vars]
port = "2181"
bind = "{{node_host}}"

[lists.servers]
item = "server.{{id}}={{host}}:{{port}}"
join = "\n"

[[template]]
source = "demo/zoo.cfg"
target = "/etc/zk/zoo.cfg"

[[service]]
name = "zookeeper"
command = ["/bin/zk", "start"]
data_dirs = ["/var/lib/zk"]

[[cluster.node]]
id = 1
host = "zk-1"
"#;

pub(super) const ZOO_CFG: &str = "clientPort={{port}}\n{{ servers }}\n";

pub(super) fn recipes() -> BTreeMap<String, Recipe> {
    let zk = "name = \"zookeeper\"\nversion = \"1\"\n[[source]]\nurl = \"https://example.org/zk.tgz\"\nsha256 = \"7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27\"\n[unpack]\nprefix = \"/opt/zk\"\n";
    let base = "name = \"base\"\nversion = \"1\"\nkind = \"oci-image\"\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"sha256:7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27\"\n";
    [zk, base]
        .iter()
        .map(|text| Recipe::parse(Path::new("r.toml"), text).unwrap())
        .map(|r| (r.name.clone(), r))
        .collect()
}

/// A project holding `images/demo.toml` and its files (paths relative to `images/`).
pub(super) struct Project {
    pub(super) dir: tempfile::TempDir,
}

impl Project {
    pub(super) fn new(files: &[(&str, &[u8])]) -> Project {
        let dir = tempfile::tempdir().unwrap();
        for (rel, data) in files {
            let path = dir.path().join("images").join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        Project { dir }
    }

    pub(super) fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    pub(super) fn parse(&self, def: &str) -> Result<ImageDef> {
        ImageDef::parse(&self.images().join("demo.toml"), def, &recipes())
    }
}

pub(super) fn demo() -> Project {
    Project::new(&[("demo/zoo.cfg", ZOO_CFG.as_bytes())])
}

/// `DEF` with `from` replaced by `to` (which must change it).
pub(super) fn edited(from: &str, to: &str) -> String {
    assert!(DEF.contains(from), "the fixture has no {from:?}");
    DEF.replacen(from, to, 1)
}

/// The error `def` gives, which must be bad input at `images/demo.toml:LINE` mentioning `needle`.
pub(super) fn refused_at(p: &Project, def: &str, line: usize, needle: &str) {
    let e = p.parse(def).err().unwrap_or_else(|| panic!("accepted: {def}"));
    let text = e.to_string();
    assert_eq!(e.exit_code(), ExitCode::Input, "{text}");
    assert!(text.contains(&format!("demo.toml:{line}:")), "not at line {line}: {text}");
    assert!(text.contains(needle), "`{needle}` not in: {text}");
}

#[test]
fn the_fixture_and_the_built_in_example_are_valid() {
    let def = demo().parse(DEF).unwrap();
    assert_eq!(def.templates[0].text, ZOO_CFG);
    assert_eq!(def.services[0].data_dirs, ["/var/lib/zk"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipes = crate::recipe::load_dir(&root.join("recipes")).unwrap();
    let seed = ImageDef::load(&root.join("images/zk-kafka.toml"), &recipes).unwrap();
    assert_eq!(seed.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn names_are_repository_components_never_dot_or_dot_dot() {
    let p = demo();
    for bad in [".", "..", "", "-x", ".hidden", "a..b", "a._b", "Demo", "a/b", "a b", "x-", "a___b"] {
        refused_at(&p, &edited("name = \"demo\"", &format!("name = {bad:?}")), 1, "field `name`");
    }
    for good in ["a", "zk-kafka", "a.b", "a__b", "a---b", "0x", "zk_1.2"] {
        assert!(p.parse(&edited("name = \"demo\"", &format!("name = {good:?}"))).is_ok(), "{good}");
    }
    assert!(!is_image_name(&"a".repeat(129)));
}

#[test]
fn recipes_must_exist_and_be_of_the_right_kind() {
    let p = demo();
    refused_at(
        &p,
        &edited("[\"zookeeper\"]", "[\"zookeper\"]"),
        2,
        "unknown recipe `zookeper` (known: base, zookeeper)",
    );
    refused_at(&p, &edited("[\"zookeeper\"]", "[\"base\"]"), 2, "is an OCI image; use it as `base`");
    refused_at(&p, &edited("[\"zookeeper\"]", "[\"zookeeper\", \"zookeeper\"]"), 2, "listed twice");
    // A tarball is a base only as a root filesystem, unpacked at `/`.
    refused_at(&p, &format!("base = \"zookeeper\"\n{DEF}"), 1, "`zookeeper` unpacks at `/opt/zk`");
}

#[test]
fn template_sources_stay_inside_the_definitions_directory() {
    let p = Project::new(&[("demo/zoo.cfg", ZOO_CFG.as_bytes()), ("../secret", b"host secret\n")]);
    let line = 16;
    for escape in ["../secret", "demo/../../secret", "/etc/passwd", ""] {
        refused_at(&p, &edited("\"demo/zoo.cfg\"", &format!("{escape:?}")), line, "template");
    }
    // A link is followed, and must end inside too.
    std::os::unix::fs::symlink(p.dir.path().join("secret"), p.images().join("demo/leak")).unwrap();
    refused_at(&p, &edited("\"demo/zoo.cfg\"", "\"demo/leak\""), line, "resolves to a file outside");
    std::os::unix::fs::symlink("..", p.images().join("demo/up")).unwrap();
    refused_at(&p, &edited("\"demo/zoo.cfg\"", "\"demo/up/../secret\""), line, "outside");
    std::os::unix::fs::symlink("zoo.cfg", p.images().join("demo/alias")).unwrap();
    assert_eq!(p.parse(&edited("\"demo/zoo.cfg\"", "\"demo/alias\"")).unwrap().templates[0].text, ZOO_CFG);
    refused_at(&p, &edited("\"demo/zoo.cfg\"", "\"demo\""), line, "is not a file");
    refused_at(&p, &edited("\"demo/zoo.cfg\"", "\"demo/missing\""), line, "No such file");
}

/// `DEF` with a second template writing `target`.
fn with_template(target: &str) -> String {
    edited("[[service]]", &format!("[[template]]\nsource = \"demo/zoo.cfg\"\ntarget = {target:?}\n\n[[service]]"))
}

#[test]
fn targets_never_touch_imgbuilds_own_files_or_nest_in_each_other() {
    let p = demo();
    for own in [
        "/etc/imgbuild/cluster.env",
        "/etc/imgbuild",
        "/etc",
        "/usr/local/bin/imgbuild-init",
        "/usr/local/bin",
        "/usr/local/sbin/imgbuild-vm-init",
    ] {
        refused_at(&p, &with_template(own), 21, "which imgbuild writes itself");
    }
    refused_at(&p, &with_template("/etc/zk/zoo.cfg"), 21, "two templates write /etc/zk/zoo.cfg");
    refused_at(&p, &with_template("/etc/zk/zoo.cfg/x"), 21, "inside another's");
    refused_at(&p, &with_template("/etc/zk"), 21, "inside another's");
    refused_at(&p, &with_template("etc/zk/x"), 21, "absolute path");
    refused_at(&p, &with_template("/etc/zk/../x"), 21, "must not contain `.` or `..`");
    refused_at(&p, &with_template("/etc/zk/a b"), 21, "image paths");
    for fine in ["/etc/zk/other.cfg", "/etc/imgbuild-extra", "/etc/zk.cfg", "/usr/local/bin/other"] {
        assert!(p.parse(&with_template(fine)).is_ok(), "{fine}");
    }
}

#[test]
fn directories_are_never_at_or_inside_a_file() {
    let p = demo();
    for (dir, line) in [
        ("/etc/zk/zoo.cfg", 22),
        ("/etc/zk/zoo.cfg/data", 22),
        ("/etc/imgbuild/x", 22),
        ("/usr/local/bin/imgbuild-init", 22),
    ] {
        refused_at(
            &p,
            &edited("data_dirs = [\"/var/lib/zk\"]", &format!("data_dirs = [{dir:?}]")),
            line,
            "would be at or inside the file",
        );
        refused_at(
            &p,
            &edited("volumes = [\"/var/lib/zk\"]", &format!("volumes = [{dir:?}]")),
            5,
            "would be at or inside the file",
        );
    }
    assert!(
        p.parse(&edited("data_dirs = [\"/var/lib/zk\"]", "data_dirs = [\"/etc/zk\"]")).is_ok(),
        "a template may be inside a data directory"
    );
}

#[test]
fn modes_are_three_or_four_octal_digits_up_to_0777() {
    let p = demo();
    let with_mode =
        |m: &str| edited("target = \"/etc/zk/zoo.cfg\"", &format!("target = \"/etc/zk/zoo.cfg\"\nmode = {m:?}"));
    for (m, want) in [("0600", 0o600), ("640", 0o640), ("0777", 0o777), ("000", 0)] {
        assert_eq!(p.parse(&with_mode(m)).unwrap().templates[0].mode, want, "{m}");
    }
    for bad in ["+644", "1777", "4755", "8", "64", "0o644", "06440", "", "rw-r--r--"] {
        refused_at(&p, &with_mode(bad), 18, "octal mode");
    }
}

#[test]
fn hosts_are_ip_addresses_or_rfc_1123_names() {
    let p = demo();
    for good in ["zk-1.example.org", "10.0.0.1", "fd00::1", "::ffff:10.0.0.1", "ZK1"] {
        assert_eq!(p.parse(&edited("\"zk-1\"", &format!("{good:?}"))).unwrap().nodes[0].host, good);
    }
    for bad in ["", "zk_1", "zk-1.", "-zk", "zk 1", "a,b", "a/b", "1.2.3", "256.0.0.1", "[::1]"] {
        refused_at(&p, &edited("\"zk-1\"", &format!("{bad:?}")), 26, "is not an IP address or a host name");
    }
    refused_at(&p, &format!("{DEF}\n[[cluster.node]]\nid = 1\nhost = \"zk-2\"\n"), 28, "duplicate node id 1");
    refused_at(&p, &format!("{DEF}\n[[cluster.node]]\nid = 2\nhost = \"zk-1\"\n"), 30, "duplicate host `zk-1`");
    // One host spelled otherwise is the same host.
    refused_at(
        &p,
        &format!("{DEF}\n[[cluster.node]]\nid = 2\nhost = \"ZK-1\"\n"),
        30,
        "duplicate host `ZK-1` (node 1's `zk-1`",
    );
}

#[test]
fn config_env_workdir_and_stop_signal_are_checked() {
    let p = demo();
    let with_config = |extra: &str| edited("[config]\n", &format!("[config]\n{extra}\n"));
    refused_at(&p, &with_config("env = { \"A=B\" = \"x\" }"), 5, "`A=B` is not a variable name");
    refused_at(&p, &with_config("env = { \"\" = \"x\" }"), 5, "is not a variable name");
    refused_at(&p, &with_config("env = { A = \"x\\u0000\" }"), 5, "U+0000");
    refused_at(&p, &with_config("workdir = \"opt/app\""), 5, "must be an absolute path");
    refused_at(&p, &with_config("stop_signal = \"SIGTERMINATE\""), 5, "not a signal");
    refused_at(&p, &with_config("stop_signal = \"65\""), 5, "not a signal");
    refused_at(&p, &with_config("ports = [\"+80\"]"), 5, "is not PORT");
    for ok in [
        "stop_signal = \"SIGINT\"",
        "stop_signal = \"9\"",
        "workdir = \"/opt/app\"",
        "env = { JAVA_OPTS = \"-Xmx1g\" }",
    ] {
        assert!(p.parse(&with_config(ok)).is_ok(), "{ok}");
    }
}

#[test]
fn values_the_entrypoint_renders_follow_its_language() {
    let p = demo();
    refused_at(
        &p,
        &edited("\"{{node_host}}\"", "\"{{port}}\""),
        9,
        "var `bind`: `{{port}}` is not defined here (defined: node_host, node_id)",
    );
    refused_at(&p, &edited("\"{{node_host}}\"", "\"{{\\tnode_host}}\""), 9, "holds a tab (U+0009)");
    refused_at(&p, &edited("\"{{node_host}}\"", "\"a\\nb\""), 9, "holds a line break (U+000A)");
    refused_at(&p, &edited("\"{{node_host}}\"", "\"{{node_host\""), 9, "without a closing");
    refused_at(&p, &edited(":{{port}}\"", ":{{nowhere}}\""), 11, "list `servers`: `{{nowhere}}` is not defined here");
    refused_at(&p, &edited(":{{port}}\"", ":{{node_id}}\""), 11, "`{{node_id}}` is not defined here");
    refused_at(&p, &edited("join = \"\\n\"", "join = \"\\r\\n\""), 13, "U+000D");
    refused_at(&p, &edited("port = \"2181\"", "node_id = \"2181\""), 8, "set by imgbuild at boot");
    refused_at(&p, &edited("port = \"2181\"", "port = \"2181\"\nservers = \"x\""), 12, "both a var and a list");
    assert_eq!(
        p.parse(&edited("\"{{node_host}}\"", "\"{{ node_host }}:}}{\"")).unwrap().vars["bind"],
        "{{ node_host }}:}}{"
    );
}

/// The error a template text gives, which must name the template file, `line` and `needle`.
fn template_refused(text: &[u8], line: usize, needle: &str) {
    let p = Project::new(&[("demo/zoo.cfg", text)]);
    let e = p.parse(DEF).err().unwrap_or_else(|| panic!("accepted: {}", String::from_utf8_lossy(text)));
    let msg = e.to_string();
    assert_eq!(e.exit_code(), ExitCode::Input, "{msg}");
    assert!(msg.contains(&format!("demo/zoo.cfg:{line}:")), "not the template's line {line}: {msg}");
    assert!(msg.contains(needle), "`{needle}` not in: {msg}");
}

#[test]
fn template_errors_name_the_template_file_and_its_line() {
    template_refused(
        b"a=1\nb=2\nc={{nowhere}}\n",
        3,
        "the template for /etc/zk/zoo.cfg: `{{nowhere}}` is not defined here",
    );
    template_refused(b"a={{port}}\n{{id}}\n", 2, "`{{id}}` is not defined here");
    template_refused(b"x\n\ty={{\tport}}\n", 2, "is not a reference");
    template_refused(b"x\r\ny\r\n", 1, "carriage return");
    template_refused(b"x\ny\0z\n", 2, "binary file");
    template_refused(b"x\ny=\xff\n", 2, "not UTF-8");
    template_refused(b"x {{ port\n}}\n", 1, "not a reference");
    template_refused(b"\x1b[31m red\n", 1, "U+001B (escape)");
    let big = vec![b'x'; MAX_TEMPLATE_BYTES as usize + 1];
    let p = Project::new(&[("demo/zoo.cfg", &big)]);
    assert!(p.parse(DEF).unwrap_err().to_string().contains("at most 1048576 are rendered"));
}

#[test]
fn values_in_messages_are_escaped() {
    let p = demo();
    let e = p.parse(&edited("\"zk-1\"", "\"zk\\u001b]0;owned\\u0007\"")).unwrap_err().to_string();
    assert!(e.contains("zk\\u{1b}]0;owned\\u{7}") && !e.contains('\u{1b}'), "{e}");
    let e = p.parse(&edited("name = \"demo\"", "name = \"a\\u202eb\"")).unwrap_err().to_string();
    assert!(e.contains("a\\u{202e}b"), "{e}");
}

#[test]
fn the_cluster_keeps_the_order_of_its_nodes() {
    let def = demo()
        .parse(&edited(
            "id = 1\nhost = \"zk-1\"",
            "id = 7\nhost = \"c\"\n\n[[cluster.node]]\nid = 3\nhost = \"a\"\n\n[[cluster.node]]\nid = 5\nhost = \"b\"",
        ))
        .unwrap();
    assert_eq!(def.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), [7, 3, 5]);
}

#[test]
fn a_binary_or_non_utf8_definition_is_bad_input_naming_the_file() {
    let p = Project::new(&[("demo.toml", b"name = \"demo\"\n# caf\xe9\n"), ("bin.toml", b"\x7fELF\x02\x01\x01\0")]);
    let e = ImageDef::load(&p.images().join("demo.toml"), &recipes()).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Input);
    assert!(e.to_string().ends_with("demo.toml:2:6: not UTF-8 text"), "{e}");
    let e = ImageDef::load(&p.images().join("bin.toml"), &recipes()).unwrap_err();
    assert!(e.to_string().ends_with("bin.toml:1:8: a binary file (it holds a NUL byte), not text"), "{e}");
}

#[test]
fn health_role_and_deploy_are_checked_where_they_are_written() {
    let p = demo();
    let def = p.parse(DEF).unwrap();
    assert_eq!(def.deploy, deploy::Deploy::default(), "documented defaults");
    assert_eq!(
        (def.deploy.cpu.as_str(), def.deploy.memory.as_str(), def.deploy.storage.as_str()),
        ("1", "2Gi", "10Gi")
    );
    let with_health = edited(
        "data_dirs = [\"/var/lib/zk\"]\n",
        "data_dirs = [\"/var/lib/zk\"]\nhealth = [\"/bin/zk\", \"ok\"]\nrole = []\n",
    );
    refused_at(&p, &with_health, 19, "`role` is empty");
    let deploy = "\n[deploy]\nmemory = \"2 Gi\"\n";
    refused_at(&p, &format!("{DEF}{deploy}"), 29, "[deploy] `memory`");
    let env = "\n[deploy]\nenv = { NODE_ID = \"1\" }\n";
    refused_at(&p, &format!("{DEF}{env}"), 29, "read by the entrypoint at boot");
    let good =
        p.parse(&format!("{DEF}\n[deploy]\ncpu = \"500m\"\nenv = {{ KAFKA_HEAP_OPTS = \"-Xmx1g\" }}\n")).unwrap();
    assert_eq!(good.deploy.cpu, "500m");
    assert_eq!(good.deploy.env["KAFKA_HEAP_OPTS"], "-Xmx1g");
}
