//! Node identity at boot, proven by a real ZooKeeper ensemble: three containers started by
//! Podman straight from the OCI layout imgbuild wrote, each told who it is the way a user
//! would (environment, hostname ordinal, baked id), each on its own loopback address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::debian::{self, BASE_PACKAGES, JAVA_HOME};
use super::fixtures;
use super::harness::*;
use super::http::Fault;

const HOSTS: [&str; 3] = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];
const KAFKA_1_0_CONFIGS: &str = include_str!("kafka-1.0-broker-configs.txt");

pub(super) fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    c
}

/// The containers a test started, and the lowercase link Podman reads the layout through;
/// all removed when dropped, also when the test fails.
pub(super) struct Containers {
    pub(super) names: Vec<String>,
    link: PathBuf,
    /// Podman's image ids are the config digests: the images it imported from the layout.
    images: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        if !self.names.is_empty() {
            let _ = podman().args(["rm", "--force", "--time", "0"]).args(&self.names).output();
        }
        if !self.images.is_empty() {
            let _ = podman().args(["rmi", "--force"]).args(&self.images).output();
        }
        let _ = std::fs::remove_file(&self.link);
    }
}

pub(super) fn logs(name: &str) -> String {
    let out = podman().args(["logs", name]).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// ZooKeeper's answer to the four-letter word `word` (`srvr`: its version, mode, ...), if the
/// node answers.
pub(super) fn four_letters(host: &str, word: &str) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&format!("{host}:2181").parse().unwrap(), Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// ZooKeeper's `srvr` answer's mode (`leader`, `follower`), if the node answers.
fn mode(host: &str) -> Option<String> {
    four_letters(host, "srvr")?.lines().find_map(|l| l.strip_prefix("Mode: ")).map(str::to_string)
}

/// Polls until exactly one of `hosts` leads and the others follow; bounded.
pub(super) fn wait_for_quorum(hosts: &[&str], limit: Duration, names: &[String]) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let modes: Vec<Option<String>> = hosts.iter().map(|h| mode(h)).collect();
        let leaders: Vec<&str> =
            hosts.iter().zip(&modes).filter(|(_, m)| m.as_deref() == Some("leader")).map(|(h, _)| *h).collect();
        let followers = modes.iter().filter(|m| m.as_deref() == Some("follower")).count();
        if leaders.len() == 1 && followers == hosts.len() - 1 {
            return leaders[0].to_string();
        }
        if Instant::now() > deadline {
            let all_logs: Vec<String> = names.iter().map(|n| format!("--- {n}\n{}", logs(n))).collect();
            panic!("no quorum of {hosts:?} after {limit:?}: {modes:?}\n{}", all_logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(super) fn zk_cli(container: &str, host: &str, args: &[&str]) -> Output {
    podman()
        .args(["exec", container, "/usr/local/zookeeper/bin/zkCli.sh", "-server", &format!("{host}:2181")])
        .args(args)
        .output()
        .unwrap()
}

/// Writes the seed's recipes (same names as `recipes/`) pinned to real inputs from Debian.
pub(super) fn pin_real_inputs(p: &TestProject, work: &Path) {
    pin_real_inputs_on(p, work, BASE_PACKAGES);
}

/// [`pin_real_inputs`] with a base of these Debian packages.
pub(super) fn pin_real_inputs_on(p: &TestProject, work: &Path, packages: &[&str]) {
    pin_base_and_jre_on(p, work, packages);
    let inputs = [("zookeeper.tar.gz", debian::zookeeper_dist(work)), ("kafka.tgz", debian::kafka_standin(work))];
    for (name, data) in &inputs {
        p.server.serve(&format!("real/{name}"), data.clone(), Fault::None);
    }
    let hash = |i: usize| fixtures::sha256_hex(&inputs[i].1);
    let url = |i: usize| p.server.url(&format!("real/{}", inputs[i].0));
    for (i, name, prefix) in [(0, "zookeeper", "/usr/local/zookeeper"), (1, "kafka", "/usr/local/kafka")] {
        p.write_recipe(
            &format!("{name}.toml"),
            &format!("name = \"{name}\"\nversion = \"test\"\npath = [\"{prefix}/bin\"]\n\n[[source]]\nurl = \"{}\"\nsha256 = \"{}\"\n\n[unpack]\nstrip_components = 1\nprefix = \"{prefix}\"\n", url(i), hash(i)),
        );
    }
}

/// Writes the recipes of the base (a Debian root as an OCI layout, added to the store) and of
/// the JDK layer (named `temurin-jdk8` as in `recipes/`: Debian's Java 17, as a tarball).
pub(super) fn pin_base_and_jre(p: &TestProject, work: &Path) {
    pin_base_and_jre_on(p, work, BASE_PACKAGES);
}

/// [`pin_base_and_jre`] with a base of these Debian packages.
fn pin_base_and_jre_on(p: &TestProject, work: &Path, packages: &[&str]) {
    let root = work.join("base-root");
    debian::debian_root(&root, packages);
    let base = work.join("base-layout");
    let base_digest = fixtures::layout_from_root(&base, &root);
    let jre = debian::tarball_of(Path::new(JAVA_HOME), "jdk-17");
    p.server.serve("real/jre.tar.gz", jre.clone(), Fault::None);
    p.write_recipe(
        "temurin-jdk8.toml",
        &format!(
            "name = \"temurin-jdk8\"\nversion = \"17 (Debian)\"\nenv = {{ JAVA_HOME = \"/opt/java/openjdk\" }}\npath = [\"/opt/java/openjdk/bin\"]\n\n[[source]]\nplatform = \"linux/amd64\"\nurl = \"{}\"\nsha256 = \"{}\"\n\n[unpack]\nstrip_components = 1\nprefix = \"/opt/java/openjdk\"\nexclude = [\"legal\", \"man\"]\n",
            p.server.url("real/jre.tar.gz"),
            fixtures::sha256_hex(&jre)
        ),
    );
    p.write_recipe(
        "debian-bookworm-slim.toml",
        &format!("name = \"debian-bookworm-slim\"\nversion = \"test\"\nkind = \"oci-image\"\n\n[[source]]\nplatform = \"linux/amd64\"\ndigest = \"{base_digest}\"\n"),
    );
    assert_ok(&p.run(&["store", "add", base.to_str().unwrap()]));
}

/// `podman run` of a node image as the test runs them all: host network, the ulimits runc
/// needs here, and the node's data directories (created) as its volumes. `mode` is `--detach
/// --name N` or `--rm`; the caller adds the environment and the image.
pub(super) fn node_run(data: &Path, mode: &[&str]) -> Command {
    for d in ["zookeeper", "kafka"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    let mut cmd = podman();
    cmd.arg("run").args(mode).args(["--network=host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
    cmd.arg("-v").arg(format!("{}:/var/lib/zookeeper", data.join("zookeeper").display()));
    cmd.arg("-v").arg(format!("{}:/var/lib/kafka", data.join("kafka").display()));
    cmd
}

/// `podman run -d` of one node; `identity` is how it is told who it is.
pub(super) fn start_node(layout: &Path, tag: &str, name: &str, data: &Path, identity: &[&str]) {
    let out = node_run(data, &["--detach", "--name", name])
        .args(["-e", "IMGBUILD_VAR_bind_address={{node_host}}", "-e", "IMGBUILD_VAR_tick_time=500"])
        .args(identity)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "podman run {name}: {}", String::from_utf8_lossy(&out.stderr));
}

fn properties(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Builds the project's cluster and links its layout where Podman reads it; the guard names
/// three containers `PREFIX-PID-nodeN` (one per node, in order) and removes them, the images
/// Podman imported and the link when dropped. Also the nodes' data directories.
pub(super) fn build_for_podman(p: &TestProject, prefix: &str) -> (Containers, PathBuf, Vec<PathBuf>) {
    let built = json(&p.run(&["--json", "build"]));
    let images: Vec<String> = built["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["platforms"][0]["config_digest"].as_str().unwrap().trim_start_matches("sha256:").to_string())
        .collect();
    let names: Vec<String> = (0..3).map(|n| format!("{prefix}-{}-node{n}", std::process::id())).collect();
    // Podman names the image after the layout's path, which must then be lowercase.
    let layout = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let guard = Containers { names, link: layout.clone(), images };
    std::os::unix::fs::symlink(p.root.join("out/zk-kafka"), &layout).unwrap();
    let data: Vec<PathBuf> = (0..3).map(|n| p.path(&format!("data/{n}"))).collect();
    (guard, layout, data)
}

#[test]
fn three_containers_from_one_build_form_a_zookeeper_ensemble() {
    debian::require();
    let p = TestProject::new();
    let work = p.path("work");
    pin_real_inputs(&p, &work);
    let (guard, layout, data) = build_for_podman(&p, "imgbuild-ensemble");
    let names = guard.names.clone();

    // Node 0 from node 2's image, told by the environment; node 1 from node 0's image, told by
    // its hostname; node 2 from its own image, knowing only its baked id.
    start_node(&layout, "node-2", &names[0], &data[0], &["-e", "NODE_ID=0"]);
    start_node(&layout, "node-0", &names[1], &data[1], &["--hostname", "zk-1"]);
    start_node(&layout, "node-2", &names[2], &data[2], &[]);

    let leader = wait_for_quorum(&HOSTS, Duration::from_secs(120), &names);
    for (n, source) in
        ["environment variable NODE_ID", "hostname zk-1", "the id baked into the image"].iter().enumerate()
    {
        let log = logs(&names[n]);
        assert!(log.contains(&format!("node {n} of cluster zk-kafka (identity from {source}")), "{log}");
        assert_eq!(std::fs::read_to_string(data[n].join("zookeeper/myid")).unwrap(), format!("{n}\n"));
    }

    // Written through one node, read through another.
    let create = zk_cli(&names[0], HOSTS[0], &["create", "/imgbuild-seed", "written-through-node-0"]);
    assert!(create.status.success(), "{}", String::from_utf8_lossy(&create.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let get = zk_cli(&names[2], HOSTS[2], &["get", "/imgbuild-seed"]);
        if String::from_utf8_lossy(&get.stdout).contains("written-through-node-0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "znode not readable through node 2: {}",
            String::from_utf8_lossy(&get.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Kafka's configuration, per node, as the seed wants it, with only Kafka 1.0 settings.
    let known: Vec<&str> = KAFKA_1_0_CONFIGS.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    for n in 0..3 {
        let logs_dir = data[n].join("kafka/logs");
        let props = properties(&logs_dir.join("started-with.properties"));
        let get = |k: &str| props.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("broker.id"), Some(n.to_string().as_str()));
        assert_eq!(get("listeners"), Some(format!("PLAINTEXT://{}:9092", HOSTS[n]).as_str()));
        assert_eq!(get("advertised.listeners"), Some(format!("PLAINTEXT://{}:9092", HOSTS[n]).as_str()));
        assert_eq!(get("zookeeper.connect"), Some("127.0.1.1:2181,127.0.1.2:2181,127.0.1.3:2181"));
        assert_eq!(get("log.dirs"), Some("/var/lib/kafka/logs"));
        for (k, _) in &props {
            assert!(known.contains(&k.as_str()), "`{k}` is not a Kafka 1.0 broker setting");
        }
        let args = std::fs::read_to_string(logs_dir.join("started-with.args")).unwrap();
        assert_eq!(args, "/usr/local/kafka/config/server.properties\n");
    }

    // Stop the leader: its entrypoint stops both services cleanly, and the other two elect a new one.
    let l = HOSTS.iter().position(|h| *h == leader).unwrap();
    let stop = podman().args(["stop", "--time", "20", &names[l]]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let code = podman().args(["inspect", "--format", "{{.State.ExitCode}}", &names[l]]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "0", "entrypoint exit after SIGTERM: {}", logs(&names[l]));
    assert_eq!(
        std::fs::read_to_string(data[l].join("kafka/logs/stopped")).unwrap(),
        "stopped\n",
        "SIGTERM reached Kafka"
    );
    let rest: Vec<&str> = HOSTS.iter().enumerate().filter(|(i, _)| *i != l).map(|(_, h)| *h).collect();
    let remaining: Vec<String> = names.iter().enumerate().filter(|(i, _)| *i != l).map(|(_, n)| n.clone()).collect();
    let new_leader = wait_for_quorum(&rest, Duration::from_secs(60), &remaining);
    assert_ne!(new_leader, leader);

    // The stopped node's data is never taken over by another identity.
    let other = (l + 1) % 3;
    let refused = node_run(&data[l], &["--rm"])
        .args(["-e", &format!("NODE_ID={other}")])
        .arg(format!("oci:{}:node-{l}", layout.display()))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(65), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("holds '{l}' but this node would write '{other}'"))
    );

    // A service that dies takes the node down with a non-zero exit, after stopping the others.
    let broken = p.path("data/broken");
    let died = node_run(&broken, &["--rm"])
        .args(["-e", "NODE_ID=0", "-e", "IMGBUILD_VAR_bind_address={{node_host}}"])
        .args(["-e", "IMGBUILD_VAR_zookeeper_client_port=not-a-port"])
        .arg(format!("oci:{}:node-0", layout.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&died.stderr);
    assert_eq!(died.status.code(), Some(70), "{err}");
    assert!(err.contains("service zookeeper exited with status"), "{err}");
    assert_eq!(
        std::fs::read_to_string(broken.join("kafka/logs/stopped")).unwrap(),
        "stopped\n",
        "the other service was stopped"
    );
}
