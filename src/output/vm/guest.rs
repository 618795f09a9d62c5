//! What the VM init (`imgbuild-vm-init`) reads in the guest besides the seed, and what it
//! needs of the base:
//!
//! - [`process_file`]: the node's process as a container engine runs it (Env, WorkingDir,
//!   User, Entrypoint + Cmd, StopSignal), written from the image config blob itself, so the
//!   container and the VM cannot drift apart. One `KEY VALUE` line each, read with `read -r`
//!   and never evaluated: a value that cannot be one line is refused.
//! - [`network_config`]: the node's NoCloud `network-config` (version 2), its cluster address
//!   from the definition and the address its forwarded ports reach.
//! - [`missing_tools`]: what the init runs that the base image must have.

use std::net::Ipv4Addr;

use serde_json::json;

use super::network::{forward_mac, mac, network_problem, FORWARD_ADDRESS};
use super::rootfs::Meta;
use crate::error::{escape, Error, Result};
use crate::image_def::ImageDef;
use crate::tree::{Kind, Tree, TreePath};
use crate::yaml;

/// Where the VM init finds the process file in the guest (not in the OCI image: the disk only).
pub(crate) const PROCESS_FILE: &str = "etc/imgbuild/vm-process";

/// Why `value` (of `what`) cannot be one line of the process file, if it cannot.
fn one_line(what: &str, value: &str) -> Result<()> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(Error::Usage(format!(
            "the image config's {what} `{}` holds a line break or NUL, which the VM init cannot be given",
            escape(value)
        )));
    }
    Ok(())
}

/// A variable name the VM init can `export` (a container engine takes any name without `=`).
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `SIGTERM`, `TERM` or `15` as `kill -s` takes it: `TERM`, `15`; `TERM` when the config has none.
fn stop_signal(signal: Option<&str>) -> Result<String> {
    let name = signal.unwrap_or("SIGTERM");
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    let valid = !bare.is_empty() && bare.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+');
    if !valid {
        return Err(Error::Usage(format!("the image config's StopSignal `{}` is not a signal name", escape(name))));
    }
    Ok(bare.to_string())
}

/// The node's process as the VM init reads it, and the config's User (what it needs depends on it).
#[derive(Debug)]
pub(crate) struct Process {
    pub text: String,
    pub user: String,
}

/// The process file from the image config blob `config` (`digest` names it in the header).
pub(crate) fn process_file(config: &[u8], digest: &str) -> Result<Process> {
    let parsed = crate::image::parse_config(config)
        .map_err(|e| Error::Internal(format!("the image config {digest} does not parse: {e}")))?;
    let c = parsed.config().clone().unwrap_or_default();
    let mut lines = vec![
        format!("# Written by imgbuild from the image config {digest}: the node's process as a container"),
        "# engine runs it. Read line by line by imgbuild-vm-init; nothing here is run as shell.".to_string(),
    ];
    let user = c.user().clone().unwrap_or_default();
    one_line("User", &user)?;
    lines.push(format!("user {user}"));
    let workdir = c.working_dir().clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    one_line("WorkingDir", &workdir)?;
    lines.push(format!("workdir {workdir}"));
    lines.push(format!("stop {}", stop_signal(c.stop_signal().as_deref())?));
    for kv in c.env().clone().unwrap_or_default() {
        one_line("Env entry", &kv)?;
        let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        if !is_shell_name(name) {
            return Err(Error::Usage(format!(
                "the image config's variable `{}` is not a name the VM init can export (letters, digits, `_`)",
                escape(name)
            )));
        }
        lines.push(format!("env {kv}"));
    }
    let argv: Vec<String> =
        c.entrypoint().clone().unwrap_or_default().into_iter().chain(c.cmd().clone().unwrap_or_default()).collect();
    if argv.is_empty() {
        return Err(Error::Usage("the image config has neither Entrypoint nor Cmd: a VM has nothing to run".into()));
    }
    for word in argv {
        one_line("Entrypoint/Cmd word", &word)?;
        lines.push(format!("arg {word}"));
    }
    lines.push(String::new());
    Ok(Process { text: lines.join("\n"), user })
}

/// The address of node `id` on the cluster's network (`ADDRESS/24`), when the cluster's hosts
/// are IPv4 addresses of one /24 that a VM can hold ([`network_problem`]).
pub(crate) fn cluster_address(def: &ImageDef, id: u32) -> Option<String> {
    if network_problem(def).is_some() {
        return None;
    }
    let host: Ipv4Addr = def.nodes.iter().find(|n| n.id == id)?.host.parse().ok()?;
    Some(format!("{host}/24"))
}

/// Node `id`'s NoCloud `network-config` (version 2): each interface found by its MAC, with a
/// static address. The VM init reads the layout [`yaml::document`] writes.
pub(crate) fn network_config(def: &ImageDef, id: u32) -> String {
    let mut interfaces = Vec::new();
    if let Some(address) = cluster_address(def, id) {
        interfaces.push(("cluster", mac(&def.name, id), address));
    }
    interfaces.push(("forward", forward_mac(&def.name, id), FORWARD_ADDRESS.to_string()));
    network_config_of(&interfaces)
}

/// `network-config` for interfaces (name, MAC, address/prefix).
fn network_config_of(interfaces: &[(&str, String, String)]) -> String {
    let mut ethernets = serde_json::Map::new();
    for (name, mac, address) in interfaces {
        ethernets.insert(name.to_string(), json!({ "match": { "macaddress": mac }, "addresses": [address] }));
    }
    yaml::document(&json!({ "version": 2, "ethernets": ethernets }))
}

/// One tool the VM init runs, and where a base may have it.
struct Need {
    what: &'static str,
    /// Any one of these paths (resolved through the image's links) will do.
    paths: &'static [&'static str],
    package: &'static str,
}

const NEEDS: &[Need] = &[
    Need { what: "a POSIX shell for the VM init", paths: &["/bin/sh"], package: "dash (or busybox)" },
    Need {
        what: "`ip` to configure the node's network",
        paths: &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip", "/usr/bin/busybox", "/bin/busybox"],
        package: "iproute2 (or busybox)",
    },
];

/// Runs the image's processes as its config's non-root `User`.
const SETPRIV: Need = Need {
    what: "`setpriv` to run the node as the config's User",
    paths: &["/usr/bin/setpriv"],
    package: "util-linux",
};

/// Whether `path` resolves, through the image's links, to an executable file.
fn has_executable(tree: &Tree<Meta>, path: &str) -> bool {
    let Ok(anchor) = TreePath::from_member(b"imgbuild-lookup") else { return false };
    let Ok(found) = tree.resolve_link(&anchor, path.as_bytes(), &TreePath::root()) else { return false };
    tree.get(&found).is_some_and(|n| n.kind == Kind::File && n.meta.mode & 0o111 != 0)
}

/// What the VM init needs that the base lacks, each as "WHAT (package PACKAGE)"; `user` is
/// the config's User.
pub(crate) fn missing_tools(tree: &Tree<Meta>, user: &str) -> Vec<String> {
    let root = matches!(user, "" | "root" | "0" | "0:0" | "root:root");
    NEEDS
        .iter()
        .chain((!root).then_some(&SETPRIV))
        .filter(|need| !need.paths.iter().any(|p| has_executable(tree, p)))
        .map(|need| format!("{} (package {}, at {})", need.what, need.package, need.paths.join(" or ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Text a config value may hold: what shells treat specially, and any character but the
    /// line breaks and NUL that the process file refuses.
    fn value() -> impl Strategy<Value = String> {
        super::super::templates::tests::hostile().prop_map(|v| v.replace(['\n', '\r'], ""))
    }

    /// `shell` (dash, busybox sh) running `script` after sourcing the VM init's functions from
    /// `dir/init`, with `args` as $1, $2, … and `dir` as its working directory.
    fn init_functions(
        dir: &std::path::Path,
        shell: &[&str],
        script: &str,
        args: &[&std::path::Path],
    ) -> std::process::Command {
        let init = dir.join("init");
        std::fs::write(&init, crate::entrypoint::VM_INIT_SCRIPT).unwrap();
        let mut cmd = std::process::Command::new(shell[0]);
        cmd.args(&shell[1..]).arg("-c").arg(format!(". \"$0\"; {script}")).arg(&init).args(args);
        cmd.env("IMGBUILD_VM_INIT_FUNCTIONS", "1").current_dir(dir);
        cmd
    }

    /// What a process prints as the VM init starts it: its directory, environment and arguments.
    const SHOW: &str =
        "pwd >\"$SHOW/pwd\"; env -0 >\"$SHOW/env\"; for a; do printf '%s\\0' \"$a\"; done >\"$SHOW/args\"";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Under dash and busybox sh, the VM init gives the process exactly the config's
        /// environment, arguments and working directory, and runs nothing of them.
        #[test]
        fn the_vm_init_starts_the_process_with_exactly_the_configs_values(
            env in proptest::collection::btree_map("T_[A-Z0-9_]{0,6}", value(), 0..4),
            args in proptest::collection::vec(value(), 0..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let work = dir.path().join("work $(dir)");
            let mut entrypoint = vec!["/bin/sh".to_string(), "-c".to_string(), SHOW.to_string(), "sh".to_string()];
            entrypoint.extend(args.iter().cloned());
            let kv: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let blob = config(json!({ "Env": kv, "Entrypoint": entrypoint, "WorkingDir": work }));
            let file = dir.path().join("vm-process");
            std::fs::write(&file, process_file(&blob, "d").unwrap().text).unwrap();
            for shell in [&["dash"][..], &["busybox", "sh"]] {
                let script = "PROCESS=$1; read_process; start_process; wait \"$child\"";
                let out = init_functions(dir.path(), shell, script, &[&file])
                    .env("SHOW", dir.path())
                    .output()
                    .unwrap();
                prop_assert!(out.status.success(), "{shell:?}: {}", String::from_utf8_lossy(&out.stderr));
                let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
                let pwd = read("pwd");
                prop_assert_eq!(pwd.trim_end(), work.to_str().unwrap());
                let seen = read("env");
                let seen: Vec<&str> = seen.split('\0').collect();
                for entry in &kv {
                    prop_assert!(seen.contains(&entry.as_str()), "{:?}: {} not in {:?}", shell, entry, seen);
                }
                let shown = read("args");
                let mut shown: Vec<&str> = shown.split('\0').collect();
                shown.pop();
                prop_assert_eq!(shown, args.iter().map(String::as_str).collect::<Vec<_>>());
                prop_assert!(!dir.path().join("PWN").exists() && !work.join("PWN").exists(), "something ran");
            }
        }
    }

    fn config(fields: serde_json::Value) -> Vec<u8> {
        let doc = json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [] }, "config": fields });
        serde_json::to_vec(&doc).unwrap()
    }

    #[test]
    fn the_process_file_is_the_configs_values_one_per_line() {
        let text = process_file(
            &config(json!({
                "Env": ["PATH=/opt/java/bin:/usr/bin", "JAVA_HOME=/opt/java", "QUOTE=it's $(x) `y`"],
                "Entrypoint": ["/usr/local/bin/imgbuild-init"], "Cmd": ["a b", ""],
                "WorkingDir": "/srv", "User": "zk:zk", "StopSignal": "SIGINT"
            })),
            "sha256:x",
        )
        .unwrap()
        .text;
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "user zk:zk",
                "workdir /srv",
                "stop INT",
                "env PATH=/opt/java/bin:/usr/bin",
                "env JAVA_HOME=/opt/java",
                "env QUOTE=it's $(x) `y`",
                "arg /usr/local/bin/imgbuild-init",
                "arg a b",
                "arg ",
            ]
        );
        let defaults = process_file(&config(json!({ "Cmd": ["/bin/sh"] })), "d").unwrap().text;
        assert!(defaults.contains("user \nworkdir /\nstop TERM\narg /bin/sh\n"), "{defaults}");
    }

    /// The VM init reads the seed from the raw system area and gives each interface, found by
    /// its MAC, its addresses: under dash and busybox sh, with `ip` and the interfaces faked.
    #[test]
    fn the_vm_init_reads_the_seed_area_and_configures_each_interface_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let interfaces = [
            ("cluster", "52:54:00:0a:0b:0c".to_string(), "10.77.0.3/24".to_string()),
            ("forward", "52:54:00:0d:0e:0f".to_string(), FORWARD_ADDRESS.to_string()),
        ];
        let network = network_config_of(&interfaces);
        let meta = "instance-id: \"c-node-2\"\nlocal-hostname: \"c-2\"\nimgbuild_node_id: 2\n";
        let area = dir.path().join("area");
        let files = [("meta-data", meta), ("network-config", network.as_str())];
        std::fs::write(&area, super::super::seed::system_area(&files).unwrap()).unwrap();
        let net = dir.path().join("net");
        for (iface, mac) in [("enp0s2", "52:54:00:0a:0b:0c"), ("enp0s3", "52:54:00:0d:0e:0f"), ("lo", "0:0:0:0:0:0")] {
            std::fs::create_dir_all(net.join(iface)).unwrap();
            std::fs::write(net.join(iface).join("address"), format!("{mac}\n")).unwrap();
        }
        let script = "say() { :; }; ip() { printf '%s\\n' \"$*\" >>\"$SEED/ip-calls\"; }\n\
                      read_seed_from <\"$AREA\" && configure_network";
        for shell in [&["dash"][..], &["busybox", "sh"]] {
            let seed = dir.path().join(format!("seed-{}", shell.len()));
            std::fs::create_dir_all(&seed).unwrap();
            let out = init_functions(dir.path(), shell, &format!("SEED=$1 NET=$2; {script}"), &[&seed, &net])
                .env("AREA", &area)
                .output()
                .unwrap();
            assert!(out.status.success(), "{shell:?}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(std::fs::read_to_string(seed.join("meta-data")).unwrap(), meta);
            assert_eq!(std::fs::read_to_string(seed.join("network-config")).unwrap(), network);
            assert_eq!(
                std::fs::read_to_string(seed.join("ip-calls")).unwrap(),
                "link set dev lo up\nlink set dev enp0s2 up\naddr add 10.77.0.3/24 dev enp0s2\n\
                 link set dev enp0s3 up\naddr add 10.0.2.15/24 dev enp0s3\n",
                "{shell:?}"
            );
        }
    }

    /// A non-root User runs through setpriv, its group from the config or else /etc/passwd; a
    /// SIGINT stop signal through env --default-signal (the tools faked as shell functions).
    #[test]
    fn the_vm_init_runs_a_non_root_user_through_setpriv() {
        let dir = tempfile::tempdir().unwrap();
        let script = "setpriv() { echo setpriv \"$@\" >\"$CALLS\"; }\n\
                      env() { case $1 in --default-signal=INT) return 0 ;; esac; echo env \"$@\" >\"$CALLS\"; }\n\
                      app() { echo app \"$@\" >\"$CALLS\"; }\n\
                      read_process; start_process; wait \"$child\"";
        for (user, stop, expected) in [
            ("nobody:nogroup", "SIGTERM", "setpriv --reuid=nobody --regid=nogroup --clear-groups -- app a b"),
            ("nobody", "SIGTERM", "setpriv --reuid=nobody --regid=65534 --clear-groups -- app a b"),
            ("root", "SIGTERM", "app a b"),
            ("", "SIGINT", "env --default-signal=INT,QUIT -- app a b"),
        ] {
            let blob = config(json!({ "Entrypoint": ["app", "a"], "Cmd": ["b"], "User": user, "StopSignal": stop }));
            let file = dir.path().join("vm-process");
            std::fs::write(&file, process_file(&blob, "d").unwrap().text).unwrap();
            let calls = dir.path().join("calls");
            let out = init_functions(dir.path(), &["dash"], &format!("PROCESS=$1; {script}"), &[&file])
                .env("CALLS", &calls)
                .output()
                .unwrap();
            assert!(out.status.success(), "{user}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(std::fs::read_to_string(&calls).unwrap().trim_end(), expected, "{user} {stop}");
        }
    }

    /// SIGTERM to the init stops the process with the config's stop signal and waits for it; a
    /// process that ignores the signal is killed after the grace period.
    #[test]
    fn the_vm_init_stops_the_process_and_kills_it_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let script = "say() { :; }; GRACE=1; read_process; start_process\n\
                      (sleep 1; kill -TERM $$) &\n\
                      wait_process; echo \"$status $stopping\"";
        for (on_term, expected) in [("exit 7", "7 1"), ("", "137 1")] {
            let body = format!("trap '{on_term}' TERM; while :; do sleep 0.1; done");
            let blob = config(json!({ "Entrypoint": ["/bin/sh", "-c", body] }));
            let file = dir.path().join("vm-process");
            std::fs::write(&file, process_file(&blob, "d").unwrap().text).unwrap();
            for shell in [&["dash"][..], &["busybox", "sh"]] {
                let started = std::time::Instant::now();
                let out =
                    init_functions(dir.path(), shell, &format!("PROCESS=$1; {script}"), &[&file]).output().unwrap();
                assert!(out.status.success(), "{shell:?}: {}", String::from_utf8_lossy(&out.stderr));
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected, "{shell:?} {on_term}");
                assert!(started.elapsed() < std::time::Duration::from_secs(10));
            }
        }
    }

    #[test]
    fn what_the_vm_init_cannot_be_given_is_refused_by_name() {
        for (fields, named) in [
            (json!({ "Cmd": ["x"], "Env": ["A=two\nlines"] }), "two\\nlines"),
            (json!({ "Cmd": ["x"], "Env": ["my.var=1"] }), "my.var"),
            (json!({ "Cmd": ["x\ry"] }), "x\\ry"),
            (json!({ "Cmd": ["x"], "StopSignal": "SIGTERM; reboot" }), "SIGTERM; reboot"),
            (json!({ "Env": ["A=1"] }), "neither Entrypoint nor Cmd"),
        ] {
            let err = process_file(&config(fields), "d").unwrap_err();
            assert_eq!(err.exit_code() as i32, 2);
            assert!(err.to_string().contains(named), "{err}");
        }
    }
}
