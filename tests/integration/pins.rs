//! A pin is never replaced silently (issue 25): `recipe --update` and `recipe --add` refuse a
//! file named as the upstream file a recipe pins but with other bytes (a local file, or a URL
//! that now serves other bytes), exit 1, showing the URL, both hashes and `--replace-pin`;
//! nothing is stored and the recipe stays byte for byte. The flag replaces the pin on purpose.

use super::fixtures;
use super::harness::*;
use super::http::Fault;

fn blobs(p: &TestProject) -> Vec<String> {
    if p.store.join("blobs").exists() {
        tree(&p.store.join("blobs"))
    } else {
        Vec::new()
    }
}

/// Asserts `out` is the refusal for `file` (pinned by `recipe` with `expected` from `url`; given
/// with `found`, in the pin's algorithm).
fn assert_refused(out: &std::process::Output, recipe: &str, url: &str, expected: &str, found: &str) {
    assert_exit(out, 1);
    let err = stderr(out);
    let says = [recipe, url, expected, found, "--replace-pin", "the pin was left as it is"];
    for s in says {
        assert!(err.contains(s), "`{s}` not said: {err}");
    }
}

#[test]
fn a_file_under_a_pinned_name_with_other_bytes_never_replaces_the_pin() {
    let p = TestProject::new();
    let downloads = p.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let zk_url = p.server.url("dist/zookeeper-3.4.10.tar.gz");
    let kafka_url = p.server.url("dist/kafka_2.11-1.0.0.tgz");
    let pinned_zk = format!("sha256:{}", fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz")));
    let pinned_kafka = format!("sha512:{}", fixtures::sha512_hex(p.input("kafka_2.11-1.0.0.tgz")));
    let other = fixtures::tar_gz(&[fixtures::Entry::Dir("zookeeper-3.4.9/")]);
    let (other_256, other_512) =
        (format!("sha256:{}", fixtures::sha256_hex(&other)), format!("sha512:{}", fixtures::sha512_hex(&other)));
    let zk = downloads.join("zookeeper-3.4.10.tar.gz");
    let kafka = downloads.join("kafka_2.11-1.0.0.tgz");
    std::fs::write(&zk, &other).unwrap();
    std::fs::write(&kafka, &other).unwrap();
    // The upstream URL itself now serving other bytes (a tampered download).
    p.server.serve("tampered/zookeeper-3.4.10.tar.gz", other.clone(), Fault::None);
    let tampered = p.server.url("tampered/zookeeper-3.4.10.tar.gz");
    let recipes = || ["zookeeper.toml", "kafka.toml"].map(|r| std::fs::read(p.root.join("recipes").join(r)).unwrap());
    let (before, stored) = (recipes(), blobs(&p));

    // Each way in: --add of a local file (pinned by sha256; by sha512, so hashed again in it),
    // --update with a local file or a URL, with --add or without.
    let cases: [(Vec<&str>, &str, &str, &str, &str); 5] = [
        (vec!["recipe", "--add", zk.to_str().unwrap()], "zookeeper", &zk_url, &pinned_zk, &other_256),
        (vec!["recipe", "--add", kafka.to_str().unwrap()], "kafka", &kafka_url, &pinned_kafka, &other_512),
        (
            vec!["recipe", "--update", "recipes/zookeeper.toml", zk.to_str().unwrap()],
            "zookeeper",
            &zk_url,
            &pinned_zk,
            &other_256,
        ),
        (
            vec!["recipe", "--add", "--update", "recipes/kafka.toml", kafka.to_str().unwrap()],
            "kafka",
            &kafka_url,
            &pinned_kafka,
            &other_512,
        ),
        (vec!["recipe", "--update", "recipes/zookeeper.toml", &tampered], "zookeeper", &zk_url, &pinned_zk, &other_256),
    ];
    for (args, recipe, url, expected, found) in cases {
        let out = p.run(&args);
        assert_refused(&out, &format!("recipe {recipe} pins"), url, expected, found);
        assert_eq!(recipes(), before, "{args:?}: a recipe changed");
    }
    // Only the tampered download entered the store (a download is stored as it arrives); no
    // refused local file did.
    let added: Vec<String> = blobs(&p).into_iter().filter(|b| !stored.contains(b)).collect();
    assert_eq!(added, [format!("sha256/{}", fixtures::sha256_hex(&other))]);

    // The published bytes under their name: accepted, the pin kept as it was.
    let genuine = downloads.join("genuine");
    std::fs::create_dir_all(&genuine).unwrap();
    std::fs::write(genuine.join("zookeeper-3.4.10.tar.gz"), p.input("zookeeper-3.4.10.tar.gz")).unwrap();
    let good = genuine.join("zookeeper-3.4.10.tar.gz");
    assert_ok(&p.run(&["recipe", "--add", "--update", "recipes/zookeeper.toml", good.to_str().unwrap()]));
    assert_eq!(recipes(), before);

    // On purpose: the pin is replaced, its URL and hash gone.
    assert_ok(&p.run(&["recipe", "--replace-pin", "--update", "recipes/zookeeper.toml", zk.to_str().unwrap()]));
    let text = String::from_utf8(recipes()[0].clone()).unwrap();
    assert!(text.contains(&fixtures::sha256_hex(&other)) && !text.contains(&zk_url), "{text}");
}

/// Upstream's file by another spelling of its name: a link named as upstream's file (the
/// name given, not the one it points to, is what the user means), and a recipe URL that
/// percent-encodes the name (`%2B` for upstream's `+`). Both refused as the plain case is.
#[test]
fn upstreams_name_through_a_link_or_percent_encoding_never_replaces_the_pin() {
    let p = TestProject::new();
    let downloads = p.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let other = fixtures::tar_gz(&[fixtures::Entry::Dir("zookeeper-3.4.9/")]);
    let other_256 = format!("sha256:{}", fixtures::sha256_hex(&other));
    let recipes = || std::fs::read_dir(p.root.join("recipes")).unwrap().count();
    let read = |r: &str| std::fs::read(p.root.join("recipes").join(r)).unwrap();

    // A link named as upstream's file, to a file of another name and other bytes.
    std::fs::write(downloads.join("evil.tgz"), &other).unwrap();
    let link = downloads.join("zookeeper-3.4.10.tar.gz");
    std::os::unix::fs::symlink("evil.tgz", &link).unwrap();
    let before = read("zookeeper.toml");
    let out = p.run(&["recipe", "--update", "recipes/zookeeper.toml", link.to_str().unwrap()]);
    let pinned_zk = format!("sha256:{}", fixtures::sha256_hex(p.input("zookeeper-3.4.10.tar.gz")));
    let zk_url = p.server.url("dist/zookeeper-3.4.10.tar.gz");
    assert_refused(&out, "recipe zookeeper pins", &zk_url, &pinned_zk, &other_256);
    assert_eq!(read("zookeeper.toml"), before, "the recipe changed");

    // A recipe URL with `%2B` where upstream's name (and the local file's) has `+`.
    let published = fixtures::tar_gz(&[fixtures::Entry::Dir("jdk-11.0.21+9/")]);
    let pinned = format!("sha256:{}", fixtures::sha256_hex(&published));
    let url = p.server.url("dist/jdk-11.0.21%2B9-linux-x64.tar.gz");
    let text = format!(
        "name = \"jdk11\"\nversion = \"11.0.21\"\n[[source]]\nurl = \"{url}\"\nsha256 = \"{}\"\n[unpack]\nstrip_components = 1\nprefix = \"/opt/jdk\"\n",
        fixtures::sha256_hex(&published)
    );
    p.write_recipe("jdk11.toml", &text);
    let local = downloads.join("jdk-11.0.21+9-linux-x64.tar.gz");
    std::fs::write(&local, &other).unwrap();
    let count = recipes();
    let out = p.run(&["recipe", "--update", "recipes/jdk11.toml", local.to_str().unwrap()]);
    assert_refused(&out, "recipe jdk11 pins", &url, &pinned, &other_256);
    assert_eq!(read("jdk11.toml"), text.as_bytes(), "the recipe changed");
    assert_eq!(recipes(), count);
}
