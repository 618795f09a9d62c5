//! A real registry (Debian's `docker-registry`) on a free loopback port, plain HTTP or htpasswd
//! Basic auth behind TLS with a CA made for the test; and a TCP proxy in front of it that
//! answers the first requests with 500, as a flaky registry would. Every process started here
//! is killed by its PID when the value is dropped, also when the test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use super::harness::tool;
use super::http::{read_request, Acceptor};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The CA certificate (the server's self-signed one) for TLS registries.
    pub ca: Option<PathBuf>,
}

pub const USER: &str = "pusher";

pub use super::harness::require_tool as require;
pub const PASSWORD: &str = "s3cret-Pa55word-9f1c";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How a test registry serves TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Plain HTTP.
    None,
    /// A server certificate (`CA:FALSE`) signed by a CA made for the test.
    CaSigned,
    /// One self-signed certificate, made as Docker's registry documentation says
    /// (`openssl req -x509`, which marks it `CA:TRUE`).
    SelfSigned,
}

impl Registry {
    pub fn plain(dir: &Path) -> Registry {
        Registry::start(dir, Tls::None, "")
    }

    /// htpasswd Basic auth behind TLS with a CA and a server certificate.
    pub fn basic_tls(dir: &Path) -> Registry {
        Registry::start(dir, Tls::CaSigned, "")
    }

    /// htpasswd Basic auth behind TLS with a self-signed `CA:TRUE` certificate (`ca`).
    pub fn basic_self_signed(dir: &Path) -> Registry {
        Registry::start(dir, Tls::SelfSigned, "")
    }

    /// A plain-HTTP registry that wants Bearer tokens from `token_server`.
    pub fn bearer(dir: &Path, token_server: &TokenServer) -> Registry {
        let auth = format!(
            "auth: {{token: {{realm: {}, service: {TOKEN_SERVICE}, issuer: {TOKEN_ISSUER}, rootcertbundle: {}}}}}\n",
            token_server.realm(),
            token_server.cert.display()
        );
        Registry::start(dir, Tls::None, &auth)
    }

    fn start(dir: &Path, tls: Tls, extra_config: &str) -> Registry {
        require("docker-registry");
        require("openssl");
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        let mut ca = None;
        if tls != Tls::None {
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            let ca_cert = if tls == Tls::CaSigned {
                make_ca_and_server_cert(dir, &cert, &key)
            } else {
                let san = "subjectAltName=IP:127.0.0.1,DNS:localhost";
                let (k, c) = (key.to_str().unwrap(), cert.to_str().unwrap());
                let args = [
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    san,
                    "-keyout",
                    k,
                    "-out",
                    c,
                ];
                openssl(&args, dir);
                let text = tool(Command::new("openssl").args(["x509", "-noout", "-text", "-in", c]));
                assert!(text.contains("CA:TRUE"), "openssl req -x509 no longer makes a CA:TRUE certificate: {text}");
                cert.clone()
            };
            config.push_str(&format!("  tls: {{certificate: {}, key: {}}}\n", cert.display(), key.display()));
            let hash = bcrypt::hash_with_result(PASSWORD, 5).unwrap().format_for_version(bcrypt::Version::TwoY);
            std::fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: basic-realm, path: {}}}}}\n",
                dir.join("htpasswd").display()
            ));
            ca = Some(ca_cert);
        }
        config.push_str(extra_config);
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let registry = Registry { child, addr, dir: dir.to_path_buf(), ca };
        // Ready when it accepts connections; bounded.
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// skopeo's options to reach this registry.
    pub fn skopeo_opts(&self) -> Vec<String> {
        match &self.ca {
            None => vec!["--tls-verify=false".into()],
            Some(ca) => {
                let certs = self.dir.join("certs.d");
                std::fs::create_dir_all(&certs).unwrap();
                std::fs::copy(ca, certs.join("ca.crt")).unwrap();
                vec![format!("--cert-dir={}", certs.display()), format!("--creds={USER}:{PASSWORD}")]
            }
        }
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A self-signed certificate and its key, in `dir`.
fn self_signed(dir: &Path, common_name: &str, key: &str, cert: &str) {
    let subject = format!("/CN={common_name}");
    let args = [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject, "-keyout", key, "-out", cert,
    ];
    openssl(&args, dir);
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it; returns the CA's.
pub fn make_ca_and_server_cert(dir: &Path, cert: &Path, key: &Path) -> PathBuf {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    self_signed(dir, "imgbuild test CA", "ca.key", "ca.pem");
    openssl(
        &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", "server.csr"],
        dir,
    );
    std::fs::write(dir.join("server.ext"), "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            cert,
        ],
        dir,
    );
    dir.join("ca.pem")
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const TOKEN_SERVICE: &str = "imgbuild-test-registry";
pub const TOKEN_ISSUER: &str = "imgbuild-test-issuer";

/// A token server as the distribution spec describes it: checks Basic credentials and answers
/// with an RS256 JWT granting the scopes asked for, signed by a key whose certificate the
/// registry trusts (`rootcertbundle`) and carried in the token's `x5c` header.
pub struct TokenServer {
    pub cert: PathBuf,
    pub scopes: Arc<std::sync::Mutex<Vec<String>>>,
    /// How each token was asked for: `basic` or `refresh_token`.
    pub grants: Arc<std::sync::Mutex<Vec<String>>>,
    acceptor: Acceptor,
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        self_signed(dir, "token signer", "token.key", "token.pem");
        let der = Command::new("openssl")
            .args(["x509", "-in", "token.pem", "-outform", "DER"])
            .current_dir(dir)
            .output()
            .unwrap()
            .stdout;
        use base64::Engine as _;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let key = dir.join("token.key");
        let scopes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&scopes);
        let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
        let granted = Arc::clone(&grants);
        let acceptor = Acceptor::spawn(move |conn| {
            let _ = issue_token(conn, &key, &x5c, &seen, &granted);
        });
        TokenServer { cert: dir.join("token.pem"), scopes, grants, acceptor }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.acceptor.addr)
    }
}

/// The identity token the token server accepts (as a credential helper's `<token>` secret).
pub const IDENTITY_TOKEN: &str = "id-token-7c1e-never-printed";

/// `%XX` and `+` decoded, as in a query or form.
fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (url_decode(k), url_decode(v))).collect()
}

/// Answers a token request: a GET with the test user's Basic credentials, or an OAuth2
/// `refresh_token` POST with `IDENTITY_TOKEN`. Records each grant as `basic` or `refresh_token`.
fn issue_token(
    conn: TcpStream,
    key: &Path,
    x5c: &str,
    seen: &std::sync::Mutex<Vec<String>>,
    grants: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut request = read_request(&conn)?;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));
    let query = request.target.split_once('?').map_or("", |(_, q)| q).to_string();
    let (authorized, scopes) = if request.header("content-type") == Some("application/x-www-form-urlencoded") {
        let length: u64 = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = String::new();
        (&mut request.reader).take(length.min(65536)).read_to_string(&mut body)?;
        let form = form_pairs(&body);
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let ok = field("grant_type") == "refresh_token" && field("refresh_token") == IDENTITY_TOKEN;
        grants.lock().unwrap().push("refresh_token".into());
        (ok, field("scope").split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>())
    } else {
        grants.lock().unwrap().push("basic".into());
        let scopes = form_pairs(&query).into_iter().filter(|(k, _)| k == "scope").map(|(_, v)| v).collect();
        (request.header("authorization") == Some(expected.as_str()), scopes)
    };
    let mut conn = conn;
    if !authorized {
        return write!(conn, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let mut access = Vec::new();
    for scope in scopes {
        seen.lock().unwrap().push(scope.clone());
        let parts: Vec<&str> = scope.splitn(3, ':').collect();
        if let [kind, name, actions] = parts.as_slice() {
            access.push(
                serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }),
            );
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "x5c": [x5c] });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": USER, "aud": TOKEN_SERVICE, "exp": now + 600, "nbf": now - 60, "iat": now,
        "jti": format!("{now}-{}", access.len()), "access": access,
    });
    let signing_input = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
    let mut signer = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    signer.stdin.take().unwrap().write_all(signing_input.as_bytes())?;
    let signature = signer.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", url.encode(signature));
    let body = serde_json::json!({ "token": token, "expires_in": 600 }).to_string();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Forwards TCP to `upstream`, but answers the first `failures` requests with HTTP 500.
pub struct FlakyProxy {
    pub addr: SocketAddr,
    pub failed: Arc<AtomicUsize>,
    _acceptor: Acceptor,
}

impl FlakyProxy {
    pub fn start(upstream: SocketAddr, failures: usize) -> FlakyProxy {
        let failed = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&failed);
        let acceptor = Acceptor::spawn(move |conn| {
            if count.fetch_add(1, Ordering::SeqCst) < failures {
                let _ = fail(conn);
            } else {
                count.fetch_sub(1, Ordering::SeqCst);
                forward(conn, upstream);
            }
        });
        FlakyProxy { addr: acceptor.addr, failed, _acceptor: acceptor }
    }
}

/// Reads one request (headers and a Content-Length body) and answers 500.
fn fail(conn: TcpStream) -> std::io::Result<()> {
    let request = read_request(&conn)?;
    let length: u64 = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    std::io::copy(&mut request.reader.take(length), &mut std::io::sink())?;
    let body = r#"{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}"#;
    let mut conn = conn;
    write!(conn, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    conn.flush()
}

fn forward(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else { return };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut s_read, mut c_write) = (server, client);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// Writes `docker-credential-NAME` into `bin`: the credential helper protocol (`get`, the
/// server on stdin, JSON on stdout) answering for `server` only, and logging each server it
/// was asked about to `bin/NAME.log`.
pub fn write_credential_helper(bin: &Path, name: &str, server: &str, username: &str, secret: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let log = bin.join(format!("{name}.log"));
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\necho \"$server\" >> '{}'\nif [ \"$server\" = '{server}' ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{username}\",\"Secret\":\"{secret}\"}}\\n' \"$server\"\nelse\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n",
        log.display()
    );
    let path = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A server that answers every request with one fixed response: a registry that misbehaves.
pub struct FakeRegistry {
    pub addr: SocketAddr,
    _acceptor: Acceptor,
}

impl FakeRegistry {
    pub fn answering(status: &'static str, body: &str) -> FakeRegistry {
        let body = body.to_string();
        let acceptor = Acceptor::spawn(move |conn| {
            if read_request(&conn).is_ok() {
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeRegistry { addr: acceptor.addr, _acceptor: acceptor }
    }
}

/// Forwards each HTTP request to `upstream` (one request per connection), but cuts the first
/// blob download short: half of its body is sent, then the connection is closed, as a network
/// dropping mid-transfer would. Records each blob request's `Range` header.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    pub blob_ranges: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    _acceptor: Acceptor,
}

impl CuttingProxy {
    pub fn start(upstream: SocketAddr) -> CuttingProxy {
        let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&ranges);
        let cut = Arc::new(AtomicUsize::new(0));
        let acceptor = Acceptor::spawn(move |conn| {
            let _ = proxy_one(conn, upstream, &seen, &cut);
        });
        CuttingProxy { addr: acceptor.addr, blob_ranges: ranges, _acceptor: acceptor }
    }
}

/// Relays one GET (the only method a fetch uses) and its answer.
fn proxy_one(
    conn: TcpStream,
    upstream: SocketAddr,
    ranges: &std::sync::Mutex<Vec<Option<String>>>,
    cut: &AtomicUsize,
) -> std::io::Result<()> {
    let request = read_request(&conn)?;
    let blob = request.target.contains("/blobs/sha256:");
    if blob {
        ranges.lock().unwrap().push(request.header("range").map(str::to_string));
    }
    let mut server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    server.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("GET {} HTTP/1.1\r\n", request.target);
    for (k, v) in request.headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("connection")) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    server.write_all(head.as_bytes())?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    let ok = answer.starts_with(b"HTTP/1.1 200");
    let mut conn = conn;
    if blob && ok && split < answer.len() && cut.fetch_add(1, Ordering::SeqCst) == 0 {
        let body = answer.len() - split;
        conn.write_all(&answer[..split + body / 2])?;
    } else {
        conn.write_all(&answer)?;
    }
    conn.flush()
}
