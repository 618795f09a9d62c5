//! `imgbuild push` and `pull` against a real registry on loopback.

use std::io::Write;
use std::process::{Command, Stdio};

use super::harness::*;
use super::registry_server::{require, FlakyProxy, Registry, TokenServer, PASSWORD, USER};

fn skopeo_inspect(registry: &Registry, reference: &str, raw: bool) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.arg("inspect").args(registry.skopeo_opts());
    if raw {
        cmd.arg("--raw");
    }
    serde_json::from_str(&tool(cmd.arg(format!("docker://{reference}")))).unwrap()
}

fn pushed(summary: &serde_json::Value, i: usize) -> &serde_json::Value {
    &summary["pushed"][i]
}

#[test]
fn push_all_is_incremental_and_every_node_reads_back() {
    let p = TestProject::new();
    let registry = Registry::plain(&p.path("registry"));
    p.add_base();
    let repo = format!("{}/seed/zk-kafka", registry.host());
    let first = json(&p.run(&["--json", "push", "--insecure", "--all", &repo]));
    let node0 = pushed(&first, 0);
    assert_eq!(node0["blobs_uploaded"], 8, "base + 3 recipes + runtime + cluster + identity + config: {first}");
    for i in 1..3 {
        let n = pushed(&first, i);
        assert_eq!(n["blobs_uploaded"], 2, "only the identity layer and the config: {n}");
        assert_eq!(n["blobs_skipped"], 6);
        assert!(n["bytes_uploaded"].as_u64().unwrap() < 16 * 1024, "{n}");
    }
    // Nothing changed: nothing is uploaded again.
    let again = json(&p.run(&["--json", "push", "--insecure", "--all", &repo]));
    assert_eq!(again["bytes_uploaded"], 0);
    for i in 0..3 {
        assert_eq!(pushed(&again, i)["blobs_uploaded"], 0);
    }
    assert_eq!(
        again["pushed"],
        first["pushed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                // The image's blobs and its referrers' (SBOMs, provenance): all there now.
                let there_now = |s: &mut serde_json::Value| {
                    let total = s["blobs_uploaded"].as_u64().unwrap() + s["blobs_skipped"].as_u64().unwrap();
                    s["blobs_uploaded"] = 0.into();
                    s["bytes_uploaded"] = 0.into();
                    s["blobs_skipped"] = total.into();
                };
                let mut n = n.clone();
                there_now(&mut n);
                there_now(&mut n["referrers"]);
                n
            })
            .collect::<serde_json::Value>()
    );

    require("skopeo");
    for i in 0..3 {
        let reference = pushed(&first, i)["reference"].as_str().unwrap();
        assert!(reference.starts_with(&format!("{repo}:node-{i}@sha256:")), "{reference}");
        let info = skopeo_inspect(&registry, &format!("{repo}:node-{i}"), false);
        assert_eq!(info["Digest"], pushed(&first, i)["digest"]);
        assert_eq!(info["Labels"]["org.imgbuild.node.id"], i.to_string());
    }
    // skopeo copies it out, and the layers keep their digests.
    let copy = p.path("copy");
    let mut cmd = Command::new("skopeo");
    cmd.arg("copy").args(registry.skopeo_opts().iter().map(|o| o.replace("--tls-verify", "--src-tls-verify")));
    tool(cmd.arg(format!("docker://{repo}:node-1")).arg(format!("oci:{}:n1", copy.display())));
    let local = json(&p.run(&["--json", "--offline", "node", "--id", "1"]));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], local["nodes"][0]["digest"], "the copy is the very same manifest");

    // An existing layout or archive pushes too.
    json(&p.run(&["--json", "build", "--format", "oci-archive"]));
    let from = json(&p.run(&[
        "--json",
        "push",
        "--insecure",
        "--from",
        "out/zk-kafka.tar",
        "--from-tag",
        "node-2",
        &format!("{}/other/imported:v1", registry.host()),
    ]));
    assert_eq!(pushed(&from, 0)["digest"], pushed(&first, 2)["digest"]);
}

#[test]
fn pushing_to_a_sibling_repository_mounts_instead_of_uploading() {
    let p = TestProject::new();
    let registry = Registry::plain(&p.path("registry"));
    p.add_base();
    json(&p.run(&["--json", "push", "--insecure", "--id", "1", &format!("{}/team/a", registry.host())]));
    let second =
        json(&p.run(&["--json", "push", "--insecure", "--id", "1", &format!("{}/team/b:one", registry.host())]));
    let n = pushed(&second, 0);
    assert_eq!(n["blobs_mounted"], 8, "{n}");
    assert_eq!(n["bytes_uploaded"], 0, "{n}");
    assert!(n["reference"].as_str().unwrap().contains("/team/b:one@sha256:"));
}

#[test]
fn chunked_uploads_and_a_flaky_registry_still_give_the_same_image() {
    let p = TestProject::new();
    let registry = Registry::plain(&p.path("registry"));
    p.add_base();
    let proxy = FlakyProxy::start(registry.addr, 3);
    let target = format!("{}/flaky/zk:node-0", proxy.addr);
    let out = p
        .cmd()
        .env("IMGBUILD_CHUNK_SIZE", "65536")
        .args(["--json", "push", "--insecure", "--id", "0", &target])
        .output()
        .unwrap();
    let summary = json(&out);
    assert_eq!(proxy.failed.load(std::sync::atomic::Ordering::SeqCst), 3);
    let local = json(&p.run(&["--json", "--offline", "node", "--id", "0"]));
    assert_eq!(pushed(&summary, 0)["digest"], local["nodes"][0]["digest"]);
    {
        require("skopeo");
        // Read back through the registry itself, not the proxy.
        let raw = skopeo_inspect(&registry, &format!("{}/flaky/zk:node-0", registry.host()), true);
        assert_eq!(raw["layers"].as_array().unwrap().len(), 7);
        let copy = p.path("copy");
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--src-tls-verify=false"]);
        tool(cmd.arg(format!("docker://{}/flaky/zk:node-0", registry.host())).arg(format!("oci:{}:x", copy.display())));
    }
}

#[test]
fn basic_auth_over_tls_and_no_secret_ever_shows() {
    let p = TestProject::new();
    let registry = Registry::basic_tls(&p.path("registry"));
    p.add_base();
    let ca = registry.ca.clone().unwrap();
    let repo = format!("{}/secure/zk-kafka", registry.host());
    let push_with = |password: &str, extra: &[&str]| {
        let mut child = p
            .cmd()
            .args(["--json", "push", "--username", USER, "--password-stdin", "--id", "1"])
            .args(extra)
            .arg(&repo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let mut outputs = Vec::new();

    let ok = push_with(PASSWORD, &["--ca-file", ca.to_str().unwrap()]);
    let summary = json(&ok);
    assert_eq!(pushed(&summary, 0)["blobs_uploaded"], 8);
    outputs.push(ok);

    let wrong = push_with("not-the-password", &["--ca-file", ca.to_str().unwrap()]);
    assert_exit(&wrong, 5);
    assert!(
        stderr(&wrong).contains("authentication failed (user `pusher` from --password-stdin)"),
        "{}",
        stderr(&wrong)
    );
    outputs.push(wrong);

    let untrusted = push_with(PASSWORD, &[]);
    assert_exit(&untrusted, 5);
    assert!(stderr(&untrusted).to_lowercase().contains("certificate"), "{}", stderr(&untrusted));
    outputs.push(untrusted);

    // Plain HTTP is refused for anything but loopback, before any connection.
    let remote = p.run(&["push", "--insecure", "--id", "1", "registry.example.org/x/y"]);
    assert_exit(&remote, 2);

    // Credentials from the user's Docker config.
    let docker = p.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host()))
        .unwrap();
    let from_config = p
        .cmd()
        .env("DOCKER_CONFIG", &docker)
        .args(["--json", "push", "--ca-file", ca.to_str().unwrap(), "--id", "2", &repo])
        .output()
        .unwrap();
    assert_eq!(pushed(&json(&from_config), 0)["blobs_uploaded"], 2);
    outputs.push(from_config);

    {
        require("skopeo");
        let info = skopeo_inspect(&registry, &format!("{repo}:node-2"), false);
        assert_eq!(info["Labels"]["org.imgbuild.node.id"], "2");
    }

    // The password (and its base64 form) is in no output, no error, and no file imgbuild wrote.
    let needles = [PASSWORD.to_string(), auth.clone()];
    for out in &outputs {
        for n in &needles {
            assert!(!String::from_utf8_lossy(&out.stdout).contains(n.as_str()), "secret in stdout");
            assert!(!stderr(out).contains(n.as_str()), "secret in stderr");
        }
    }
    for dir in [&p.store, &p.root] {
        for file in tree(dir) {
            let data = std::fs::read(dir.join(&file)).unwrap();
            for n in &needles {
                assert!(!data.windows(n.len()).any(|w| w == n.as_bytes()), "secret in {file}");
            }
        }
    }
}

#[test]
fn registry_down_and_missing_blobs_fail_clearly() {
    let p = TestProject::new();
    p.add_base();
    // Nothing listens on this port: a bounded number of attempts, then exit 5.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = p.run(&["push", "--insecure", "--id", "0", &format!("127.0.0.1:{port}/down/zk")]);
    assert_exit(&out, 5);
    assert!(
        stderr(&out).contains(&format!("registry 127.0.0.1:{port}")) && stderr(&out).contains("after 5 attempts"),
        "{}",
        stderr(&out)
    );

    // A base layer deleted from the store: the build asks the recipe's registry for it again
    // (which does not exist here) and lists it as missing, before anything is sent.
    let registry = Registry::plain(&p.path("registry"));
    let manifest_digest = &p.base_digests.iter().find(|(a, _)| a == "amd64").unwrap().1;
    let manifest_path = p.base_layout.join("blobs/sha256").join(manifest_digest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
    let name = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    std::fs::remove_file(p.store.join("blobs/sha256").join(&name)).unwrap();
    let out = p.run(&["push", "--insecure", "--id", "0", &format!("{}/zk/missing", registry.host())]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains(&name) && stderr(&out).contains("store add"), "{}", stderr(&out));
}

#[test]
fn pull_brings_a_pinned_base_into_the_store() {
    require("skopeo");
    let p = TestProject::new();
    let registry = Registry::plain(&p.path("registry"));
    let base_ref = format!("{}/library/base:bookworm", registry.host());
    tool(
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:bookworm-amd64", p.base_layout.display()))
            .arg(format!("docker://{base_ref}")),
    );
    let digest = &p.base_digests.iter().find(|(a, _)| a == "amd64").unwrap().1;
    let pinned = format!("{}/library/base@{digest}", registry.host());
    let pulled = json(&p.run(&["--json", "pull", "--insecure", &pinned]));
    assert_eq!(pulled["recipes"][0], "debian-bookworm-slim (linux/amd64)", "{pulled}");
    // The pulled base serves an offline build (sources from a mirror directory).
    let mirror = p.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    for (name, data) in &p.inputs {
        std::fs::write(mirror.join(name), data).unwrap();
    }
    json(&p.cmd().env("IMGBUILD_MIRROR", &mirror).args(["--json", "--offline", "node", "--id", "1"]).output().unwrap());
    // A digest that is not the registry's: refused.
    let wrong = format!("{}/library/base@sha256:{}", registry.host(), "0".repeat(64));
    assert_exit(&p.run(&["pull", "--insecure", &wrong]), 5);
    // The global --insecure-registry names the same registry for pull as for builds: without
    // either, plain HTTP is refused at once.
    let fresh = |args: &[&str]| p.cmd().env("IMGBUILD_STORE", p.path("store-2")).args(args).output().unwrap();
    assert_exit(&fresh(&["pull", &pinned]), 5);
    assert_ok(&fresh(&["--insecure-registry", &registry.host(), "pull", &pinned]));
}

#[test]
fn bearer_tokens_are_fetched_for_the_scopes_a_push_needs() {
    require("openssl");
    let p = TestProject::new();
    let tokens = TokenServer::start(&p.path("tokens"));
    let registry = Registry::bearer(&p.path("registry"), &tokens);
    p.add_base();
    let push = |repo: &str, password: &str| {
        p.cmd()
            .env("IMGBUILD_REGISTRY_USERNAME", USER)
            .env("IMGBUILD_REGISTRY_PASSWORD", password)
            .args(["--json", "push", "--insecure", "--id", "1", &format!("{}/{repo}", registry.host())])
            .output()
            .unwrap()
    };
    let first = json(&push("bearer/a", PASSWORD));
    assert_eq!(pushed(&first, 0)["blobs_uploaded"], 8);
    // A sibling repository: the token must also grant pull on the source of the mounts.
    let second = json(&push("bearer/b", PASSWORD));
    assert_eq!(pushed(&second, 0)["blobs_mounted"], 8, "{second}");
    let scopes = tokens.scopes.lock().unwrap().clone();
    assert!(scopes.contains(&"repository:bearer/a:pull,push".to_string()), "{scopes:?}");
    assert!(scopes.contains(&"repository:bearer/a:pull".to_string()), "{scopes:?}");
    // The token server refuses a wrong password: a clear error, exit 5.
    let wrong = push("bearer/c", "wrong");
    assert_exit(&wrong, 5);
    assert!(stderr(&wrong).contains("authentication failed"), "{}", stderr(&wrong));
    {
        require("skopeo");
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--tls-verify=false", &format!("--creds={USER}:{PASSWORD}")]);
        let info = tool(cmd.arg(format!("docker://{}/bearer/b:node-1", registry.host())));
        assert!(info.contains("org.imgbuild.node.id"), "{info}");
    }
}
