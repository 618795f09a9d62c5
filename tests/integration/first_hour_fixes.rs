//! What a new user hit on a first hour with the README (review of 2026-11-25), each tested
//! through the binary: output to a reader that went away, paths that do not exist, pins that
//! do not match the file named, hints that name commands that work in the mode given.

use std::process::{Command, Output, Stdio};

use super::fixtures;
use super::harness::{assert_exit, assert_ok, stderr, TestProject};

/// A pipe whose reader is already gone: every write to it fails with `EPIPE`, as when the
/// reader of `imgbuild … | head -1` has read its line and exited.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

/// Runs `cmd` with stdout to a closed pipe.
fn with_stdout_closed(cmd: &mut Command) -> Output {
    cmd.env("RUST_BACKTRACE", "1").stdout(closed_pipe()).stderr(Stdio::piped()).output().unwrap()
}

/// Ended without a panic, a backtrace or a word about the pipe.
fn ended_quietly(out: &Output, what: &str, code: i32) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    for needle in ["panicked", "stack backtrace", "Broken pipe", "os error 32", "stdout"] {
        assert!(!err.contains(needle), "{what}: `{needle}` in stderr: {err}");
    }
}

#[test]
fn every_command_ends_quietly_when_its_reader_goes_away() {
    let p = TestProject::new();
    p.add_base();
    std::fs::write(p.path("zk.tar.gz"), fixtures::zookeeper()).unwrap();
    let zk = p.path("zk.tar.gz");
    let commands: Vec<Vec<&str>> = vec![
        vec!["check"],
        vec!["--json", "check"],
        vec!["--json", "node", "--id", "1"],
        vec!["node", "--id", "1"],
        vec!["build", "--format", "oci-archive"],
        vec!["recipe", zk.to_str().unwrap()],
        vec!["--json", "recipe", zk.to_str().unwrap()],
        vec!["store", "path"],
        vec!["--json", "store", "verify"],
        vec!["deploy", "compose"],
        vec!["completions", "bash"],
        vec!["doctor", "build"],
        vec!["man"],
        vec!["--help"],
        vec!["--version"],
    ];
    for args in &commands {
        let out = with_stdout_closed(p.cmd().args(args));
        ended_quietly(&out, &args.join(" "), 0);
    }
    // The work was done before the output: the archive is there, whole.
    assert!(p.root.join("out/zk-kafka.tar").is_file());

    // A failure stays a failure (its code), even when its JSON cannot be printed.
    let out = with_stdout_closed(p.cmd().args(["--json", "node", "--id", "7"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("7") && !stderr(&out).contains("panicked"), "{}", stderr(&out));

    // Nobody reading stderr any more does not stop the work either.
    let out = p.cmd().args(["build", "--out", "out/again"]).stderr(closed_pipe()).output().unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-2"));
}

#[test]
fn a_path_that_does_not_exist_is_a_usage_error_naming_it_everywhere() {
    let p = TestProject::new();
    let nope = p.path("nope.tar.gz");
    let nope = nope.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["store", "add", nope], nope),
        (vec!["recipe", nope], nope),
        (vec!["prefetch", nope], nope),
        (vec!["push", "--from", nope, "127.0.0.1:9/x/y"], "--from"),
        (vec!["--mirror", nope, "--offline", "build"], "--mirror"),
        (vec!["--mirror", nope, "recipe", "zookeeper-3.4.10.tar.gz"], "--mirror"),
        (vec!["--ca-file", nope, "pull", "127.0.0.1:9/x/y:tag"], "--ca-file"),
        (vec!["--project", nope, "check"], "--project"),
    ];
    for (args, names) in cases {
        let out = p.run(&args);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains(names) && err.contains(nope) && err.contains("no such"), "{args:?}: {err}");
    }
    // A file where a directory is meant, and the other way round.
    let file = p.path("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = p.run(&["--mirror", file.to_str().unwrap(), "check"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    let out = p.run(&["--ca-file", p.tmp.path().to_str().unwrap(), "check"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("a directory, not a file"), "{}", stderr(&out));
    assert!(!p.store.exists(), "nothing was done before the paths were checked");
}

/// The `add it:` command of a missing-input error.
fn add_it(err: &str) -> String {
    let line = err.lines().find_map(|l| l.trim().strip_prefix("add it: ")).unwrap_or_else(|| panic!("{err}"));
    line.split(" (").next().unwrap().to_string()
}

#[test]
fn prefetch_pins_local_files_offline_honours_mirrors_and_never_goes_online_offline() {
    let p = TestProject::new();
    let name = "zookeeper-3.4.10.tar.gz";
    let data = p.input(name).to_vec();
    let sha256 = format!("sha256 = \"{}\"", fixtures::sha256_hex(&data));
    let downloads = p.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let file = downloads.join(name);
    std::fs::write(&file, &data).unwrap();
    let url = p.server.url(&format!("dist/{name}"));
    let file_url = format!("file://{}", file.display());
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).trim().to_string();

    // A path, a file:// URL, and a URL a --mirror directory holds: pinned offline, no request.
    let mirror = downloads.to_str().unwrap();
    for args in [
        vec!["--offline", "prefetch", file.to_str().unwrap()],
        vec!["--offline", "prefetch", &file_url],
        vec!["--offline", "--mirror", mirror, "prefetch", &url],
        vec!["--offline", "--mirror", mirror, "prefetch", name],
    ] {
        let out = p.run(&args);
        assert_ok(&out);
        assert_eq!(stdout(&out), sha256, "{args:?}");
    }
    assert_eq!(p.server.total_requests(), 0);
    let sha512 = p.run(&["--json", "--offline", "prefetch", "--sha512", file.to_str().unwrap()]);
    assert_ok(&sha512);
    let v: serde_json::Value = serde_json::from_slice(&sha512.stdout).unwrap();
    assert_eq!(v["hash"], format!("sha512:{}", fixtures::sha512_hex(&data)));
    assert!(p.store.join("blobs/sha512").join(fixtures::sha512_hex(&data)).is_file(), "in the store");

    // Offline, a URL no mirror has: exit 3, no request, and the command it names works as
    // named, offline, where the file is.
    let out = p.run(&["--offline", "prefetch", &url]);
    assert_exit(&out, 3);
    assert_eq!(p.server.total_requests(), 0, "--offline went to the network");
    let command = add_it(&stderr(&out));
    assert_eq!(command, format!("imgbuild prefetch {name}"));
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    let again = p.cmd().current_dir(&downloads).arg("--offline").args(&words).output().unwrap();
    assert_ok(&again);
    assert_eq!(stdout(&again), sha256);

    // Online, a URL that fails names the same command, never the one that just failed.
    let gone = p.server.url("dist/gone-1.0.tar.gz");
    let out = p.run(&["prefetch", &gone]);
    assert_exit(&out, 3);
    assert_eq!(add_it(&stderr(&out)), "imgbuild prefetch gone-1.0.tar.gz");
    let out = p.run(&["--offline", "recipe", &gone]);
    assert_exit(&out, 3);
    assert_eq!(add_it(&stderr(&out)), "imgbuild recipe --add gone-1.0.tar.gz");
}

/// The blobs of the store, by path.
fn blobs(p: &TestProject) -> Vec<String> {
    super::harness::tree(&p.store.join("blobs"))
}

#[test]
fn a_file_named_as_a_recipe_expects_but_not_its_pin_is_a_hash_mismatch_and_adds_nothing() {
    let p = TestProject::new();
    p.add_base();
    let before = blobs(&p);
    let downloads = p.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    // ZooKeeper is pinned by sha256, Kafka by sha512: other bytes under their names.
    let zk = downloads.join("zookeeper-3.4.10.tar.gz");
    let other_zk = fixtures::tar_gz(&[fixtures::Entry::Dir("zookeeper-3.4.9/")]);
    std::fs::write(&zk, &other_zk).unwrap();
    let kafka = downloads.join("kafka_2.11-1.0.0.tgz");
    let other_kafka = fixtures::tar_gz(&[fixtures::Entry::Dir("kafka_2.11-0.11/")]);
    std::fs::write(&kafka, &other_kafka).unwrap();

    // Offline, the pin names the file missing and says how to add it ...
    let missing = p.run(&["--offline", "build"]);
    assert_exit(&missing, 3);
    assert!(stderr(&missing).contains("imgbuild store add zookeeper-3.4.10.tar.gz"), "{}", stderr(&missing));
    // ... and adding the wrong file says so, with both hashes in the pin's algorithm: exit 1.
    let pinned_zk = fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz"));
    let pinned_kafka = fixtures::sha512_hex(p.input("kafka_2.11-1.0.0.tgz"));
    for (file, expected, got) in [
        (&zk, format!("sha256:{pinned_zk}"), format!("sha256:{}", fixtures::sha256_hex(&other_zk))),
        (&kafka, format!("sha512:{pinned_kafka}"), format!("sha512:{}", fixtures::sha512_hex(&other_kafka))),
    ] {
        let out = p.run(&["store", "add", file.to_str().unwrap()]);
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.contains(&format!("expected: {expected}")) && err.contains(&format!("got:      {got}")), "{err}");
        assert!(err.contains("hash mismatch") && err.contains("nothing was stored"), "{err}");
    }
    assert_eq!(blobs(&p), before, "a refused file added nothing");

    // The same files in a --mirror directory: the same mismatch, exit 1, nothing stored.
    let out = p.run(&["--offline", "--mirror", downloads.to_str().unwrap(), "build"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains(&format!("expected: sha256:{pinned_zk}")), "{}", stderr(&out));
    assert_eq!(blobs(&p), before);

    // A file no recipe expects is added, with its hash in each algorithm the recipes pin by.
    let unrelated = downloads.join("notes-1.0.tar.gz");
    std::fs::write(&unrelated, &other_zk).unwrap();
    let out = p.run(&["store", "add", unrelated.to_str().unwrap()]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains(&format!("sha256:{}", fixtures::sha256_hex(&other_zk))), "{err}");
    assert!(err.contains(&format!("sha512:{}", fixtures::sha512_hex(&other_zk))), "{err}");
    assert!(err.contains("no recipe pins this file"), "{err}");
}

#[test]
fn an_image_archive_named_as_a_recipe_expects_must_hold_its_image() {
    let p = TestProject::new();
    // Another amd64 image, saved under the name the base recipe's source expects.
    let root = p.path("other-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=other\n").unwrap();
    let mirror = p.path("mirror");
    let archive = mirror.join("debian-bookworm-slim.tar");
    let other = fixtures::layout_from_root(&archive, &root);
    let pinned = &p.base_digests.iter().find(|(a, _)| a == "amd64").unwrap().1;

    let out = p.run(&["store", "add", archive.to_str().unwrap()]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains(&format!("expected: {pinned}")) && err.contains(&format!("got:      {other}")), "{err}");
    assert!(err.contains("debian-bookworm-slim") && err.contains("nothing was imported"), "{err}");
    assert!(blobs(&p).is_empty(), "nothing imported: {:?}", blobs(&p));

    let out =
        p.run(&["--offline", "--mirror", mirror.to_str().unwrap(), "node", "--id", "0", "--platform", "linux/amd64"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains(&format!("got:      {other}")), "{}", stderr(&out));
    let other_hex = other.strip_prefix("sha256:").unwrap();
    assert!(!blobs(&p).iter().any(|b| b.contains(other_hex)), "the other image was not imported");

    // Under another name it is an image no recipe pins: imported, with the hint.
    let elsewhere = p.path("saved");
    std::fs::rename(&archive, &elsewhere).unwrap();
    let out = p.run(&["store", "add", elsewhere.to_str().unwrap()]);
    assert_ok(&out);
    assert!(stderr(&out).contains("matches no oci-image recipe's digest"), "{}", stderr(&out));

    // A file under that name that is no sound archive at all is bad input too (exit 1, naming
    // it), as it is for `store add`: never "missing" (attacker round 2, N8).
    for (i, junk) in [&b"not an archive"[..], &[0u8; 4096][..]].into_iter().enumerate() {
        std::fs::write(&archive, junk).unwrap();
        let out = p.run(&[
            "--offline",
            "--mirror",
            mirror.to_str().unwrap(),
            "node",
            "--id",
            "0",
            "--platform",
            "linux/amd64",
        ]);
        assert_exit(&out, 1);
        assert!(stderr(&out).contains("debian-bookworm-slim.tar"), "case {i}: {}", stderr(&out));
    }
}

/// The fenced `sh` block of README.md that runs the walkthrough's project on one machine.
fn readme_run_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = readme.split("```sh\n").skip(1).map(|b| b.split("```").next().unwrap());
    blocks
        .into_iter()
        .find(|b| b.contains("podman run -d") && b.contains("--network=host"))
        .expect("the loop")
        .to_string()
}

/// The `-e NAME='VALUE'` settings of the README's one-machine `podman run` loop.
fn readme_podman_run_env(block: &str) -> Vec<(String, String)> {
    let line = block.lines().find(|l| l.contains("podman run -d")).unwrap();
    let settings: Vec<(String, String)> = line
        .split(" -e ")
        .skip(1)
        .map(|rest| {
            let (name, value) = rest.split_once('=').unwrap();
            let value = value.strip_prefix('\'').and_then(|v| v.split_once('\'')).map(|(v, _)| v).unwrap();
            (name.to_string(), value.to_string())
        })
        .collect();
    assert!(!settings.is_empty(), "the README's loop sets no variable: {line}");
    settings
}

/// The loop runs what `init DIR` makes as it is: its node ids, its volumes, its image name and
/// where its ZooKeeper lives.
fn assert_loop_fits_init(block: &str, def: &imgbuild::testing::ImageDef, dir: &str) {
    let ids: Vec<String> = def.nodes.iter().map(|n| n.id.to_string()).collect();
    assert!(block.contains(&format!("for n in {}; do", ids.join(" "))), "ids {ids:?}:\n{block}");
    let volumes: Vec<&str> =
        block.split(" -v ").skip(1).map(|v| v.split(':').nth(1).unwrap().split(' ').next().unwrap()).collect();
    assert_eq!(volumes, def.config.volumes, "{block}");
    assert!(block.contains(&format!("localhost/{dir}:node-$n")), "image localhost/{dir}:\n{block}");
    let server = &def.services.iter().find(|s| s.name == "zookeeper").unwrap().command[0];
    assert!(block.contains(&format!("podman exec zk-{} {server} status", ids[0])), "{server}:\n{block}");
}

/// A setting's value in a rendered `zoo.cfg`.
fn setting<'t>(cfg: &'t str, key: &str) -> &'t str {
    cfg.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or_else(|| panic!("no {key} in:\n{cfg}"))
}

#[test]
fn inits_project_runs_three_nodes_in_one_network_namespace_as_the_readme_runs_them() {
    use super::entrypoint::{err, Boot, SHELLS};
    let tmp = tempfile::tempdir().unwrap();
    // The project the walkthrough makes (`imgbuild init DIR`), run by the walkthrough's loop.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let dir = readme.lines().find_map(|l| l.strip_prefix("imgbuild init ")?.split(' ').next()).expect("init DIR");
    let init = std::process::Command::new(super::harness::BIN)
        .current_dir(tmp.path())
        .env("IMGBUILD_STORE", tmp.path().join("store"))
        .args(["init", dir])
        .output()
        .unwrap();
    assert_ok(&init);
    let project = imgbuild::testing::Project::load(&tmp.path().join(dir), None).unwrap();
    let boot = Boot::with_files(&imgbuild::testing::cluster_layer_files(&project.image));
    let block = readme_run_block();
    assert_loop_fits_init(&block, &project.image, dir);
    let env = readme_podman_run_env(&block);
    for shell in SHELLS {
        let mut listening: Vec<(String, String)> = Vec::new();
        for node in &project.image.nodes {
            boot.forget(&["var/lib/zookeeper/myid"]);
            let id = node.id.to_string();
            let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            vars.push(("NODE_ID", &id));
            let out = boot.render(shell, &vars);
            assert!(out.status.success(), "{shell:?} node {id}: {}", err(&out));
            let cfg = boot.read("opt/zookeeper/conf/zoo.cfg");
            // Every port a node listens on is on its own address: the client port, and its own
            // server line's peer and election ports.
            let own = setting(&cfg, &format!("server.{id}"));
            let own_address = own.rsplitn(3, ':').last().unwrap().to_string();
            assert_eq!(setting(&cfg, "clientPortAddress"), node.host, "{shell:?}:\n{cfg}");
            assert_eq!(own_address, node.host, "{shell:?}:\n{cfg}");
            listening.push((setting(&cfg, "clientPortAddress").to_string(), own_address));
        }
        let addresses: std::collections::BTreeSet<&String> = listening.iter().map(|(client, _)| client).collect();
        assert_eq!(addresses.len(), project.image.nodes.len(), "{shell:?}: {listening:?}");
    }
}

#[test]
fn push_from_an_archive_says_when_the_tag_given_is_not_there() {
    let p = TestProject::new();
    p.add_base();
    assert_ok(&p.run(&["build", "--format", "oci-archive"]));
    // 127.0.0.1:9 refuses connections: nothing may be sent before the tag is found.
    let push = |extra: &[&str]| p.run(&[&["push", "--from", "out/zk-kafka.tar"], extra, &["127.0.0.1:9/x/y"]].concat());
    let out = push(&["--from-tag", "node-9"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("has no tag `node-9` (its tags: cluster, node-0, node-1, node-2)"), "{err}");
    assert!(!err.contains("choose"), "a tag was given: {err}");
    let out = push(&[]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("holds 4 images: choose one with --from-tag"), "{}", stderr(&out));
}

#[test]
fn recipe_update_replaces_only_the_sources_and_refuses_before_changing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let run = |dir: &std::path::Path, args: &[&str]| {
        std::process::Command::new(super::harness::BIN)
            .current_dir(dir)
            .env("IMGBUILD_STORE", &store)
            .env_remove("IMGBUILD_MIRROR")
            .args(args)
            .output()
            .unwrap()
    };
    assert_ok(&run(tmp.path(), &["init", "proj"]));
    let proj = tmp.path().join("proj");
    let zk = tmp.path().join("zookeeper-3.4.10.tar.gz");
    std::fs::write(&zk, fixtures::zookeeper()).unwrap();
    let recipe = proj.join("recipes/zookeeper.toml");
    let before = std::fs::read_to_string(&recipe).unwrap();

    // Refused, with nothing changed and nothing stored: an image recipe, a missing recipe,
    // options that would describe another recipe.
    let base = std::fs::read_to_string(proj.join("recipes/base.toml")).unwrap();
    for (args, says) in [
        (vec!["recipe", "--add", "--update", "recipes/base.toml", zk.to_str().unwrap()], "is an image recipe"),
        (vec!["recipe", "--update", "recipes/nope.toml", zk.to_str().unwrap()], "no such file"),
        (vec!["recipe", "--update", "recipes/zookeeper.toml", "--name", "x", zk.to_str().unwrap()], "--name"),
    ] {
        let out = run(&proj, &args);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read_to_string(proj.join("recipes/base.toml")).unwrap(), base);
    assert!(!store.join("blobs").exists(), "nothing was stored");

    // The file is named as the one init's recipe pins (Apache's), with other bytes: refused,
    // with the URL, both hashes and the flag, nothing changed; with the flag, replaced.
    let pinned = imgbuild::testing::Recipe::parse(&recipe, &before).unwrap().sources[0].clone();
    let out = run(&proj, &["recipe", "--add", "--update", "recipes/zookeeper.toml", zk.to_str().unwrap()]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    let given = format!("sha256:{}", fixtures::sha256_hex(&fixtures::zookeeper()));
    for says in
        [pinned.urls[0].as_str(), &pinned.hash.to_string(), &given, "--replace-pin", "the pin was left as it is"]
    {
        assert!(err.contains(says), "`{says}`: {err}");
    }
    assert_eq!(std::fs::read_to_string(&recipe).unwrap(), before);
    assert!(!store.join("blobs").exists(), "nothing was stored");
    let out =
        run(&proj, &["recipe", "--add", "--replace-pin", "--update", "recipes/zookeeper.toml", zk.to_str().unwrap()]);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "recipes/zookeeper.toml");
    let after = std::fs::read_to_string(&recipe).unwrap();
    let parsed = imgbuild::testing::Recipe::parse(&recipe, &after).unwrap();
    assert_eq!(parsed.sources.len(), 1);
    assert_eq!(parsed.sources[0].hash.hex(), fixtures::sha256_hex(&fixtures::zookeeper()));
    assert_eq!(parsed.sources[0].file_name, "zookeeper-3.4.10.tar.gz");
    // Everything but the source is as init wrote it.
    let outside_sources = |text: &str| -> String {
        let (head, rest) = text.split_once("[[source]]").unwrap();
        format!("{head}{}", &rest[rest.find("[unpack]").unwrap()..])
    };
    assert_eq!(outside_sources(&after), outside_sources(&before));
    assert!(store.join("blobs/sha256").join(fixtures::sha256_hex(&fixtures::zookeeper())).is_file());
    assert!(!std::fs::read_dir(proj.join("recipes")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));

    // Again with the same file: the recipe already pins it, and stays byte for byte.
    assert_ok(&run(&proj, &["recipe", "--update", "recipes/zookeeper.toml", zk.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&recipe).unwrap(), after);
    assert_ok(&run(&proj, &["check"]));
}
