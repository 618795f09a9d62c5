//! Registries as users run them: certificates trusted the way the containers tools and Docker
//! trust them, credentials from where podman and Docker keep them, failures that cannot be
//! fixed by trying again reported at once, and `--offline` honoured by `pull` and `push`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;

use super::harness::*;
use super::registry_server::{
    require, write_credential_helper, FakeRegistry, Registry, TokenServer, IDENTITY_TOKEN, PASSWORD, USER,
};

/// A user's home for one test: credential files, certs.d and helpers live here only.
pub(super) struct Home {
    pub dir: PathBuf,
    pub bin: PathBuf,
}

impl Home {
    pub fn new(p: &TestProject) -> Home {
        let dir = p.path("home");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        Home { dir, bin }
    }

    /// `imgbuild` as this user runs it: their HOME and PATH, none of the caller's credentials.
    pub fn cmd(&self, p: &TestProject) -> Command {
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

pub(super) fn basic_auth(password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"))
}

fn auths_file(path: &Path, host: &str, password: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!(r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#, basic_auth(password))).unwrap();
}

/// Asserts that no secret is in any output, nor in any file of the store or the project.
pub(super) fn assert_no_secret(p: &TestProject, outputs: &[Output], secrets: &[String]) {
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
    json(&with_password(push(&mut cmd, &ca, &repo)));

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

/// One request as a fake server saw it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub host: String,
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub(super) type Answer = (String, Vec<(String, String)>, Vec<u8>);

/// Reads one HTTP/1.1 request (headers, then a Content-Length body) from `stream`, answers
/// what `answer` says, and records it in `seen`.
pub(super) fn serve_one(
    stream: impl Read + Write,
    seen: &std::sync::Mutex<Vec<Seen>>,
    answer: impl Fn(&Seen) -> Answer,
) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    if (&mut reader).take(8192).read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut h = String::new();
        if (&mut reader).take(8192).read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let length: u64 = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = Vec::new();
    let _ = (&mut reader).take(length.min(64 << 20)).read_to_end(&mut body);
    let (host, authorization) = (header("host").unwrap_or_default(), header("authorization"));
    let request = Seen { host, method, target, authorization, headers, body };
    seen.lock().unwrap().push(request.clone());
    let (status, extra, body) = answer(&request);
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = reader.into_inner();
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body)).and_then(|()| stream.flush());
}

/// A host that must never be asked anything: plain HTTP on 127.0.0.2 (another host, as far
/// as imgbuild can tell), recording what it is sent.
struct Eavesdropper {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    acceptor: super::http::Acceptor,
}

impl Eavesdropper {
    fn start() -> Eavesdropper {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let acceptor = super::http::Acceptor::spawn_at("127.0.0.2", move |conn| {
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            serve_one(conn, &log, |_| ("200 OK".into(), vec![], br#"{"token":"stolen"}"#.to_vec()));
        });
        Eavesdropper { seen, acceptor }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.acceptor.addr)
    }
}

/// What the fake registry answers where a real one names another place.
#[derive(Clone)]
pub(super) struct Places {
    /// The token realm of its Bearer challenge.
    pub realm: String,
    /// Where an upload goes after `POST …/blobs/uploads/`.
    pub upload: String,
    /// Where a blob `GET` is redirected (`…/DIGEST` appended), if it is.
    pub blob_redirect: Option<String>,
}

/// Which of the places a registry names is plain HTTP on another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Downgrade {
    Realm,
    Upload,
    BlobRedirect,
}

impl Places {
    /// The registry's own places over TLS, but the `downgrade`d one at `spy` (`http://HOST:PORT`).
    fn downgraded(port: u16, downgrade: Downgrade, spy: &str) -> Places {
        let tls = format!("https://127.0.0.1:{port}");
        let at = |place: Downgrade, path: &str| format!("{}{path}", if place == downgrade { spy } else { &tls });
        Places {
            realm: at(Downgrade::Realm, "/token"),
            upload: at(Downgrade::Upload, "/upload/u1"),
            blob_redirect: (downgrade == Downgrade::BlobRedirect).then(|| format!("{spy}/blobdata")),
        }
    }
}

pub(super) const TOKEN: &str = "registry-token-5d2a";

/// An HTTPS server on 127.0.0.1 (a certificate for 127.0.0.1 and localhost, from a CA made in
/// its directory) that records every request and answers as it is told (given its own port).
pub(super) struct TlsServer {
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    pub ca: PathBuf,
    pub acceptor: super::http::Acceptor,
}

impl TlsServer {
    pub fn start(dir: &Path, answer: impl Fn(u16, &Seen) -> Answer + Send + Sync + 'static) -> TlsServer {
        use rustls::pki_types::pem::PemObject;
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        let ca = super::registry_server::make_ca_and_server_cert(dir, &cert, &key);
        let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&std::fs::read(&cert).unwrap())
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&std::fs::read(&key).unwrap()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let config = std::sync::Arc::new(config);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let port = std::sync::Arc::new(std::sync::OnceLock::new());
        let own_port = std::sync::Arc::clone(&port);
        let acceptor = super::http::Acceptor::spawn(move |conn| {
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let Ok(tls) = rustls::ServerConnection::new(std::sync::Arc::clone(&config)) else { return };
            let port = *own_port.get().unwrap();
            serve_one(rustls::StreamOwned::new(tls, conn), &log, |r| answer(port, r));
        });
        port.set(acceptor.addr.port()).unwrap();
        TlsServer { seen, ca, acceptor }
    }

    /// A registry that wants `TOKEN` from its realm, which grants it for the test user's
    /// password; it serves `blobs` (manifests and blobs by digest) and accepts every upload.
    pub fn registry(
        dir: &Path,
        places: impl Fn(u16) -> Places + Send + Sync + 'static,
        blobs: BTreeMap<String, Vec<u8>>,
    ) -> TlsServer {
        TlsServer::start(dir, move |port, r| registry_answer(r, &places(port), &blobs))
    }

    pub fn host(&self) -> String {
        self.acceptor.addr.to_string()
    }
}

pub(super) fn registry_answer(r: &Seen, places: &Places, blobs: &BTreeMap<String, Vec<u8>>) -> Answer {
    let none = Vec::new();
    let (path, _query) = r.target.split_once('?').unwrap_or((&r.target, ""));
    let basic = format!("Basic {}", basic_auth(PASSWORD));
    if path == "/token" {
        return match r.authorization.as_deref() == Some(basic.as_str()) {
            true => ("200 OK".into(), none, format!(r#"{{"token":"{TOKEN}"}}"#).into_bytes()),
            false => ("401 Unauthorized".into(), none, vec![]),
        };
    }
    if let Some(digest) = path.strip_prefix("/blobdata/") {
        return blobs
            .get(digest)
            .map_or(("404 Not Found".into(), vec![], vec![]), |b| ("200 OK".into(), vec![], b.clone()));
    }
    if path.starts_with("/upload/") {
        let location = vec![("Location".to_string(), places.upload.clone())];
        return if r.method == "PATCH" {
            ("202 Accepted".into(), location, vec![])
        } else {
            ("201 Created".into(), none, vec![])
        };
    }
    if r.authorization.as_deref() != Some(format!("Bearer {TOKEN}").as_str()) {
        let challenge = format!(r#"Bearer realm="{}",service="fake""#, places.realm);
        return ("401 Unauthorized".into(), vec![("WWW-Authenticate".into(), challenge)], vec![]);
    }
    let digest = path.rsplit('/').next().unwrap_or_default().to_string();
    match (r.method.as_str(), path) {
        (_, "/v2/") => ("200 OK".into(), none, b"{}".to_vec()),
        ("POST", p) if p.ends_with("/blobs/uploads/") => {
            ("202 Accepted".into(), vec![("Location".into(), places.upload.clone())], vec![])
        }
        ("HEAD", p) if p.contains("/blobs/") => ("404 Not Found".into(), none, vec![]),
        ("PUT", p) if p.contains("/manifests/") => ("201 Created".into(), none, vec![]),
        ("GET", p) if p.contains("/manifests/") && blobs.contains_key(&digest) => {
            let json = ("Content-Type".to_string(), "application/vnd.oci.image.manifest.v1+json".to_string());
            ("200 OK".into(), vec![json], blobs[&digest].clone())
        }
        ("GET", p) if p.contains("/blobs/") => match &places.blob_redirect {
            Some(to) => ("307 Temporary Redirect".into(), vec![("Location".into(), format!("{to}/{digest}"))], vec![]),
            None => blobs
                .get(&digest)
                .map_or(("404 Not Found".into(), vec![], vec![]), |b| ("200 OK".into(), vec![], b.clone())),
        },
        _ => ("404 Not Found".into(), none, vec![]),
    }
}

/// Runs `cmd` with the test user's password on stdin.
pub(super) fn with_password(cmd: &mut Command) -> Output {
    let mut child = cmd
        .args(["--username", USER, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(PASSWORD.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A one-image layout made here, and its blobs by digest (what the fake registry serves).
pub(super) fn small_image(dir: &Path) -> (String, BTreeMap<String, Vec<u8>>) {
    let layer = super::fixtures::tar(&[super::fixtures::Entry::File("etc/motd".into(), b"hello\n".to_vec(), 0o644)]);
    let manifest = super::fixtures::layered_layout(dir, &[layer]);
    let mut blobs = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        blobs.insert(format!("sha256:{}", path.file_name().unwrap().to_str().unwrap()), std::fs::read(path).unwrap());
    }
    (manifest, blobs)
}

#[test]
fn nothing_imgbuild_sends_for_a_registry_goes_over_plain_http_unless_insecure_allows_it() {
    let p = TestProject::new();
    let layout = p.path("image");
    let (manifest, blobs) = small_image(&layout);
    let spy = Eavesdropper::start();
    let secrets = [PASSWORD.to_string(), basic_auth(PASSWORD), TOKEN.to_string()];
    // Every way a registry can name another place, each pointed at plain HTTP on another host.
    let downgrades = [
        (Downgrade::Realm, "token realm: refusing plain HTTP to http://127.0.0.2"),
        (Downgrade::Upload, "upload location: refusing plain HTTP to http://127.0.0.2"),
        (Downgrade::BlobRedirect, "redirected: refusing plain HTTP to http://127.0.0.2"),
    ];
    for (i, (downgrade, why)) in downgrades.into_iter().enumerate() {
        let spied = spy.url("");
        let places = move |port| Places::downgraded(port, downgrade, &spied);
        let registry = TlsServer::registry(&p.path(&format!("registry-{i}")), places, blobs.clone());
        let ca = ["--ca-file", registry.ca.to_str().unwrap()];
        let repo = format!("{}/team/t", registry.host());
        // A store of its own: nothing a step before fetched is taken from the store.
        let store = p.path(&format!("store-{i}"));
        let pull =
            with_password(p.cmd().env("IMGBUILD_STORE", &store).arg("pull").args(ca).arg(format!("{repo}@{manifest}")));
        let push = with_password(
            p.cmd()
                .env("IMGBUILD_STORE", &store)
                .arg("push")
                .args(ca)
                .arg("--from")
                .arg(&layout)
                .arg(format!("{repo}:x")),
        );
        for (what, out) in [("pull", &pull), ("push", &push)] {
            let err = stderr(out);
            let expected = match downgrade {
                Downgrade::Realm => true,
                Downgrade::Upload => what == "push",
                Downgrade::BlobRedirect => what == "pull",
            };
            if expected {
                assert_exit(out, 5);
                assert!(err.contains(why), "{what}: expected `{why}`: {err}");
            }
        }
        assert!(spy.seen.lock().unwrap().is_empty(), "{why}: sent in clear text: {:?}", spy.seen.lock().unwrap());
        assert_no_secret(&p, &[pull, push], &secrets);
    }

    // The same places over TLS: followed. The password goes only to the realm over TLS, the
    // token only to the registry; a location or redirect on another host gets neither.
    let registry = TlsServer::registry(
        &p.path("registry-tls"),
        |port| Places {
            realm: format!("https://localhost:{port}/token"),
            upload: format!("https://localhost:{port}/upload/u1"),
            blob_redirect: Some(format!("https://localhost:{port}/blobdata")),
        },
        blobs.clone(),
    );
    let ca = ["--ca-file", registry.ca.to_str().unwrap()];
    let repo = format!("{}/team/t", registry.host());
    assert_ok(&with_password(p.cmd().arg("pull").args(ca).arg(format!("{repo}@{manifest}"))));
    assert_ok(&with_password(p.cmd().arg("push").args(ca).arg("--from").arg(&layout).arg(format!("{repo}:x"))));
    let seen = registry.seen.lock().unwrap().clone();
    for r in &seen {
        match r.authorization.as_deref() {
            Some(a) if a.starts_with("Basic ") => assert!(r.target.starts_with("/token?"), "{r:?}"),
            Some(_) => assert_eq!(r.host, registry.host(), "a token went to another host: {r:?}"),
            None => {}
        }
    }
    let elsewhere: Vec<&Seen> = seen.iter().filter(|r| r.host.starts_with("localhost:")).collect();
    assert!(elsewhere.iter().any(|r| r.target.starts_with("/upload/")), "{seen:?}");
    assert!(elsewhere.iter().any(|r| r.target.starts_with("/blobdata/")), "{seen:?}");
    assert!(spy.seen.lock().unwrap().is_empty());

    // --insecure allows plain HTTP to loopback only: a realm elsewhere is refused, unasked.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let plain = super::http::Acceptor::spawn(move |conn| {
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let challenge = r#"Bearer realm="http://registry.example.invalid/token",service="x""#;
        serve_one(conn, &log, |_| {
            ("401 Unauthorized".into(), vec![("WWW-Authenticate".into(), challenge.into())], vec![])
        });
    });
    let out = with_password(p.cmd().args(["pull", "--insecure"]).arg(format!("{}/x/y@{manifest}", plain.addr)));
    assert_exit(&out, 5);
    let err = stderr(&out);
    assert!(err.contains("refusing plain HTTP to http://registry.example.invalid/token: --insecure allows it only to hosts on loopback"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1, "only the registry itself was asked");
}

#[test]
fn a_password_in_a_reference_or_a_helpers_output_is_never_printed() {
    let p = TestProject::new();
    let home = Home::new(&p);
    let secret = "PW-in-reference-77e1";
    // Given as userinfo, wherever a registry image is named: refused (usage), repeated nowhere.
    let named = format!("ci:{secret}@127.0.0.1:5443/team/t");
    let mut outputs = Vec::new();
    for args in [
        vec!["push".to_string(), "--id".into(), "0".into(), named.clone()],
        vec!["--json".into(), "push".into(), "--all".into(), named.clone()],
        vec!["--json".into(), "pull".into(), format!("{named}@sha256:{}", "1".repeat(64))],
        vec!["sbom".into(), format!("docker://{named}:node-1")],
        vec!["verify".into(), named.clone()],
        vec!["--registry-mirror".into(), format!("docker.io={named}"), "check".into()],
    ] {
        let out = home.cmd(&p).args(&args).output().unwrap();
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("--password-stdin") || stderr(&out).contains("user name or password"),
            "{args:?}: {}",
            stderr(&out)
        );
        outputs.push(out);
    }
    assert_no_secret(&p, &outputs, &[secret.to_string()]);

    // A credential helper that fails saying the secret: said to have failed, and how, only.
    let registry = Registry::basic_tls(&p.path("registry"));
    let helper = home.bin.join("docker-credential-leaky");
    std::fs::write(&helper, format!("#!/bin/sh\necho 'token={PASSWORD}' >&2\nexit 3\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker = home.dir.join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), r#"{"credsStore":"leaky"}"#).unwrap();
    let ca = registry.ca.clone().unwrap();
    let out = home
        .cmd(&p)
        .args(["push", "--ca-file", ca.to_str().unwrap(), "--from-tag", "bookworm-amd64", "--from"])
        .arg(&p.base_layout)
        .arg(format!("{}/team/t:x", registry.host()))
        .output()
        .unwrap();
    assert_exit(&out, 6);
    let err = stderr(&out);
    assert!(err.contains("docker-credential-leaky") && err.contains("exited with 3"), "{err}");
    assert_no_secret(&p, &[out], &[PASSWORD.to_string()]);
}
