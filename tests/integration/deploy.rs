//! Running the cluster where it lives: `imgbuild load` into Podman, the compose file run for
//! real by podman-compose (service names resolved by aardvark-dns), and the Kubernetes
//! manifests checked against Kubernetes' own schemas and rendered, pod by pod, by the
//! entrypoint the pods run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::debian;
use super::ensemble::{pin_real_inputs, podman};
use super::harness::*;
use super::http::Fault;

/// A name no other test run on this machine uses: images, containers, volumes and networks
/// are named after it.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 100_000
}

/// Replaces `from` with `to` in the test's copy of the seed definition.
fn edit_definition(p: &TestProject, from: &str, to: &str) {
    let path = p.root.join("images/zk-kafka.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "the seed definition has no `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Everything a test put into Podman, removed when dropped (also when the test fails):
/// the compose project's containers, volumes and network, and the images loaded.
struct Engine {
    conf: PathBuf,
    storage: PathBuf,
    project: Option<String>,
    images: Vec<String>,
}

impl Engine {
    /// A Podman of the test's own: a containers.conf that makes Podman work here (runc,
    /// cgroupfs, the ulimits runc may set) and gives networks a DNS server (netavark with
    /// aardvark-dns), and a store of images in the test's directory, so that no other test
    /// can remove a layer this one's images share (Podman keeps one copy of each layer).
    fn new(p: &TestProject, project: Option<String>, images: Vec<String>) -> Engine {
        let conf = p.path("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\n[network]\nnetwork_backend = \"netavark\"\n",
        )
        .unwrap();
        let storage = p.path("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p.path("podman/root").display(),
                p.path("podman/run").display()
            ),
        )
        .unwrap();
        Engine { conf, storage, project, images }
    }

    /// `cmd` (Podman, podman-compose, or imgbuild, which runs `podman load`) using this Podman.
    fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("CONTAINERS_CONF", &self.conf).env("CONTAINERS_STORAGE_CONF", &self.storage)
    }

    fn podman(&self) -> Command {
        let mut c = podman();
        self.configure(&mut c);
        c
    }

    fn lines(&self, args: &[&str]) -> Vec<String> {
        let out = self.podman().args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
    }

    /// The containers of the compose project (of one service, when named).
    fn containers(&self, project: &str, service: Option<&str>) -> Vec<String> {
        let mut args = vec!["ps".to_string(), "-a".into(), "-q".into()];
        args.push("--filter".into());
        args.push(format!("label=io.podman.compose.project={project}"));
        if let Some(s) = service {
            args.push("--filter".into());
            args.push(format!("label=com.docker.compose.service={s}"));
        }
        self.lines(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(project) = &self.project {
            let containers = self.containers(project, None);
            if !containers.is_empty() {
                let _ = self.podman().args(["rm", "--force", "--time", "0"]).args(&containers).output();
            }
            // The compose file names volumes NAME-N-… and its network NAME (the project's name).
            let prefix = format!("{project}-");
            let volumes: Vec<String> = self
                .lines(&["volume", "ls", "--format", "{{.Name}}"])
                .into_iter()
                .filter(|v| v.starts_with(&prefix))
                .collect();
            if !volumes.is_empty() {
                let _ = self.podman().args(["volume", "rm", "--force"]).args(&volumes).output();
            }
            let _ = self.podman().args(["network", "rm", "--force", project]).output();
        }
        if !self.images.is_empty() {
            let _ = self.podman().args(["rmi", "--force"]).args(&self.images).output();
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The images `imgbuild load` puts into the engine for cluster `name`.
fn loaded_images(name: &str) -> Vec<String> {
    ["cluster", "node-0", "node-1", "node-2"].iter().map(|t| format!("localhost/{name}:{t}")).collect()
}

#[test]
fn load_streams_every_node_into_podman_and_names_a_missing_engine() {
    require_tool("podman");
    let p = TestProject::new();
    p.add_base();
    let name = unique("load");
    edit_definition(&p, "name = \"zk-kafka\"", &format!("name = \"{name}\""));
    let engine = Engine::new(&p, None, loaded_images(&name));

    let loaded = json(&engine.configure(&mut p.cmd()).args(["--json", "load"]).output().unwrap());
    let built = json(&p.run(&["--json", "--offline", "build"]));
    let config = |image: &serde_json::Value| image["platforms"][0]["config_digest"].as_str().unwrap().to_string();
    let mut expected = vec![("cluster".to_string(), config(&built["cluster"]))];
    for n in built["nodes"].as_array().unwrap() {
        expected.push((n["tag"].as_str().unwrap().to_string(), config(n)));
    }
    let reported = loaded["loaded"].as_array().unwrap();
    assert_eq!(reported.len(), 4, "{loaded}");
    for ((tag, config_digest), r) in expected.iter().zip(reported) {
        let reference = format!("localhost/{name}:{tag}");
        assert_eq!(r["reference"], reference.as_str());
        assert_eq!(r["config_digest"], config_digest.as_str());
        // Podman's image id is the config's digest: the very image imgbuild built.
        let id = engine.lines(&["image", "inspect", "--format", "{{.Id}}", &reference]);
        assert_eq!(id, vec![config_digest.trim_start_matches("sha256:").to_string()], "{reference}");
    }

    let one = json(&engine.configure(&mut p.cmd()).args(["--json", "load", "--id", "1"]).output().unwrap());
    assert_eq!(one["loaded"].as_array().unwrap().len(), 1);
    assert_eq!(one["loaded"][0]["reference"], format!("localhost/{name}:node-1").as_str());
    assert_ok(&engine.podman().args(["rmi", &format!("localhost/{name}:node-1")]).output().unwrap());
    let one = json(&engine.configure(&mut p.cmd()).args(["--json", "load", "--id", "1"]).output().unwrap());
    let id = engine.lines(&["image", "inspect", "--format", "{{.Id}}", &format!("localhost/{name}:node-1")]);
    assert_eq!(id, vec![one["loaded"][0]["config_digest"].as_str().unwrap().trim_start_matches("sha256:")]);
    // For people: the name and the image ID the engine shows.
    let plain = engine.configure(&mut p.cmd()).args(["load", "--id", "1"]).output().unwrap();
    assert_ok(&plain);
    let printed = String::from_utf8_lossy(&plain.stdout).into_owned();
    assert_eq!(printed, format!("localhost/{name}:node-1\tsha256:{}\n", id[0]), "{printed}");

    // No engine on PATH: a clear error naming what to install, exit 6.
    let empty = p.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let missing = p.cmd().env("PATH", &empty).args(["load", "--engine", "docker"]).output().unwrap();
    assert_exit(&missing, 6);
    assert!(stderr(&missing).contains("apt-get install docker.io"), "{}", stderr(&missing));

    // An engine that fails while the archive streams in: its own words, exit 6.
    let failing = p.path("failing-engine");
    std::fs::create_dir_all(&failing).unwrap();
    let script = failing.join("podman");
    std::fs::write(&script, "#!/bin/sh\nhead -c 100 >/dev/null\necho 'storage is read-only' >&2\nexit 125\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", failing.display());
    let failed = p.cmd().env("PATH", path).args(["load"]).output().unwrap();
    assert_exit(&failed, 6);
    assert!(stderr(&failed).contains("storage is read-only"), "{}", stderr(&failed));
}

/// A Kafka stand-in that answers on the broker's port (`rmiregistry`, from the Java runtime),
/// with Kafka's `zookeeper-shell.sh`, which the node's health check runs.
fn serve_listening_kafka(p: &TestProject, work: &Path) {
    let dist = work.join("kafka-listening");
    std::fs::create_dir_all(dist.join("bin")).unwrap();
    let script = "#!/bin/sh\n# Stand-in for Kafka: a Java process listening on the broker's port.\nport=$(sed -n 's/^listeners=.*:\\([0-9]*\\)$/\\1/p' \"$1\")\nexec \"$JAVA_HOME/bin/rmiregistry\" -J-Xmx32m \"$port\"\n";
    let path = dist.join("bin/kafka-server-start.sh");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    debian::zookeeper_shell(&dist);
    let data = debian::tarball_of(&dist, "kafka_2.11-1.0.0");
    let hex = super::fixtures::sha256_hex(&data);
    p.server.serve("real/kafka-listening.tgz", data, Fault::None);
    p.write_recipe(
        "kafka.toml",
        &format!(
            "name = \"kafka\"\nversion = \"test\"\n\n[[source]]\nurl = \"{}\"\nsha256 = \"{hex}\"\n\n[unpack]\nstrip_components = 1\nprefix = \"/usr/local/kafka\"\n",
            p.server.url("real/kafka-listening.tgz")
        ),
    );
}

/// Whether Podman's netavark backend and its DNS server are installed (they are not on PATH).
/// An offset for the published ports under which every host port the compose file publishes
/// (2181 and 9092, plus one per node) is free now.
fn free_port_offset() -> u16 {
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (0..200u16)
        .map(|k| start + k * 7)
        .find(|offset| {
            [2181u16, 9092]
                .iter()
                .flat_map(|p| (0..3).map(move |i| p + offset + i))
                .all(|port| TcpListener::bind(("0.0.0.0", port)).is_ok())
        })
        .expect("no free ports for the compose file")
}

/// ZooKeeper's `srvr` mode (`leader`, `follower`) of the node published on `port`, if it answers.
fn zk_mode(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"srvr").ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    answer.lines().find_map(|l| l.strip_prefix("Mode: ")).map(str::to_string)
}

/// The compose file's values, read by a YAML reader.
fn read_yaml(path: &Path) -> Vec<yaml_rust2::Yaml> {
    yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn compose_file_runs_a_zookeeper_ensemble_under_podman_compose() {
    debian::require();
    require_feature("compose");
    require_tool("podman-compose");
    let p = TestProject::new();
    let work = p.path("work");
    pin_real_inputs(&p, &work);
    serve_listening_kafka(&p, &work);
    let name = unique("zkc");
    edit_definition(&p, "name = \"zk-kafka\"", &format!("name = \"{name}\""));
    edit_definition(&p, "tick_time = \"2000\"", "tick_time = \"500\"");
    let engine = Engine::new(&p, Some(name.clone()), loaded_images(&name));
    assert_ok(&engine.configure(&mut p.cmd()).args(["load"]).output().unwrap());

    let offset = free_port_offset();
    let deployed = json(&p.run(&[
        "--json",
        "deploy",
        "compose",
        "--port-offset",
        &offset.to_string(),
        "--publish-address",
        "127.0.0.1",
    ]));
    let file = PathBuf::from(deployed["file"].as_str().unwrap());
    let file = p.root.join(file);
    let compose = |args: &[&str]| {
        engine
            .configure(&mut Command::new("podman-compose"))
            .arg("-p")
            .arg(&name)
            .arg("-f")
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let up = compose(&["up", "-d"]);
    assert!(up.status.success(), "podman-compose up: {}", text(&up));
    let services: Vec<String> = (0..3).map(|n| format!("{name}-{n}")).collect();
    let container = |s: &str| engine.containers(&name, Some(s)).pop().unwrap_or_else(|| panic!("no container for {s}"));
    let logs = || -> String {
        services
            .iter()
            .map(|s| format!("--- {s}\n{}", text(&engine.podman().args(["logs", &container(s)]).output().unwrap())))
            .collect()
    };

    // One leader, two followers, reached through the published ports.
    let ports: Vec<u16> = (0..3).map(|i| 2181 + offset + i).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let modes: Vec<Option<String>> = ports.iter().map(|p| zk_mode(*p)).collect();
        let leaders = modes.iter().filter(|m| m.as_deref() == Some("leader")).count();
        let followers = modes.iter().filter(|m| m.as_deref() == Some("follower")).count();
        if leaders == 1 && followers == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no quorum through ports {ports:?}: {modes:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    for (n, s) in services.iter().enumerate() {
        let log = text(&engine.podman().args(["logs", &container(s)]).output().unwrap());
        assert!(
            log.contains(&format!("node {n} of cluster {name} (identity from environment variable NODE_ID")),
            "{log}"
        );
    }

    // What docs/running.md says of podman-compose 1.0.3: containers, volumes and the network are
    // named as the file names them; the checks it runs work as written.
    assert_eq!(engine.lines(&["ps", "--format", "{{.Names}}", "--filter", &format!("name=^{name}-")]).len(), 3);
    let volumes = engine.lines(&["volume", "ls", "--format", "{{.Name}}"]);
    for n in 0..3 {
        for v in ["var-lib-zookeeper", "var-lib-kafka"] {
            assert!(volumes.contains(&format!("{name}-{n}-{v}")), "{volumes:?}");
        }
    }
    assert_ok(&engine.podman().args(["network", "exists", &name]).output().unwrap());
    let modes: Vec<String> = services
        .iter()
        .map(|s| {
            let status = engine.podman().args(["exec", s, "/usr/local/zookeeper/bin/zkServer.sh", "status"]).output();
            let status = status.unwrap();
            assert!(status.status.success(), "zkServer.sh status in {s}: {}", text(&status));
            String::from_utf8_lossy(&status.stdout).trim().to_string()
        })
        .collect();
    assert_eq!(modes.iter().filter(|m| *m == "Mode: leader").count(), 1, "{modes:?}");
    assert_eq!(modes.iter().filter(|m| *m == "Mode: follower").count(), 2, "{modes:?}");
    let stop_timeout = engine.lines(&["inspect", "--format", "{{.Config.StopTimeout}}", &services[0]]);
    assert_eq!(stop_timeout, ["10"], "podman-compose 1.0.3 leaves stop_grace_period out, as docs/running.md says");
    // Published on the loopback address only.
    let published = engine.lines(&["port", &services[0]]);
    assert!(published.iter().all(|l| l.contains("127.0.0.1:")), "{published:?}");

    // Written through one service, read through another, by their service names.
    let zk = |on: &str, server: &str, args: &[&str]| {
        engine
            .podman()
            .args(["exec", &container(on), "/usr/local/zookeeper/bin/zkCli.sh", "-server", &format!("{server}:2181")])
            .args(args)
            .output()
            .unwrap()
    };
    let create = zk(&services[0], &services[0], &["create", "/imgbuild-compose", "written-on-0"]);
    assert!(create.status.success(), "{}", text(&create));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let get = zk(&services[1], &services[2], &["get", "/imgbuild-compose"]);
        if String::from_utf8_lossy(&get.stdout).contains("written-on-0") {
            break;
        }
        assert!(Instant::now() < deadline, "znode not read through {}: {}", services[2], text(&get));
        std::thread::sleep(Duration::from_millis(500));
    }

    // The health check passes on a serving node (the stand-in broker registers as Kafka
    // would: the test does it), and fails where nothing serves.
    for path in ["/brokers", "/brokers/ids"] {
        assert_ok(&zk(&services[0], &services[0], &["create", path]));
    }
    for (n, s) in services.iter().enumerate() {
        let registration = format!(r#"{{"endpoints":["PLAINTEXT://{s}:9092"],"host":"{s}","port":9092,"version":4}}"#);
        assert_ok(&zk(&services[0], &services[0], &["create", &format!("/brokers/ids/{n}"), &registration]));
    }
    for s in &services {
        let health = engine.podman().args(["healthcheck", "run", &container(s)]).output().unwrap();
        assert!(health.status.success(), "{s} unhealthy: {}", text(&health));
    }
    let doc = &read_yaml(&file)[0];
    let test: Vec<String> = doc["services"][services[0].as_str()]["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().replace("$$", "$"))
        .collect();
    assert_eq!(test[0], "CMD-SHELL");
    let idle = engine
        .podman()
        .args(["run", "--rm", "--network=none", "--entrypoint", "/bin/sh"])
        .arg(format!("localhost/{name}:node-0"))
        .args(["-c", &test[1]])
        .output()
        .unwrap();
    assert_eq!(idle.status.code(), Some(1), "the health check of a node with nothing listening: {}", text(&idle));

    // The health checks pass when run; after one, the status says so.
    let status = engine.lines(&["inspect", "--format", "{{.State.Health.Status}}", &services[0]]);
    assert_eq!(status, ["healthy"]);

    let down = compose(&["down", "-t", "60"]);
    assert!(down.status.success(), "podman-compose down: {}", text(&down));
    assert_eq!(engine.containers(&name, None), Vec::<String>::new(), "containers left after down");
    // The named volumes stay; the network too (podman-compose 1.0.3), removed by name.
    let volumes = engine.lines(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(volumes.contains(&format!("{name}-0-var-lib-zookeeper")), "{volumes:?}");
    assert_ok(&engine.podman().args(["network", "rm", &name]).output().unwrap());
}

#[test]
fn compose_file_is_valid_for_docker_compose_whatever_the_definition_holds() {
    let p = TestProject::new();
    p.add_base();
    let built = json(&p.run(&["--json", "build"]));
    // The build's table names the `cluster` image (what Kubernetes runs) by digest too.
    let table = String::from_utf8_lossy(&p.run(&["build"]).stdout).into_owned();
    let cluster = format!("cluster\t{}\t", built["cluster"]["digest"].as_str().unwrap());
    assert!(table.lines().any(|l| l.starts_with(&cluster)), "{table}");
    let out = p.run(&["--json", "deploy", "compose", "--out", "c"]);
    let file = p.root.join(json(&out)["file"].as_str().unwrap());
    let doc = &read_yaml(&file)[0];
    let service = &doc["services"]["zk-kafka-1"];
    // Each node by the image ID `imgbuild load` gives it (its config's digest), never by tag.
    assert_eq!(service["image"].as_str(), Some(loaded_id(&built, 1).as_str()));
    assert_eq!(service["hostname"].as_str(), Some("zk-kafka-1"));
    // Names that do not depend on the tool or its project name.
    assert_eq!(service["container_name"].as_str(), Some("zk-kafka-1"));
    assert_eq!(doc["volumes"]["zk-kafka-1-var-lib-kafka"]["name"].as_str(), Some("zk-kafka-1-var-lib-kafka"));
    assert_eq!(doc["networks"]["default"]["name"].as_str(), Some("zk-kafka"));
    assert_eq!(service["environment"]["PEERS"].as_str(), Some("0=zk-kafka-0,1=zk-kafka-1,2=zk-kafka-2"));
    assert_eq!(service["environment"]["NODE_ID"].as_str(), Some("1"));
    assert_eq!(service["environment"]["IMGBUILD_VAR_bind_address"].as_str(), Some("0.0.0.0"));
    assert_eq!(service["stop_signal"].as_str(), Some("SIGTERM"));
    assert_eq!(
        service["ports"].as_vec().unwrap().iter().map(|p| p.as_str().unwrap()).collect::<Vec<_>>(),
        ["2182:2181/tcp", "9093:9092/tcp"],
        "peer ports are not published; client ports are, one host port each"
    );
    assert_eq!(
        service["volumes"].as_vec().unwrap().iter().map(|p| p.as_str().unwrap()).collect::<Vec<_>>(),
        ["zk-kafka-1-var-lib-zookeeper:/var/lib/zookeeper", "zk-kafka-1-var-lib-kafka:/var/lib/kafka"]
    );
    // Compose would replace `$f` in the health check: the file says `$$f`.
    let health = yaml_str(&service["healthcheck"]["test"][1]);
    assert!(health.contains("\"$$zk\"") && !health.replace("$$", "").contains('$'), "{health}");
    // Deterministic: the same file again.
    let again = p.run(&["deploy", "compose", "--out", "c2"]);
    assert_ok(&again);
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(p.root.join("c2/compose.yaml")).unwrap());
    docker_compose_accepts(&file);
    // A new build names new images: the file changes, so `compose up` recreates those nodes.
    edit_definition(&p, "tick_time = \"2000\"", "tick_time = \"3000\"");
    let rebuilt = json(&p.run(&["--json", "build"]));
    assert_ok(&p.run(&["deploy", "compose", "--out", "c3"]));
    let changed = &read_yaml(&p.root.join("c3/compose.yaml"))[0];
    for i in 0..3 {
        let image = yaml_str(&changed["services"][format!("zk-kafka-{i}").as_str()]["image"]);
        assert_eq!(image, loaded_id(&rebuilt, i));
        assert_ne!(image, loaded_id(&built, i), "node {i}: a changed image keeps its old name");
    }
    edit_definition(&p, "tick_time = \"3000\"", "tick_time = \"2000\"");

    // On one host address only: IPv4 as it is, IPv6 in brackets; anything else is refused.
    for (address, first) in [("127.0.0.1", "127.0.0.1:2182:2181/tcp"), ("::1", "[::1]:2182:2181/tcp")] {
        let out = json(&p.run(&["--json", "deploy", "compose", "--out", "local", "--publish-address", address]));
        assert_eq!(out["published"][2]["host_address"].as_str(), Some(address), "{out}");
        let local = p.root.join(out["file"].as_str().unwrap());
        let doc = &read_yaml(&local)[0];
        assert_eq!(yaml_str(&doc["services"]["zk-kafka-1"]["ports"][0]), first);
        docker_compose_accepts(&local);
    }
    for bad in ["localhost", "127.0.0.1:80", "0x7f.1"] {
        let out = p.run(&["deploy", "compose", "--publish-address", bad]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("--publish-address"), "{}", stderr(&out));
    }

    // A name that is no DNS label and volumes whose names would collide: still valid, and
    // every service and volume named apart.
    edit_definition(&p, "name = \"zk-kafka\"", "name = \"9zk.kafka_x\"");
    edit_definition(&p, "\"/var/lib/kafka\"]", "\"/var/lib/kafka\", \"/data/K@fka+1\", \"/data/k-fka-1\"]");
    let odd = json(&p.run(&["--json", "deploy", "compose", "--out", "odd"]));
    let odd_file = p.root.join(odd["file"].as_str().unwrap());
    let doc = &read_yaml(&odd_file)[0];
    let service = &doc["services"]["c-9zk-kafka-x-2"];
    assert_eq!(yaml_str(&service["image"]).len(), 64, "an image ID");
    let volumes: Vec<&str> = service["volumes"].as_vec().unwrap().iter().map(yaml_str).collect();
    assert_eq!(
        volumes,
        [
            "c-9zk-kafka-x-2-var-lib-zookeeper:/var/lib/zookeeper",
            "c-9zk-kafka-x-2-var-lib-kafka:/var/lib/kafka",
            "c-9zk-kafka-x-2-data-k-fka-1:/data/K@fka+1",
            "c-9zk-kafka-x-2-data-k-fka-1-3:/data/k-fka-1",
        ]
    );
    docker_compose_accepts(&odd_file);
    edit_definition(&p, "name = \"9zk.kafka_x\"", "name = \"zk-kafka\"");

    // From a registry: each node's image pinned by the digest `push` gives it.
    let built = json(&p.run(&["--json", "build"]));
    let pinned = json(&p.run(&["--json", "deploy", "compose", "--out", "r", "--repo", "registry.example.org/team/zk"]));
    let doc = &read_yaml(&p.root.join(pinned["file"].as_str().unwrap()))[0];
    for (i, n) in built["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            doc["services"][format!("zk-kafka-{i}").as_str()]["image"].as_str().unwrap(),
            format!("registry.example.org/team/zk@{}", n["digest"].as_str().unwrap())
        );
    }
    let tagged = p.run(&["deploy", "compose", "--repo", "registry.example.org/team/zk:v1"]);
    assert_exit(&tagged, 2);
}

/// The image ID of node `i` of a `build --json` once loaded: its config's digest, without `sha256:`.
fn loaded_id(built: &serde_json::Value, i: usize) -> String {
    let node = &built["nodes"][i];
    let digest = node["platforms"][0]["config_digest"].as_str().unwrap_or_else(|| panic!("no config digest: {node}"));
    digest.trim_start_matches("sha256:").to_string()
}

/// `docker-compose config` reads the file as Compose would run it.
fn docker_compose_accepts(file: &Path) {
    require_tool("docker-compose");
    let config = Command::new("docker-compose").arg("-f").arg(file).args(["config", "--quiet"]).output().unwrap();
    assert!(config.status.success(), "docker-compose config: {}", text(&config));
}

#[test]
fn a_node_count_other_than_the_definitions_needs_a_scalable_cluster() {
    let p = TestProject::new();
    // `deploy compose` names each node's image by its ID: it builds from the store.
    p.add_base();
    for n in ["2", "4", "0"] {
        let out = p.run(&["deploy", "compose", "--replicas", n]);
        assert_exit(&out, 2);
    }
    assert!(stderr(&p.run(&["deploy", "compose", "--replicas", "2"])).contains("scalable = true"));
    assert!(stderr(&p.run(&["deploy", "compose", "--replicas", "4"])).contains("add [[cluster.node]]"));

    edit_definition(&p, "[[cluster.node]]", "[cluster]\nscalable = true\n\n[[cluster.node]]");
    let out = json(&p.run(&["--json", "deploy", "compose", "--replicas", "2", "--out", "two"]));
    assert_eq!(out["services"], 2);
    let doc = &read_yaml(&p.root.join("two/compose.yaml"))[0];
    let services = doc["services"].as_hash().unwrap();
    assert_eq!(services.len(), 2);
    // The peers are still every node of the definition: a third service joins as it is.
    assert_eq!(
        doc["services"]["zk-kafka-0"]["environment"]["PEERS"].as_str(),
        Some("0=zk-kafka-0,1=zk-kafka-1,2=zk-kafka-2")
    );
    assert_exit(&p.run(&["deploy", "compose", "--replicas", "4"]), 2);
}

fn yaml_str(y: &yaml_rust2::Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

/// The manifests' one document of `kind` (named `name`, when given).
fn find<'a>(docs: &'a [yaml_rust2::Yaml], kind: &str, name: Option<&str>) -> &'a yaml_rust2::Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && name.is_none_or(|n| d["metadata"]["name"].as_str() == Some(n)))
        .unwrap_or_else(|| panic!("no {kind} {name:?} in the manifests"))
}

#[test]
fn kubernetes_manifests_validate_and_each_pod_renders_its_node() {
    let validate = tool_path("kubernetes-validate");
    require_tool("umoci");
    let p = TestProject::new();
    p.add_base();
    // Ids that are not the ordinals: pod i must still be the definition's i-th node.
    let ids = [5u32, 7, 9];
    for (old, new) in ids.iter().enumerate() {
        edit_definition(&p, &format!("\nid = {old}\n"), &format!("\nid = {new}\n"));
    }
    let built = json(&p.run(&["--json", "build"]));
    // The image every pod runs is the `cluster` image `push --all` put in the registry.
    let registry = super::registry_server::Registry::plain(&p.path("registry"));
    let repo = format!("{}/team/zk", registry.host());
    let pushed = json(&p.run(&["--json", "push", "--insecure", "--all", &repo]));
    let cluster_digest = built["cluster"]["digest"].as_str().unwrap();
    let references: Vec<&str> =
        pushed["pushed"].as_array().unwrap().iter().map(|r| r["reference"].as_str().unwrap()).collect();
    assert!(references.contains(&format!("{repo}:cluster@{cluster_digest}").as_str()), "{references:?}");
    let ns = "kafka-prod";
    let out = json(&p.run(&["--json", "deploy", "kubernetes", "--repo", &repo, "--namespace", ns]));
    let file = p.root.join(out["file"].as_str().unwrap());
    let image = format!("{repo}@{cluster_digest}");
    assert_eq!(out["image"], image.as_str());

    // Every document against the OpenAPI schemas of Kubernetes 1.37, unknown fields refused;
    // and the validator does refuse a wrong one.
    let checked = Command::new(&validate).args(["--strict", "--no-warn"]).arg(&file).output().unwrap();
    assert!(checked.status.success(), "kubernetes-validate: {}", text(&checked));
    let broken = p.path("broken.yaml");
    std::fs::write(&broken, std::fs::read_to_string(&file).unwrap().replace("replicas: 3", "replicas: \"three\""))
        .unwrap();
    let refused = Command::new(&validate).args(["--strict", "--no-warn"]).arg(&broken).output().unwrap();
    assert!(!refused.status.success(), "kubernetes-validate accepted replicas: \"three\"");

    let docs = read_yaml(&file);
    assert_eq!(docs.len(), 4, "headless Service, client Service, PodDisruptionBudget, StatefulSet");
    let headless = find(&docs, "Service", Some("zk-kafka"));
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(headless["spec"]["publishNotReadyAddresses"].as_bool(), Some(true));
    let client = find(&docs, "Service", Some("zk-kafka-client"));
    let client_ports: Vec<i64> =
        client["spec"]["ports"].as_vec().unwrap().iter().map(|p| p["port"].as_i64().unwrap()).collect();
    assert_eq!(client_ports, [2181, 9092]);
    assert_eq!(find(&docs, "PodDisruptionBudget", None)["spec"]["maxUnavailable"].as_i64(), Some(1));
    let set = find(&docs, "StatefulSet", Some("zk-kafka"));
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"].as_str(), Some(ns));
    }
    let spec = &set["spec"];
    assert_eq!(spec["serviceName"].as_str(), Some("zk-kafka"));
    assert_eq!(spec["podManagementPolicy"].as_str(), Some("Parallel"));
    assert_eq!(spec["replicas"].as_i64(), Some(3));
    let pod = &spec["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > 0);
    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(yaml_str(&container["image"]), image);
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert!(!container[probe]["exec"]["command"].is_badvalue(), "{probe}");
    }
    // Ready means serving (the definition's health: ZooKeeper's srvr has a Mode, the broker is
    // registered), not listening; the check gets the time a JVM needs.
    let ready = yaml_str(&container["readinessProbe"]["exec"]["command"][2]);
    assert!(ready.contains("zkServer.sh") && ready.contains("/brokers/ids/"), "{ready}");
    assert!(container["readinessProbe"]["timeoutSeconds"].as_i64().unwrap() >= 10);
    // Resources and heaps from the definition's [deploy].
    assert_eq!(container["resources"]["requests"]["memory"].as_str(), Some("2Gi"));
    assert_eq!(container["resources"]["limits"]["memory"].as_str(), Some("2Gi"));
    assert_eq!(container["resources"]["requests"]["cpu"].as_str(), Some("1"));
    let heap = container["env"].as_vec().unwrap().iter().find(|e| e["name"].as_str() == Some("KAFKA_HEAP_OPTS"));
    assert_eq!(heap.map(|e| yaml_str(&e["value"])), Some("-Xms1g -Xmx1g"));
    // Nothing the services do not need; the seed runs as root, so no runAsNonRoot.
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(yaml_str(&security["capabilities"]["drop"][0]), "ALL");
    assert_eq!(yaml_str(&security["seccompProfile"]["type"]), "RuntimeDefault");
    assert!(security["runAsNonRoot"].is_badvalue());
    // Spread over machines: preferred, so that a smaller cluster still schedules every pod.
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(yaml_str(&anti["podAffinityTerm"]["topologyKey"]), "kubernetes.io/hostname");
    assert_eq!(yaml_str(&pod["topologySpreadConstraints"][0]["whenUnsatisfiable"]), "ScheduleAnyway");
    assert_eq!(yaml_str(&spec["updateStrategy"]["type"]), "RollingUpdate");
    let claims: Vec<&str> =
        spec["volumeClaimTemplates"].as_vec().unwrap().iter().map(|c| yaml_str(&c["metadata"]["name"])).collect();
    let mounts: Vec<(&str, &str)> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| (yaml_str(&m["name"]), yaml_str(&m["mountPath"])))
        .collect();
    assert_eq!(mounts, [("var-lib-zookeeper", "/var/lib/zookeeper"), ("var-lib-kafka", "/var/lib/kafka")]);
    assert_eq!(claims, ["var-lib-zookeeper", "var-lib-kafka"]);
    for claim in spec["volumeClaimTemplates"].as_vec().unwrap() {
        assert_eq!(yaml_str(&claim["spec"]["resources"]["requests"]["storage"]), "10Gi");
    }

    // Each pod, rendered by the image's own entrypoint with the pod's hostname and the
    // manifest's environment.
    let env: Vec<(String, String)> = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (yaml_str(&e["name"]).to_string(), yaml_str(&e["value"]).to_string()))
        .collect();
    let rootfs = super::core::unpack(&p.root.join("out/zk-kafka"), "cluster", &p.path("cluster-bundle"));
    let dns = |i: usize| format!("zk-kafka-{i}.zk-kafka.{ns}.svc.cluster.local");
    let connect = (0..3).map(|i| format!("{}:2181", dns(i))).collect::<Vec<_>>().join(",");
    for (i, id) in ids.iter().enumerate() {
        let root = p.path(&format!("pod-{i}"));
        std::fs::create_dir_all(&root).unwrap();
        let rendered = Command::new("sh")
            .arg(rootfs.join("usr/local/bin/imgbuild-init"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HOSTNAME", format!("zk-kafka-{i}"))
            .env("IMGBUILD_RENDER_ONLY", "1")
            .env("IMGBUILD_ROOT", &root)
            .env("IMGBUILD_CONF_DIR", rootfs.join("etc/imgbuild"))
            .output()
            .unwrap();
        assert!(rendered.status.success(), "pod {i}: {}", text(&rendered));
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
        assert_eq!(read("var/lib/zookeeper/myid"), format!("{id}\n"), "pod {i}");
        let servers: Vec<String> = read("usr/local/zookeeper/conf/zoo.cfg")
            .lines()
            .filter(|l| l.starts_with("server."))
            .map(str::to_string)
            .collect();
        let expected: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(j, n)| format!("server.{n}={}:2888:3888", if j == i { "0.0.0.0".to_string() } else { dns(j) }))
            .collect();
        assert_eq!(servers, expected, "pod {i}");
        let props = read("usr/local/kafka/config/server.properties");
        let get = |key: &str| props.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string);
        assert_eq!(get("broker.id"), Some(id.to_string()), "pod {i}");
        assert_eq!(get("listeners").as_deref(), Some("PLAINTEXT://0.0.0.0:9092"), "pod {i}");
        assert_eq!(get("advertised.listeners"), Some(format!("PLAINTEXT://{}:9092", dns(i))), "pod {i}");
        assert_eq!(get("zookeeper.connect"), Some(connect.clone()), "pod {i}");
    }

    // A repository with a tag, or a namespace that is not a DNS label: usage errors.
    assert_exit(&p.run(&["deploy", "kubernetes", "--repo", "registry.example.org/team/zk:v1"]), 2);
    assert_exit(
        &p.run(&["deploy", "kubernetes", "--repo", "registry.example.org/team/zk", "--namespace", "Bad_NS"]),
        2,
    );
}
