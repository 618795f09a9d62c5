//! `imgbuild diff`: two builds of the built-in example, a template and a recipe input changed
//! between them; identical builds; and hostile images that must stay within bounds.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::fixtures::{self, layered_layout, Entry};
use super::harness::{assert_exit, assert_ok, copy_dir, json, stderr, TestProject, BIN};

const ZOO_CFG: &str = "/usr/local/zookeeper/conf/zoo.cfg";

fn zookeeper_changed() -> Vec<u8> {
    let file = |p: &str, data: &[u8], mode| Entry::File(p.to_string(), data.to_vec(), mode);
    fixtures::tar_gz(&[
        Entry::Dir("zookeeper-3.4.11/"),
        Entry::Dir("zookeeper-3.4.11/bin/"),
        file("zookeeper-3.4.11/bin/zkServer.sh", b"#!/bin/sh\necho zookeeper 3.4.11 \"$@\"\n", 0o755),
        file("zookeeper-3.4.11/bin/zkCli.sh", b"#!/bin/sh\necho cli\n", 0o755),
    ])
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    let items = list.as_array().unwrap_or_else(|| panic!("not a list: {list}"));
    items.iter().find(|i| i[key] == value).unwrap_or_else(|| panic!("no {key} = {value} in {list:#}"))
}

#[test]
fn diff_names_the_input_the_layer_the_file_and_each_nodes_changed_line() {
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["build"]));
    let old = p.path("old");
    copy_dir(&p.root.join("out/zk-kafka"), &old);
    let (old_s, built) = (old.to_str().unwrap(), p.root.join("out/zk-kafka"));

    // Identical builds: no difference, and --exit-code says so with 0.
    assert_ok(&p.run(&["build"]));
    let same = p.run(&["--json", "diff", "--exit-code", old_s, built.to_str().unwrap()]);
    assert_exit(&same, 0);
    let same = json(&same);
    assert_eq!(same["same"], true, "{same:#}");
    assert_eq!(same["layers"], serde_json::json!([]));
    assert_eq!(same["inputs"], serde_json::json!([]));
    assert_eq!(same["nodes"].as_array().unwrap().len(), 3, "every node rendered: {same:#}");
    assert!(same["nodes"].as_array().unwrap().iter().all(|n| n["files"] == serde_json::json!([])));

    // A template line and one recipe input changed, built to another output.
    let zoo = p.root.join("images/zk-kafka/zoo.cfg");
    let text = std::fs::read_to_string(&zoo).unwrap();
    std::fs::write(&zoo, text.replace("tickTime={{tick_time}}", "tickTime=3000")).unwrap();
    p.serve_as_zookeeper("zookeeper-3.4.11.tar.gz", zookeeper_changed());
    let new = p.path("new");
    assert_ok(&p.run(&["build", "--out", new.to_str().unwrap()]));
    let new_s = new.to_str().unwrap();

    let report = json(&p.run(&["--json", "diff", old_s, new_s]));
    assert_eq!(report["same"], false);
    let zk = find(&report["inputs"], "name", "zookeeper");
    assert_eq!((zk["old"]["version"].as_str(), zk["new"]["version"].as_str()), (Some("3.4.10"), Some("1")));
    assert_ne!(zk["old"]["hash"], zk["new"]["hash"]);
    assert_eq!(report["inputs"].as_array().unwrap().len(), 1, "only zookeeper changed: {:#}", report["inputs"]);

    // The cluster layer: the template file, with its unified diff.
    let cluster = find(&report["layers"], "role", "cluster");
    let template = find(&cluster["files"], "path", "etc/imgbuild/templates/usr/local/zookeeper/conf/zoo.cfg");
    assert_eq!(template["change"], "changed");
    let unified = template["diff"]["text"].as_str().unwrap();
    assert!(unified.starts_with("--- a/etc/imgbuild/templates/"), "{unified}");
    assert!(unified.contains("\n-tickTime={{tick_time}}\n+tickTime=3000\n"), "{unified}");
    assert_eq!(cluster["images"].as_array().unwrap().len(), 4, "every image holds it: {cluster:#}");
    // The recipe layer: the changed script, the files it no longer has.
    let recipe = find(&report["layers"], "role", "recipe zookeeper");
    let script = find(&recipe["files"], "path", "usr/local/zookeeper/bin/zkServer.sh");
    assert!(script["diff"]["text"].as_str().unwrap().contains("+echo zookeeper 3.4.11 \"$@\""), "{script:#}");
    assert_eq!(script["new"]["mode"], "0755");
    assert_ne!(script["old"]["content"], script["new"]["content"]);
    assert_eq!(find(&recipe["files"], "path", "usr/local/zookeeper/zookeeper-3.4.10.jar")["change"], "removed");
    let roles: Vec<&str> = report["layers"].as_array().unwrap().iter().map(|l| l["role"].as_str().unwrap()).collect();
    assert_eq!(roles.len(), 2, "only the cluster and zookeeper layers changed: {roles:?}");

    // Each node's zoo.cfg as its entrypoint renders it: the one line.
    for id in 0..3 {
        let node = report["nodes"].as_array().unwrap().iter().find(|n| n["node"] == id).unwrap();
        let cfg = find(&node["files"], "path", ZOO_CFG);
        assert_eq!(cfg["lines"]["text"], "-tickTime=2000\n+tickTime=3000\n", "node {id}: {node:#}");
        assert_eq!(node["files"].as_array().unwrap().len(), 1, "only zoo.cfg differs: {node:#}");
    }

    // For people: grouped by layer and node; --exit-code gives 10.
    let human = p.run(&["diff", "--exit-code", old_s, new_s]);
    assert_exit(&human, 10);
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("recipe inputs\n  zookeeper  3.4.10 sha256:"), "{text}");
    assert!(text.contains("layer cluster "), "{text}");
    assert!(
        text.contains(&format!(
            "  node 2 (from node-2)\n    {ZOO_CFG} changed\n      -tickTime=2000\n      +tickTime=3000\n"
        )),
        "{text}"
    );

    // One node only; and two named images.
    let one = json(&p.run(&["--json", "diff", "--node", "1", old_s, new_s]));
    let names: Vec<&str> = one["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node-1"]);
    assert_eq!(one["nodes"].as_array().unwrap().len(), 1);
    let named = json(&p.run(&["--json", "diff", &format!("oci:{old_s}:cluster"), &format!("oci:{new_s}:cluster")]));
    assert_eq!(named["nodes"].as_array().unwrap().len(), 3, "a cluster image renders every node: {named:#}");
    assert_eq!(find(&named["nodes"][0]["files"], "path", ZOO_CFG)["change"], "changed");
}

/// Most memory (`RLIMIT_DATA`: heap and private mappings) `diff` is given for a hostile image.
const DATA_LIMIT: u64 = 64 << 20;

/// Runs `imgbuild` with at most `DATA_LIMIT` bytes of data and 120 s (`timeout` kills it
/// then): its exit code, stdout and stderr.
fn run_bounded(store: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new("timeout")
        .args(["120", "prlimit", &format!("--data={DATA_LIMIT}"), "--", BIN])
        .args(args)
        .env("IMGBUILD_STORE", store)
        .env_remove("IMGBUILD_MAX_UNPACKED")
        .envs(env.iter().copied())
        .output()
        .expect("timeout and prlimit (coreutils, util-linux)");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn a_hostile_image_stays_within_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let file = |p: &str, data: Vec<u8>| Entry::File(p.to_string(), data, 0o644);
    let old = tmp.path().join("old");
    layered_layout(&old, &[fixtures::tar(&[file("a.txt", b"one\n".to_vec())])]);
    // One file larger than the memory diff is given (a few KiB compressed), 30 000 entries,
    // and a text file changed.
    let mut entries = vec![file("a.txt", b"two\n".to_vec()), file("huge", vec![0; 96 << 20])];
    entries.extend((0..30_000).map(|i| file(&format!("many/{i:05}"), Vec::new())));
    let new = tmp.path().join("new");
    layered_layout(&new, &[fixtures::tar(&entries)]);
    drop(entries);
    let (a, b) = (format!("oci:{}:bookworm-amd64", old.display()), format!("oci:{}:bookworm-amd64", new.display()));

    let started = std::time::Instant::now();
    let (code, out, err) = run_bounded(&store, &["--json", "diff", &a, &b], &[]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let layer = &report["layers"][0];
    assert_eq!(layer["files"].as_array().unwrap().len(), 1000, "at most 1000 files listed");
    assert_eq!(layer["more"], 30_002 - 1000, "the rest counted");
    assert_eq!(
        find(&layer["files"], "path", "a.txt")["diff"]["text"],
        "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+two\n"
    );
    let huge = find(&layer["files"], "path", "huge");
    assert_eq!(
        (&huge["change"], &huge["new"]["size"], &huge["diff"]),
        (&"added".into(), &(96 << 20).into(), &Value::Null)
    );
    assert!(report["notes"][0].as_str().unwrap().contains("not an imgbuild node image"), "{report:#}");
    assert!(started.elapsed().as_secs() < 60, "took {:?}", started.elapsed());

    // What a layer unpacks to is bounded as the layer stage bounds a source.
    let (code, _, err) = run_bounded(&store, &["diff", &a, &b], &[("IMGBUILD_MAX_UNPACKED", "16777216")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("IMGBUILD_MAX_UNPACKED"), "{err}");
}

#[test]
fn a_cluster_env_that_is_not_imgbuilds_is_never_run() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let marker = tmp.path().join("ran");
    let env = |extra: &str| {
        format!(
            "IMGBUILD_CLUSTER='c'\nIMGBUILD_NODES='0'\nIMGBUILD_HOST_0='h'\nIMGBUILD_VARS=''\nIMGBUILD_LISTS=''\n\
             IMGBUILD_TEMPLATE_MODES='/t:644'\nIMGBUILD_GUARDED=''\nIMGBUILD_ID_CHECKS=''\nIMGBUILD_DATA_DIRS=''\n\
             IMGBUILD_DEFAULT_SERVICES=''\n{extra}\n"
        )
    };
    let layout = |name: &str, cluster_env: String| {
        let dir = tmp.path().join(name);
        let files = [
            Entry::File("etc/imgbuild/cluster.env".into(), cluster_env.into_bytes(), 0o644),
            Entry::File("etc/imgbuild/templates/t".into(), b"id={{node_id}}\n".to_vec(), 0o644),
        ];
        layered_layout(&dir, &[fixtures::tar(&files)]);
        format!("oci:{}:bookworm-amd64", dir.display())
    };
    let good = layout("good", env("IMGBUILD_TEMPLATES='/t'"));
    let ran =
        json(&Command::new(BIN).args(["--json", "diff", &good, &good]).env("IMGBUILD_STORE", &store).output().unwrap());
    assert_eq!(ran["nodes"][0]["node"], 0, "{ran:#}");
    for (name, extra) in [
        ("command", format!("IMGBUILD_TEMPLATES='/t'\nIMGBUILD_X=$(touch {})", marker.display())),
        ("escape", "IMGBUILD_TEMPLATES='/../../t'".to_string()),
        ("path", format!("IMGBUILD_TEMPLATES='/t'\nPATH='{}'", tmp.path().display())),
    ] {
        let bad = layout(name, env(&extra));
        let out = Command::new(BIN).args(["diff", &good, &bad]).env("IMGBUILD_STORE", &store).output().unwrap();
        assert_exit(&out, 1);
        assert!(stderr(&out).contains("cluster.env"), "{name}: {}", stderr(&out));
        assert!(!marker.exists(), "{name}: the image's text ran");
    }
}

#[test]
fn an_image_in_a_registry_is_compared_with_a_local_build() {
    let p = TestProject::new();
    p.add_base();
    let registry = super::registry_server::Registry::plain(&p.path("registry"));
    let repo = format!("{}/team/zk-kafka", registry.host());
    assert_ok(&p.run(&["push", "--insecure", "--all", &repo]));
    let zoo = p.root.join("images/zk-kafka/zoo.cfg");
    let text = std::fs::read_to_string(&zoo).unwrap();
    std::fs::write(&zoo, text.replace("tickTime={{tick_time}}", "tickTime=3000")).unwrap();
    assert_ok(&p.run(&["build"]));

    let out = p.run(&["--json", "diff", "--insecure", &format!("docker://{repo}:node-1"), "oci:out/zk-kafka:node-1"]);
    let report = json(&out);
    assert_eq!(report["images"][0]["name"], "node-1", "{report:#}");
    assert_eq!(report["inputs"], serde_json::json!([]), "the same inputs");
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "a node's image renders its node: {report:#}");
    assert_eq!(nodes[0]["node"], 1);
    assert_eq!(find(&nodes[0]["files"], "path", ZOO_CFG)["lines"]["text"], "-tickTime=2000\n+tickTime=3000\n");
}
