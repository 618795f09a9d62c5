//! Health that means "serving": the definition's `health` and `role` commands, run inside real
//! ZooKeeper nodes (Debian's 3.8 in Podman), fail while a node has no quorum (it listens, and
//! answers "This ZooKeeper instance is not currently serving requests") and pass once it has.

use std::process::Output;
use std::time::{Duration, Instant};

use imgbuild::testing::ImageDef;
use imgbuild::testing::{probe, shell_check, ServiceHealth};

use super::debian;
use super::ensemble::{build_for_podman, four_letters, pin_real_inputs, podman, start_node, wait_for_quorum, zk_cli};
use super::harness::*;

const HOSTS: [&str; 3] = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];

/// Each service's health and role in container `name`, through `podman exec`.
fn health_of(def: &ImageDef, name: &str) -> Vec<ServiceHealth> {
    let mut exec =
        |words: &[String]| -> std::io::Result<Output> { podman().arg("exec").arg(name).args(words).output() };
    probe(def, &mut exec)
}

/// What Compose's health check and Kubernetes' readiness probe run, in container `name`.
fn node_check(def: &ImageDef, name: &str) -> Output {
    let script = shell_check(def).expect("the seed defines health checks");
    podman().args(["exec", name, "/bin/sh", "-c", &script]).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn probes_fail_while_a_node_does_not_serve_and_pass_in_a_quorum() {
    debian::require();
    let p = TestProject::new();
    let work = p.path("work");
    pin_real_inputs(&p, &work);
    let def = imgbuild::testing::Project::load(&p.root, None).unwrap().image;
    let (guard, layout, data) = build_for_podman(&p, "imgbuild-health");
    let names = guard.names.clone();

    // One node alone: it listens and answers, but does not serve.
    start_node(&layout, "node-0", &names[0], &data[0], &["-e", "NODE_ID=0"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = four_letters(HOSTS[0], "srvr").unwrap_or_default();
        if answer.contains("not currently serving") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 0 alone never answered: {answer:?}\n{}",
            super::ensemble::logs(&names[0])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let alone = health_of(&def, &names[0]);
    assert_eq!(alone[0].service, "zookeeper");
    assert_eq!(alone[0].serving, Some(false), "{alone:?}");
    assert_eq!(alone[0].role, None, "{alone:?}");
    assert_eq!(alone[1].serving, Some(false), "no broker can register without a quorum: {alone:?}");
    let check = node_check(&def, &names[0]);
    assert!(!check.status.success(), "the node's health check passed without a quorum: {}", text(&check));

    // The quorum: ZooKeeper serves on every node, one leader and two followers.
    start_node(&layout, "node-1", &names[1], &data[1], &["-e", "NODE_ID=1"]);
    start_node(&layout, "node-2", &names[2], &data[2], &["-e", "NODE_ID=2"]);
    let leader = wait_for_quorum(&HOSTS, Duration::from_secs(120), &names);
    let mut roles = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let got = health_of(&def, name);
        assert_eq!(got[0].serving, Some(true), "node {n}: {got:?}");
        let role = got[0].role.clone().unwrap_or_else(|| panic!("node {n} has no role: {got:?}"));
        assert_eq!(role == "leader", HOSTS[n] == leader, "node {n}: {got:?}");
        roles.push(role);
    }
    roles.sort();
    assert_eq!(roles, ["follower", "follower", "leader"]);

    // Kafka serves once its broker is registered under its id (the stand-in broker does not
    // register: the test does it for broker 1, as Kafka would, and names it controller).
    for path in ["/brokers", "/brokers/ids"] {
        let made = zk_cli(&names[0], HOSTS[0], &["create", path]);
        assert!(made.status.success(), "{}", text(&made));
    }
    for (path, value) in [
        (
            "/brokers/ids/1",
            r#"{"endpoints":["PLAINTEXT://127.0.1.2:9092"],"host":"127.0.1.2","port":9092,"version":4}"#,
        ),
        ("/controller", r#"{"version":1,"brokerid":1,"timestamp":"0"}"#),
    ] {
        let made = zk_cli(&names[0], HOSTS[0], &["create", path, value]);
        assert!(made.status.success(), "{}", text(&made));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let registered = health_of(&def, &names[1]);
        if registered[1].serving == Some(true) {
            assert_eq!(registered[1].role.as_deref(), Some("controller"), "{registered:?}");
            break;
        }
        assert!(Instant::now() < deadline, "broker 1 registered, its health still fails: {registered:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let check = node_check(&def, &names[1]);
    assert!(check.status.success(), "node 1 serves both services, its check failed: {}", text(&check));
    let unregistered = health_of(&def, &names[2]);
    assert_eq!(unregistered[1].serving, Some(false), "broker 2 never registered: {unregistered:?}");
    assert_eq!(unregistered[1].role.as_deref(), Some("broker"), "{unregistered:?}");
    assert!(!node_check(&def, &names[2]).status.success());
    drop(guard);
}
