//! `imgbuild doctor` (issue 21): one table of what each feature needs from the host, which the
//! commands that run other tools check before they start.

use std::path::Path;
use std::process::{Command, Output};

use super::harness::*;

const EVERY_FEATURE: [&str; 9] = ["build", "node", "push", "pull", "verify", "load", "compose", "vm", "tests"];

/// `imgbuild doctor ARGS` with only `path` to find programs on.
fn doctor_with_path(path: &str, args: &[&str]) -> Output {
    Command::new(BIN).env("PATH", path).arg("doctor").args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_finds_every_feature_ready_where_ci_installed_it() {
    let out = Command::new(BIN).arg("doctor").args(EVERY_FEATURE).output().unwrap();
    assert_ok(&out);
    let text = stdout(&out);
    for feature in EVERY_FEATURE {
        assert!(text.contains(&format!("\n{feature}: ready\n")), "{text}");
    }
    // One line per need: status, name, version, package, who needs it.
    let podman = text.lines().find(|l| l.starts_with("found") && l.contains(" podman ")).expect(&text);
    assert!(podman.contains("imgbuild load"), "{podman}");
    assert!(text.lines().any(|l| l.starts_with("found") && l.contains("iptables") && l.contains("1.")), "{text}");

    let report = json(&Command::new(BIN).args(["--json", "doctor"]).args(EVERY_FEATURE).output().unwrap());
    assert_eq!(report["ready"], true, "{report}");
    let features: Vec<&str> =
        report["features"].as_array().unwrap().iter().map(|f| f["feature"].as_str().unwrap()).collect();
    assert_eq!(features, EVERY_FEATURE);
    let need = |id: &str| report["needs"].as_array().unwrap().iter().find(|n| n["need"] == id).unwrap();
    // A container ran here (it wrote the token the probe read back): with podman's own
    // settings, or with those docs/running.md gives (advice).
    let run = need("container-run");
    assert_eq!(run["ran"], true, "{run}");
    assert!(run["status"] == "found" || run["status"] == "advice", "{run}");
    // What the tests run besides: the compressor tests' CPU emulator, the benchmark's baseline,
    // the venv's validators.
    for (id, package) in [
        ("qemu-x86_64", "qemu-user"),
        ("pigz", "pigz"),
        ("kubernetes-validate", "kubernetes-validate"),
        ("pyspdxtools", "spdx-tools"),
        ("cyclonedx-validator", "cyclonedx-python-lib"),
    ] {
        let row = need(id);
        assert_eq!((&row["status"], &row["package"]), (&"found".into(), &package.into()), "{row}");
        assert!(row["features"].as_array().unwrap().iter().any(|f| f == "tests"), "{row}");
    }
    let kvm = need("kvm");
    // KVM is advice: where a guest would hang (nested), doctor says to use TCG.
    if kvm["status"] == "advice" {
        let detail = kvm["detail"].as_str().unwrap();
        assert!(detail.contains("IMGBUILD_ACCEL=tcg") || detail.contains("TCG"), "{detail}");
    }
}

#[test]
fn doctor_with_an_empty_path_names_podman_and_qemu_system_with_their_packages() {
    let out = doctor_with_path("/nonexistent", &[]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("load: NOT READY: podman (Debian package podman) or docker (Debian package docker.io)"),
        "{text}"
    );
    assert!(text.contains("qemu-system-x86_64 (Debian package qemu-system-x86)"), "{text}");
    let install = text.lines().find(|l| l.starts_with("install (Debian and Ubuntu): apt-get install ")).expect(&text);
    for package in ["podman", "qemu-system-x86", "qemu-utils", "iptables"] {
        assert!(install.split(' ').any(|w| w == package), "{install}");
    }
    // Compose needs an engine too (its containers run on one).
    let compose = text.lines().find(|l| l.starts_with("compose: NOT READY: ")).expect(&text);
    assert!(compose.contains("podman (Debian package podman) or docker (Debian package docker.io)"), "{compose}");
    // What needs no program is still ready.
    assert!(text.contains("\nbuild: ready\n"), "{text}");
    assert_ok(&doctor_with_path("/nonexistent", &["build", "verify"]));
    // An unknown feature is a usage error.
    assert_exit(&doctor_with_path("/nonexistent", &["kubernetes"]), 2);
}

#[test]
fn doctor_json_names_what_compose_needs() {
    let out = Command::new(BIN).env("PATH", "/nonexistent").args(["--json", "doctor", "compose"]).output().unwrap();
    assert_exit(&out, 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ready"], false);
    let need = |id: &str| report["needs"].as_array().unwrap().iter().find(|n| n["need"] == id).cloned();
    let iptables = need("iptables").expect("compose needs iptables");
    assert_eq!((iptables["status"].as_str(), iptables["package"].as_str()), (Some("missing"), Some("iptables")));
    // podman finds netavark in its own directories, not on PATH: so does doctor.
    let netavark = need("netavark").expect("compose needs netavark");
    assert_eq!((netavark["status"].as_str(), netavark["package"].as_str()), (Some("found"), Some("netavark")));
    assert!(need("aardvark-dns").is_some() && need("podman-compose").is_some());
    assert!(need("qemu-img").is_none(), "only the features asked about");
    let compose = &report["features"][0];
    assert_eq!(compose["feature"], "compose");
    assert!(
        compose["missing"].as_array().unwrap().iter().any(|m| m == "iptables (Debian package iptables)"),
        "{compose}"
    );
}

#[test]
fn load_without_an_engine_stops_before_building_and_names_the_package() {
    let p = TestProject::new();
    p.add_base();
    let out = p.cmd().env("PATH", "/nonexistent").args(["load"]).output().unwrap();
    assert_exit(&out, 6);
    let err = stderr(&out);
    assert!(err.contains("podman: not installed") && err.contains("not ready for `imgbuild load`"), "{err}");
    assert!(err.contains("apt-get install podman"), "{err}");
    assert_eq!(p.server.total_requests(), 0, "nothing was fetched: it stopped before the build");
    assert!(tree(&p.store.join("layers")).is_empty(), "no layer was built");
}

#[test]
fn deploy_compose_writes_its_file_and_warns_what_this_host_lacks_to_run_it() {
    let p = TestProject::new();
    // `deploy compose` names each node's image by its ID: it builds from the store.
    p.add_base();
    let out = p.cmd().env("PATH", "/nonexistent").args(["deploy", "compose", "--out", "c"]).output().unwrap();
    assert_ok(&out);
    assert!(p.root.join("c/compose.yaml").is_file());
    let err = stderr(&out);
    assert!(
        err.contains("warning: this host cannot run it yet") && err.contains("iptables (Debian package iptables)"),
        "{err}"
    );
    let out =
        p.cmd().env("PATH", "/nonexistent").args(["--json", "deploy", "compose", "--out", "c2"]).output().unwrap();
    let lacks = json(&out)["host_lacks"].clone();
    assert!(lacks.as_array().unwrap().iter().any(|m| m.as_str().unwrap().contains("iptables")), "{lacks}");
    // Where everything is installed, nothing is said.
    let quiet = p.run(&["deploy", "compose", "--out", "c3"]);
    assert_ok(&quiet);
    assert!(!stderr(&quiet).contains("warning"), "{}", stderr(&quiet));
}

#[test]
fn a_boot_script_without_qemu_stops_naming_its_package() {
    require_tool("qemu-img");
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["vm", "--id", "0", "--out", "vm"]));
    let script = p.root.join("vm/node-0.sh");
    let out = Command::new("/bin/sh").arg(&script).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("qemu-system-x86_64 is not installed") && err.contains("apt-get install qemu-system-x86"),
        "{err}"
    );
    assert!(Path::new(&script).is_file());
    require_tool("shellcheck");
    tool(Command::new("shellcheck").args(["-s", "sh"]).arg(&script));
}

/// A directory of links to the programs `needs` (as `imgbuild doctor tests` finds them): a PATH
/// with only those.
fn path_of(needs: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for need in needs {
        std::os::unix::fs::symlink(tool_path(need), dir.path().join(need)).unwrap();
    }
    dir
}

/// The host: docker-compose and iptables, no engine. The probe that runs a container is
/// not tried (it needs podman), which is unmet, never advice: compose is not ready, and says
/// which engines would do.
#[test]
fn compose_without_an_engine_is_not_ready_and_names_podman_and_docker() {
    let dir = path_of(&["docker-compose", "iptables"]);
    let path = dir.path().to_str().unwrap();
    let out = doctor_with_path(path, &["compose"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("\ncompose: NOT READY: podman (Debian package podman) or docker (Debian package docker.io)\n"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("UNTRIED") && l.contains(" container-run ")), "{text}");
    // The other compose tool is one of alternatives: not a failure.
    let podman_compose = text.lines().position(|l| l.contains("  podman-compose  ")).expect(&text);
    assert!(text.lines().nth(podman_compose).unwrap().starts_with("not needed "), "{text}");
    assert!(text.lines().nth(podman_compose + 1).unwrap().contains("not needed: docker-compose found"), "{text}");

    let out = Command::new(BIN).env("PATH", path).args(["--json", "doctor", "compose"]).output().unwrap();
    assert_exit(&out, 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let need = |id: &str| report["needs"].as_array().unwrap().iter().find(|n| n["need"] == id).unwrap().clone();
    let run = need("container-run");
    assert_eq!((run["status"].as_str(), run["requires"].as_str()), (Some("untried"), Some("podman")), "{run}");
    assert!(run.get("ran").is_none(), "{run}");
    assert_eq!(need("podman-compose")["instead"], "docker-compose");
    assert_eq!(need("docker-compose")["status"], "found");
    assert_eq!(need("iptables")["status"], "found");
    assert_eq!(report["features"][0]["packages"], serde_json::json!(["podman"]));
}

/// An alternative that is missing where another is found reads as not needed, in the table
/// and in the JSON (`instead`), and the feature is ready.
#[test]
fn a_missing_alternative_beside_a_found_one_reads_as_not_needed() {
    let (native, other) = match std::env::consts::ARCH {
        "aarch64" => ("qemu-system-aarch64", "qemu-system-x86_64"),
        _ => ("qemu-system-x86_64", "qemu-system-aarch64"),
    };
    let dir = path_of(&["qemu-img", "mke2fs", "debugfs", "xorriso", native]);
    let out = doctor_with_path(dir.path().to_str().unwrap(), &["vm"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("\nvm: ready\n"), "{text}");
    let at = text.lines().position(|l| l.contains(&format!("  {other}  "))).expect(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[at].starts_with("not needed "), "{text}");
    assert!(lines[at + 1].contains(&format!("not needed: {native} found (either will do)")), "{text}");
    assert!(!text.contains("MISSING"), "{text}");
    let out = Command::new(BIN).env("PATH", dir.path()).args(["--json", "doctor", "vm"]).output().unwrap();
    let report = json(&out);
    let row = report["needs"].as_array().unwrap().iter().find(|n| n["need"] == other).unwrap();
    assert_eq!((row["status"].as_str(), row["instead"].as_str()), (Some("missing"), Some(native)), "{row}");
}
