//! A new user's first hour (issue #17): `imgbuild init`, pinning files one has with `imgbuild
//! recipe`, shell completions and the man page, and the README's "Your own cluster" walkthrough
//! run as written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::fixtures;
use super::harness::{assert_exit, assert_ok, json, require_tool, stderr, tool, TestProject, BIN};
use super::http::Fault;

/// `imgbuild` in `dir` with its own store and nothing from the caller's environment.
fn imgbuild(dir: &Path, store: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir).env("IMGBUILD_STORE", store).env("IMGBUILD_HTTP_TIMEOUT", "10");
    for var in ["IMGBUILD_PROJECT", "IMGBUILD_MIRROR", "IMGBUILD_OFFLINE", "SOURCE_DATE_EPOCH", "XDG_CACHE_HOME"] {
        c.env_remove(var);
    }
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The TOML value of `key = "…"` on its own (uncommented) line.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?;
        let value: toml::Value = toml::from_str(&format!("v = {}", rest.split("  #").next()?)).ok()?;
        value.get("v")?.as_str().map(str::to_string)
    })
}

/// An OCI archive of the test base image for `arch`, as `skopeo copy oci:… oci-archive:…` (and
/// `podman save --format oci-archive`) write it: its index.json names no platform.
fn base_archive(tmp: &Path, arch: &str, dest: &Path) -> String {
    let layout = tmp.join(format!("layout-{arch}"));
    let digests = fixtures::base_layout(&layout, &[arch]);
    tool(
        Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci:{}:bookworm-{arch}", layout.display()))
            .arg(format!("oci-archive:{}:docker.io/library/debian:bookworm-slim", dest.display())),
    );
    digests[0].1.clone()
}

#[test]
fn init_writes_a_project_that_checks_and_never_overwrites_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = imgbuild(tmp.path(), &store).args(["--json", "init", "My Cluster"]).output().unwrap();
    let v = json(&out);
    assert_eq!(v["image"], "my-cluster");
    let dir = tmp.path().join("My Cluster");
    for f in v["files"].as_array().unwrap() {
        assert!(dir.join(f.as_str().unwrap()).is_file(), "{f}");
    }
    let check = imgbuild(&dir, &store).args(["--json", "check"]).output().unwrap();
    let c = json(&check);
    assert_eq!(c["image"], "my-cluster");
    assert_eq!(c["nodes"].as_array().unwrap().len(), 3);
    assert!(!store.exists(), "init and check need no store");

    // A second init refuses (exit 2), names the files, and changes nothing.
    let zoo = dir.join("images/my-cluster/zoo.cfg");
    std::fs::write(&zoo, "mine\n").unwrap();
    let again = imgbuild(tmp.path(), &store).args(["init", "My Cluster"]).output().unwrap();
    assert_exit(&again, 2);
    assert!(stderr(&again).contains("images/my-cluster/zoo.cfg"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&zoo).unwrap(), "mine\n");

    // Into an existing project whose one recipe has the same file name: refused before writing anything.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("recipes")).unwrap();
    std::fs::write(other.join("recipes/jdk.toml"), "mine").unwrap();
    let partial = imgbuild(tmp.path(), &store).args(["init", "other"]).output().unwrap();
    assert_exit(&partial, 2);
    assert!(stderr(&partial).contains("recipes/jdk.toml"));
    assert!(!other.join("images").exists() && !other.join("recipes/base.toml").exists());

    // Without --json it says what to do next.
    let fresh = imgbuild(tmp.path(), &store).args(["init", "third"]).output().unwrap();
    assert_ok(&fresh);
    let text = stderr(&fresh);
    assert!(text.contains("cd third") && text.contains("imgbuild check") && text.contains("imgbuild recipe"), "{text}");
}

#[test]
fn recipe_pins_local_files_file_urls_and_mirror_files_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mirror = tmp.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let data = fixtures::zookeeper();
    let file = mirror.join("zookeeper-3.4.10.tar.gz");
    std::fs::write(&file, &data).unwrap();
    let hex = fixtures::sha256_hex(&data);
    let mirror_arg = mirror.to_str().unwrap();
    // 127.0.0.1:9 (discard) refuses connections: a request would fail the test.
    let url = "http://127.0.0.1:9/dist/zookeeper-3.4.10.tar.gz";
    let file_url = format!("file://{}", file.display().to_string().replace(' ', "%20"));
    for args in [
        vec!["--offline", "recipe", file.to_str().unwrap()],
        vec!["--offline", "recipe", &file_url],
        vec!["--offline", "--mirror", mirror_arg, "recipe", "zookeeper-3.4.10.tar.gz"],
        vec!["--offline", "--mirror", mirror_arg, "recipe", url],
    ] {
        let out = imgbuild(tmp.path(), &store).args(&args).output().unwrap();
        assert_ok(&out);
        let block = stdout(&out);
        assert_eq!(field(&block, "sha256").as_deref(), Some(hex.as_str()), "{args:?}\n{block}");
        assert_eq!(field(&block, "name").as_deref(), Some("zookeeper"));
        assert_eq!(field(&block, "version").as_deref(), Some("3.4.10"));
        assert!(block.contains("# strip_components = 1  # every entry is under zookeeper-3.4.10/"), "{block}");
        if args.contains(&url) {
            assert_eq!(field(&block, "url").as_deref(), Some(url));
        } else {
            assert_eq!(field(&block, "file").as_deref(), Some("zookeeper-3.4.10.tar.gz"));
        }
    }
    assert!(!store.exists(), "pinning without --add leaves the store alone");

    // The printed block is a recipe: with `--prefix` its [unpack] is written out, and a
    // project that uses it passes `check` and builds offline once `--add` stored the file.
    let init = imgbuild(tmp.path(), &store).args(["init", "proj"]).output().unwrap();
    assert_ok(&init);
    let proj = tmp.path().join("proj");
    // init's recipe pins Apache's file under this name: the generated one replaces it on purpose.
    let out = imgbuild(&proj, &store)
        .args(["recipe", "--add", "--replace-pin", "--prefix", "/opt/zookeeper", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    std::fs::write(proj.join("recipes/zookeeper.toml"), stdout(&out)).unwrap();
    let check = imgbuild(&proj, &store).args(["--json", "check"]).output().unwrap();
    let recipes = json(&check)["recipes"].clone();
    assert!(recipes.as_array().unwrap().iter().any(|r| r["name"] == "zookeeper" && r["version"] == "3.4.10"));
    assert!(store.join("blobs/sha256").join(&hex).is_file(), "--add stored the file");

    // `store add` of a file no recipe pins points at `imgbuild recipe`.
    let other = tmp.path().join("other-1.0.tgz");
    std::fs::write(&other, fixtures::kafka()).unwrap();
    let added = imgbuild(tmp.path(), &store).args(["store", "add", other.to_str().unwrap()]).output().unwrap();
    assert_ok(&added);
    assert!(
        stderr(&added).contains(&format!("`imgbuild recipe {}` prints one", other.display())),
        "{}",
        stderr(&added)
    );
}

#[test]
fn recipe_downloads_urls_into_the_store_unless_offline() {
    let p = TestProject::new();
    let name = "kafka_2.11-1.0.0.tgz";
    let url = p.server.url(&format!("dist/{name}"));
    let out = p.run(&["recipe", "--sha512", &url]);
    assert_ok(&out);
    let block = stdout(&out);
    let sha512 = fixtures::sha512_hex(p.input(name));
    assert_eq!(field(&block, "sha512").as_deref(), Some(sha512.as_str()));
    assert_eq!(field(&block, "url").as_deref(), Some(url.as_str()));
    assert_eq!(
        (field(&block, "name").as_deref(), field(&block, "version").as_deref()),
        (Some("kafka"), Some("2.11-1.0.0"))
    );
    assert!(p.store.join("blobs/sha512").join(&sha512).is_file());

    // A downloaded OCI archive: its image is imported, so a build finds the manifest.
    require_tool("skopeo");
    let archive = p.path("debian.tar");
    let digest = base_archive(p.tmp.path(), "amd64", &archive);
    p.server.serve("dist/debian.tar", std::fs::read(&archive).unwrap(), Fault::None);
    let out = p.run(&["recipe", &p.server.url("dist/debian.tar")]);
    assert_ok(&out);
    assert_eq!(field(&stdout(&out), "digest").as_deref(), Some(digest.as_str()));
    assert!(p.store.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap()).is_file());

    // Offline, an URL no mirror has is not downloaded: exit 3, and the server saw nothing.
    p.server.serve("dist/other-1.0.tar.gz", fixtures::zookeeper(), Fault::None);
    let before = p.server.total_requests();
    let offline = p.run(&["--offline", "recipe", &p.server.url("dist/other-1.0.tar.gz")]);
    assert_exit(&offline, 3);
    assert!(stderr(&offline).contains("other-1.0.tar.gz"), "{}", stderr(&offline));
    assert_eq!(p.server.total_requests(), before);
}

#[test]
fn recipe_reads_images_from_oci_layouts_and_archives() {
    require_tool("skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");

    // A layout with two platforms: one recipe, one source each.
    let layout = tmp.path().join("debian-layout");
    let digests = fixtures::base_layout(&layout, &["amd64", "arm64"]);
    let out =
        imgbuild(tmp.path(), &store).args(["--json", "recipe", "--name", "base", "debian-layout"]).output().unwrap();
    let v = json(&out);
    let r = &v["recipes"][0];
    assert_eq!((r["kind"].as_str(), r["name"].as_str()), (Some("oci-image"), Some("base")));
    let sources: Vec<(String, String)> = r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["platform"].as_str().unwrap().to_string(), s["digest"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(String, String)> = digests.iter().map(|(a, d)| (format!("linux/{a}"), d.clone())).collect();
    assert_eq!(sources, expected);
    assert_eq!(r["sources"][0]["file"], "debian-layout");

    // Two images for one platform (as `podman save` of two images writes): one recipe each.
    let two = tmp.path().join("two");
    fixtures::base_layout(&two, &["amd64"]);
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/other"), "x").unwrap();
    let second = fixtures::layout_from_root(&tmp.path().join("second"), &root);
    for blob in std::fs::read_dir(tmp.path().join("second/blobs/sha256")).unwrap() {
        let blob = blob.unwrap();
        std::fs::copy(blob.path(), two.join("blobs/sha256").join(blob.file_name())).unwrap();
    }
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(two.join("index.json")).unwrap()).unwrap();
    let extra: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("second/index.json")).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(extra["manifests"][0].clone());
    std::fs::write(two.join("index.json"), index.to_string()).unwrap();
    let v = json(&imgbuild(tmp.path(), &store).args(["--json", "recipe", "two"]).output().unwrap());
    let names: Vec<&str> = v["recipes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bookworm-amd64", "bookworm-amd64-2"]);
    assert_eq!(v["recipes"][1]["sources"][0]["digest"], second.as_str());
    let refused = imgbuild(tmp.path(), &store).args(["recipe", "--name", "x", "two"]).output().unwrap();
    assert_exit(&refused, 2);

    // An oci-archive whose index says no platform: read from the image config.
    let archive = tmp.path().join("base.tar");
    let digest = base_archive(tmp.path(), "arm64", &archive);
    let out = imgbuild(tmp.path(), &store).args(["recipe", "--add", "base.tar"]).output().unwrap();
    assert_ok(&out);
    let block = stdout(&out);
    assert_eq!(field(&block, "platform").as_deref(), Some("linux/arm64"), "{block}");
    assert_eq!(field(&block, "digest").as_deref(), Some(digest.as_str()));
    assert_eq!(field(&block, "kind").as_deref(), Some("oci-image"));
    assert_eq!(field(&block, "image").as_deref(), Some("docker.io/library/debian"));
    assert_eq!(field(&block, "version").as_deref(), Some("bookworm-slim"));
    assert_eq!(field(&block, "file").as_deref(), Some("base.tar"));
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(store.join("blobs/sha256").join(hex).is_file(), "--add imported the image");

    // `docker save`'s format is not taken for a tarball: exit 1, saying how to convert it.
    let docker = tmp.path().join("docker.tar");
    tool(
        Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("oci:{}:bookworm-amd64", layout.display()))
            .arg(format!("docker-archive:{}:debian:bookworm", docker.display())),
    );
    let out = imgbuild(tmp.path(), &store).args(["recipe", "docker.tar"]).output().unwrap();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("skopeo copy docker-archive:"), "{}", stderr(&out));

    // An archive that names a blob it does not hold is bad input, naming the blob.
    let broken = tmp.path().join("broken");
    fixtures::base_layout(&broken, &["amd64"]);
    for blob in std::fs::read_dir(broken.join("blobs/sha256")).unwrap() {
        let path = blob.unwrap().path();
        if std::fs::read(&path).unwrap().starts_with(b"{\"architecture\"") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let out = imgbuild(tmp.path(), &store).args(["recipe", "broken"]).output().unwrap();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("is referenced but cannot be read"), "{}", stderr(&out));
}

#[test]
fn recipe_refuses_what_it_cannot_pin_and_escapes_what_it_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let run = |args: &[&str]| imgbuild(tmp.path(), &store).args(args).output().unwrap();
    std::fs::create_dir_all(tmp.path().join("plain-dir")).unwrap();
    std::fs::write(tmp.path().join("a.tgz"), fixtures::zookeeper()).unwrap();
    for (args, code, says) in [
        (vec!["recipe", "missing.tar.gz"], 2, "no such file"),
        (vec!["recipe", "ftp://example.org/a.tgz"], 2, "scheme is not supported"),
        (vec!["recipe", "file://host/a.tgz"], 2, "local absolute path"),
        (vec!["recipe", "plain-dir"], 2, "not an OCI layout"),
        (vec!["recipe", "--name", "x", "a.tgz", "a.tgz"], 2, "give one input"),
        (vec!["recipe", "--name", "a b", "a.tgz"], 2, "--name"),
        (vec!["recipe", "--prefix", "opt/x", "a.tgz"], 2, "--prefix"),
        (vec!["recipe", "--prefix", "/opt/../x", "a.tgz"], 2, "--prefix"),
        (vec!["recipe", "--platform", "linux/vax", "a.tgz"], 2, "unknown architecture"),
    ] {
        let out = run(&args);
        assert_exit(&out, code);
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }

    // --platform overrides what the file name says, `any` for every platform.
    std::fs::write(tmp.path().join("tool-1.0-linux-arm64.tgz"), fixtures::zookeeper()).unwrap();
    let platform = |extra: &[&str]| {
        let out = run(&[&["recipe"], extra, &["tool-1.0-linux-arm64.tgz"]].concat());
        assert_ok(&out);
        field(&stdout(&out), "platform")
    };
    assert_eq!(platform(&[]).as_deref(), Some("linux/arm64"));
    assert_eq!(platform(&["--platform", "linux/s390x"]).as_deref(), Some("linux/s390x"));
    assert_eq!(platform(&["--platform", "any"]), None);

    // A file that is not a tarball: still pinned, with a warning and no guessed [unpack].
    std::fs::write(tmp.path().join("notes-2.0.txt"), "plain text").unwrap();
    let out = run(&["recipe", "notes-2.0.txt"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("# strip_components = ?  # could not list the entries"));
    assert!(stderr(&out).contains("warning: could not list its entries"));

    // A hostile file name: no recipe may hold it (recipes/README.md), so none is written, and
    // nothing raw reaches the terminal.
    let evil = "evil\n[unpack]\u{1b}[31m-1.0.tar.gz";
    std::fs::write(tmp.path().join(evil), fixtures::zookeeper()).unwrap();
    let out = run(&["recipe", evil]);
    assert_exit(&out, 2);
    assert!(stdout(&out).is_empty() && !stderr(&out).contains('\u{1b}'), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("evil\\n[unpack]\\u{1b}[31m-1.0.tar.gz`: a recipe cannot name a file"),
        "{}",
        stderr(&out)
    );
}

/// Fails the test, saying why, when a tool it needs is missing (`.ci/install` installs them).
/// Runs `shell` with `args`, then the path of the script `imgbuild completions SHELL` prints.
fn with_completions(shell: &str, dir: &Path, args: &[&str]) -> String {
    require_tool(shell);
    let script = dir.join(format!("imgbuild.{shell}"));
    std::fs::write(&script, tool(Command::new(BIN).args(["completions", shell]))).unwrap();
    tool(Command::new(shell).env("HOME", dir).args(args).arg(&script))
}

/// The command names `imgbuild --help` lists.
fn subcommands() -> Vec<String> {
    let help = tool(Command::new(BIN).arg("--help"));
    let commands = help.split("Commands:").nth(1).unwrap().split("Options:").next().unwrap();
    commands.lines().filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").map(String::from).collect()
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let commands = subcommands();
    assert!(commands.len() >= 12 && commands.contains(&"recipe".to_string()), "{commands:?}");

    // bash: the script loads, registers _imgbuild, and completes a command and its options.
    let drive = |words: &str| {
        let program = format!(
            "set -e; source \"$1\"; complete -p imgbuild; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _imgbuild imgbuild \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        with_completions("bash", tmp.path(), &["-c", &program, "bash"])
    };
    let all = drive("imgbuild ''");
    assert!(all.contains("-F _imgbuild imgbuild"), "{all}");
    for c in &commands {
        assert!(all.lines().any(|l| l == c), "bash does not complete `{c}`:\n{all}");
    }
    assert_eq!(drive("imgbuild rec").lines().skip(1).collect::<Vec<_>>(), ["recipe"]);
    assert!(drive("imgbuild recipe --").lines().any(|l| l == "--add"));

    // zsh and fish: each loads its script; fish completes a command.
    let zsh = "autoload -U compinit && compinit -u -D && source \"$1\" && print -r -- ${_comps[imgbuild]}";
    assert_eq!(with_completions("zsh", tmp.path(), &["-f", "-c", zsh, "zsh"]).trim(), "_imgbuild");
    let fish =
        with_completions("fish", tmp.path(), &["--no-config", "-c", "source $argv[1]; complete -C 'imgbuild rec'"]);
    assert!(fish.starts_with("recipe\t"), "{fish}");

    // The man page renders and lists every command; --dir writes a page for each.
    require_tool("man");
    let page = tmp.path().join("imgbuild.1");
    std::fs::write(&page, tool(Command::new(BIN).arg("man"))).unwrap();
    let rendered = tool(Command::new("man").env("MANWIDTH", "100").arg("-l").arg(&page));
    for c in &commands {
        assert!(rendered.contains(&format!("imgbuild-{c}(1)")), "the man page does not list `{c}`:\n{rendered}");
    }
    // Words, not spaces: man justifies lines, so two words may be further apart.
    let words = rendered.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("IMGBUILD_STORE") && words.contains("Exit codes"), "{rendered}");
    let pages = tmp.path().join("man1");
    assert_ok(&Command::new(BIN).args(["man", "--dir"]).arg(&pages).output().unwrap());
    for c in &commands {
        assert!(pages.join(format!("imgbuild-{c}.1")).is_file(), "{c}");
    }
    let recipe_page = tool(Command::new("man").arg("-l").arg(pages.join("imgbuild-recipe.1")));
    assert!(recipe_page.contains("--upstream-version"));
}

/// The host's architecture as OCI names it: a build's default platform.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The fenced `sh` block of README.md's "Your own cluster" section.
fn readme_walkthrough() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("\n## Your own cluster\n").nth(1).expect("README has a \"Your own cluster\" section");
    let section = section.split("\n## ").next().unwrap();
    let block = section.split("```sh\n").nth(1).expect("the section has a ```sh block");
    block.split("```").next().unwrap().to_string()
}

/// `script` with a line after its `imgbuild init … && cd DIR` that pins init's recipes to the
/// tarballs in `downloads` (by file name, in the pin's algorithm), as if they were the files
/// upstream publishes.
fn as_published(script: &str, downloads: &Path) -> String {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/assets/init/recipes");
    let recipes = imgbuild::testing::load_dir(&assets).unwrap();
    let mut seds = Vec::new();
    let tarballs = recipes.values().filter(|r| matches!(r.kind, imgbuild::testing::RecipeKind::Tarball));
    for source in tarballs.flat_map(|r| &r.sources) {
        let Ok(data) = std::fs::read(downloads.join(&source.file_name)) else { continue };
        let ours = match source.hash.algorithm() {
            imgbuild::testing::Algorithm::Sha256 => fixtures::sha256_hex(&data),
            imgbuild::testing::Algorithm::Sha512 => fixtures::sha512_hex(&data),
        };
        seds.push(format!("sed -i 's/{}/{ours}/' recipes/*.toml", source.hash.hex()));
    }
    assert_eq!(seds.len(), 2, "init pins the JDK and ZooKeeper tarballs of the walkthrough");
    let init = script.lines().find(|l| l.starts_with("imgbuild init")).expect("the walkthrough runs init");
    script.replacen(init, &format!("{init}\n{}", seds.join("\n")), 1)
}

#[test]
fn readme_your_own_cluster_runs_as_written() {
    require_tool("skopeo");
    let script = readme_walkthrough();
    for command in ["imgbuild init", "imgbuild recipe", "imgbuild check", "imgbuild --offline build"] {
        assert!(script.contains(command), "the walkthrough no longer runs `{command}`:\n{script}");
    }
    // The user's downloads, generated: a ZooKeeper tarball, a JDK and a saved base image.
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let downloads = home.join("Downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::write(downloads.join("zookeeper-3.4.10.tar.gz"), fixtures::zookeeper()).unwrap();
    std::fs::write(downloads.join("OpenJDK8U-jdk_x64_linux_hotspot_8u392b08.tar.gz"), fixtures::jdk("amd64")).unwrap();
    let arch = host_arch();
    let base = base_archive(tmp.path(), arch, &downloads.join("base.tar"));
    // The downloads stand for the published files, so init's pins are set to them right after
    // `init` (a file under a published name with other bytes is refused: tested elsewhere).
    let script = as_published(&script, &downloads);
    let script_path = tmp.path().join("walkthrough.sh");
    std::fs::write(&script_path, &script).unwrap();

    let bin_dir: PathBuf = Path::new(BIN).parent().unwrap().to_path_buf();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new("sh")
        .arg("-ex")
        .arg(&script_path)
        .current_dir(&work)
        .env("HOME", &home)
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .env_remove("IMGBUILD_STORE")
        .env_remove("IMGBUILD_MIRROR")
        .env_remove("IMGBUILD_OFFLINE")
        .env_remove("IMGBUILD_PROJECT")
        .output()
        .unwrap();
    assert!(out.status.success(), "the walkthrough failed:\n{}\n{}", stdout(&out), stderr(&out));

    // Three node images, on the saved base, with ZooKeeper where the service runs it.
    let project = work.join("my-cluster");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("out/my-cluster/index.json")).unwrap()).unwrap();
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(tags, ["cluster", "node-1", "node-2", "node-3"]);
    let recipe = std::fs::read_to_string(project.join("recipes/base.toml")).unwrap();
    assert_eq!(field(&recipe, "digest").as_deref(), Some(base.as_str()));
    let jdk = std::fs::read_to_string(project.join("recipes/jdk.toml")).unwrap();
    assert_eq!(field(&jdk, "platform").as_deref(), Some("linux/amd64"), "x64 in its name:\n{jdk}");
    // What init's recipes say beyond the files is kept: JAVA_HOME, the excludes, the base's version.
    let recipes = imgbuild::testing::load_dir(&project.join("recipes")).unwrap();
    assert_eq!(recipes["jdk"].env.get("JAVA_HOME").map(String::as_str), Some("/opt/java"), "{jdk}");
    assert_eq!(recipes["jdk"].unpack.exclude, ["src.zip"]);
    assert_eq!(recipes["zookeeper"].unpack.exclude, ["docs", "src"]);
    assert_eq!(recipes["base"].version, "bookworm-slim");
    assert!(recipes.values().all(|r| r.version != "unknown"));
    let layout = format!("oci:{}:node-2", project.join("out/my-cluster").display());
    let inspect: serde_json::Value =
        serde_json::from_str(&tool(Command::new("skopeo").args(["inspect", "--config", &layout]))).unwrap();
    let env = inspect["config"]["Env"].to_string();
    assert!(env.contains("/opt/zookeeper/bin") && env.contains("/opt/java/bin"), "{env}");

    // With another store holding only the base image, the recipes' `file`s are missing offline
    // (each named with the command that adds it), and `--mirror ~/Downloads` supplies them: the
    // same images, byte for byte.
    let other = tmp.path().join("other-store");
    let run = |args: &[&str]| imgbuild(&project, &other).args(args).output().unwrap();
    assert_ok(&run(&["store", "add", downloads.join("base.tar").to_str().unwrap()]));
    let missing = run(&["--offline", "build", "--out", "out/again"]);
    assert_exit(&missing, 3);
    assert!(stderr(&missing).contains("imgbuild store add zookeeper-3.4.10.tar.gz"), "{}", stderr(&missing));
    let mirrored = run(&["--offline", "--mirror", downloads.to_str().unwrap(), "build", "--out", "out/again"]);
    assert_ok(&mirrored);
    let again = std::fs::read(project.join("out/again/index.json")).unwrap();
    assert_eq!(again, std::fs::read(project.join("out/my-cluster/index.json")).unwrap());
}
