//! Registries as users run them: certificates trusted the way the containers tools and Docker
//! trust them, credentials from where podman and Docker keep them, failures that cannot be
//! fixed by trying again reported at once, and `--offline` honoured by `pull` and `push`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;

use super::harness::*;
use super::registry_server::{
    require, write_credential_helper, FakeRegistry, Registry, TokenServer, IDENTITY_TOKEN, PASSWORD, USER,
};

/// A user's home for one test: credential files, certs.d and helpers live here only.
struct Home {
    dir: PathBuf,
    bin: PathBuf,
}

impl Home {
    fn new(p: &TestProject) -> Home {
        let dir = p.path("home");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        Home { dir, bin }
    }

    /// `imgbuild` as this user runs it: their HOME and PATH, none of the caller's credentials.
    fn cmd(&self, p: &TestProject) -> Command {
        let mut c = p.cmd();
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        c.env("HOME", &self.dir).env("PATH", path);
        for var in [
            "DOCKER_CONFIG",
            "REGISTRY_AUTH_FILE",
            "XDG_RUNTIME_DIR",
            "XDG_CONFIG_HOME",
            "IMGBUILD_REGISTRY_USERNAME",
            "IMGBUILD_REGISTRY_PASSWORD",
        ] {
            c.env_remove(var);
        }
        c
    }

    /// The containers tools' per-host certificate directory, in this home.
    fn certs_d(&self, registry: &Registry) -> PathBuf {
        self.dir.join(".config/containers/certs.d").join(registry.host())
    }
}

fn basic_auth(password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"))
}

fn auths_file(path: &Path, host: &str, password: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!(r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#, basic_auth(password))).unwrap();
}

/// Asserts that no secret is in any output, nor in any file of the store or the project.
fn assert_no_secret(p: &TestProject, outputs: &[Output], secrets: &[String]) {
    for out in outputs {
        for s in secrets {
            assert!(!String::from_utf8_lossy(&out.stdout).contains(s.as_str()), "secret in stdout");
            assert!(!stderr(out).contains(s.as_str()), "secret in stderr: {}", stderr(out));
        }
    }
    for dir in [&p.store, &p.root] {
        for file in tree(dir) {
            let data = std::fs::read(dir.join(&file)).unwrap();
            for s in secrets {
                assert!(!data.windows(s.len()).any(|w| w == s.as_bytes()), "secret in {file}");
            }
        }
    }
}

#[test]
fn a_self_signed_registry_is_trusted_through_ca_file_or_certs_d_and_refused_at_once_otherwise() {
    let p = TestProject::new();
    let registry = Registry::basic_self_signed(&p.path("registry"));
    let cert = registry.ca.clone().unwrap();
    let home = Home::new(&p);
    p.add_base();
    let repo = format!("{}/secure/zk", registry.host());
    let mut outputs = Vec::new();

    // Untrusted: refused at the first handshake, with the two ways to trust it.
    let untrusted = home.cmd(&p).args(["push", "--id", "1", &repo]).output().unwrap();
    assert_exit(&untrusted, 5);
    let err = stderr(&untrusted);
    assert!(err.contains("certificate is not trusted") && !err.contains("attempts"), "{err}");
    assert!(err.contains("presents a self-signed CA certificate"), "a sentence, not rustls' names: {err}");
    for internal in ["Other(", "OtherError", "CaUsedAsEndEntity"] {
        assert!(!err.contains(internal), "`{internal}` in: {err}");
    }
    assert!(err.contains("hint:") && err.contains("--ca-file") && err.contains("certs.d"), "{err}");
    outputs.push(untrusted);

    // Trusted through --ca-file; the password comes from a credential helper Docker's config names.
    write_credential_helper(&home.bin, "imgtest", &registry.host(), USER, PASSWORD);
    let docker = home.dir.join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), format!(r#"{{"credHelpers":{{"{}":"imgtest"}}}}"#, registry.host()))
        .unwrap();
    let ca_file = ["--ca-file", cert.to_str().unwrap()];
    let via_ca_file = home.cmd(&p).args(["--json", "push", "--id", "1"]).args(ca_file).arg(&repo).output().unwrap();
    let pushed = json(&via_ca_file);
    assert_eq!(pushed["pushed"][0]["blobs_uploaded"], 8, "{pushed}");
    let asked = std::fs::read_to_string(home.bin.join("imgtest.log")).unwrap();
    assert_eq!(asked.trim(), registry.host(), "the helper is asked for the registry's server");
    outputs.push(via_ca_file);

    // Trusted through the containers certs.d directory of this host (made here, removed with
    // the test's directory even when it fails); credentials from a containers auth.json.
    std::fs::create_dir_all(home.certs_d(&registry)).unwrap();
    std::fs::copy(&cert, home.certs_d(&registry).join("ca.crt")).unwrap();
    std::fs::remove_file(docker.join("config.json")).unwrap();
    let auth_file = home.dir.join("auth.json");
    auths_file(&auth_file, &registry.host(), PASSWORD);
    let mut via_certs_d = home.cmd(&p);
    via_certs_d.env("REGISTRY_AUTH_FILE", &auth_file).args(["--json", "push", "--id", "2", &repo]);
    let via_certs_d = via_certs_d.output().unwrap();
    assert_eq!(json(&via_certs_d)["pushed"][0]["blobs_uploaded"], 2);
    outputs.push(via_certs_d);

    // Without the directory, the same command is refused again: certs.d was what trusted it.
    std::fs::remove_dir_all(home.dir.join(".config/containers/certs.d")).unwrap();
    let again = home.cmd(&p).env("REGISTRY_AUTH_FILE", &auth_file).args(["push", "--id", "2", &repo]).output().unwrap();
    assert_exit(&again, 5);
    outputs.push(again);

    // What was pushed reads back with skopeo, which trusts the same certificate.
    {
        require("skopeo");
        let mut cmd = Command::new("skopeo");
        let info = tool(cmd.arg("inspect").args(registry.skopeo_opts()).arg(format!("docker://{repo}:node-2")));
        assert!(info.contains("\"org.imgbuild.node.id\": \"2\""), "{info}");
    }
    assert_no_secret(&p, &outputs, &[PASSWORD.to_string(), basic_auth(PASSWORD)]);
}

#[test]
fn credentials_follow_podmans_precedence() {
    let p = TestProject::new();
    let registry = Registry::basic_tls(&p.path("registry"));
    let ca = registry.ca.clone().unwrap();
    let home = Home::new(&p);
    p.add_base();
    let repo = format!("{}/order/zk", registry.host());
    fn push<'c>(cmd: &'c mut Command, ca: &Path, repo: &str) -> &'c mut Command {
        cmd.args(["--json", "push", "--ca-file", ca.to_str().unwrap(), "--id", "0", repo])
    }

    // Without its CA: refused, saying so in words.
    let untrusted = home.cmd(&p).args(["push", "--id", "0", &repo]).output().unwrap();
    assert_exit(&untrusted, 5);
    let err = stderr(&untrusted);
    assert!(err.contains("signed by a certificate authority this machine does not trust"), "{err}");
    assert!(!err.contains("UnknownIssuer") && err.contains("--ca-file"), "{err}");

    // The containers auth file comes before Docker's config: its wrong password is used.
    let (wrong_file, docker) = (home.dir.join("wrong/auth.json"), home.dir.join("docker"));
    auths_file(&wrong_file, &registry.host(), "wrong-password");
    auths_file(&docker.join("config.json"), &registry.host(), PASSWORD);
    let mut cmd = home.cmd(&p);
    cmd.env("REGISTRY_AUTH_FILE", &wrong_file).env("DOCKER_CONFIG", &docker);
    let out = push(&mut cmd, &ca, &repo).output().unwrap();
    assert_exit(&out, 5);
    let err = stderr(&out);
    let from = format!("authentication failed (user `{USER}` from {})", wrong_file.display());
    assert!(err.contains(&from) && !err.contains("attempts"), "{err}");

    // The command line wins over every file.
    let mut cmd = home.cmd(&p);
    cmd.env("REGISTRY_AUTH_FILE", &wrong_file);
    let mut child = push(&mut cmd, &ca, &repo)
        .args(["--username", USER, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(PASSWORD.as_bytes()).unwrap();
    json(&child.wait_with_output().unwrap());

    // Without REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json comes first.
    let runtime = home.dir.join("run");
    auths_file(&runtime.join("containers/auth.json"), &registry.host(), PASSWORD);
    auths_file(&docker.join("config.json"), &registry.host(), "wrong-password");
    let mut cmd = home.cmd(&p);
    cmd.env("XDG_RUNTIME_DIR", &runtime).env("DOCKER_CONFIG", &docker);
    json(&push(&mut cmd, &ca, &repo).output().unwrap());

    // Nothing anywhere: the hint says where credentials are read from.
    let out = push(&mut home.cmd(&p), &ca, &repo).output().unwrap();
    assert_exit(&out, 5);
    assert!(
        stderr(&out).contains("asks for credentials") && stderr(&out).contains(".docker/config.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_identity_token_from_a_credential_helper_is_exchanged_for_access_tokens() {
    let p = TestProject::new();
    let tokens = TokenServer::start(&p.path("tokens"));
    let registry = Registry::bearer(&p.path("registry"), &tokens);
    let home = Home::new(&p);
    p.add_base();
    // Docker's `credsStore`, whose helper answers `<token>`: an identity token, not a password.
    write_credential_helper(&home.bin, "idstore", &registry.host(), "<token>", IDENTITY_TOKEN);
    let docker = home.dir.join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), r#"{"auths":{},"credsStore":"idstore"}"#).unwrap();
    let repo = format!("{}/tokens/zk", registry.host());
    let out = home.cmd(&p).args(["--json", "push", "--insecure", "--id", "1", &repo]).output().unwrap();
    assert_eq!(json(&out)["pushed"][0]["blobs_uploaded"], 8);
    let grants = tokens.grants.lock().unwrap().clone();
    assert!(!grants.is_empty() && grants.iter().all(|g| g == "refresh_token"), "{grants:?}");
    assert_no_secret(&p, &[out], &[IDENTITY_TOKEN.to_string()]);
}

#[test]
fn failures_no_retry_can_fix_are_reported_at_once_with_the_next_step() {
    let p = TestProject::new();
    let plain = Registry::plain(&p.path("plain"));
    p.add_base();

    // Issue #17: a plain-HTTP registry without --insecure.
    let out = p.run(&["push", "--id", "0", &format!("{}/x/y", plain.host())]);
    assert_exit(&out, 5);
    let err = stderr(&out);
    assert!(err.contains("plain HTTP") && err.contains("pass --insecure") && !err.contains("attempts"), "{err}");

    // A TLS registry with --insecure.
    let tls = Registry::basic_tls(&p.path("tls"));
    let out = p.run(&["push", "--insecure", "--id", "0", &format!("{}/x/y", tls.host())]);
    assert_exit(&out, 5);
    assert!(stderr(&out).contains("leave out --insecure"), "{}", stderr(&out));

    // A manifest the registry does not have.
    let missing = format!("{}/x/y@sha256:{}", plain.host(), "1".repeat(64));
    let out = p.run(&["pull", "--insecure", &missing]);
    assert_exit(&out, 5);
    assert!(stderr(&out).contains("has no manifest") && !stderr(&out).contains("attempts"), "{}", stderr(&out));
}

#[test]
fn a_registrys_own_words_are_printed_escaped() {
    let p = TestProject::new();
    let body = r#"{"errors":[{"code":"DENIED","message":"no\u001b[2J\nerror: forged line"}]}"#;
    let fake = FakeRegistry::answering("418 I'm a teapot", body);
    let out = p.run(&["pull", "--insecure", &format!("{}/x/y@sha256:{}", fake.addr, "2".repeat(64))]);
    assert_exit(&out, 5);
    let err = stderr(&out);
    assert!(err.contains(r"no\u{1b}[2J\nerror: forged line"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.lines().any(|l| l.starts_with("error: forged")), "{err}");
}

#[test]
fn offline_pull_uses_only_the_store_and_offline_push_is_refused() {
    let p = TestProject::new();
    p.add_base();
    let digest = &p.base_digests.iter().find(|(a, _)| a == "amd64").unwrap().1;
    // Nothing listens here: offline, nothing may try.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("127.0.0.1:{port}/test/base");
    let out = p.run(&["--offline", "pull", &format!("{base}@{digest}")]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(digest.as_str()));

    for missing in [format!("{base}@sha256:{}", "3".repeat(64)), format!("{base}:latest")] {
        let out = p.run(&["--offline", "pull", &missing]);
        assert_exit(&out, 3);
        let err = stderr(&out);
        assert!(err.contains("add it: imgbuild store add base.tar") && err.contains("skopeo copy"), "{err}");
        assert!(!err.contains("imgbuild pull"), "offline, the next step cannot be a pull: {err}");
    }

    let out = p.run(&["--offline", "push", "--id", "0", &format!("{base}:x")]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--offline"), "{}", stderr(&out));
    assert_eq!(tree(&p.store.join("layers")).len(), 0, "an offline push built nothing");
    assert_eq!(p.server.total_requests(), 0);
}
