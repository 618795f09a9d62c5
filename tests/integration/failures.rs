//! What goes wrong: bad servers, bad recipes, bad tarballs. Each gives a clear message, a
//! documented exit code, and leaves nothing in the store that a later build would trust.

use super::fixtures::{self, Entry};
use super::harness::*;
use super::http::Fault;

/// The store's source and layer blobs (not configs or manifests), and leftover temp files.
fn stored_files(p: &TestProject) -> (Vec<String>, Vec<String>) {
    let mut blobs = tree(&p.store.join("blobs"));
    blobs.sort();
    let tmp: Vec<String> = tree(&p.store.join("tmp")).into_iter().collect();
    (blobs, tmp)
}

#[test]
fn first_url_404_falls_back_to_the_mirror() {
    let p = TestProject::new();
    p.add_base();
    p.server.serve("dist/zookeeper-3.4.10.tar.gz", Vec::new(), Fault::NotFound);
    let summary = json(&p.run(&["--json", "node", "--id", "0"]));
    assert_eq!(summary["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(p.server.requests("dist/zookeeper-3.4.10.tar.gz").len(), 1, "a 404 is not retried");
    assert_eq!(p.server.requests("mirror/zookeeper-3.4.10.tar.gz").len(), 1);
}

#[test]
fn different_bytes_give_a_hash_mismatch_with_both_hashes_and_store_nothing() {
    let p = TestProject::new();
    p.add_base();
    let (before, _) = stored_files(&p);
    let wrong = fixtures::noise(99, 5000);
    p.server.serve("dist/zookeeper-3.4.10.tar.gz", wrong.clone(), Fault::None);
    p.server.serve("mirror/zookeeper-3.4.10.tar.gz", wrong.clone(), Fault::None);
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("expected: sha256:{}", fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz")))),
        "{err}"
    );
    assert!(err.contains(&format!("got:      sha256:{}", fixtures::sha256_hex(&wrong))), "{err}");
    let (after, tmp) = stored_files(&p);
    let zk_hex = fixtures::sha256_hex(&wrong);
    assert!(!after.iter().any(|b| b.contains(&zk_hex)), "the wrong file entered the store");
    assert!(
        tmp.iter().all(|t| !t.starts_with("partial-") && !t.starts_with("blob.")),
        "temp files left behind: {tmp:?}"
    );
    assert!(after.len() >= before.len());
}

#[test]
fn a_dropped_connection_is_resumed_with_a_range_request() {
    let p = TestProject::new();
    p.add_base();
    let name = "kafka_2.11-1.0.0.tgz";
    let data = p.input(name).to_vec();
    p.server.serve(&format!("dist/{name}"), data.clone(), Fault::Truncate { after: data.len() / 3, times: 1 });
    json(&p.run(&["--json", "node", "--id", "1"]));
    let requests = p.server.requests(&format!("dist/{name}"));
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0], None);
    assert_eq!(requests[1].as_deref(), Some(format!("bytes={}-", data.len() / 3).as_str()));
    assert!(p.store.join("blobs/sha512").join(fixtures::sha512_hex(&data)).is_file());
}

#[test]
fn a_server_that_always_truncates_fails_cleanly_with_exit_3() {
    let p = TestProject::new();
    p.add_base();
    let name = "zookeeper-3.4.10.tar.gz";
    let data = p.input(name).to_vec();
    for prefix in ["dist", "mirror"] {
        // Every response is cut short, including the resumed ones.
        p.server.serve(&format!("{prefix}/{name}"), data.clone(), Fault::Truncate { after: 1000, times: 100 });
    }
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("zookeeper-3.4.10.tar.gz") && err.contains("after 3 attempts"), "{err}");
    assert!(!p.store.join("blobs/sha256").join(fixtures::sha256_hex(&data)).exists());
    // A later build with a good server resumes or restarts, and succeeds.
    p.server.serve(&format!("dist/{name}"), data.clone(), Fault::None);
    json(&p.run(&["--json", "node", "--id", "0"]));
}

#[test]
fn offline_build_lists_every_missing_input_with_url_hash_and_command() {
    let p = TestProject::new();
    let out = p.run(&["--offline", "build"]);
    assert_exit(&out, 3);
    let err = stderr(&out);
    for (name, _) in p.inputs.iter().filter(|(n, _)| !n.contains("aarch64")) {
        assert!(err.contains(name.as_str()), "{name} not listed: {err}");
    }
    assert!(err.contains(&fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz"))), "{err}");
    assert!(err.contains(&p.server.url("dist/zookeeper-3.4.10.tar.gz")), "{err}");
    assert!(err.contains("add it: imgbuild store add zookeeper-3.4.10.tar.gz"), "{err}");
    assert!(
        err.contains("add it: imgbuild store add debian-bookworm-slim.tar")
            && err.contains("skopeo copy docker://example.invalid/test/base@sha256:"),
        "the base image's entry says how to get it: {err}"
    );
    assert!(!err.contains("imgbuild pull"), "offline, the next step cannot be a pull: {err}");
    assert_eq!(p.server.total_requests(), 0, "--offline touched the network");
    let json_out = p.run(&["--offline", "--json", "build"]);
    assert_exit(&json_out, 3);
    let v: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(v["missing"].as_array().unwrap().len(), 4);
}

fn expect_recipe_error(p: &TestProject, text: &str, line: usize, needles: &[&str]) {
    p.write_recipe("zookeeper.toml", text);
    let out = p.run(&["check"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains(&format!("zookeeper.toml:{line}:")), "no file:line {line} in: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn bad_recipe_fields_name_file_line_and_field() {
    let p = TestProject::new();
    let hash = "7f7f5414e044ac11fee2a1e0bc225469f51fb0cdf821e67df762a43098223f27";
    let head = "name = \"zookeeper\"\nversion = \"3.4.10\"\n\n[[source]]\nurl = \"https://example.org/zk.tgz\"\n";
    expect_recipe_error(&p, &format!("{head}sha265 = \"{hash}\"\n"), 6, &["unknown field `sha265`", "sha256"]);
    expect_recipe_error(&p, &format!("{head}sha256 = \"{}\"\n", &hash[..60]), 6, &["sha256", "64 hex digits, got 60"]);
    expect_recipe_error(&p, &format!("{head}sha256 = \"{}zz\"\n", &hash[..62]), 6, &["not valid hex"]);
    expect_recipe_error(&p, head, 4, &["missing hash", "imgbuild prefetch"]);
    expect_recipe_error(
        &p,
        &format!("{head}sha256 = \"{hash}\"\n[unpack]\nstrip_component = 1\n"),
        8,
        &["unknown field `strip_component`"],
    );
    expect_recipe_error(
        &p,
        &format!("{head}sha256 = \"{hash}\"\n[unpack]\nprefix = \"usr/local\"\n"),
        8,
        &["absolute path"],
    );
    expect_recipe_error(&p, &format!("{head}sha256 = 42\n"), 6, &["invalid type"]);
    expect_recipe_error(&p, &format!("{head}sha256 = \"{hash}\n"), 6, &["invalid basic string"]);
    expect_recipe_error(&p, &format!("{head}[unpack\nprefix = \"/x\"\n"), 6, &["invalid table header"]);
    expect_recipe_error(
        &p,
        &format!("{head}sha256 = \"{hash}\"\nplatform = \"linux/sparc\"\n"),
        7,
        &["unknown architecture"],
    );
    // SRI form is accepted and equals the hex form.
    p.write_recipe(
        "zookeeper.toml",
        &format!("{head}sha256 = \"sha256-f39UFOBErBH+4qHgvCJUafUfsM34IeZ992KkMJgiPyc=\"\n"),
    );
    assert_ok(&p.run(&["check"]));
}

/// The definition's rules are unit-tested on the parser (`src/image_def/tests.rs`); this is
/// the CLI's side: exit 1, file:line and the reason, before any input is fetched.
#[test]
fn a_bad_image_definition_is_refused_before_any_work() {
    let p = TestProject::new();
    let path = p.root.join("images/zk-kafka.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let from = "layers = [\"temurin-jdk8\", \"zookeeper\", \"kafka\"]";
    let line = good.lines().position(|l| l == from).unwrap() + 1;
    std::fs::write(&path, good.replacen(from, "layers = [\"temurin-jdk8\", \"zookeper\", \"kafka\"]", 1)).unwrap();
    let out = p.run(&["build"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains(&format!("zk-kafka.toml:{line}:")) && err.contains("unknown recipe `zookeper`"), "{err}");
    assert_eq!(p.server.total_requests(), 0, "fetched before the definition was checked");
    assert!(!p.root.join("out").exists());
    std::fs::write(&path, good).unwrap();
    let out = p.run(&["node", "--id", "7"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("node 7 is not in cluster `zk-kafka` (its nodes: 0, 1, 2)"), "{}", stderr(&out));
}

/// Serves `entries` as the ZooKeeper tarball and expects the build to refuse it.
fn expect_unsafe(entries: &[Entry], needle: &str) {
    let p = TestProject::new();
    p.add_base();
    p.serve_as_zookeeper("evil.tar.gz", fixtures::tar_gz(entries));
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("refusing unsafe entry") && err.contains(needle), "`{needle}` not in: {err}");
    assert!(!p.root.join("out").exists(), "an output was written");
}

#[test]
fn unsafe_tar_entries_are_refused() {
    let ok = || Entry::File("zookeeper-3.4.10/bin/zkServer.sh".into(), b"#!/bin/sh\n".to_vec(), 0o755);
    let link = |p: &str, t: &str| Entry::Symlink(format!("zookeeper-3.4.10/{p}"), t.into());
    let outside = "outside /usr/local/zookeeper";
    expect_unsafe(&[ok(), Entry::RawFile(b"zookeeper-3.4.10/../../etc/cron.d/x".to_vec(), b"evil".to_vec())], "`..`");
    expect_unsafe(&[ok(), Entry::RawFile(b"/etc/passwd".to_vec(), b"evil".to_vec())], "absolute path");
    expect_unsafe(&[ok(), link("conf/escape", "../../../etc")], outside);
    expect_unsafe(&[ok(), link("conf/abs", "/etc/shadow")], outside);
    expect_unsafe(&[ok(), Entry::Hardlink("zookeeper-3.4.10/conf/pw".into(), "etc/passwd".into())], "hard link");
    expect_unsafe(&[ok(), Entry::CharDevice("zookeeper-3.4.10/dev/mem".into())], "device nodes");
}

/// Issue #11: what each entry alone does not show, the tree they build together does.
#[test]
fn regression_11_links_whiteouts_and_impossible_trees_are_refused() {
    let link = |p: &str, t: &str| Entry::Symlink(format!("zk/{p}"), t.into());
    let file = |p: &str| Entry::File(format!("zk/{p}"), b"evil".to_vec(), 0o644);
    let hard = |p: &str, t: &str| Entry::Hardlink(format!("zk/{p}"), format!("zk/{t}"));
    // Chained links: `a/b/s` and `t` each stay inside; `t/etc/x` would write /etc/x.
    expect_unsafe(&[link("a/b/s", "../.."), link("t", "a/b/s/../../.."), file("t/etc/x")], "through the symlink");
    expect_unsafe(&[link("a/b/s", "../.."), link("t", "a/b/s/../../..")], "leads to /, outside /usr/local/zookeeper");
    // A later entry redirects an earlier link.
    expect_unsafe(&[link("x", "d/passwd"), link("d", "/etc")], "zk/x");
    // Whiteouts would delete the base image's files.
    expect_unsafe(&[file("etc/.wh.passwd")], "whiteouts = true");
    expect_unsafe(&[Entry::Dir("zk/dir/"), file("dir/.wh..wh..opq")], "whiteouts = true");
    // Trees no runtime unpacks.
    expect_unsafe(&[Entry::Dir("zk/d/"), hard("h", "d")], "hard link to /usr/local/zookeeper/d");
    expect_unsafe(&[hard("h", "h")], "not an earlier regular file");
    expect_unsafe(&[file("f"), file("f/g")], "is a file, not a directory");
    expect_unsafe(&[file("f"), file("f")], "already a file");
    // Names are printed escaped, never as raw control characters.
    let p = TestProject::new();
    p.add_base();
    p.serve_as_zookeeper(
        "evil.tar.gz",
        fixtures::tar_gz(&[Entry::RawFile(b"zk/\x1b]2;pwned\x07/../x".to_vec(), vec![])]),
    );
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("zk/\\u{1b}]2;pwned\\u{7}/../x") && !err.contains('\x1b') && !err.contains('\x07'), "{err}");
}

/// Serves `data` as the ZooKeeper source and expects exit 1 with `needle`, and no layer recorded.
fn expect_bad_source(data: Vec<u8>, needle: &str) {
    let p = TestProject::new();
    p.add_base();
    p.serve_as_zookeeper("zk.tar.gz", data);
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("zk.tar.gz (zookeeper)") && err.contains(needle), "`{needle}` not in: {err}");
    assert_no_layer_for_the_refused_source(&p);
}

#[test]
fn a_gzip_source_whose_trailer_does_not_match_is_refused() {
    let good = fixtures::zookeeper();
    let n = good.len();
    // flate2 compares the trailer's CRC-32 and length only when read to the end, which a tar
    // reader never does by itself: imgbuild reads past the tar's end marker.
    for at in [n - 8, n - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        expect_bad_source(bad, "gzip data: corrupt gzip stream");
    }
}

#[test]
fn an_empty_source_and_a_source_without_entries_are_refused() {
    expect_bad_source(Vec::new(), "empty (0 bytes)");
    expect_bad_source(fixtures::tar_gz(&[]), "no entries");
}

#[test]
fn a_truncated_gzip_source_is_a_clear_error() {
    let p = TestProject::new();
    p.add_base();
    let full = fixtures::zookeeper();
    let cut = full[..full.len() / 2].to_vec();
    p.serve_as_zookeeper("cut.tar.gz", cut);
    let out = p.run(&["node", "--id", "0"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("cut.tar.gz (zookeeper)"), "{}", stderr(&out));
    assert_no_layer_for_the_refused_source(&p);
}

/// Layers are built side by side: the JDK's (largest, started first) and perhaps Kafka's are
/// recorded, never one for the refused ZooKeeper source.
fn assert_no_layer_for_the_refused_source(p: &TestProject) {
    let records = tree(&p.store.join("layers")).len();
    assert!((1..=2).contains(&records), "{records} layer records for 3 recipes, one of them refused");
}

/// Issue #11: what follows a source's data. Zero padding (as tape and `dd` leave it) and zstd
/// skippable frames are accepted; anything else is refused, naming the format and the byte
/// where it starts; a tar cut short names the entry it ends in.
#[test]
fn regression_11_what_follows_a_sources_data_is_padding_or_refused() {
    let gz = fixtures::zookeeper();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let zst = fixtures::compressed("zst", &tar);
    let skippable = [&[0x50, 0x2a, 0x4d, 0x18][..], &4u32.to_le_bytes(), b"meta"].concat();
    for accepted in [[&gz[..], &[0; 1024]].concat(), [&skippable[..], &zst].concat()] {
        let p = TestProject::new();
        p.add_base();
        p.serve_as_zookeeper("zk.tar.gz", accepted);
        assert_ok(&p.run(&["node", "--id", "0"]));
    }
    expect_bad_source([&gz[..], b"GARBAGE"].concat(), &format!("gzip data: unknown data at byte {}", gz.len()));
    expect_bad_source([&zst[..], b"garbage!"].concat(), &format!("zstd data: unknown data at byte {}", zst.len()));
    // Cut 1000 bytes into a jar's data.
    let jar = "zookeeper-3.4.10/lib/slf4j-api-1.6.1.jar";
    let mut archive = tar::Archive::new(&tar[..]);
    let at = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path_bytes().as_ref() == jar.as_bytes())
        .map(|e| e.raw_file_position() as usize + 1000)
        .unwrap();
    expect_bad_source(tar[..at].to_vec(), &format!("the tar data ends inside entry `{jar}` (cut short at byte {at}"));
}
