//! Hostile OCI layouts and archives (issue #11): a blob replaced by a link to `/dev/zero` or
//! to a host file, a FIFO, a longer file, a linked `blobs/sha256`, an `index.json` that never
//! ends; archive entries that are links or say more than their descriptor. Every command that
//! reads a layout or archive (`store add`, a base in a `--mirror` directory, `push --from`,
//! `sbom` and `verify` of `oci:`/`oci-archive:` names, `recipe`) refuses each at once, names
//! it, prints nothing of a host file, and leaves nothing in the store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::fixtures;
use super::harness::*;

/// A host file no layout may read: its sha256 must never be printed.
const SECRET: &[u8] = b"root:$6$the-host's-shadow-line:19000:0:99999:7:::\n";

/// Runs `cmd` to its end, at most `limit`; a command still running then is killed (by its
/// PID) and the test fails: a FIFO must never make imgbuild wait.
pub(super) fn bounded(cmd: &mut Command, scratch: &Path, limit: Duration) -> Output {
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (out_path, err_path) = (scratch.join("stdout"), scratch.join("stderr"));
    let stdout = std::fs::File::create(&out_path).unwrap();
    let stderr = std::fs::File::create(&err_path).unwrap();
    let mut child = Guard(cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).spawn().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{cmd:?} still runs after {limit:?}: it waits on what it reads");
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: std::fs::read(out_path).unwrap(), stderr: std::fs::read(err_path).unwrap() }
}

/// The layer blob of the layout's amd64 image, and its config blob.
fn amd64_blobs(layout: &Path) -> (PathBuf, PathBuf) {
    let read = |p: PathBuf| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap();
    let blob = |digest: &serde_json::Value| layout.join("blobs/sha256").join(&digest.as_str().unwrap()[7..]);
    let index = read(layout.join("index.json"));
    let top = index["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == "amd64");
    let manifest = read(blob(&top.unwrap()["digest"]));
    (blob(&manifest["layers"][0]["digest"]), blob(&manifest["config"]["digest"]))
}

/// What an attacker puts in a layout directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayoutSwap {
    LayerLinkedToDevZero,
    LayerIsAFifo,
    LayerLinkedToHostFile,
    ConfigLinkedToHostFile,
    LayerLonger,
    BlobsDirLinked,
    IndexLinkedToDevZero,
}

impl LayoutSwap {
    const ALL: [LayoutSwap; 7] = [
        LayoutSwap::LayerLinkedToDevZero,
        LayoutSwap::LayerIsAFifo,
        LayoutSwap::LayerLinkedToHostFile,
        LayoutSwap::ConfigLinkedToHostFile,
        LayoutSwap::LayerLonger,
        LayoutSwap::BlobsDirLinked,
        LayoutSwap::IndexLinkedToDevZero,
    ];

    /// What the refusal says.
    fn says(self) -> &'static str {
        match self {
            LayoutSwap::LayerIsAFifo => "is a FIFO, not a regular file",
            LayoutSwap::LayerLonger => "but its descriptor says",
            LayoutSwap::BlobsDirLinked => "under a symbolic link",
            _ => "is a symbolic link, not a regular file",
        }
    }

    /// What `recipe` answers: it reads manifests, indexes and configs, never a layer.
    fn recipe_answer(self) -> (i32, &'static str) {
        match self {
            LayoutSwap::ConfigLinkedToHostFile | LayoutSwap::BlobsDirLinked => (1, self.says()),
            // Its first look finds no index.json it can use, and reads nothing.
            LayoutSwap::IndexLinkedToDevZero => (2, "not an OCI layout"),
            _ => (0, "(oci-image)"),
        }
    }

    fn apply(self, layout: &Path, secret: &Path) {
        let (layer, config) = amd64_blobs(layout);
        let replace = |path: &Path, with: &dyn Fn(&Path)| {
            std::fs::remove_file(path).unwrap();
            with(path);
        };
        let link_to = |target: PathBuf| move |p: &Path| std::os::unix::fs::symlink(&target, p).unwrap();
        match self {
            LayoutSwap::LayerLinkedToDevZero => replace(&layer, &link_to("/dev/zero".into())),
            LayoutSwap::LayerIsAFifo => replace(&layer, &|p| {
                tool(Command::new("mkfifo").arg(p));
            }),
            LayoutSwap::LayerLinkedToHostFile => replace(&layer, &link_to(secret.into())),
            LayoutSwap::ConfigLinkedToHostFile => replace(&config, &link_to(secret.into())),
            LayoutSwap::LayerLonger => {
                let mut data = std::fs::read(&layer).unwrap();
                data.extend(std::iter::repeat_n(0u8, 1 << 20));
                std::fs::write(&layer, data).unwrap();
            }
            LayoutSwap::BlobsDirLinked => {
                let elsewhere = layout.with_extension("blobs-elsewhere");
                std::fs::rename(layout.join("blobs/sha256"), &elsewhere).unwrap();
                std::os::unix::fs::symlink(&elsewhere, layout.join("blobs/sha256")).unwrap();
            }
            LayoutSwap::IndexLinkedToDevZero => replace(&layout.join("index.json"), &link_to("/dev/zero".into())),
        }
    }
}

/// Runs `args` against the hostile `path` with a store of its own, and checks what every
/// refusal must be: bounded, the expected exit code and words, no host file's hash, and a store
/// that holds nothing of the refused blob and no temporary file.
struct Attempt<'a> {
    p: &'a TestProject,
    secret_hash: String,
    refused_blob: String,
}

impl Attempt<'_> {
    fn run(&self, name: &str, args: &[String], code: i32, says: &str) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let scratch = self.p.path(&format!("scratch-{name}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let store = scratch.join("store");
        let mut cmd = self.p.cmd();
        cmd.env("IMGBUILD_STORE", &store).args(&args);
        let out = bounded(&mut cmd, &scratch, Duration::from_secs(60));
        assert_exit(&out, code);
        let (err, stdout) = (stderr(&out), String::from_utf8_lossy(&out.stdout).into_owned());
        assert!(err.contains(says), "{name}: expected `{says}`: {err}");
        assert!(
            !err.contains(&self.secret_hash) && !stdout.contains(&self.secret_hash),
            "{name}: a host file's hash: {err}"
        );
        assert!(!err.contains("the host's-shadow"), "{name}: {err}");
        if store.exists() {
            assert!(tree(&store.join("tmp")).is_empty(), "{name}: left in the store: {:?}", tree(&store.join("tmp")));
            assert!(
                !store.join("blobs/sha256").join(&self.refused_blob).exists(),
                "{name}: the refused blob was stored"
            );
        }
    }
}

/// The commands that read a layout or archive at `path` (`oci` or `oci-archive`), with what each
/// must answer: exit code and words (a `--mirror` base named as its recipe expects is that file:
/// bad input, exit 1, as for `store add`).
fn readers(kind: &str, path: &Path, mirror: &Path) -> Vec<(&'static str, Vec<String>, i32)> {
    let path = path.to_str().unwrap().to_string();
    let unreachable = "127.0.0.1:9/hostile/image:x".to_string();
    vec![
        ("store-add", vec!["store".into(), "add".into(), path.clone()], 1),
        (
            "push-from",
            vec![
                "push".into(),
                "--from".into(),
                path.clone(),
                "--from-tag".into(),
                "bookworm-amd64".into(),
                unreachable,
            ],
            1,
        ),
        ("sbom", vec!["sbom".into(), format!("{kind}:{path}:bookworm-amd64")], 1),
        ("verify", vec!["verify".into(), "--offline".into(), format!("{kind}:{path}:bookworm-amd64")], 1),
        (
            "mirror-base",
            vec![
                "--offline".into(),
                "--mirror".into(),
                mirror.to_str().unwrap().into(),
                "node".into(),
                "--id".into(),
                "0".into(),
            ],
            1,
        ),
    ]
}

/// The project's tarballs in a `--mirror` directory, and the hostile base named as its recipe's.
fn mirror_with(p: &TestProject, name: &str, base: &Path) -> PathBuf {
    let mirror = p.path(&format!("mirror-{name}"));
    std::fs::create_dir_all(&mirror).unwrap();
    for (file, data) in &p.inputs {
        std::fs::write(mirror.join(file), data).unwrap();
    }
    let named = mirror.join("debian-bookworm-slim.tar");
    if base.is_dir() {
        // A copy would follow the hostile links: move the layout itself under the name.
        std::fs::rename(base, &named).unwrap();
        std::os::unix::fs::symlink(&named, base).unwrap();
    } else {
        std::fs::copy(base, &named).unwrap();
    }
    mirror
}

#[test]
fn every_reader_of_a_layout_directory_refuses_what_is_not_its_regular_files_of_their_size() {
    require_tool("mkfifo");
    let p = TestProject::new();
    let secret = p.path("host-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let secret_hash = fixtures::sha256_hex(SECRET);
    let (layer, _) = amd64_blobs(&p.base_layout);
    let refused_blob = layer.file_name().unwrap().to_string_lossy().into_owned();
    let attempt = Attempt { p: &p, secret_hash, refused_blob };
    for swap in LayoutSwap::ALL {
        let name = format!("{swap:?}");
        let layout = p.path(&format!("layout-{name}"));
        copy_dir(&p.base_layout, &layout);
        swap.apply(&layout, &secret);
        let mirror = mirror_with(&p, &name, &layout);
        for (reader, args, code) in readers("oci", &layout, &mirror) {
            attempt.run(&format!("{name}-{reader}"), &args, code, swap.says());
        }
        let (code, says) = swap.recipe_answer();
        attempt.run(&format!("{name}-recipe"), &["recipe".into(), layout.to_str().unwrap().into()], code, says);
    }
}

/// An oci-archive of `layout` (blobs first, as skopeo writes one), with its amd64 layer's entry
/// as `entry` makes it: a link, or more bytes than the descriptor says.
fn archive(layout: &Path, out: &Path, entry: Option<ArchiveSwap>) {
    let (layer, _) = amd64_blobs(layout);
    let mut tar = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut names = tree(layout);
    names.sort_by_key(|n| n == "index.json"); // blobs first, as skopeo writes them
    for name in names {
        let path = layout.join(&name);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match entry {
            Some(swap @ (ArchiveSwap::Symlink | ArchiveSwap::HardLink)) if path == layer => {
                let link = if swap == ArchiveSwap::Symlink { tar::EntryType::Symlink } else { tar::EntryType::Link };
                h.set_entry_type(link);
                h.set_size(0);
                tar.append_link(&mut h, &name, "/dev/zero").unwrap();
            }
            Some(ArchiveSwap::Longer) if path == layer => {
                let mut data = std::fs::read(&path).unwrap();
                data.extend(std::iter::repeat_n(7u8, 1 << 20));
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, &name, &data[..]).unwrap();
            }
            _ => {
                let data = std::fs::read(&path).unwrap();
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, &name, &data[..]).unwrap();
            }
        }
    }
    tar.finish().unwrap();
}

/// What an attacker makes of the amd64 layer's entry in an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveSwap {
    Symlink,
    HardLink,
    Longer,
}

#[test]
fn every_reader_of_an_oci_archive_refuses_entries_that_are_links_or_longer_than_their_descriptor() {
    let p = TestProject::new();
    let (layer, _) = amd64_blobs(&p.base_layout);
    let refused_blob = layer.file_name().unwrap().to_string_lossy().into_owned();
    let attempt = Attempt { p: &p, secret_hash: fixtures::sha256_hex(SECRET), refused_blob };
    for (swap, says) in [
        (ArchiveSwap::Symlink, "is not a regular file"),
        (ArchiveSwap::HardLink, "is not a regular file"),
        (ArchiveSwap::Longer, "but its descriptor says"),
    ] {
        let name = format!("{swap:?}");
        let file = p.path(&format!("{name}.tar"));
        archive(&p.base_layout, &file, Some(swap));
        let mirror = mirror_with(&p, &name, &file);
        for (reader, args, code) in readers("oci-archive", &file, &mirror) {
            attempt.run(&format!("{name}-{reader}"), &args, code, says);
        }
    }
    // The same archive, intact, is read.
    let intact = p.path("intact.tar");
    archive(&p.base_layout, &intact, None);
    let added = json(&p.run(&["--json", "store", "add", intact.to_str().unwrap()]));
    assert_eq!(added["added"][0]["imported"]["manifests"].as_array().unwrap().len(), 2, "{added}");
    assert_ok(&p.run(&["recipe", intact.to_str().unwrap()]));
}

const SPDX_TYPE: &str = "application/spdx+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A registry made of files served as they are: whatever a hostile one answers.
struct HostileRegistry {
    server: super::http::HttpServer,
}

impl HostileRegistry {
    fn new() -> HostileRegistry {
        let server = super::http::HttpServer::start();
        server.serve("/v2/", b"{}".to_vec(), super::http::Fault::None);
        HostileRegistry { server }
    }

    /// Serves `doc` as a manifest by its digest (and under `tag`); returns its digest.
    fn manifest(&self, doc: &serde_json::Value, tag: Option<&str>) -> String {
        let bytes = doc.to_string().into_bytes();
        let digest = format!("sha256:{}", fixtures::sha256_hex(&bytes));
        for name in std::iter::once(digest.as_str()).chain(tag) {
            self.server.serve(&format!("/v2/team/hostile/manifests/{name}"), bytes.clone(), super::http::Fault::None);
        }
        digest
    }

    fn blob(&self, data: &[u8]) -> serde_json::Value {
        let digest = format!("sha256:{}", fixtures::sha256_hex(data));
        self.server.serve(&format!("/v2/team/hostile/blobs/{digest}"), data.to_vec(), super::http::Fault::None);
        serde_json::json!({ "mediaType": "application/octet-stream", "digest": digest, "size": data.len() })
    }

    /// The fallback tag of `subject` (no referrers API here): an index of `listed`.
    fn referrers(&self, subject: &str, listed: Vec<serde_json::Value>) {
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": listed });
        self.manifest(&index, Some(&subject.replace(':', "-")));
    }

    /// An image manifest whose one layer claims `layer_size` bytes (never served), or is
    /// served when `layer_size` is 0.
    fn image(&self, label: &str, layer_size: u64) -> (String, serde_json::Value) {
        let config = self.blob(format!("{{\"label\":\"{label}\"}}").as_bytes());
        let layer = match layer_size {
            0 => self.blob(&super::fixtures::tar_gz(&[])),
            size => {
                serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", "e".repeat(64)), "size": size })
            }
        };
        let doc =
            serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer] });
        let digest = self.manifest(&doc, None);
        let size = doc.to_string().len();
        (
            digest.clone(),
            serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": digest, "size": size, "platform": { "os": "linux", "architecture": "amd64" } }),
        )
    }

    /// An index listing `child` `times` times, tagged `tag`; its digest.
    fn index_of(&self, child: &serde_json::Value, times: usize, tag: &str) -> String {
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": vec![child.clone(); times] });
        self.manifest(&index, Some(tag))
    }

    /// An SPDX artifact attached to `subject` that carries `document`; returns its listing entry.
    fn spdx(&self, subject: &serde_json::Value, document: serde_json::Value, n: usize) -> serde_json::Value {
        let doc = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SPDX_TYPE,
            "config": self.blob(b"{}"), "layers": [document], "subject": subject,
            "annotations": { "n": n.to_string() },
        });
        let digest = self.manifest(&doc, None);
        serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": digest, "size": doc.to_string().len(), "artifactType": SPDX_TYPE })
    }

    fn sbom(&self, p: &TestProject, tag: &str) -> Output {
        let image = format!("docker://{}/team/hostile:{tag}", self.server.addr);
        p.run(&["sbom", "--insecure", "--platform", "linux/amd64", &image])
    }

    fn blob_requests(&self) -> usize {
        self.server.requests_matching("/blobs/")
    }
}

/// Issue 25: `sbom docker://…` downloaded a 60 MiB layer a hostile fallback tag named, and
/// an index of 200 duplicate children with 200 referrers each took 40,606 requests. Each
/// digest is fetched once, only imgbuild's documents are fetched (never an image's layer, and
/// no document over 4 MiB), and what a command fetches is capped and the cap named.
#[test]
fn a_hostile_registry_cannot_make_sbom_fetch_layers_or_without_end() {
    let p = TestProject::new();
    let r = HostileRegistry::new();
    let spdx_text = br#"{"spdxVersion":"SPDX-2.3","name":"the real one"}"#;
    let spdx_blob = r.blob(spdx_text);

    // 200 duplicate children, 200 referrers of other types on each subject, the SBOM listed 5 times.
    let (m, child) = r.image("dups", 60 << 20);
    let top = r.index_of(&child, 200, "dups");
    let others: Vec<serde_json::Value> = (0..200)
        .map(|i| serde_json::json!({ "mediaType": OCI_MANIFEST, "digest": format!("sha256:{i:064x}"), "size": 100, "artifactType": "application/vnd.example.signature" }))
        .collect();
    r.referrers(&top, others.clone());
    let ours = r.spdx(&child, spdx_blob.clone(), 0);
    r.referrers(&m, [others, vec![ours; 5]].concat());
    let out = r.sbom(&p, "dups");
    assert_ok(&out);
    assert_eq!(out.stdout, [&spdx_text[..], b"\n"].concat());
    let total = r.server.total_requests();
    // /v2/, the tag, the child, two subjects' referrers (API, fallback), the artifact, its two blobs.
    assert!(total <= 12, "{total} requests");
    assert_eq!(r.blob_requests(), 2, "the artifact's config and document, nothing else");

    // A fallback tag naming, as an SBOM, an artifact whose "document" is a 60 MiB layer.
    let (big, big_child) = r.image("big", 60 << 20);
    r.index_of(&big_child, 1, "big");
    let layer =
        serde_json::json!({ "mediaType": SPDX_TYPE, "digest": format!("sha256:{}", "e".repeat(64)), "size": 60 << 20 });
    r.referrers(&big, vec![r.spdx(&big_child, layer, 1)]);
    let before = r.blob_requests();
    let out = r.sbom(&p, "big");
    assert_exit(&out, 5);
    let err = stderr(&out);
    assert!(
        err.contains("is 62914560 bytes, more than the 4 MiB a document may be (MAX_DOCUMENT): not fetched"),
        "{err}"
    );
    assert_eq!(r.blob_requests(), before, "nothing (the artifact's config is stored already): {err}");
    assert_eq!(r.server.requests_matching(&"e".repeat(64)), 0, "the 60 MiB blob");

    // 600 distinct SBOMs listed for one manifest: fetched up to the limit, which is named.
    let (many, many_child) = r.image("many", 1);
    r.index_of(&many_child, 1, "many");
    r.referrers(&many, (0..600).map(|n| r.spdx(&many_child, spdx_blob.clone(), n)).collect());
    let before = r.server.total_requests();
    let out = r.sbom(&p, "many");
    assert_exit(&out, 5);
    let err = stderr(&out);
    assert!(err.contains("imgbuild's limit per command (MAX_DOCUMENTS 512)"), "{err}");
    let made = r.server.total_requests() - before;
    assert!((512..=520).contains(&made), "{made} requests");

    // `pull` of an index of 200 duplicate children fetches the child and its blobs once.
    let (_, pulled) = r.image("pulled", 0);
    r.index_of(&pulled, 200, "pulled");
    let before = r.server.total_requests();
    let image = format!("{}/team/hostile:pulled", r.server.addr);
    assert_ok(&p.run(&["pull", "--insecure", &image]));
    let made = r.server.total_requests() - before;
    assert!(made <= 6, "/v2/, the tag, the child, its config and layer: {made} requests");
}
