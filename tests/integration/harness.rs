//! Every test gets its own project (the repository's real `images/` with recipes pinned to
//! inputs generated here), its own store, and its own loopback HTTP server; and runs the real
//! `imgbuild` binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use super::fixtures;
use super::http::{Fault, HttpServer};

pub const BIN: &str = env!("CARGO_BIN_EXE_imgbuild");

pub struct TestProject {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub store: PathBuf,
    pub server: HttpServer,
    /// The generated inputs, by file name.
    pub inputs: Vec<(String, Vec<u8>)>,
    /// The base image layout and its manifest digest per architecture.
    pub base_layout: PathBuf,
    pub base_digests: Vec<(String, String)>,
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

impl TestProject {
    pub fn new() -> TestProject {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("project");
        let store = tmp.path().join("store");
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("images"), &root.join("images"));
        std::fs::create_dir_all(root.join("recipes")).unwrap();
        let server = HttpServer::start();
        let inputs = vec![
            ("OpenJDK8U-jdk_x64_linux_hotspot_8u392b08.tar.gz".to_string(), fixtures::jdk("amd64")),
            ("OpenJDK8U-jdk_aarch64_linux_hotspot_8u392b08.tar.gz".to_string(), fixtures::jdk("arm64")),
            ("zookeeper-3.4.10.tar.gz".to_string(), fixtures::zookeeper()),
            ("kafka_2.11-1.0.0.tgz".to_string(), fixtures::kafka()),
        ];
        for (name, data) in &inputs {
            server.serve(&format!("dist/{name}"), data.clone(), Fault::None);
            server.serve(&format!("mirror/{name}"), data.clone(), Fault::None);
        }
        let base_layout = tmp.path().join("base-layout");
        let base_digests = fixtures::base_layout(&base_layout, &["amd64", "arm64"]);
        let p = TestProject { tmp, root, store, server, inputs, base_layout, base_digests };
        p.write_recipes();
        p
    }

    pub fn input(&self, name: &str) -> &[u8] {
        &self.inputs.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// The seed's recipes, with the same names and shape as `recipes/`, pinned to the generated inputs.
    fn write_recipes(&self) {
        let url = |name: &str| self.server.url(&format!("dist/{name}"));
        let jdk_amd = "OpenJDK8U-jdk_x64_linux_hotspot_8u392b08.tar.gz";
        let jdk_arm = "OpenJDK8U-jdk_aarch64_linux_hotspot_8u392b08.tar.gz";
        self.write_recipe(
            "temurin-jdk8.toml",
            &format!(
                r#"name = "temurin-jdk8"
version = "8u392-b08"
env = {{ JAVA_HOME = "/opt/java/openjdk" }}
path = ["/opt/java/openjdk/bin"]

[[source]]
platform = "linux/amd64"
url = "{}"
sha256 = "{}"

[[source]]
platform = "linux/arm64"
url = "{}"
sha256 = "{}"

[unpack]
strip_components = 1
prefix = "/opt/java/openjdk"
exclude = ["src.zip", "lib/src.zip"]
"#,
                url(jdk_amd),
                fixtures::sha256_hex(self.input(jdk_amd)),
                url(jdk_arm),
                fixtures::sha256_hex(self.input(jdk_arm))
            ),
        );
        let zk = "zookeeper-3.4.10.tar.gz";
        let zk_hash = format!("sha256 = \"{}\"", fixtures::sha256_hex(self.input(zk)));
        self.write_recipe(
            "zookeeper.toml",
            &self.single_source_recipe(
                "zookeeper",
                "3.4.10",
                zk,
                &zk_hash,
                "/usr/local/zookeeper",
                r#"["docs", "src"]"#,
            ),
        );
        let kafka = "kafka_2.11-1.0.0.tgz";
        let kafka_hash = format!("sha512 = \"{}\"", fixtures::sha512_hex(self.input(kafka)));
        self.write_recipe(
            "kafka.toml",
            &self.single_source_recipe(
                "kafka",
                "2.11-1.0.0",
                kafka,
                &kafka_hash,
                "/usr/local/kafka",
                r#"["site-docs"]"#,
            ),
        );
        let digest = |arch: &str| self.base_digests.iter().find(|(a, _)| a == arch).unwrap().1.clone();
        self.write_recipe(
            "debian-bookworm-slim.toml",
            &format!(
                r#"name = "debian-bookworm-slim"
version = "test"
kind = "oci-image"
image = "example.invalid/test/base"

[[source]]
platform = "linux/amd64"
digest = "{}"

[[source]]
platform = "linux/arm64"
digest = "{}"
"#,
                digest("amd64"),
                digest("arm64")
            ),
        );
    }

    /// A recipe for a platform-independent tarball served at `dist/` with a fallback at `mirror/`.
    fn single_source_recipe(
        &self,
        name: &str,
        version: &str,
        file: &str,
        hash_line: &str,
        prefix: &str,
        exclude: &str,
    ) -> String {
        format!(
            "name = \"{name}\"\nversion = \"{version}\"\npath = [\"{prefix}/bin\"]\n\n[[source]]\nurl = \"{}\"\nmirrors = [\"{}\"]\n{hash_line}\n\n[unpack]\nstrip_components = 1\nprefix = \"{prefix}\"\nexclude = {exclude}\n",
            self.server.url(&format!("dist/{file}")),
            self.server.url(&format!("mirror/{file}")),
        )
    }

    /// Replaces the ZooKeeper recipe with one pinned to `data`, served as `dist/{file}`.
    pub fn serve_as_zookeeper(&self, file: &str, data: Vec<u8>) {
        let hex = fixtures::sha256_hex(&data);
        self.server.serve(&format!("dist/{file}"), data, Fault::None);
        self.write_recipe(
            "zookeeper.toml",
            &format!(
                "name = \"zookeeper\"\nversion = \"1\"\n[[source]]\nurl = \"{}\"\nsha256 = \"{hex}\"\n[unpack]\nstrip_components = 1\nprefix = \"/usr/local/zookeeper\"\n",
                self.server.url(&format!("dist/{file}"))
            ),
        );
    }

    pub fn write_recipe(&self, file: &str, text: &str) {
        std::fs::write(self.root.join("recipes").join(file), text).unwrap();
    }

    /// `imgbuild` with this project's store, run from the project, with a clean environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(&self.root).env("IMGBUILD_STORE", &self.store).env("IMGBUILD_HTTP_TIMEOUT", "10");
        for var in [
            "IMGBUILD_PROJECT",
            "IMGBUILD_MIRROR",
            "IMGBUILD_OFFLINE",
            "IMGBUILD_THREADS",
            "SOURCE_DATE_EPOCH",
            "XDG_CACHE_HOME",
        ] {
            c.env_remove(var);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Imports the base image layout into the store (as `imgbuild store add` of a `skopeo copy` result).
    pub fn add_base(&self) {
        let out = self.run(&["store", "add", self.base_layout.to_str().unwrap()]);
        assert_ok(&out);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "imgbuild failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    assert!(!stderr(out).contains("panicked"), "imgbuild panicked: {}", stderr(out));
}

pub fn json(out: &Output) -> serde_json::Value {
    assert_ok(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// What `imgbuild doctor --json FEATURE` says of this host, asked once per feature and test
/// process: the tests read the one table `doctor` prints, so that they cannot disagree about
/// what a feature needs.
fn doctor(feature: &str) -> serde_json::Value {
    static REPORTS: Mutex<BTreeMap<String, serde_json::Value>> = Mutex::new(BTreeMap::new());
    let mut reports = REPORTS.lock().unwrap_or_else(|e| e.into_inner());
    let report = reports.entry(feature.to_string()).or_insert_with(|| {
        let out = Command::new(BIN).args(["--json", "doctor", feature]).output().unwrap();
        assert!(matches!(out.status.code(), Some(0 | 1)), "imgbuild doctor {feature} failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("imgbuild doctor --json {feature}: {e}"))
    });
    report.clone()
}

/// Fails the test unless `imgbuild doctor` finds `feature` ready here, naming what to install:
/// `.ci/install` installs everything, and a test never passes by skipping what it checks.
pub fn require_feature(feature: &str) {
    let report = doctor(feature);
    let state = &report["features"][0];
    assert_eq!(state["feature"], feature, "{report}");
    assert!(
        state["ready"] == true,
        "this host is not ready for {feature}: it lacks {}; run .ci/install (apt-get install {})",
        state["missing"],
        state["packages"].as_array().map_or(String::new(), |p| p
            .iter()
            .filter_map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(" "))
    );
}

/// Fails the test unless `need` (a line of `imgbuild doctor tests`: a tool, a file such as
/// ZooKeeper's jar) is found here, naming its package.
pub fn require_tool(need: &str) {
    tool_path(need);
}

/// Where `imgbuild doctor tests` found the tool `need` (the tests' venv tools included), failing
/// the test, with the package to install, when it did not.
pub fn tool_path(need: &str) -> PathBuf {
    let report = doctor("tests");
    let row = report["needs"].as_array().unwrap().iter().find(|r| r["need"] == need);
    let row = row.unwrap_or_else(|| panic!("`{need}` is no need of `imgbuild doctor tests`: add it to src/host.rs"));
    let from = if row["source"] == "venv" { "PyPI's" } else { "Debian's" };
    assert!(
        row["status"] == "found",
        "{need} is {} ({}): run .ci/install ({from} {})",
        row["status"],
        row["detail"],
        row["package"]
    );
    PathBuf::from(row["path"].as_str().unwrap_or_else(|| panic!("doctor says no path of {need}: {row}")))
}

/// Runs a tool and returns its stdout, failing the test with what it printed (a linter such as
/// shellcheck reports on stdout).
pub fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The files of a directory tree, with sizes, relative paths sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    fn walk(base: &Path, dir: &Path, all: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, all);
            } else {
                all.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    if dir.exists() {
        walk(dir, dir, &mut all);
    }
    all.sort();
    all
}
