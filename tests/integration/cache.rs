//! A team's shared layer cache (`--cache REPO`, issue #16) in a real registry: a second store
//! builds no layer and fetches no source, and writes the same bytes; an entry that lies about
//! its blob or diff_id is refused and the layer built; a consistent lie is used only by builds
//! that name the cache; a cache that is down or refuses never fails a build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use super::harness::*;
use super::registry_server::{FakeRegistry, Registry, PASSWORD, USER};

const REPO_PATH: &str = "team/layer-cache";

/// The registry a test shares its cache through, and the `--cache` value naming it.
struct SharedCache {
    registry: Registry,
    repo: String,
}

impl SharedCache {
    fn plain(p: &TestProject) -> SharedCache {
        let registry = Registry::plain(&p.path("registry"));
        let repo = format!("{}/{REPO_PATH}", registry.host());
        SharedCache { registry, repo }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v2/{REPO_PATH}/{path}", self.registry.host())
    }

    /// The record tagged `tag`.
    fn record(&self, tag: &str) -> serde_json::Value {
        let response = reqwest::blocking::Client::new()
            .get(self.url(&format!("manifests/{tag}")))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{tag}: {}", response.status());
        serde_json::from_slice(&response.bytes().unwrap()).unwrap()
    }

    /// Every record's tag, with the layer digest it names.
    fn records(&self) -> Vec<(String, String)> {
        let list: serde_json::Value =
            serde_json::from_slice(&reqwest::blocking::get(self.url("tags/list")).unwrap().bytes().unwrap()).unwrap();
        let mut tags: Vec<String> =
            list["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        tags.sort();
        tags.into_iter().map(|t| (t.clone(), self.record(&t)["layers"][0]["digest"].as_str().unwrap().into())).collect()
    }

    /// Replaces the record tagged `tag` with `record`, as anyone who can push to the cache can.
    fn put_record(&self, tag: &str, record: &serde_json::Value) {
        let response = reqwest::blocking::Client::new()
            .put(self.url(&format!("manifests/{tag}")))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(serde_json::to_vec(record).unwrap())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().unwrap());
    }

    /// The file where the registry keeps a blob.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.registry.dir.join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

/// `imgbuild` on its own store, with a home that holds no credentials.
fn on_store(p: &TestProject, store: &Path) -> Command {
    let mut c = p.cmd();
    let home = store.with_extension("home");
    std::fs::create_dir_all(&home).unwrap();
    c.env("IMGBUILD_STORE", store).env("HOME", &home);
    for var in ["DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "IMGBUILD_CACHE"] {
        c.env_remove(var);
    }
    c
}

/// A new store holding the base image (as `imgbuild store add` of a `skopeo copy` puts it).
fn new_store(p: &TestProject, name: &str) -> PathBuf {
    let store = p.path(name);
    assert_ok(&on_store(p, &store).args(["store", "add", p.base_layout.to_str().unwrap()]).output().unwrap());
    store
}

/// `build --json` of an oci-archive into `out` on `store`, through the cache `repo` (on
/// loopback, plain HTTP).
fn build(p: &TestProject, store: &Path, repo: Option<&str>, out: &str) -> Output {
    let mut c = on_store(p, store);
    if let Some(repo) = repo {
        let host = repo.split('/').next().unwrap();
        c.args(["--cache", repo, "--insecure-registry", host]);
    }
    let out = p.path(out);
    c.args(["--json", "build", "--format", "oci-archive", "--out", out.to_str().unwrap()]).output().unwrap()
}

fn layers_built(v: &serde_json::Value) -> u64 {
    v["layers_built"].as_u64().unwrap()
}

/// The recipe layers of the build's cluster image: `created_by` → digest.
fn recipe_layers(v: &serde_json::Value) -> Vec<(String, String)> {
    let layers = v["cluster"]["platforms"][0]["layers"].as_array().unwrap();
    layers
        .iter()
        .filter(|l| l["created_by"].as_str().unwrap().starts_with("imgbuild recipe"))
        .map(|l| (l["created_by"].as_str().unwrap().to_string(), l["digest"].as_str().unwrap().to_string()))
        .collect()
}

/// Fails unless the two files hold the same bytes.
pub(super) fn same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

#[test]
fn a_second_store_builds_no_layer_and_fetches_no_source_from_a_warm_cache() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let first = new_store(&p, "store-a");
    let a = json(&build(&p, &first, Some(&cache.repo), "a.tar"));
    assert_eq!(layers_built(&a), 3, "{a}");
    assert_eq!((a["cache"]["missing"].as_u64(), a["cache"]["pushed"].as_u64()), (Some(3), Some(3)), "{a}");
    let records = cache.records();
    assert_eq!(records.len(), 3, "one record per recipe layer: {records:?}");
    let mut built: Vec<String> = recipe_layers(&a).into_iter().map(|(_, d)| d).collect();
    let mut cached: Vec<String> = records.iter().map(|(_, d)| d.clone()).collect();
    built.sort();
    cached.sort();
    assert_eq!(built, cached, "the records name the layers built");
    for (tag, _) in &records {
        assert!(tag.starts_with("deriv-") && tag.len() == 6 + 64, "{tag}");
        assert_eq!(cache.record(tag)["artifactType"], "application/vnd.imgbuild.layer.v1");
    }

    let second = new_store(&p, "store-b");
    let served = p.server.total_requests();
    let b = json(&build(&p, &second, Some(&cache.repo), "b.tar"));
    assert_eq!(layers_built(&b), 0, "{b}");
    assert_eq!((b["cache"]["pulled"].as_u64(), b["cache"]["pushed"].as_u64()), (Some(3), Some(0)), "{b}");
    assert_eq!(p.server.total_requests(), served, "a layer the cache gives needs no source");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
    assert_ok(&on_store(&p, &second).args(["store", "verify"]).output().unwrap());

    // Offline, the layers the cache gave are still used by a build that names the cache.
    let offline = on_store(&p, &second)
        .args(["--offline", "--cache", &cache.repo, "--json", "build", "--format", "oci-archive", "--out"])
        .arg(p.path("b-offline.tar"))
        .output()
        .unwrap();
    let offline = json(&offline);
    assert_eq!(layers_built(&offline), 0, "{offline}");
    same_file(&p.path("a.tar"), &p.path("b-offline.tar"));

    // Without the cache, only layers built here count: the sources are fetched, the layers
    // built from their pins, and they are the same.
    let own = json(&build(&p, &second, None, "b-own.tar"));
    assert_eq!(layers_built(&own), 3, "{own}");
    assert!(p.server.total_requests() > served, "the sources were fetched");
    same_file(&p.path("a.tar"), &p.path("b-own.tar"));
}

#[test]
fn layers_a_store_built_before_fill_the_cache_once() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let store = new_store(&p, "store-a");
    assert_eq!(layers_built(&json(&build(&p, &store, None, "a.tar"))), 3);
    let filling = json(&build(&p, &store, Some(&cache.repo), "a.tar"));
    assert_eq!((layers_built(&filling), filling["cache"]["pushed"].as_u64()), (0, Some(3)), "{filling}");
    assert_eq!(cache.records().len(), 3);
    let again = json(&build(&p, &store, Some(&cache.repo), "a.tar"));
    assert_eq!(again["cache"]["pushed"], 0, "the store knows the cache holds them: {again}");
    let other = json(&build(&p, &new_store(&p, "store-b"), Some(&cache.repo), "b.tar"));
    assert_eq!((layers_built(&other), other["cache"]["pulled"].as_u64()), (0, Some(3)), "{other}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
}

#[test]
fn entries_that_lie_about_their_blob_are_refused_and_the_layers_built() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let first = new_store(&p, "store-a");
    assert_ok(&build(&p, &first, Some(&cache.repo), "a.tar"));
    let records = cache.records();
    let [(wrong_diff_id, _), (wrong_blob, blob), (intact, _)] = records.as_slice() else { panic!("{records:?}") };

    // One record claims another diff_id for its blob.
    let mut lie = cache.record(wrong_diff_id);
    lie["annotations"]["org.imgbuild.layer.diff_id"] = format!("sha256:{}", "1".repeat(64)).into();
    cache.put_record(wrong_diff_id, &lie);
    // The registry serves other bytes for another record's blob: as long, and inflating to the
    // same tar (the gzip header's time is not covered by its checksum), but not the blob named.
    let file = cache.blob_file(blob);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let second = new_store(&p, "store-b");
    let out = on_store(&p, &second)
        .args(["--cache", &cache.repo, "--insecure-registry", &cache.registry.host(), "build", "--format"])
        .args(["oci-archive", "--out", p.path("b.tar").to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    let text = stderr(&out);
    let refused = |tag: &str, why: &str| {
        let line = text.lines().find(|l| l.contains(&format!("refused the cache's entry {}:{tag}", cache.repo)));
        assert!(line.is_some_and(|l| l.contains(why) && l.ends_with("building it here")), "{tag}, {why}: {text}");
    };
    refused(wrong_diff_id, "inflates to diff_id");
    refused(wrong_blob, "its blob's digest is sha256:");
    let summary = format!("cache {}: 1 layer(s) pulled, 2 pushed, 0 missing, 2 refused", cache.repo);
    assert!(text.contains(&summary), "{text}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
    assert_ok(&on_store(&p, &second).args(["store", "verify"]).output().unwrap());

    // The build that refused the lying record put the true one back.
    let healed = cache.record(wrong_diff_id);
    assert_ne!(healed, lie);
    let third = json(&build(&p, &new_store(&p, "store-c"), Some(&cache.repo), "c.tar"));
    assert_eq!(layers_built(&third), 1, "only the layer whose blob the registry mangled: {third}");
    assert_eq!(third["cache"]["pulled"], 2, "{third}");
    assert!(records.iter().any(|(t, _)| t == intact));
}

#[test]
fn a_consistent_lie_is_used_only_by_builds_that_name_the_cache() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let a = json(&build(&p, &new_store(&p, "store-a"), Some(&cache.repo), "a.tar"));
    let layers = recipe_layers(&a);
    let digest_of = |recipe: &str| layers.iter().find(|(by, _)| by.contains(recipe)).unwrap().1.clone();
    let records = cache.records();
    let tag_of = |digest: &str| records.iter().find(|(_, d)| d == digest).unwrap().0.clone();
    // The ZooKeeper record is made to name Kafka's layer, blob and diff_id alike: nothing in
    // the record or the blob gives it away.
    let (zookeeper, kafka) = (tag_of(&digest_of("zookeeper")), tag_of(&digest_of("kafka")));
    let mut swapped = cache.record(&kafka);
    swapped["annotations"]["org.imgbuild.derivation"] =
        cache.record(&zookeeper)["annotations"]["org.imgbuild.derivation"].clone();
    cache.put_record(&zookeeper, &swapped);

    let second = new_store(&p, "store-b");
    let b = json(&build(&p, &second, Some(&cache.repo), "b.tar"));
    assert_eq!(layers_built(&b), 0, "{b}");
    let poisoned = recipe_layers(&b);
    assert_eq!(poisoned.iter().filter(|(_, d)| *d == digest_of("kafka")).count(), 2, "{poisoned:?}");
    // `imgbuild verify` rebuilds from the pins without any cache (even when given one), so it
    // names the poisoned layer.
    let image = format!("oci-archive:{}:node-1", p.path("b.tar").display());
    let verify = on_store(&p, &second)
        .args(["--cache", &cache.repo, "--insecure-registry", &cache.registry.host(), "verify", &image])
        .output()
        .unwrap();
    assert_exit(&verify, 7);
    assert!(stderr(&verify).contains("(imgbuild recipe zookeeper 3.4.10"), "{}", stderr(&verify));
    // A build without the cache trusts only the layers it built: it rebuilds ZooKeeper's from
    // its pinned source, and gets the true image.
    let own = json(&build(&p, &second, None, "b-own.tar"));
    assert_eq!(recipe_layers(&own), layers, "{own}");
    same_file(&p.path("a.tar"), &p.path("b-own.tar"));
}

#[test]
fn a_cache_that_is_down_or_refuses_never_fails_a_build() {
    let p = TestProject::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let failing = FakeRegistry::answering("500 Internal Server Error", r#"{"errors":[{"code":"UNKNOWN"}]}"#);
    let locked = Registry::basic_tls(&p.path("locked"));
    let reference = new_store(&p, "store-reference");
    assert_ok(&build(&p, &reference, None, "reference.tar"));
    let insecure = |addr: &dyn std::fmt::Display| vec!["--insecure-registry".to_string(), addr.to_string()];
    let caches = [
        (format!("{closed}/{REPO_PATH}"), insecure(&closed)),
        (format!("{}/{REPO_PATH}", failing.addr), insecure(&failing.addr)),
        // A registry behind TLS and a login, without credentials: it refuses.
        (
            format!("{}/{REPO_PATH}", locked.host()),
            vec!["--ca-file".into(), locked.ca.clone().unwrap().display().to_string()],
        ),
    ];
    for (i, (repo, options)) in caches.iter().enumerate() {
        let store = new_store(&p, &format!("store-{i}"));
        let out = on_store(&p, &store)
            .args(options)
            .args(["--cache", repo, "--json", "build", "--format", "oci-archive", "--out"])
            .arg(p.path(&format!("out-{i}.tar")))
            .output()
            .unwrap();
        let v = json(&out);
        assert_eq!(layers_built(&v), 3, "{repo}: {v}");
        assert!(v["cache"]["unavailable"].is_string(), "{repo}: {v}");
        assert_eq!(v["cache"]["pushed"], 0, "{v}");
        same_file(&p.path("reference.tar"), &p.path(&format!("out-{i}.tar")));
    }
    // Reported to people, once.
    let (repo, options) = &caches[0];
    let out =
        on_store(&p, &new_store(&p, "store-human")).args(options).args(["--cache", repo, "build"]).output().unwrap();
    assert_ok(&out);
    let text = stderr(&out);
    assert_eq!(text.matches("is unavailable").count(), 1, "{text}");
    assert!(
        text.contains(&format!("cache {repo} is unavailable (")) && text.contains("layers are built here"),
        "{text}"
    );
}

#[test]
fn a_cache_behind_tls_and_a_login_is_reached_as_push_reaches_it() {
    let p = TestProject::new();
    let registry = Registry::basic_tls(&p.path("registry"));
    let repo = format!("{}/{REPO_PATH}", registry.host());
    let auth_file = p.path("auth.json");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(&auth_file, format!(r#"{{"auths":{{"{}":{{"auth":"{basic}"}}}}}}"#, registry.host())).unwrap();
    let ca = registry.ca.clone().unwrap();
    let run = |store: &Path, out: &str| {
        on_store(&p, store)
            .env("REGISTRY_AUTH_FILE", &auth_file)
            .args(["--cache", &repo, "--ca-file", ca.to_str().unwrap(), "--json", "build", "--format", "oci-archive"])
            .arg("--out")
            .arg(p.path(out))
            .output()
            .unwrap()
    };
    let (first, second) = (new_store(&p, "store-a"), new_store(&p, "store-b"));
    let outputs = [run(&first, "a.tar"), run(&second, "b.tar")];
    let (a, b) = (json(&outputs[0]), json(&outputs[1]));
    assert_eq!((a["cache"]["pushed"].as_u64(), layers_built(&b)), (Some(3), 0), "{a}\n{b}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
    for out in &outputs {
        assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSWORD) && !stderr(out).contains(PASSWORD));
    }
    for store in [&first, &second] {
        for file in tree(store) {
            let data = std::fs::read(store.join(&file)).unwrap();
            for secret in [PASSWORD, basic.as_str()] {
                assert!(!data.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret in {file}");
            }
        }
    }
}

#[test]
fn the_cache_is_a_repository_not_a_tag() {
    let p = TestProject::new();
    for bad in [
        "127.0.0.1:5000/team/cache:latest",
        "127.0.0.1:5000/Team",
        &format!("127.0.0.1:5000/x@sha256:{}", "a".repeat(64)),
    ] {
        let out = p.run(&["--cache", bad, "build"]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("--cache"), "{}", stderr(&out));
    }
}
