//! Issue 25, point 4: a hostile registry cannot make imgbuild read without bound or wait
//! without end. Error bodies (of any status, retried or not) are read to 64 KiB at most, token
//! answers to 1 MiB, and every small document (manifest, index, token, error body) must arrive
//! whole within the whole-request deadline (`--timeout`), however slowly it drips.
//! Measured by what the server managed to send, never by a clock.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::harness::*;
use super::http::{read_request, Acceptor};

/// How a hostile answer's body is sent.
#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
    /// Zeros, as many as declared (far more than any limit), until the client hangs up.
    Endless {
        declared: u64,
    },
    /// `bytes`, one at a time, `pause` apart.
    Drip {
        bytes: Vec<u8>,
        pause: Duration,
    },
}

struct Reply {
    status: &'static str,
    headers: Vec<String>,
    body: Body,
}

/// A registry on loopback that answers as `answer` says (given the path and its own port),
/// counting the body bytes it got out.
struct HostileServer {
    acceptor: Acceptor,
    sent: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl HostileServer {
    fn start(answer: impl Fn(&str, u16) -> Reply + Send + Sync + 'static) -> HostileServer {
        let (sent, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (count, log) = (Arc::clone(&sent), Arc::clone(&requests));
        let port = Arc::new(OnceLock::new());
        let own_port = Arc::clone(&port);
        let acceptor = Acceptor::spawn(move |conn| {
            let Ok(request) = read_request(&conn) else { return };
            log.lock().unwrap().push(request.target.clone());
            let reply = answer(&request.target, *own_port.get().unwrap());
            let _ = send(conn, &reply, &count);
        });
        port.set(acceptor.addr.port()).unwrap();
        HostileServer { acceptor, sent, requests }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    fn image(&self) -> String {
        format!("docker://{}/team/hostile:t", self.acceptor.addr)
    }
}

fn send(mut conn: TcpStream, reply: &Reply, sent: &AtomicU64) -> std::io::Result<()> {
    conn.set_write_timeout(Some(Duration::from_secs(20)))?;
    let length = match &reply.body {
        Body::Bytes(b) | Body::Drip { bytes: b, .. } => b.len() as u64,
        Body::Endless { declared } => *declared,
    };
    let mut head = format!("HTTP/1.1 {}\r\nContent-Length: {length}\r\nConnection: close\r\n", reply.status);
    reply.headers.iter().for_each(|h| head.push_str(&format!("{h}\r\n")));
    conn.write_all(format!("{head}\r\n").as_bytes())?;
    match &reply.body {
        Body::Bytes(b) => conn.write_all(b)?,
        Body::Endless { declared } => {
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..declared / chunk.len() as u64 {
                conn.write_all(&chunk)?;
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
        Body::Drip { bytes, pause } => {
            for b in bytes {
                std::thread::sleep(*pause);
                conn.write_all(&[*b])?;
                conn.flush()?;
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    Ok(())
}

fn reply(status: &'static str, headers: Vec<String>, body: Body) -> Reply {
    Reply { status, headers, body }
}

/// Far more than any limit: 1.5 GB.
const HUGE: u64 = 1536 << 20;
/// What a client that stops at its limit can have been sent: the limit plus loopback's socket
/// buffers (a few MiB), two orders of magnitude below `HUGE`.
const STOPPED: u64 = 16 << 20;

fn sbom(p: &TestProject, server: &HostileServer, timeout: &str) -> (std::process::Output, String) {
    let mut cmd = p.cmd();
    cmd.args(["--timeout", timeout, "sbom", "--insecure", "--platform", "linux/amd64", &server.image()]);
    let out = super::hostile_io::bounded(&mut cmd, &p.path("."), Duration::from_secs(120));
    let err = stderr(&out);
    (out, err)
}

#[test]
fn error_bodies_of_any_status_are_read_to_their_cap_only() {
    let p = TestProject::new();
    for status in ["404 Not Found", "400 Bad Request", "503 Service Unavailable"] {
        let server = HostileServer::start(move |_, _| reply(status, vec![], Body::Endless { declared: HUGE }));
        let (out, err) = sbom(&p, &server, "10");
        assert!(!out.status.success(), "{status}: {err}");
        assert!(err.contains(&status[..3]), "{status}: {err}");
        let requests = server.requests.lock().unwrap().len() as u64;
        assert!(
            server.sent() < STOPPED * requests,
            "{status}: {} bytes of error body were taken in {requests} requests",
            server.sent()
        );
    }
}

#[test]
fn a_token_answer_is_read_to_one_mib_only() {
    let p = TestProject::new();
    let server = HostileServer::start(|path, port| match path {
        "/v2/" => reply(
            "401 Unauthorized",
            vec![format!(r#"WWW-Authenticate: Bearer realm="http://127.0.0.1:{port}/token",service="s""#)],
            Body::Bytes(vec![]),
        ),
        _ if path.starts_with("/token") => reply("200 OK", vec![], Body::Endless { declared: HUGE }),
        _ => reply("404 Not Found", vec![], Body::Bytes(vec![])),
    });
    let (out, err) = sbom(&p, &server, "10");
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("token request to") && err.contains("larger than 1048576 bytes"), "{err}");
    assert!(server.sent() < STOPPED, "{} bytes of token answer were taken", server.sent());
}

/// A 300-byte manifest sent a byte every 100 ms would take 30 s; with `--timeout 2` the read
/// ends at the whole-request deadline, long before the server is done.
#[test]
fn a_dripped_manifest_ends_at_the_whole_request_deadline() {
    let p = TestProject::new();
    let manifest = serde_json::json!({"schemaVersion": 2, "pad": "x".repeat(300)}).to_string().into_bytes();
    let total = manifest.len() as u64;
    let server = HostileServer::start(move |path, _| match path {
        "/v2/" => reply("200 OK", vec![], Body::Bytes(b"{}".to_vec())),
        _ => reply(
            "200 OK",
            vec!["Content-Type: application/vnd.oci.image.manifest.v1+json".into()],
            Body::Drip { bytes: manifest.clone(), pause: Duration::from_millis(100) },
        ),
    });
    let (out, err) = sbom(&p, &server, "2");
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("whole-request deadline"), "{err}");
    assert!(server.sent() < total, "the whole dripped manifest ({total} bytes) was waited for: {err}");
}

/// A 600-byte source dripped a byte every 100 ms beats a 2 s per-read timeout for a minute;
/// a download must keep 16 KiB/s after one timeout, so every attempt ends at its grace.
#[test]
fn a_dripped_download_ends_below_the_minimum_rate() {
    let p = TestProject::new();
    let total = 600;
    let server = HostileServer::start(move |_, _| {
        reply("200 OK", vec![], Body::Drip { bytes: vec![b'x'; total], pause: Duration::from_millis(100) })
    });
    let url = format!("http://{}/dist/slow.tar.gz", server.acceptor.addr);
    let mut cmd = p.cmd();
    cmd.args(["--timeout", "2", "prefetch", &url]);
    let out = super::hostile_io::bounded(&mut cmd, &p.path("."), Duration::from_secs(120));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("fell below 16 KiB/s"), "{err}");
    assert!(server.sent() < total as u64, "the whole dripped download was waited for: {err}");
}

/// Issue 25: verify on a manifest of 3000 one-byte layers made 3000 GETs. A manifest lists at
/// most 1000 layers (MAX_LAYERS): past that it is refused, naming the limit, before any layer.
#[test]
fn a_manifest_of_too_many_layers_is_refused_before_any_layer_is_fetched() {
    let p = TestProject::new();
    let layer = serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": format!("sha256:{}", "e".repeat(64)), "size": 1 });
    let config = serde_json::json!({ "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": format!("sha256:{}", "c".repeat(64)), "size": 2 });
    let manifest = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": vec![layer; 3000] })
    .to_string()
    .into_bytes();
    let server = HostileServer::start(move |path, _| match path {
        "/v2/" => reply("200 OK", vec![], Body::Bytes(b"{}".to_vec())),
        _ if path.contains("/manifests/") => reply(
            "200 OK",
            vec!["Content-Type: application/vnd.oci.image.manifest.v1+json".into()],
            Body::Bytes(manifest.clone()),
        ),
        _ => reply("404 Not Found", vec![], Body::Bytes(vec![])),
    });
    for args in [vec!["verify", "--insecure"], vec!["sbom", "--insecure", "--platform", "linux/amd64"]] {
        let command = args[0];
        let mut cmd = p.cmd();
        cmd.args(args).arg(server.image());
        let out = super::hostile_io::bounded(&mut cmd, &p.path("."), Duration::from_secs(120));
        let err = stderr(&out);
        assert!(!out.status.success(), "{command}: {err}");
        assert!(err.contains("lists 3000 layers") && err.contains("MAX_LAYERS 1000"), "{command}: {err}");
    }
    let blobs = server.requests.lock().unwrap().iter().filter(|r| r.contains("/blobs/")).count();
    assert_eq!(blobs, 0, "layers fetched for a manifest past MAX_LAYERS");
}
