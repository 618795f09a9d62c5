//! A proposal as a recipe file (TOML a user saves as `recipes/NAME.toml`) and as JSON data.
//! Values are written as TOML strings (quoted and escaped by the `toml` crate); text from the
//! input that lands in a comment goes through `escape`, so no file name can end a comment.

use std::fmt::Write as _;

use super::tarball::Layout;
use super::{Location, Proposal, ProposalKind};
use crate::error::escape;
use crate::toml_file::quoted;

/// The recipe file's text.
pub(crate) fn render(p: &Proposal) -> String {
    let mut out = String::new();
    let what = match &p.kind {
        ProposalKind::Tarball { size, .. } => format!("{size} bytes"),
        ProposalKind::Image { .. } => "an OCI image".to_string(),
    };
    let _ = writeln!(out, "# recipes/{}.toml: pinned by `imgbuild recipe` from {} ({what}).", p.name, escape(&p.input));
    let _ = writeln!(out, "# The fields are described in imgbuild's recipes/README.md.");
    let _ = writeln!(out, "name = {}", quoted(&p.name));
    match &p.version {
        Some(v) => {
            let _ = writeln!(out, "version = {}", quoted(v));
        }
        None => {
            let _ = writeln!(out, "version = \"unknown\"  # not in the file name: write the upstream version");
        }
    }
    match &p.kind {
        ProposalKind::Tarball { platform, hash, layout, prefix, .. } => {
            render_tarball(&mut out, p, platform.as_ref(), hash, layout, prefix.as_deref());
        }
        ProposalKind::Image { reference, index_digest, images, skipped } => {
            let _ = writeln!(
                out,
                "kind = \"oci-image\"  # a base image: `base = {}` in an image definition",
                quoted(&p.name)
            );
            if let Some(r) = reference {
                let _ = writeln!(out, "image = {}", quoted(r));
            }
            if let Some(d) = index_digest {
                let _ =
                    writeln!(out, "index_digest = {}  # the archive's multi-platform index", quoted(&d.to_string()));
            }
            for s in skipped {
                let _ = writeln!(out, "# left out: {}", escape(s));
            }
            for image in images {
                out.push_str("\n[[source]]\n");
                let _ = writeln!(out, "platform = {}", quoted(&image.platform.to_string()));
                write_image_location(&mut out, &p.location);
                let _ = writeln!(
                    out,
                    "digest = {}  # the image manifest (what `store add` prints as \"imported image\")",
                    quoted(&image.digest.to_string())
                );
            }
        }
    }
    out
}

fn write_location(out: &mut String, location: &Location) {
    match location {
        Location::Url(url) => {
            let _ = writeln!(out, "url = {}", quoted(url));
        }
        Location::File(name) => {
            let _ =
                writeln!(out, "# url = \"https://…\"  # where it is published, so a build elsewhere can download it");
            let _ = writeln!(out, "file = {}  # found in a --mirror directory or the store", quoted(name));
        }
    }
}

/// An image's `[[source]]` has no `url` (a build fetches images from a registry, the recipe's
/// `image`): the archive is named as a `file`, which a build finds in the store (after
/// `--add` or a download) or in a `--mirror` directory.
fn write_image_location(out: &mut String, location: &Location) {
    let name = match location {
        Location::Url(url) => {
            let _ = writeln!(out, "# downloaded from {}", escape(url));
            crate::recipe::url_file_name(url).to_string()
        }
        Location::File(name) => name.clone(),
    };
    let _ = writeln!(out, "file = {}  # an oci-archive or layout, in a --mirror directory or the store", quoted(&name));
}

fn render_tarball(
    out: &mut String,
    p: &Proposal,
    platform: Option<&crate::platform::Platform>,
    hash: &crate::digest::Hash,
    layout: &Layout,
    prefix: Option<&str>,
) {
    let suggested = format!("/opt/{}", p.name);
    let comment = if prefix.is_some() { "" } else { "# " };
    let prefix_text = prefix.unwrap_or(&suggested);
    if let Layout::Listed { has_bin: true, .. } = layout {
        let bin = format!("{}/bin", prefix_text.trim_end_matches('/'));
        let _ = writeln!(out, "{comment}path = [{}]  # its bin/ on PATH", quoted(&bin));
    }
    out.push_str("\n[[source]]\n");
    match platform {
        Some(platform) => {
            let _ = writeln!(out, "platform = {}  # the one it is built for", quoted(&platform.to_string()));
        }
        None => out.push_str("# no `platform`: this file serves every platform\n"),
    }
    write_location(out, &p.location);
    let _ = writeln!(out, "{} = {}", hash.algorithm().name(), quoted(&hash.hex()));
    out.push('\n');
    let _ = writeln!(out, "{comment}[unpack]");
    match layout {
        Layout::Listed { top_dir: Some(top), .. } => {
            let _ = writeln!(out, "{comment}strip_components = 1  # every entry is under {}/", escape(top));
        }
        Layout::Listed { top_dir: None, .. } => {
            let _ = writeln!(out, "{comment}strip_components = 0  # the entries are not under one directory");
        }
        Layout::Unreadable { reason } => {
            let _ = writeln!(out, "# strip_components = ?  # could not list the entries: {}", escape(reason));
        }
        Layout::DockerArchive => {
            let _ = writeln!(out, "# strip_components = ?  # a docker-archive, not a tarball to unpack");
        }
    }
    let _ = writeln!(out, "{comment}prefix = {}  # where its files go in the image", quoted(prefix_text));
}

/// The same as data, for `--json`.
pub(crate) fn to_json(p: &Proposal) -> serde_json::Value {
    let (url, file) = match &p.location {
        Location::Url(u) => (Some(u.as_str()), None),
        Location::File(f) => (None, Some(f.as_str())),
    };
    let mut value = serde_json::json!({
        "name": p.name,
        "version": p.version,
        "input": p.input,
        "recipe_file": format!("recipes/{}.toml", p.name),
        "toml": render(p),
    });
    let extra = match &p.kind {
        ProposalKind::Tarball { platform, hash, size, layout, prefix } => serde_json::json!({
            "kind": "tarball",
            "size": size,
            "sources": [{
                "platform": platform.as_ref().map(|p| p.to_string()), "url": url, "file": file,
                hash.algorithm().name(): hash.hex(),
            }],
            "layout": layout,
            "unpack": { "strip_components": layout.strip_components(), "prefix": prefix },
        }),
        ProposalKind::Image { reference, index_digest, images, skipped } => serde_json::json!({
            "kind": "oci-image",
            "image": reference,
            "index_digest": index_digest.map(|d| d.to_string()),
            "sources": images.iter().map(|i| serde_json::json!({
                "platform": i.platform.to_string(), "url": url, "file": file, "digest": i.digest.to_string(),
            })).collect::<Vec<_>>(),
            "skipped": skipped,
        }),
    };
    if let (Some(obj), serde_json::Value::Object(more)) = (value.as_object_mut(), extra) {
        obj.extend(more);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::digest::{Algorithm, Hash};
    use proptest::prelude::*;
    use std::path::Path;

    fn tarball(name: &str, input: &str, location: Location, layout: Layout, prefix: Option<String>) -> Proposal {
        Proposal {
            name: name.into(),
            version: None,
            input: input.into(),
            location,
            kind: ProposalKind::Tarball {
                platform: crate::pin::name::guess_platform(input),
                hash: Hash::from_bytes(Algorithm::Sha256, vec![7; 32]),
                size: 1,
                layout,
                prefix,
            },
        }
    }

    fn parses(text: &str) -> crate::recipe::Recipe {
        crate::recipe::Recipe::parse(Path::new("r.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn a_chosen_prefix_writes_the_unpack_table() {
        let layout = Layout::Listed { top_dir: Some("zk-1".into()), has_bin: true, entries: 3 };
        let p = tarball("zk", "zk-1.tgz", Location::File("zk-1.tgz".into()), layout, Some("/opt/zk".into()));
        let r = parses(&render(&p));
        assert_eq!((r.unpack.strip_components, r.unpack.prefix.as_str()), (1, "opt/zk"));
        assert_eq!(r.path, vec!["/opt/zk/bin"]);
        assert_eq!(r.sources[0].file_name, "zk-1.tgz");
        assert!(r.sources[0].urls.is_empty());
    }

    #[test]
    fn a_file_name_no_recipe_can_hold_is_refused_before_anything_is_read() {
        for name in ["zk\u{1b}[31m.tgz", "zk\u{202e}zgt.tgz", "a\nb.tgz"] {
            let location = Location::File(name.into());
            let e = crate::pin::tarball(Path::new("/nonexistent"), name, location, &Choices::default()).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::ExitCode::Usage, "{e}");
            assert!(e.to_string().contains(&crate::error::escape(name)), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text is written as one line that TOML reads back as the same text.
        #[test]
        fn quoted_strings_read_back(text in "\\PC{0,20}|[\\x00-\\x7f\\u{80}-\\u{9f}\\u{202e}\\u{feff}]{0,20}") {
            let line = quoted(&text);
            prop_assert!(!line.chars().any(crate::error::is_unsafe_char), "{line:?}");
            let parsed: toml::Value = toml::from_str(&format!("v = {line}")).unwrap();
            prop_assert_eq!(parsed["v"].as_str(), Some(text.as_str()));
        }

        /// Whatever the file is called and however its entries are named, the block is a recipe
        /// the parser accepts, and it pins the hash it printed.
        #[test]
        fn every_block_parses(
            // Any name a recipe's `file` can hold (no control or invisible character).
            file in "[^/\\x00-\\x1f\\x7f-\\x9f]{1,30}",
            top in proptest::option::of("\\PC{1,20}"),
            unreadable in "\\PC{0,30}",
            listed in any::<bool>(),
            url in any::<bool>(),
            prefix in proptest::option::of("(/[a-z0-9_-][a-z0-9._-]{0,7}){1,3}"),  // as --prefix admits
        ) {
            prop_assume!(file != "." && file != ".." && !file.chars().any(crate::error::is_unsafe_char));
            let guess = name::guess(&file);
            let layout = if listed {
                Layout::Listed { top_dir: top, has_bin: true, entries: 1 }
            } else {
                Layout::Unreadable { reason: unreadable }
            };
            let location = if url {
                Location::Url(format!("https://example.org/{}", file.replace(['?', '#', ' '], "_")))
            } else {
                Location::File(file.clone())
            };
            let mut p = tarball(&guess.name, &file, location, layout, prefix);
            p.version = guess.version;
            let text = render(&p);
            let r = parses(&text);
            prop_assert_eq!(&r.name, &p.name);
            prop_assert_eq!(&r.sources[0].hash, &Hash::from_bytes(Algorithm::Sha256, vec![7; 32]));
        }
    }
}
