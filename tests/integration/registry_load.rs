//! A team's registry under load: many `imgbuild push` at once to one repository, a registry
//! that restarts in the middle of a push, and one that throttles with `429` and `Retry-After`.
//! Loopback only; every process and thread started here stops when its guard is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::harness::*;
use super::http::Acceptor;
use super::registry_server::{require, Registry};

/// Concurrent pushes per round (the issue's N ≥ 6).
const PUSHES: usize = 6;

/// Children started by a test, killed by PID if the test ends before they do.
struct Children(Vec<Child>);

impl Children {
    /// Waits for every child, bounded: one still running after `limit` fails the test.
    fn wait_all(mut self, limit: Duration) -> Vec<Output> {
        let deadline = Instant::now() + limit;
        let mut outputs = Vec::new();
        for child in std::mem::take(&mut self.0) {
            let mut child = child;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    self.0.push(child);
                    panic!("a push still ran after {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            outputs.push(child.wait_with_output().unwrap());
        }
        outputs
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `command` with its output kept for the test.
fn spawn(command: &mut Command) -> Child {
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// `push --insecure ARGS` from `store`, started.
fn spawn_push(p: &TestProject, store: &Path, args: &[&str]) -> Child {
    spawn(p.cmd().env("IMGBUILD_STORE", store).args(["--json", "--quiet", "push", "--insecure"]).args(args))
}

/// The digest a tag of the registry names, read with skopeo (not imgbuild).
fn tag_digest(registry: &Registry, reference: &str) -> String {
    let mut cmd = Command::new("skopeo");
    cmd.arg("inspect").args(registry.skopeo_opts()).arg("--raw").arg(format!("docker://{reference}"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "skopeo inspect {reference}: {}", String::from_utf8_lossy(&out.stderr));
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout)))
}

/// A project with its base in the store, a registry beside it, and the images built.
fn project_and_registry(build: &[&str]) -> (TestProject, Registry, serde_json::Value) {
    require("skopeo");
    let p = TestProject::new();
    let registry = Registry::plain(&p.path("registry"));
    p.add_base();
    let built = json(&p.run(&[&["--json"], build].concat()));
    (p, registry, built)
}

/// Runs the pushes at once (each: the store it pushes from, and where to with `--all`),
/// bounded in time; every one must succeed. Returns their summaries.
fn push_at_once(p: &TestProject, pushes: &[(&Path, &str)], label: &str) -> Vec<serde_json::Value> {
    let started = Instant::now();
    let start = |(store, repo): &(&Path, &str)| spawn_push(p, store, &["--all", repo]);
    let outputs = Children(pushes.iter().map(start).collect()).wait_all(Duration::from_secs(240));
    let failed: Vec<String> = outputs
        .iter()
        .filter(|o| !o.status.success())
        .map(|o| format!("exit {:?}: {}", o.status.code(), stderr(o)))
        .collect();
    assert!(failed.is_empty(), "{label}: {} of {} pushes failed:\n{}", failed.len(), pushes.len(), failed.join("\n"));
    let summaries: Vec<serde_json::Value> = outputs.iter().map(json).collect();
    let retried: u64 = summaries
        .iter()
        .flat_map(|s| s["pushed"].as_array().unwrap().clone())
        .map(|i| i["manifests_retried"].as_u64().unwrap() + i["referrers"]["manifests_retried"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{label}: {} pushes in {:?}; {retried} manifest(s) refused for unknown content, then taken",
        pushes.len(),
        started.elapsed()
    );
    summaries
}

/// Every tag of `repo` names the manifest the store built.
fn assert_tags(registry: &Registry, repo: &str, local: &serde_json::Value, label: &str) {
    for (i, node) in local["nodes"].as_array().unwrap().iter().enumerate() {
        let digest = tag_digest(registry, &format!("{repo}:node-{i}"));
        assert_eq!(digest, node["digest"].as_str().unwrap(), "{label}: {repo}:node-{i}");
    }
    let cluster = tag_digest(registry, &format!("{repo}:cluster"));
    assert_eq!(cluster, local["cluster"]["digest"].as_str().unwrap(), "{label}: {repo}:cluster");
}

#[test]
fn six_concurrent_push_all_in_two_rounds_all_succeed_and_every_tag_reads_back() {
    let (p, registry, local) = project_and_registry(&["build"]);
    // What one push alone uploads (to another registry).
    let solo = Registry::plain(&p.path("registry-solo"));
    let alone = json(&p.run(&["--json", "push", "--insecure", "--all", &format!("{}/team/zk-kafka", solo.host())]));
    let one = alone["bytes_uploaded"].as_u64().unwrap();
    assert!(one > 0);

    // Round 1: six pushes from one store into an empty repository. Each blob goes up once:
    // the pushes of one store take turns per blob, and the others find it there.
    let repo = format!("{}/team/zk-kafka", registry.host());
    let store = p.store.clone();
    let first = push_at_once(&p, &[(store.as_path(), repo.as_str()); PUSHES], "round 1");
    let uploaded: u64 = first.iter().map(|s| s["bytes_uploaded"].as_u64().unwrap()).sum();
    assert_eq!(uploaded, one, "{PUSHES} pushes from one store upload what one push does");
    assert_tags(&registry, &repo, &local, "round 1");

    // Round 2: a second store (a copy) pushes to the same repository while the first pushes to
    // a sibling one (mounting from it), all at once.
    let copy = p.path("store-copy");
    copy_dir(&p.store, &copy);
    let sibling = format!("{}/team/zk-kafka-next", registry.host());
    let mut pushes = vec![(copy.as_path(), repo.as_str()); PUSHES / 2];
    pushes.extend(vec![(store.as_path(), sibling.as_str()); PUSHES - PUSHES / 2]);
    push_at_once(&p, &pushes, "round 2");
    assert_tags(&registry, &repo, &local, "round 2");
    assert_tags(&registry, &sibling, &local, "round 2");
    // What the registry refused (the race the retries answer), as its own log says.
    let log = std::fs::read_to_string(registry.dir.join("registry.log")).unwrap();
    let refused = |code: &str| log.lines().filter(|l| l.contains(&format!("err.code=\"{code}\""))).count();
    eprintln!(
        "registry log: {} `digest invalid`, {} `manifest blob unknown`",
        refused("digest invalid"),
        refused("manifest blob unknown")
    );
}

/// The push's node image, read back through the registry itself.
fn assert_reads_back(p: &TestProject, registry: &Registry, reference: &str, id: u32) {
    let local = json(&p.run(&["--json", "--offline", "node", "--id", &id.to_string()]));
    assert_eq!(tag_digest(registry, reference), local["nodes"][0]["digest"].as_str().unwrap(), "{reference}");
}

#[test]
fn a_registry_restarted_in_the_middle_of_a_push_ends_in_a_complete_push() {
    let (p, mut registry, _) = project_and_registry(&["node", "--id", "0"]);
    let reference = format!("{}/restart/zk:node-0", registry.host());
    // Small chunks: the upload of a layer is many requests, one of which meets the restart.
    let child = spawn(p.cmd().env("IMGBUILD_CHUNK_SIZE", "16384").args([
        "--json",
        "--quiet",
        "push",
        "--insecure",
        "--id",
        "0",
        &reference,
    ]));
    let mut children = Children(vec![child]);
    // The registry goes down once the push has an upload going.
    let uploads = p.path("registry/data/docker/registry/v2/repositories/restart/zk/_uploads");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&uploads).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < deadline, "the push started no upload");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(children.0[0].try_wait().unwrap().is_none(), "the push ended before the restart");
    registry.restart(Duration::from_secs(1));
    let out = children.wait_all(Duration::from_secs(120)).pop().unwrap();
    let summary = json(&out);
    assert!(summary["pushed"][0]["reference"].as_str().unwrap().starts_with(&reference), "{summary}");
    assert_reads_back(&p, &registry, &reference, 0);

    // Down for longer than the retries last: the push fails saying what it pushed, what it
    // did not, and that the same push again finishes it; which it does once the registry is back.
    let repo = format!("{}/outage/zk", registry.host());
    let push_all = || spawn_push(&p, &p.store, &["--all", &repo]);
    let mut children = Children(vec![push_all()]);
    let first_tag = p.path("registry/data/docker/registry/v2/repositories/outage/zk/_manifests/tags/node-1"); // node-0 and its referrers are in
    let deadline = Instant::now() + Duration::from_secs(60);
    while !first_tag.exists() {
        assert!(Instant::now() < deadline, "node-1 was never pushed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(children.0[0].try_wait().unwrap().is_none(), "the push ended before the outage");
    registry.stop();
    let out = children.wait_all(Duration::from_secs(120)).pop().unwrap();
    registry.start_again();
    assert_exit(&out, 5);
    let err = stderr(&out);
    assert!(err.contains(&format!("pushed: {repo}:node-0@sha256:")), "{err}");
    assert!(err.contains(&format!("not pushed: {repo}:")) && err.contains(&format!("{repo}:cluster")), "{err}");
    assert!(err.contains("Run the same push again to finish it"), "{err}");
    let again = json(&p.run(&["--json", "push", "--insecure", "--all", &repo]));
    assert_eq!(again["pushed"][0]["blobs_uploaded"], 0, "node-0 was there: {again}");
    for id in 0..3 {
        assert_reads_back(&p, &registry, &format!("{repo}:node-{id}"), id);
    }
}

/// A throttled request: when it was answered, and how long the proxy asked to wait.
struct Throttled {
    what: String,
    at: Instant,
    asked: Duration,
}

/// A proxy in front of a registry, one request per connection, that answers the first request
/// of each kind in `rules` (method and a part of its path) with that status, error code and
/// `Retry-After`; it forwards everything else. Records every request's arrival, and each throttled one.
struct ThrottlingProxy {
    addr: SocketAddr,
    /// Each request's arrival and its method and path.
    arrivals: Arc<Mutex<Vec<(Instant, String)>>>,
    throttled: Arc<Mutex<Vec<Throttled>>>,
    _acceptor: Acceptor,
}

type Rule = (&'static str, &'static str, &'static str, &'static str, u64);

impl ThrottlingProxy {
    fn start(upstream: SocketAddr, rules: &'static [Rule]) -> ThrottlingProxy {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let throttled = Arc::new(Mutex::new(Vec::new()));
        let (seen, held) = (Arc::clone(&arrivals), Arc::clone(&throttled));
        let used = Arc::new(Mutex::new(vec![false; rules.len()]));
        let acceptor = Acceptor::spawn(move |conn| {
            let _ = relay(conn, upstream, rules, &used, &seen, &held);
        });
        ThrottlingProxy { addr: acceptor.addr, arrivals, throttled, _acceptor: acceptor }
    }
}

impl ThrottlingProxy {
    /// How many blobs it relayed downloads of, failing the test if one was downloaded twice.
    fn blobs_downloaded_once(&self) -> usize {
        let requests: Vec<String> = self.arrivals.lock().unwrap().iter().map(|(_, r)| r.clone()).collect();
        let blobs: Vec<&String> =
            requests.iter().filter(|r| r.starts_with("GET ") && r.contains("/blobs/sha256:")).collect();
        let distinct: std::collections::BTreeSet<&&String> = blobs.iter().collect();
        assert_eq!(blobs.len(), distinct.len(), "a blob was downloaded twice: {blobs:#?}");
        blobs.len()
    }
}

fn relay(
    conn: TcpStream,
    upstream: SocketAddr,
    rules: &[Rule],
    used: &Mutex<Vec<bool>>,
    arrivals: &Mutex<Vec<(Instant, String)>>,
    throttled: &Mutex<Vec<Throttled>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    (&mut reader).take(8192).read_line(&mut head)?;
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut line = String::new();
        if (&mut reader).take(8192).read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        headers.push(line);
    }
    let line = head.split(' ').take(2).collect::<Vec<_>>().join(" ");
    arrivals.lock().unwrap().push((Instant::now(), line));
    let length: u64 = headers
        .iter()
        .find_map(|h| h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    (&mut reader).take(length).read_to_end(&mut body)?;
    let mut conn = conn;
    let (method, target) = head.split_once(' ').map(|(m, rest)| (m, rest.split(' ').next().unwrap_or(""))).unwrap();
    let rule = {
        let mut used = used.lock().unwrap();
        let hit = rules.iter().position(|(m, part, ..)| *m == method && target.contains(part));
        hit.filter(|i| !std::mem::replace(&mut used[*i], true)).map(|i| rules[i])
    };
    if let Some((_, _, status, code, seconds)) = rule {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"injected"}}]}}"#);
        throttled.lock().unwrap().push(Throttled {
            what: format!("{method} {target}"),
            at: Instant::now(),
            asked: Duration::from_secs(seconds),
        });
        write!(
            conn,
            "HTTP/1.1 {status}\r\nRetry-After: {seconds}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return conn.flush();
    }
    let mut server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    server.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = head.into_bytes();
    for h in headers.iter().filter(|h| !h.to_ascii_lowercase().starts_with("connection:")) {
        request.extend_from_slice(h.as_bytes());
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    request.extend_from_slice(&body);
    server.write_all(&request)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    conn.write_all(&answer)?;
    conn.flush()
}

#[test]
fn a_throttling_registry_is_waited_for_as_its_retry_after_says() {
    let (p, registry, _) = project_and_registry(&["node", "--id", "1"]);
    const RULES: &[Rule] = &[
        ("HEAD", "/blobs/", "429 Too Many Requests", "TOOMANYREQUESTS", 1),
        ("POST", "/blobs/uploads/", "503 Service Unavailable", "UNAVAILABLE", 2),
        ("PUT", "/manifests/node-1", "429 Too Many Requests", "TOOMANYREQUESTS", 1),
        // An upload session the registry lost (restarted): the upload starts again.
        ("PATCH", "/blobs/uploads/", "404 Not Found", "BLOB_UPLOAD_UNKNOWN", 0),
    ];
    let proxy = ThrottlingProxy::start(registry.addr, RULES);
    let reference = format!("{}/throttled/zk:node-1", proxy.addr);
    let started = Instant::now();
    // Chunks smaller than the layers: uploads go in PATCHes.
    let mut push = p.cmd();
    push.env("IMGBUILD_CHUNK_SIZE", "65536").args(["--json", "push", "--insecure", "--id", "1", &reference]);
    let out = push.output().unwrap();
    let took = started.elapsed();
    let summary = json(&out);
    assert_eq!(summary["pushed"][0]["blobs_uploaded"], 8, "{summary}");
    let throttled = proxy.throttled.lock().unwrap();
    assert_eq!(throttled.len(), RULES.len(), "each rule throttled one request");
    let arrivals = proxy.arrivals.lock().unwrap();
    for t in throttled.iter() {
        // The push is sequential: its next request is the retry.
        let (next, _) = arrivals.iter().find(|(a, _)| *a > t.at).expect("a request after the throttled one");
        let waited = next.duration_since(t.at);
        assert!(waited >= t.asked, "{}: asked to wait {:?}, came back after {waited:?}", t.what, t.asked);
        assert!(waited < t.asked + Duration::from_secs(9), "{}: waited {waited:?}", t.what);
    }
    eprintln!("throttled push: {took:?}");
    assert_reads_back(&p, &registry, &format!("{}/throttled/zk:node-1", registry.host()), 1);

    // A registry asking for more than imgbuild waits (60 s): a clear error at once, exit 5.
    const LONG: &[Rule] = &[("GET", "/v2/", "429 Too Many Requests", "TOOMANYREQUESTS", 3600)];
    let proxy = ThrottlingProxy::start(registry.addr, LONG);
    let started = Instant::now();
    let out = p.run(&["push", "--insecure", "--id", "1", &format!("{}/throttled/zk:node-1", proxy.addr)]);
    assert_exit(&out, 5);
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(stderr(&out).contains("asks to wait 3600 s"), "{}", stderr(&out));
}

#[test]
fn builds_and_pulls_at_once_into_one_store_download_each_blob_once() {
    use super::base_image::{base, base_recipe, push_base};
    let p = TestProject::new();
    let registry = Registry::plain(&p.path("registry"));
    push_base(&p, &format!("{}/library/base", registry.host()));
    let proxy = ThrottlingProxy::start(registry.addr, &[]);
    let through = proxy.addr.to_string();
    base_recipe(&p, &format!("{through}/library/base"), &[], None);
    let (digest, _) = base(&p);
    // Four builds (each its own output) and two pulls of the base, into one empty store.
    let mut children = Vec::new();
    for i in 0..4 {
        let out = p.path(&format!("out-{i}"));
        let args = ["--insecure-registry", &through, "--json", "build", "--out", out.to_str().unwrap()];
        children.push(spawn(p.cmd().args(args)));
    }
    for _ in 0..2 {
        let pinned = format!("{through}/library/base@{digest}");
        let args = ["--json", "pull", "--insecure", &pinned];
        children.push(spawn(p.cmd().args(args)));
    }
    let outputs = Children(children).wait_all(Duration::from_secs(300));
    let built: Vec<serde_json::Value> = outputs.iter().map(json).collect();
    for b in &built[1..4] {
        assert_eq!(b["nodes"], built[0]["nodes"], "every build made the same images");
    }
    assert_eq!(proxy.blobs_downloaded_once(), 2, "the base's config and layer");
    for (name, _) in &p.inputs {
        let got = p.server.requests(&format!("dist/{name}")).len() + p.server.requests(&format!("mirror/{name}")).len();
        assert!(got <= 1, "{name} was downloaded {got} times");
    }
    assert_ok(&p.run(&["store", "verify"]));
}

#[test]
fn builds_at_once_from_a_warm_cache_into_one_store_download_each_entry_once() {
    let (p, registry, filled) = project_and_registry(&["build"]);
    let host = registry.host();
    // The team's key: the store that fills the cache signs with it, every build trusts it.
    let keys = p.path("keys");
    let generated = p.cmd().args(["cache", "key", "generate", "team", "--dir"]).arg(&keys).output().unwrap();
    assert_ok(&generated);
    let public = String::from_utf8(generated.stdout).unwrap().trim().to_string();
    let secret = keys.join("team.secret");
    let cache = |host: &str| {
        [
            format!("--cache={host}/team/layer-cache"),
            format!("--insecure-registry={host}"),
            format!("--cache-trusted-key={public}"),
        ]
    };
    // The first store fills the cache as it builds again (its layers are pushed as signed records).
    let mut fill = p.cmd();
    fill.args(cache(&host)).arg("--cache-signing-key").arg(&secret);
    let fill = fill.args(["--json", "build", "--out"]).arg(p.path("out-fill")).output().unwrap();
    assert_eq!(json(&fill)["nodes"], filled["nodes"]);
    // Four builds at once into a new store, through a recording proxy.
    let proxy = ThrottlingProxy::start(registry.addr, &[]);
    let store = p.path("store-b");
    let on_b = || {
        let mut c = p.cmd();
        c.env("IMGBUILD_STORE", &store);
        c
    };
    assert_ok(&on_b().args(["store", "add", p.base_layout.to_str().unwrap()]).output().unwrap());
    let served = p.server.total_requests();
    let through = cache(&proxy.addr.to_string());
    let build =
        |i: usize| spawn(on_b().args(&through).args(["--json", "build", "--out"]).arg(p.path(&format!("out-b-{i}"))));
    let children = (0..4).map(build).collect();
    let outputs = Children(children).wait_all(Duration::from_secs(300));
    let mut pulled = 0;
    for out in &outputs {
        let built = json(out);
        assert_eq!(built["nodes"], filled["nodes"], "the same images as the store that filled the cache");
        assert_eq!(built["layers_built"], 0, "{built}");
        pulled += built["cache"]["pulled"].as_u64().unwrap();
    }
    assert_eq!(pulled, 3, "each of the three recipe layers pulled by one build");
    assert_eq!(p.server.total_requests(), served, "no source was downloaded");
    assert_eq!(proxy.blobs_downloaded_once(), 3, "the three layers");
    assert_ok(&on_b().args(["store", "verify"]).output().unwrap());
}
