//! The boot-time entrypoint, run directly under `dash` and busybox `sh` on hand-written
//! `cluster.env` files and templates: every value from outside is hostile text. A property
//! test holds the script to a reference model of its rules, written here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use imgbuild::testing::is_host;
use imgbuild::testing::GeneratedEntry;
use proptest::prelude::*;

/// Debian's `/bin/sh` and the shell of small base images (Alpine's, busybox's).
pub const SHELLS: [&[&str]; 2] = [&["dash"], &["busybox", "sh"]];

/// A root file system holding the entrypoint's files, for one or more boots.
pub struct Boot {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Boot {
    /// A root holding `files` (paths relative to the root, as the cluster layer has them).
    pub fn with_files(files: &BTreeMap<String, GeneratedEntry>) -> Boot {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let boot = Boot { tmp, root };
        for (rel, entry) in files {
            let GeneratedEntry::File { data, .. } = entry else { panic!("{rel}: the cluster layer holds only files") };
            boot.write(rel, data);
        }
        boot.write("usr/local/bin/imgbuild-init", imgbuild::testing::ENTRYPOINT_SCRIPT.as_bytes());
        boot
    }

    /// A root with a hand-written `cluster.env` and templates (target → text).
    pub fn hand_written(cluster_env: &str, templates: &[(&str, &str)]) -> Boot {
        let mut files = BTreeMap::new();
        let file = |text: &str| GeneratedEntry::File { data: text.as_bytes().to_vec(), mode: 0o644 };
        files.insert("etc/imgbuild/cluster.env".to_string(), file(cluster_env));
        for (target, text) in templates {
            files.insert(format!("etc/imgbuild/templates{target}"), file(text));
        }
        Boot::with_files(&files)
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Runs the entrypoint under `shell` with only `env` (and a fixed PATH and HOSTNAME), rendering only.
    pub fn render(&self, shell: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(shell, env);
        cmd.env("IMGBUILD_RENDER_ONLY", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, shell)
    }

    /// The entrypoint under `shell`, with its environment set up but not yet run.
    pub fn command(&self, shell: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..])
            .arg(self.path("usr/local/bin/imgbuild-init"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("IMGBUILD_ROOT", &self.root)
            .env("IMGBUILD_CONF_DIR", self.path("etc/imgbuild"))
            .env("IMGBUILD_SEED_DIRS", self.path("no-seed"))
            .env("HOSTNAME", "buildhost");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Removes what a boot rendered, so the next boot starts from the image's files alone.
    pub fn forget(&self, rels: &[&str]) {
        for rel in rels {
            let _ = std::fs::remove_file(self.path(rel));
        }
    }
}

pub fn run(mut cmd: Command, shell: &[&str]) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{}: {e} (.ci/install installs dash and busybox)", shell.join(" ")))
}

pub fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 64 with `needle` in the message, and no raw control character printed.
fn refused(out: &Output, shell: &[&str], needle: &str) {
    let e = err(out);
    assert_eq!(out.status.code(), Some(64), "{shell:?}: expected 64 for `{needle}`: {e}");
    assert!(e.contains(needle), "{shell:?}: `{needle}` not in: {e}");
    assert!(!e.chars().any(|c| c.is_control() && c != '\n'), "{shell:?}: a raw control character in: {e:?}");
}

/// Three nodes whose ids are neither 0.. nor in order, two vars, a list with a `self_item`,
/// a guarded file and an identity check; services that write their arguments down.
const CLUSTER_ENV: &str = r#"# hand-written, as imgbuild writes it
IMGBUILD_CLUSTER='demo'
IMGBUILD_NODES='8 10 3'
IMGBUILD_HOST_8='zk-a.example.org'
IMGBUILD_HOST_10='zk-b'
IMGBUILD_HOST_3='10.0.0.3'
IMGBUILD_VARS='bind port'
IMGBUILD_DEFAULT_VAR_bind='0.0.0.0'
IMGBUILD_DEFAULT_VAR_port='2181'
IMGBUILD_LISTS='servers'
IMGBUILD_LIST_servers_ITEM='server.{{id}}={{host}}:{{port}}'
IMGBUILD_LIST_servers_HAS_SELF=1
IMGBUILD_LIST_servers_SELF='server.{{id}}={{bind}}:{{port}}'
IMGBUILD_LIST_servers_JOIN='
'
IMGBUILD_TEMPLATES='/conf/node.cfg /data/myid'
IMGBUILD_TEMPLATE_MODES='/conf/node.cfg:640 /data/myid:644'
IMGBUILD_GUARDED='/data/myid'
IMGBUILD_ID_CHECKS='/data/meta.properties:broker.id'
IMGBUILD_DATA_DIRS='/data /logs'
IMGBUILD_DEFAULT_SERVICES='first second'
IMGBUILD_SERVICE_first_ARGC=6
IMGBUILD_SERVICE_first_ARG1='/bin/sh'
IMGBUILD_SERVICE_first_ARG2='-c'
IMGBUILD_SERVICE_first_ARG3='printf "%s|" "$0" "$@" >"$IMGBUILD_ROOT/logs/first"'
IMGBUILD_SERVICE_first_ARG4='first'
IMGBUILD_SERVICE_first_ARG5='a b'
IMGBUILD_SERVICE_first_ARG6='$(touch pwned) `id` '\''q'\'' *'
IMGBUILD_SERVICE_second_ARGC=2
IMGBUILD_SERVICE_second_ARG1='/bin/sleep'
IMGBUILD_SERVICE_second_ARG2='0'
"#;

const NODE_CFG: &str = "id={{node_id}}\nhost={{ node_host }}\nbind={{bind}}\n{{servers}}\n";

fn demo() -> Boot {
    Boot::hand_written(CLUSTER_ENV, &[("/conf/node.cfg", NODE_CFG), ("/data/myid", "{{node_id}}")])
}

const RENDERED: [&str; 2] = ["conf/node.cfg", "data/myid"];

/// The node `out` says it booted as.
fn booted_as(out: &Output, shell: &[&str]) -> String {
    let e = err(out);
    assert!(out.status.success(), "{shell:?}: {e}");
    let line = e.lines().find(|l| l.contains(" of cluster demo")).unwrap_or_else(|| panic!("{e}"));
    line.trim_start_matches("imgbuild-init: node ").split(' ').next().unwrap().to_string()
}

#[test]
fn ids_are_decimal_and_a_bad_id_from_any_source_exits_64() {
    let boot = demo();
    for shell in SHELLS {
        for (value, node) in [("10", "10"), ("010", "10"), ("08", "8"), ("0003", "3")] {
            boot.forget(&RENDERED);
            assert_eq!(booted_as(&boot.render(shell, &[("NODE_ID", value)]), shell), node, "NODE_ID={value}");
            assert_eq!(boot.read("data/myid"), node, "{shell:?}: 010 is ten, never eight");
        }
        for bad in ["0x8", "-8", "+8", "8.0", "1e1", " 8", "8 ", "８", "99999999999999999999999999"] {
            boot.forget(&RENDERED);
            let out = boot.render(shell, &[("NODE_ID", bad)]);
            let needle = if bad.starts_with('9') { "is not a node of cluster demo" } else { "is not a decimal number" };
            refused(&out, shell, needle);
            assert!(!boot.path("conf/node.cfg").exists(), "rendered after a bad id");
        }
        for var in ["ZOO_MY_ID", "KAFKA_BROKER_ID"] {
            refused(&boot.render(shell, &[(var, "eight")]), shell, &format!("(from environment variable {var})"));
        }

        // The kernel command line (the last imgbuild.node= counts), a seed, the baked file.
        boot.write("proc/cmdline", b"quiet imgbuild.node=3 imgbuild.node=010\n");
        boot.forget(&RENDERED);
        assert_eq!(booted_as(&boot.render(shell, &[]), shell), "10");
        boot.write("proc/cmdline", b"imgbuild.node=08a\n");
        refused(&boot.render(shell, &[]), shell, "node id '08a' (from kernel command line)");
        boot.write("proc/cmdline", b"imgbuild.node=\n");
        refused(&boot.render(shell, &[]), shell, "node id '' (from kernel command line)");
        std::fs::remove_file(boot.path("proc/cmdline")).unwrap();

        let seed = boot.path("seed").display().to_string();
        for (meta, want) in [
            ("imgbuild_node_id: \"08\"\n", Ok("8")),
            ("imgbuild_node_id: '3'  \n", Ok("3")),
            ("imgbuild_node_id: x8\n", Err("'x8'")),
            ("imgbuild_node_id:\n", Err("''")),
        ] {
            boot.write("seed/meta-data", format!("instance-id: i\n{meta}").as_bytes());
            boot.forget(&RENDERED);
            let out = boot.render(shell, &[("IMGBUILD_SEED_DIRS", &seed)]);
            match want {
                Ok(node) => assert_eq!(booted_as(&out, shell), node, "{meta}"),
                Err(shown) => refused(&out, shell, &format!("node id {shown} (from NoCloud seed")),
            }
        }

        for (baked, want) in [
            ("10\n", Ok("10")),
            ("010", Ok("10")),
            ("ten\n", Err("'ten'")),
            ("10\r\n", Err("holds a control character")),
        ] {
            boot.write("etc/imgbuild/node-id", baked.as_bytes());
            boot.forget(&RENDERED);
            let out = boot.render(shell, &[]);
            match want {
                Ok(node) => assert_eq!(booted_as(&out, shell), node),
                Err(needle) => refused(&out, shell, needle),
            }
        }
        std::fs::remove_file(boot.path("etc/imgbuild/node-id")).unwrap();
        refused(&boot.render(shell, &[]), shell, "no node identity");
    }
}

#[test]
fn the_hostname_ordinal_is_an_id_or_with_index_a_place_in_the_node_list() {
    let boot = demo();
    boot.write("etc/imgbuild/node-id", b"3\n");
    for shell in SHELLS {
        for (hostname, mode, want) in [
            ("zk-10", None, "10"),
            ("zk-010", Some("id"), "10"),
            ("zk-7", None, "3"), // not a node: the baked id
            ("zk-a", None, "3"), // no ordinal
            ("zk", None, "3"),
            ("zk-0", Some("index"), "8"),
            ("demo-zk-1", Some("index"), "10"),
            ("zk-2", Some("index"), "3"),
            ("zk-a", Some("index"), "3"),
            // Not a host name: no ordinal is read from it (round 2: a bidi override was used).
            ("zk\u{202e}-10", None, "3"),
            ("zk_x-10", None, "3"),
            ("zk.-10", Some("id"), "3"),
        ] {
            boot.forget(&RENDERED);
            let mut env = vec![("HOSTNAME", hostname)];
            env.extend(mode.map(|m| ("IMGBUILD_HOSTNAME_ORDINAL", m)));
            let out = boot.render(shell, &env);
            assert_eq!(booted_as(&out, shell), want, "{hostname} {mode:?}");
        }
        boot.forget(&RENDERED);
        let out = boot.render(shell, &[("HOSTNAME", "zk-3"), ("IMGBUILD_HOSTNAME_ORDINAL", "index")]);
        refused(&out, shell, "hostname zk-3: index 3 is not a node of cluster demo (IMGBUILD_HOSTNAME_ORDINAL=index; its 3 nodes are indexes 0 to 2)");
        let out = boot.render(shell, &[("NODE_ID", "8"), ("IMGBUILD_HOSTNAME_ORDINAL", "ordinal")]);
        refused(&out, shell, "IMGBUILD_HOSTNAME_ORDINAL is 'ordinal'");
        // The environment still comes first.
        let out =
            boot.render(shell, &[("NODE_ID", "10"), ("HOSTNAME", "zk-0"), ("IMGBUILD_HOSTNAME_ORDINAL", "index")]);
        assert_eq!(booted_as(&out, shell), "10");
    }
}

#[test]
fn values_with_control_characters_are_refused_naming_the_variable() {
    let boot = demo();
    for shell in SHELLS {
        for var in [
            "NODE_ID",
            "PEERS",
            "ADVERTISED_HOST",
            "IMGBUILD_VAR_bind",
            "IMGBUILD_SERVICES",
            "HOSTNAME",
            "IMGBUILD_HOSTNAME_ORDINAL",
        ] {
            for bad in ["a\nb", "x\r", "\u{1b}[31m", "\t", "\u{7f}", "a\u{85}b", "8\nserver.9=evil:1:2"] {
                boot.forget(&RENDERED);
                let mut env = vec![(var, bad)];
                if var != "NODE_ID" {
                    env.push(("NODE_ID", "8"));
                }
                refused(&boot.render(shell, &env), shell, &format!("{var} holds a control character"));
                assert!(!boot.path("conf/node.cfg").exists(), "{var}={bad:?} rendered");
            }
        }
        // What is not a control character is a value like any other.
        boot.forget(&RENDERED);
        let out = boot.render(shell, &[("NODE_ID", "8"), ("IMGBUILD_VAR_port", "ü\u{a0}'\"$(x)`y`\\n%s*")]);
        assert!(out.status.success(), "{}", err(&out));
        assert!(boot.read("conf/node.cfg").contains("server.10=zk-b:ü\u{a0}'\"$(x)`y`\\n%s*\n"));
    }
}

#[test]
fn an_override_of_a_variable_the_image_does_not_have_is_refused_listing_its_variables() {
    let boot = demo();
    for shell in SHELLS {
        for (name, needle) in [
            (
                "IMGBUILD_VAR_nosuch",
                "IMGBUILD_VAR_nosuch: cluster demo has no variable 'nosuch' (its variables: bind port)",
            ),
            ("IMGBUILD_VAR_BIND", "has no variable 'BIND'"),
            ("IMGBUILD_VAR_", "has no variable ''"),
            ("IMGBUILD_VAR_bind-address", "has no variable 'bind-address'"),
            ("IMGBUILD_VAR_bind port", "has no variable 'bind port'"),
            ("IMGBUILD_VAR_a\u{1b}[31m", "has a control character in its name"),
        ] {
            boot.forget(&RENDERED);
            let out = boot.render(shell, &[("NODE_ID", "8"), (name, "1")]);
            refused(&out, shell, needle);
            assert!(!boot.path("conf/node.cfg").exists(), "{name} rendered");
        }
        // A line break inside another variable's value does not pass for an override.
        boot.forget(&RENDERED);
        let out = boot
            .render(shell, &[("NODE_ID", "8"), ("OTHER", "x\nIMGBUILD_VAR_fake=1"), ("IMGBUILD_VAR_bind", "1.2.3.4")]);
        assert!(out.status.success(), "{shell:?}: {}", err(&out));
        assert!(boot.read("conf/node.cfg").contains("bind=1.2.3.4\n"));
    }
}

#[test]
fn services_are_checked_before_use_and_run_with_their_words_as_written() {
    let boot = demo();
    for shell in SHELLS {
        for (services, needle) in [
            ("$(touch pwned)", "IMGBUILD_SERVICES names '$(touch"),
            ("first;touch${IFS}pwned", "IMGBUILD_SERVICES names 'first;touch${IFS}pwned'"),
            ("*", "IMGBUILD_SERVICES names '*'"),
            ("first first", "names 'first' twice"),
            ("third", "not a service of this image (its services: first second)"),
        ] {
            boot.forget(&RENDERED);
            let out = run(boot.command(shell, &[("NODE_ID", "8"), ("IMGBUILD_SERVICES", services)]), shell);
            refused(&out, shell, needle);
            assert!(!boot.path("conf/node.cfg").exists() && !boot.tmp.path().join("pwned").exists());
        }
        boot.forget(&RENDERED);
        let out = run(boot.command(shell, &[("NODE_ID", "8"), ("IMGBUILD_SERVICES", "first")]), shell);
        assert!(out.status.success(), "{}", err(&out));
        assert_eq!(boot.read("logs/first"), "first|a b|$(touch pwned) `id` 'q' *|", "{shell:?}: words as written");
        assert!(!boot.tmp.path().join("pwned").exists() && !boot.root.join("pwned").exists());
        // Services ending cleanly end the node cleanly; none is a valid choice.
        boot.forget(&RENDERED);
        let out = run(boot.command(shell, &[("NODE_ID", "8"), ("IMGBUILD_SERVICES", "")]), shell);
        assert!(out.status.success() && err(&out).contains("no services to run"), "{}", err(&out));
    }
}

#[test]
fn peers_and_the_advertised_host_are_hosts_and_modes_are_per_template() {
    let boot = demo();
    for shell in SHELLS {
        for (env, needle) in [
            (vec![("PEERS", "8=a,10=a")], "two nodes have the address a"),
            (vec![("PEERS", "8=zk-A,10=ZK-a")], "two nodes have the address ZK-a"),
            (vec![("PEERS", "8=a,08=b")], "PEERS names node 8 twice"),
            (vec![("PEERS", "7=a")], "PEERS names node 7, which is not in the cluster"),
            (vec![("PEERS", "zk-a")], "PEERS entry 'zk-a' is not ID=HOST"),
            (vec![("PEERS", "8=a,,10=b")], "has an empty entry"),
            (vec![("PEERS", "8=a,")], "has an empty entry"),
            (vec![("PEERS", "8=a b")], "PEERS: 'a b' (node 8) is not an IP address or a host name"),
            (vec![("PEERS", "8=a:1")], "is not an IP address or a host name"),
            (vec![("PEERS", "8=$(id)")], "is not an IP address or a host name"),
            (vec![("ADVERTISED_HOST", "zk_1")], "ADVERTISED_HOST 'zk_1' is not an IP address or a host name"),
            (vec![("ADVERTISED_HOST", "zk-b")], "two nodes have the address zk-b"),
            (vec![("IMGBUILD_VAR_bind", "{{port}}")], "'{{port}}' is not a variable it may use"),
            (
                vec![("IMGBUILD_VAR_bind", "{{node_host")],
                "IMGBUILD_VAR_bind (a value may use only {{node_id}} and {{node_host}}): '{{' without a closing '}}'",
            ),
            (vec![("IMGBUILD_RENDER_ONLY", "yes")], "IMGBUILD_RENDER_ONLY is 'yes'"),
        ] {
            boot.forget(&RENDERED);
            let mut env = env.clone();
            env.push(("NODE_ID", "8"));
            let mut cmd = boot.command(shell, &env);
            if !env.iter().any(|(k, _)| *k == "IMGBUILD_RENDER_ONLY") {
                cmd.env("IMGBUILD_RENDER_ONLY", "1");
            }
            refused(&run(cmd, shell), shell, needle);
            assert!(!boot.path("conf/node.cfg").exists(), "{env:?} rendered");
        }
        boot.forget(&RENDERED);
        let env = [
            ("NODE_ID", "8"),
            ("PEERS", "010=fd00::10,3=zk-3.ns.svc"),
            ("ADVERTISED_HOST", "192.0.2.8"),
            ("IMGBUILD_VAR_bind", "{{ node_host }}"),
        ];
        let out = boot.render(shell, &env);
        assert!(out.status.success(), "{}", err(&out));
        assert_eq!(
            boot.read("conf/node.cfg"),
            "id=8\nhost=192.0.2.8\nbind=192.0.2.8\nserver.8=192.0.2.8:2181\nserver.10=fd00::10:2181\nserver.3=zk-3.ns.svc:2181\n"
        );
        let mode = |rel: &str| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(boot.path(rel)).unwrap().permissions()) & 0o777
        };
        assert_eq!((mode("conf/node.cfg"), mode("data/myid")), (0o640, 0o644), "each template keeps its own mode");
        assert!(boot.path("logs").is_dir(), "data directories are created");
    }
}

#[test]
fn existing_data_of_another_node_is_never_taken_over() {
    let boot = demo();
    for shell in SHELLS {
        boot.forget(&["data/meta.properties"]);
        boot.forget(&RENDERED);
        assert!(boot.render(shell, &[("NODE_ID", "10")]).status.success());
        let out = boot.render(shell, &[("NODE_ID", "8")]);
        assert_eq!(out.status.code(), Some(65), "{}", err(&out));
        assert!(err(&out).contains("/data/myid holds '10' but this node would write '8'"), "{}", err(&out));
        boot.forget(&RENDERED);
        // The key is matched as written: `broker.id`, not `brokerXid`.
        boot.write("data/meta.properties", b"version=0\nbrokerXid=8\nbroker.id=10\n");
        let out = boot.render(shell, &[("NODE_ID", "8")]);
        assert_eq!(out.status.code(), Some(65), "{}", err(&out));
        assert!(err(&out).contains("/data/meta.properties says broker.id=10 but this is node 8"), "{}", err(&out));
        assert!(boot.render(shell, &[("NODE_ID", "10")]).status.success());
    }
}

/// The nodes of `CLUSTER_ENV`, in order, with their baked addresses.
const NODES: [(&str, &str); 3] = [("8", "zk-a.example.org"), ("10", "zk-b"), ("3", "10.0.0.3")];

/// One boot's environment (None: unset).
#[derive(Debug, Clone)]
struct BootEnv {
    node_id: Option<String>,
    hostname: String,
    ordinal_mode: Option<String>,
    baked: Option<String>,
    peers: Option<String>,
    advertised: Option<String>,
    bind: Option<String>,
    services: Option<String>,
}

fn decimal(text: &str) -> Option<String> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| {
        let trimmed = text.trim_start_matches('0');
        if trimmed.is_empty() {
            "0".to_string()
        } else {
            trimmed.to_string()
        }
    })
}

/// The model: which node boots and what `node.cfg` it renders, or None for exit 64.
fn expected(e: &BootEnv) -> Option<String> {
    let set = [&e.node_id, &e.ordinal_mode, &e.peers, &e.advertised, &e.bind, &e.services];
    if set.iter().filter_map(|v| v.as_deref()).chain([e.hostname.as_str()]).any(|v| v.chars().any(char::is_control)) {
        return None;
    }
    let index_mode = match e.ordinal_mode.as_deref().unwrap_or("") {
        "" | "id" => false,
        "index" => true,
        _ => return None,
    };
    let services: Vec<&str> = e.services.as_deref().unwrap_or("").split(' ').filter(|w| !w.is_empty()).collect();
    if services.iter().any(|s| !["first", "second"].contains(s)) || (services.len() == 2 && services[0] == services[1])
    {
        return None;
    }
    let ids: Vec<&str> = NODES.iter().map(|n| n.0).collect();
    let id = match e.node_id.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => decimal(v)?,
        None => {
            let by_hostname = || -> Result<Option<String>, ()> {
                // Only a host name gives an ordinal, as the entrypoint reads it (`is_host`).
                let ordinal =
                    e.hostname.rsplit_once('-').filter(|_| is_host(&e.hostname)).and_then(|(_, o)| decimal(o));
                let Some(ordinal) = ordinal else { return Ok(None) };
                if index_mode {
                    let at = ordinal.parse::<usize>().ok().and_then(|i| ids.get(i)).ok_or(())?;
                    Ok(Some(at.to_string()))
                } else {
                    Ok(ids.contains(&ordinal.as_str()).then_some(ordinal))
                }
            };
            match by_hostname().ok()? {
                Some(id) => id,
                None => {
                    let baked = e.baked.as_deref()?.trim_end_matches('\n');
                    if baked.chars().any(char::is_control) {
                        return None;
                    }
                    decimal(baked)?
                }
            }
        }
    };
    if !ids.contains(&id.as_str()) {
        return None;
    }
    let mut hosts: BTreeMap<String, String> = NODES.iter().map(|(i, h)| (i.to_string(), h.to_string())).collect();
    if let Some(peers) = e.peers.as_deref().filter(|p| !p.is_empty()) {
        let mut seen = Vec::new();
        for pair in peers.split(',') {
            let (n, h) = pair.split_once('=')?;
            let n = decimal(n)?;
            if !ids.contains(&n.as_str()) || seen.contains(&n) || !is_host(h) {
                return None;
            }
            seen.push(n.clone());
            hosts.insert(n, h.to_string());
        }
    }
    if let Some(h) = e.advertised.as_deref().filter(|h| !h.is_empty()) {
        if !is_host(h) {
            return None;
        }
        hosts.insert(id.clone(), h.to_string());
    }
    let mut distinct: Vec<&String> = hosts.values().collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != NODES.len() {
        return None;
    }
    let node_host = hosts[&id].clone();
    let bind = match &e.bind {
        // Java's properties reader would join the next line to it.
        Some(v) if v.ends_with('\\') => return None,
        None => "0.0.0.0".to_string(),
        Some(v) => super::definitions::reference_render(v, &|name| match name {
            "node_id" => Some(id.clone()),
            "node_host" => Some(node_host.clone()),
            _ => None,
        })?,
    };
    let servers: Vec<String> = ids
        .iter()
        .map(|n| if *n == id { format!("server.{n}={bind}:2181") } else { format!("server.{n}={}:2181", hosts[*n]) })
        .collect();
    Some(format!("id={id}\nhost={node_host}\nbind={bind}\n{}\n", servers.join("\n")))
}

/// Node ids as written: good, with leading zeros, outside the cluster, not numbers at all.
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["8", "10", "3", "010", "08", "0003", "0", "7", "99999999999999999999"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "-8", "0x8", "8 ", " 8", "8a", "８", "1e1", "$(id)", "8\n", "8\u{85}"]).prop_map(String::from),
    ]
}

/// Addresses: valid ones of every kind and near misses (what the host property test generates).
fn host_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["zk-1", "zk-2.ns.svc", "10.0.0.9", "fd00::9", "::ffff:10.0.0.9", "zk-b", "HOST"]).prop_map(String::from),
        3 => host_like(),
        1 => prop::sample::select(vec!["a b", "a\nb", "$(id)", "a;b", "a\u{1b}b", "é.example"]).prop_map(String::from),
    ]
}

/// Strings shaped like host names, IPv4 and IPv6 addresses, valid or nearly so.
pub fn host_like() -> impl Strategy<Value = String> {
    let label =
        prop_oneof!["[a-z0-9]{1,8}", "[a-zA-Z0-9-]{0,8}", "[0-9]{1,3}", Just("a".repeat(63)), Just("b".repeat(64)),];
    let name = prop::collection::vec(label, 1..6).prop_map(|l| l.join("."));
    let octet = prop_oneof!["[0-9]{1,3}", "0[0-9]", Just("255".to_string()), Just("256".to_string())];
    let ipv4 = prop::collection::vec(octet, 3..6).prop_map(|o| o.join("."));
    let group =
        prop_oneof!["[0-9a-fA-F]{1,4}", "[0-9a-f]{5}", Just(String::new()), Just("1.2.3.4".to_string()), "[g-z]"];
    let ipv6 = prop::collection::vec(group, 1..10).prop_map(|g| g.join(":"));
    let odd = "[a0.:_/%\\[\\]-]{1,12}";
    prop_oneof![name, ipv4, ipv6, odd.prop_map(String::from)]
}

fn unset_or<T: Strategy<Value = String>>(s: T) -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(0.5, s)
}

fn boot_env() -> impl Strategy<Value = BootEnv> {
    let peers = prop_oneof![
        prop::collection::vec((id_text(), host_text()), 1..4).prop_map(|pairs| pairs
            .iter()
            .map(|(i, h)| format!("{i}={h}"))
            .collect::<Vec<_>>()
            .join(",")),
        prop::sample::select(vec!["8=x,", ",8=x", "8=x,,10=y", "8", "=x", "8=x=y"]).prop_map(String::from),
    ];
    let hostname = prop_oneof![
        id_text().prop_map(|i| format!("zk-{i}")),
        prop::sample::select(vec!["buildhost", "web-a", "a-b-2", "-1", "x-", "ip-10-0-0-8"]).prop_map(String::from),
    ];
    let services =
        prop::collection::vec(prop::sample::select(vec!["first", "second", "third", "$(id)", "*", "first;id"]), 0..3)
            .prop_map(|w| w.join(" "));
    let ordinal = prop::sample::select(vec!["id", "index", "", "Index", "ordinal"]).prop_map(String::from);
    let baked = prop::sample::select(vec!["8\n", "010\n", "x\n", "\n", "10\r\n", "3"]).prop_map(String::from);
    (
        unset_or(id_text()),
        hostname,
        unset_or(ordinal),
        unset_or(baked),
        unset_or(peers),
        unset_or(host_text()),
        // An environment cannot hold NUL.
        unset_or(super::definitions::hostile_text(&["node_id", "node_host", "port"]).prop_map(|v| v.replace('\0', ""))),
        unset_or(services),
    )
        .prop_map(|(node_id, hostname, ordinal_mode, baked, peers, advertised, bind, services)| BootEnv {
            node_id,
            hostname,
            ordinal_mode,
            baked,
            peers,
            advertised,
            bind,
            services,
        })
}

impl BootEnv {
    fn vars(&self) -> Vec<(&'static str, &str)> {
        let mut env = vec![("HOSTNAME", self.hostname.as_str())];
        let optional = [
            ("NODE_ID", &self.node_id),
            ("IMGBUILD_HOSTNAME_ORDINAL", &self.ordinal_mode),
            ("PEERS", &self.peers),
            ("ADVERTISED_HOST", &self.advertised),
            ("IMGBUILD_VAR_bind", &self.bind),
            ("IMGBUILD_SERVICES", &self.services),
        ];
        env.extend(optional.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))));
        env
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Generated ids, hostnames, peers, addresses, values and service lists: each shell
    /// boots exactly when the model does, as the node the model says, rendering what it says.
    #[test]
    fn the_entrypoint_follows_its_model_on_generated_boots(env in boot_env()) {
        let want = expected(&env);
        let boot = demo();
        if let Some(baked) = &env.baked {
            boot.write("etc/imgbuild/node-id", baked.as_bytes());
        }
        for shell in SHELLS {
            boot.forget(&RENDERED);
            let out = boot.render(shell, &env.vars());
            let e = err(&out);
            prop_assert!(!e.chars().any(|c| c.is_control() && c != '\n'), "{:?}: raw control character: {:?}", shell, e);
            match &want {
                None => {
                    prop_assert_eq!(out.status.code(), Some(64), "{:?} {:?}: {}", shell, env, e);
                    prop_assert!(!boot.path("conf/node.cfg").exists());
                }
                Some(cfg) => {
                    prop_assert!(out.status.success(), "{:?} {:?}: {}", shell, env, e);
                    prop_assert_eq!(&boot.read("conf/node.cfg"), cfg, "{:?} {:?}", shell, env);
                }
            }
        }
    }

    /// The entrypoint's rule for an address is imgbuild's (`is_host`), on strings shaped to
    /// probe its edges.
    #[test]
    fn the_entrypoint_and_imgbuild_agree_on_what_a_host_is(host in host_like()) {
        prop_assume!(!host.is_empty() && !NODES.iter().any(|n| n.1 == host));
        let boot = demo();
        for shell in SHELLS {
            boot.forget(&RENDERED);
            let out = boot.render(shell, &[("NODE_ID", "8"), ("ADVERTISED_HOST", &host)]);
            prop_assert_eq!(out.status.success(), is_host(&host), "{:?} {:?}: {}", shell, host, err(&out));
        }
    }
}

#[test]
fn host_edges_agree() {
    let boot = demo();
    let long = |n: usize| ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(n)].join(".");
    let cases = [
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8::",
        "00001::",
        "0001::",
        "::1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6::1.2.3.4",
        "1:2:3:4:5::1.2.3.4",
        "1.2.3.4::",
        "::01.2.3.4",
        "01.2.3.4",
        "255.255.255.255",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.",
        ":1::",
        "1::2::3",
        ":::",
        "1:::2",
        "a.1",
        "1.a",
        "1-a.b2",
        "0.0.0.0",
        &long(61),
        &long(62),
        "A-b.C",
        "-a",
        "a-.b",
    ];
    for shell in SHELLS {
        for host in cases {
            boot.forget(&RENDERED);
            let out = boot.render(shell, &[("NODE_ID", "8"), ("ADVERTISED_HOST", host)]);
            assert_eq!(out.status.success(), is_host(host), "{shell:?} {host:?}: {}", err(&out));
        }
    }
}

/// What a path of the demo root is before a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obstacle {
    Absent,
    Dir,
    File,
    LinkToDir,
    LinkToFile,
}

/// The paths the demo's templates, data directories and identity check go through, parents first.
const WRITTEN: [&str; 6] = ["conf", "conf/node.cfg", "data", "data/myid", "data/meta.properties", "logs"];

/// How each written path must be found: a directory (`d`) or a file (`f`) when it exists.
fn must_be(path: &str) -> char {
    if ["conf", "data", "logs"].contains(&path) {
        'd'
    } else {
        'f'
    }
}

/// Puts `kind` at `rel` (when its parent is a directory): files hold what this node would write.
fn place(boot: &Boot, rel: &str, kind: Obstacle) {
    let path = boot.path(rel);
    if !path.parent().unwrap().is_dir() || std::fs::symlink_metadata(path.parent().unwrap()).unwrap().is_symlink() {
        return;
    }
    let content: &[u8] = if rel.ends_with("meta.properties") { b"broker.id=8\n" } else { b"8" };
    match kind {
        Obstacle::Absent => {}
        Obstacle::Dir => std::fs::create_dir(&path).unwrap(),
        Obstacle::File => std::fs::write(&path, content).unwrap(),
        Obstacle::LinkToDir => std::os::unix::fs::symlink(boot.tmp.path().join("elsewhere"), &path).unwrap(),
        Obstacle::LinkToFile => std::os::unix::fs::symlink(boot.tmp.path().join("elsewhere/file"), &path).unwrap(),
    }
}

/// Every path under `dir` with what it is (links not followed): the state a refused boot keeps.
fn snapshot(dir: &std::path::Path) -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                walk(base, &p, out);
                "dir".to_string()
            } else {
                format!("{:o} {:?}", meta.permissions().mode() & 0o777, std::fs::read(&p).unwrap())
            };
            out.push((rel, what));
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Whether the boot must be refused: some path it writes goes through a link, under something
/// that is not a directory, or is not what it writes (a directory for a file, or the reverse).
fn blocked(obstacles: &BTreeMap<&str, Obstacle>) -> bool {
    let exists = |rel: &str| {
        let parent_ok = rel.rsplit_once('/').is_none_or(|(parent, _)| obstacles[parent] == Obstacle::Dir);
        parent_ok && obstacles[rel] != Obstacle::Absent
    };
    WRITTEN.iter().any(|rel| {
        exists(rel)
            && matches!(
                (obstacles[rel], must_be(rel)),
                (Obstacle::LinkToDir | Obstacle::LinkToFile, _) | (Obstacle::File, 'd') | (Obstacle::Dir, 'f')
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever stands where a boot writes (directories, files, links to either), each shell
    /// either writes every file as a new regular file, or exits 64 naming the path with the root
    /// (and what links lead to) exactly as it was.
    #[test]
    fn every_path_is_checked_before_anything_is_written(
        kinds in prop::collection::vec(prop::sample::select(vec![
            Obstacle::Absent, Obstacle::Dir, Obstacle::Dir, Obstacle::File, Obstacle::LinkToDir, Obstacle::LinkToFile,
        ]), WRITTEN.len()),
    ) {
        let obstacles: BTreeMap<&str, Obstacle> = WRITTEN.iter().copied().zip(kinds.iter().copied()).collect();
        for shell in SHELLS {
            let boot = demo();
            std::fs::create_dir_all(boot.tmp.path().join("elsewhere")).unwrap();
            std::fs::write(boot.tmp.path().join("elsewhere/file"), "outside\n").unwrap();
            for rel in WRITTEN {
                place(&boot, rel, obstacles[rel]);
            }
            let before = snapshot(boot.tmp.path());
            let out = boot.render(shell, &[("NODE_ID", "8")]);
            if blocked(&obstacles) {
                prop_assert_eq!(out.status.code(), Some(64), "{:?} {:?}: {}", shell, obstacles, err(&out));
                prop_assert_eq!(snapshot(boot.tmp.path()), before, "{:?} {:?}: changed", shell, obstacles);
            } else {
                prop_assert!(out.status.success(), "{:?} {:?}: {}", shell, obstacles, err(&out));
                prop_assert_eq!(boot.read("data/myid"), "8");
                prop_assert!(boot.read("conf/node.cfg").starts_with("id=8\n"));
                prop_assert!(boot.path("logs").is_dir());
                let left: Vec<String> = ["conf", "data"].iter().flat_map(|d| std::fs::read_dir(boot.path(d)).unwrap())
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".imgbuild")).collect();
                prop_assert!(left.is_empty(), "temporary files left: {:?}", left);
                prop_assert_eq!(std::fs::read_to_string(boot.tmp.path().join("elsewhere/file")).unwrap(), "outside\n");
            }
        }
    }
}

#[test]
fn a_refused_path_is_named_and_a_planted_temporary_link_is_never_followed() {
    for shell in SHELLS {
        for (setup, needle) in [
            ("conf/node.cfg/", "the template target /conf/node.cfg is a directory, not a file"),
            ("conf", "the template target /conf/node.cfg: /conf is not a directory"),
            ("logs", "the data directory /logs is not a directory"),
            ("data -> elsewhere", "the template target /data/myid: /data is a symbolic link"),
        ] {
            let boot = demo();
            std::fs::create_dir_all(boot.tmp.path().join("elsewhere")).unwrap();
            match setup.split_once(" -> ") {
                Some((link, to)) => std::os::unix::fs::symlink(boot.tmp.path().join(to), boot.path(link)).unwrap(),
                None if setup.ends_with('/') => std::fs::create_dir_all(boot.path(setup)).unwrap(),
                None => boot.write(setup, b"a file\n"),
            }
            refused(&boot.render(shell, &[("NODE_ID", "8")]), shell, needle);
        }
        // The old temporary name, planted as a link to the entrypoint: nothing follows it.
        let boot = demo();
        std::fs::create_dir_all(boot.path("data")).unwrap();
        std::os::unix::fs::symlink("../usr/local/bin/imgbuild-init", boot.path("data/myid.imgbuild-tmp")).unwrap();
        let out = boot.render(shell, &[("NODE_ID", "8")]);
        assert!(out.status.success(), "{shell:?}: {}", err(&out));
        assert_eq!(boot.read("usr/local/bin/imgbuild-init"), imgbuild::testing::ENTRYPOINT_SCRIPT);
        assert!(!std::fs::symlink_metadata(boot.path("data/myid")).unwrap().is_symlink());
        assert_eq!(boot.read("data/myid"), "8");
    }
}

/// java.util.Properties' reading of `text` (Properties.load: LineReader and loadConvert), as
/// far as the value of `key` goes: the last one, or None.
fn java_property(text: &str, key: &str) -> Option<String> {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\u{c}');
    let mut logical: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line).trim_start_matches(is_space);
        let mut joined = match current.take() {
            Some(before) => before + line,
            None if line.is_empty() || line.starts_with(['#', '!']) => continue,
            None => line.to_string(),
        };
        let backslashes = joined.chars().rev().take_while(|c| *c == '\\').count();
        if backslashes % 2 == 1 {
            joined.pop();
            current = Some(joined);
        } else {
            logical.push(joined);
        }
    }
    logical.extend(current);
    let unescape = |s: &str| -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('u') => {
                    let hex: String = chars.clone().take(4).collect();
                    match u32::from_str_radix(&hex, 16).ok().filter(|_| hex.len() == 4).and_then(char::from_u32) {
                        Some(ch) => {
                            out.push(ch);
                            chars.nth(3);
                        }
                        None => out.push('?'),
                    }
                }
                Some('t' | 'n' | 'r' | 'f') => out.push('?'),
                Some(other) => out.push(other),
                None => {}
            }
        }
        out
    };
    let mut found = None;
    for line in logical {
        let chars: Vec<char> = line.chars().collect();
        let (mut end, mut escaped) = (chars.len(), false);
        for (i, c) in chars.iter().enumerate() {
            if !escaped && (matches!(c, '=' | ':') || is_space(*c)) {
                end = i;
                break;
            }
            escaped = *c == '\\' && !escaped;
        }
        let mut rest = &chars[end..];
        while rest.first().is_some_and(|c| is_space(*c)) {
            rest = &rest[1..];
        }
        if rest.first().is_some_and(|c| matches!(c, '=' | ':')) {
            rest = &rest[1..];
        }
        while rest.first().is_some_and(|c| is_space(*c)) {
            rest = &rest[1..];
        }
        if unescape(&chars[..end].iter().collect::<String>()) == key {
            found = Some(unescape(&rest.iter().collect::<String>()));
        }
    }
    found
}

/// Properties files as Kafka writes them and as people edit them.
fn properties_text() -> impl Strategy<Value = String> {
    let space = prop::sample::select(vec!["", " ", "  ", "\t", "\u{c}"]);
    let key = prop::sample::select(vec![
        "broker.id",
        "broker.id",
        "broker\\.id",
        "\\u0062roker.id",
        "broker.idx",
        "xbroker.id",
        "broker.i\\d",
        "broker\\ id",
        "version",
    ]);
    let sep = prop::sample::select(vec!["=", ":", " ", " = ", "\t:\t", "==", " =:", "\\="]);
    let value = prop::sample::select(vec![
        "8",
        "10",
        "08",
        "0",
        "",
        " 8",
        "8 ",
        "\\u0038",
        "\\u0031\\u0030",
        "x",
        "1\\\n  0",
        "8\\\\",
    ]);
    let line = prop_oneof![
        6 => (space.clone(), key, sep, value).prop_map(|(s, k, p, v)| format!("{s}{k}{p}{v}")),
        1 => prop::sample::select(vec!["#broker.id=10", "  ! broker.id=10", "", "   ", "# tail \\", "a=b\\", "a=b\\\\"]).prop_map(String::from),
    ];
    (prop::collection::vec(line, 0..6), prop::sample::select(vec!["\n", "\r\n"]), any::<bool>())
        .prop_map(|(lines, end, last)| lines.join(end) + if last { end } else { "" })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// An identity check reads the file as Java does: node 8 boots exactly when the last
    /// `broker.id` Java would read is absent, empty, or 8 (as a decimal number).
    #[test]
    fn identity_checks_read_a_properties_file_as_java_does(text in properties_text()) {
        let want_ok = match java_property(&text, "broker.id") {
            None => true,
            Some(v) if v.is_empty() => true,
            Some(v) => decimal(&v).as_deref() == Some("8"),
        };
        let boot = demo();
        boot.write("data/meta.properties", text.as_bytes());
        for shell in SHELLS {
            boot.forget(&RENDERED);
            let out = boot.render(shell, &[("NODE_ID", "8")]);
            if want_ok {
                prop_assert!(out.status.success(), "{:?} {:?}: {}", shell, text, err(&out));
            } else {
                prop_assert_eq!(out.status.code(), Some(65), "{:?} {:?}: {}", shell, text, err(&out));
                prop_assert!(!err(&out).chars().any(|c| c.is_control() && c != '\n'));
            }
        }
    }
}

#[test]
fn boot_sources_are_read_as_their_formats_say() {
    let boot = demo();
    let seed = boot.path("seed").display().to_string();
    for shell in SHELLS {
        // YAML takes the last of a repeated key; a comment is not part of the value.
        for (meta, node) in [
            ("imgbuild_node_id: 3\nimgbuild_node_id: 10\n", "10"),
            ("imgbuild_node_id: 10 # the second node\n", "10"),
            ("imgbuild_node_id : '8'\n", "8"),
        ] {
            boot.write("seed/meta-data", meta.as_bytes());
            boot.forget(&RENDERED);
            assert_eq!(booted_as(&boot.render(shell, &[("IMGBUILD_SEED_DIRS", &seed)]), shell), node, "{meta:?}");
        }
        std::fs::remove_file(boot.path("seed/meta-data")).unwrap();
        // Words after `--` on the kernel command line are init's.
        boot.write("etc/imgbuild/node-id", b"8\n");
        for (cmdline, node) in [("imgbuild.node=3 -- imgbuild.node=10\n", "3"), ("quiet -- imgbuild.node=10\n", "8")] {
            boot.write("proc/cmdline", cmdline.as_bytes());
            boot.forget(&RENDERED);
            assert_eq!(booted_as(&boot.render(shell, &[]), shell), node, "{cmdline:?}");
        }
        std::fs::remove_file(boot.path("proc/cmdline")).unwrap();
        std::fs::remove_file(boot.path("etc/imgbuild/node-id")).unwrap();
        // A value that would continue onto the next line of a properties file.
        boot.forget(&RENDERED);
        let out = boot.render(shell, &[("NODE_ID", "8"), ("IMGBUILD_VAR_port", "2181\\")]);
        refused(&out, shell, "IMGBUILD_VAR_port ends with a backslash");
        // An empty or missing PATH: the entrypoint still finds its tools.
        let found = Command::new("sh").arg("-c").arg(format!("command -v {}", shell[0])).output().unwrap();
        let program = String::from_utf8(found.stdout).unwrap().trim().to_string();
        for path in [Some(""), None] {
            boot.forget(&RENDERED);
            let absolute: Vec<&str> = std::iter::once(program.as_str()).chain(shell[1..].iter().copied()).collect();
            let mut cmd = boot.command(&absolute, &[("NODE_ID", "8"), ("IMGBUILD_RENDER_ONLY", "1")]);
            match path {
                Some(p) => cmd.env("PATH", p),
                None => cmd.env_remove("PATH"),
            };
            let out = run(cmd, shell);
            assert!(out.status.success(), "{shell:?} PATH={path:?}: {}", err(&out));
            assert_eq!(boot.read("data/myid"), "8");
        }
    }
}
