//! An existing recipe pinned to the files one has (`imgbuild recipe --update RECIPE FILE…`):
//! its `[[source]]` tables become the files' sources, and everything else stays as written
//! (name, `env`, `path`, `[unpack]` with its excludes, mirrors, comments). A source that already
//! pins the same bytes is kept as it was, with its URL and mirrors. The version follows the
//! files when their names say it; an image recipe's `image` follows the archive when it names
//! one, and its `index_digest` the archive's index (gone when it has none).

use std::path::Path;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

use super::tarball::Layout;
use super::{render, Proposal, ProposalKind};
use crate::digest::Hash;
use crate::error::{escape, Error, Result};
use crate::recipe::{Recipe, RecipeKind};

/// The recipe's new text, and what people should know about the change.
#[derive(Debug)]
pub(crate) struct Updated {
    pub text: String,
    /// Sources that already pinned a file given, kept as they were.
    pub kept: usize,
    pub replaced: usize,
    /// The version before and after, when the files' names changed it.
    pub version: Option<(String, String)>,
    /// An image recipe's `image` before (if it had one) and after, when the archive changed it.
    pub image: Option<(Option<String>, String)>,
    /// Where a file does not fit what the recipe keeps (its `[unpack]`).
    pub warnings: Vec<String>,
}

/// `recipe_file`'s `text` with its sources replaced by `proposals` (one per file given).
pub(crate) fn update(recipe_file: &Path, text: &str, proposals: &[Proposal]) -> Result<Updated> {
    let recipe = Recipe::parse(recipe_file, text)?;
    check_kinds(recipe_file, &recipe, proposals)?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| Error::Internal(format!("{}: parsed, but not by toml_edit: {e}", shown(recipe_file))))?;
    let old = old_sources(&doc, &recipe);
    let position = old.iter().find_map(|(_, t)| t.position());
    let mut sources = ArrayOfTables::new();
    let mut kept = 0;
    for (hash, mut table) in new_sources(proposals)? {
        if let Some((_, same)) = old.iter().find(|(h, t)| *h == hash && platform_of(t) == platform_of(&table)) {
            table = same.clone();
            kept += 1;
        }
        if let Some(p) = position {
            table.set_position(p); // where the old sources were, in their order
        }
        sources.push(table);
    }
    let replaced = sources.len() - kept;
    doc.insert("source", Item::ArrayOfTables(sources));
    let version = proposals.iter().find_map(|p| p.version.clone()).filter(|v| *v != recipe.version);
    if let Some(v) = &version {
        doc.insert("version", toml_edit::value(v.as_str()));
    }
    let mut warnings = unpack_warnings(&recipe, proposals);
    let mut image = None;
    if let Some(ProposalKind::Image { reference, index_digest, .. }) = proposals.first().map(|p| &p.kind) {
        let old = match &recipe.kind {
            RecipeKind::OciImage { reference: Some(r), .. } => Some(format!("{}/{}", r.registry, r.repository)),
            _ => None,
        };
        match (reference, &old) {
            (Some(r), _) => {
                doc.insert("image", toml_edit::value(r.as_str()));
                image = Some((old.clone(), r.clone())).filter(|(o, n)| o.as_ref() != Some(n));
            }
            // The archive does not say where the image comes from: the recipe's word stays,
            // but it may now be wrong, and SBOMs and fetch hints repeat it.
            (None, Some(o)) => warnings.push(format!(
                "the archive names no registry repository, so `image = \"{}\"` stays: if this image does not come from there, change `image` or remove it (SBOMs and the hints that fetch the base repeat it)",
                escape(o)
            )),
            (None, None) => {}
        }
        match index_digest {
            Some(d) => doc.insert("index_digest", toml_edit::value(d.to_string())),
            None => doc.remove("index_digest"),
        };
    }
    let text = doc.to_string();
    check_result(recipe_file, &text, proposals)?;
    Ok(Updated { text, kept, replaced, version: version.map(|v| (recipe.version.clone(), v)), image, warnings })
}

fn shown(path: &Path) -> String {
    escape(&path.display().to_string())
}

/// Tarballs update a tarball recipe; one image archive (one recipe's worth) an image recipe.
fn check_kinds(recipe_file: &Path, recipe: &Recipe, proposals: &[Proposal]) -> Result<()> {
    let is_image = matches!(recipe.kind, RecipeKind::OciImage { .. });
    let wrong = proposals.iter().find(|p| matches!(p.kind, ProposalKind::Image { .. }) != is_image);
    if let Some(p) = wrong {
        let (recipe_kind, file_kind) = if is_image { ("an image", "a tarball") } else { ("a tarball", "an image") };
        return Err(Error::Usage(format!(
            "{} is {recipe_kind} recipe, and {} is {file_kind}: update it with {recipe_kind} file",
            shown(recipe_file),
            escape(&p.input)
        )));
    }
    let mut seen: Vec<(String, &str)> = Vec::new();
    for p in proposals {
        let platforms: Vec<String> = match &p.kind {
            ProposalKind::Tarball { platform, .. } => {
                vec![platform.as_ref().map_or("every platform".into(), |p| p.to_string())]
            }
            ProposalKind::Image { images, .. } => images.iter().map(|i| i.platform.to_string()).collect(),
        };
        for platform in platforms {
            if let Some((_, other)) = seen.iter().find(|(q, _)| *q == platform) {
                return Err(Error::Usage(format!(
                    "{} and {} are both for {platform}: a recipe has one source per platform (--platform to say which)",
                    escape(other),
                    escape(&p.input)
                )));
            }
            seen.push((platform, &p.input));
        }
    }
    if is_image && proposals.len() != 1 {
        return Err(Error::Usage(format!(
            "{} is an image recipe: update it with one OCI archive or layout holding one image per platform",
            shown(recipe_file)
        )));
    }
    Ok(())
}

/// The recipe's `[[source]]` tables (or inline tables), each with the hash it pins.
fn old_sources(doc: &DocumentMut, recipe: &Recipe) -> Vec<(Hash, Table)> {
    let tables: Vec<Table> = match doc.get("source") {
        Some(Item::ArrayOfTables(a)) => a.iter().cloned().collect(),
        Some(Item::Value(toml_edit::Value::Array(a))) => {
            a.iter().filter_map(|v| v.as_inline_table()).map(|t| t.clone().into_table()).collect()
        }
        _ => Vec::new(),
    };
    recipe.sources.iter().map(|s| s.hash.clone()).zip(tables).collect()
}

/// A source table's `platform`, as written (`None`: every platform).
fn platform_of(table: &Table) -> Option<&str> {
    table.get("platform").and_then(|p| p.as_str())
}

/// Each file's sources, as `imgbuild recipe` writes them (comments included), with their hashes.
fn new_sources(proposals: &[Proposal]) -> Result<Vec<(Hash, Table)>> {
    let mut out = Vec::new();
    for p in proposals {
        let rendered: DocumentMut = render(p)
            .parse()
            .map_err(|e| Error::Internal(format!("`imgbuild recipe` wrote a recipe toml_edit cannot read: {e}")))?;
        let mut tables: Vec<Table> = match rendered.get("source") {
            Some(Item::ArrayOfTables(a)) => a.iter().cloned().collect(),
            _ => Vec::new(),
        };
        // What the rendered recipe wrote before its first source (`path`, commented) is not the source's.
        for table in &mut tables {
            table.decor_mut().set_prefix("\n");
        }
        let hashes: Vec<Hash> = match &p.kind {
            ProposalKind::Tarball { hash, .. } => vec![hash.clone()],
            ProposalKind::Image { images, .. } => images.iter().map(|i| i.digest.to_hash()).collect(),
        };
        if tables.len() != hashes.len() {
            return Err(Error::Internal(format!("{} sources rendered for {} pins", tables.len(), hashes.len())));
        }
        out.extend(hashes.into_iter().zip(tables));
    }
    Ok(out)
}

/// The new text is a recipe that pins exactly the files given, in their order: anything else is
/// a bug here.
fn check_result(recipe_file: &Path, text: &str, proposals: &[Proposal]) -> Result<()> {
    let recipe = Recipe::parse(recipe_file, text)
        .map_err(|e| Error::Internal(format!("`imgbuild recipe --update` wrote a recipe that does not parse: {e}")))?;
    let pinned: Vec<&Hash> = recipe.sources.iter().map(|s| &s.hash).collect();
    let given: Vec<Hash> = proposals
        .iter()
        .flat_map(|p| match &p.kind {
            ProposalKind::Tarball { hash, .. } => vec![hash.clone()],
            ProposalKind::Image { images, .. } => images.iter().map(|i| i.digest.to_hash()).collect(),
        })
        .collect();
    if pinned != given.iter().collect::<Vec<_>>() {
        return Err(Error::Internal(format!("`imgbuild recipe --update` pinned {pinned:?}, not the files given")));
    }
    Ok(())
}

/// A tarball whose layout does not fit the `[unpack]` the recipe keeps.
fn unpack_warnings(recipe: &Recipe, proposals: &[Proposal]) -> Vec<String> {
    let strip = recipe.unpack.strip_components;
    proposals
        .iter()
        .filter_map(|p| match &p.kind {
            ProposalKind::Tarball { layout: Layout::Listed { top_dir: None, .. }, .. } if strip > 0 => Some(format!(
                "{}: its entries are not under one directory, but the recipe strips {strip} (strip_components)",
                escape(&p.input)
            )),
            ProposalKind::Tarball { layout: Layout::Listed { top_dir: Some(top), .. }, .. } if strip == 0 => {
                Some(format!(
                    "{}: every entry is under {}/, but the recipe strips none (strip_components = 1 would)",
                    escape(&p.input),
                    escape(top)
                ))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::digest::{Algorithm, Sha256Digest};
    use crate::pin::{oci, Location};
    use crate::platform::Platform;

    fn hash(byte: u8) -> Hash {
        Hash::from_bytes(Algorithm::Sha256, vec![byte; 32])
    }

    fn tarball(input: &str, byte: u8, platform: Option<&str>, version: Option<&str>) -> Proposal {
        Proposal {
            name: "ignored".into(),
            version: version.map(str::to_string),
            input: input.into(),
            location: Location::File(input.into()),
            kind: ProposalKind::Tarball {
                platform: platform.map(|p| p.parse().unwrap()),
                hash: hash(byte),
                size: 1,
                layout: Layout::Listed { top_dir: Some("top".into()), has_bin: true, entries: 2 },
                prefix: None,
            },
        }
    }

    /// A tarball recipe with comments everywhere, `env`, `path`, `[unpack]` and `sources`.
    fn recipe_text(env: &BTreeMap<String, String>, excludes: &[String], sources: &[(u8, &str)]) -> String {
        let mut text = String::from("# about this recipe\nname = \"jdk\"\nversion = \"1.0\"  # upstream's\n");
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = {}", toml::Value::from(v.as_str()))).collect();
        text.push_str(&format!("env = {{ {} }}\npath = [\"/opt/java/bin\"]\n", env.join(", ")));
        for (byte, platform) in sources {
            text.push_str(&format!(
                "\n# a source\n[[source]]\nplatform = \"{platform}\"\nurl = \"https://example.org/{byte}.tgz\"\nsha256 = \"{}\"\n",
                hash(*byte).hex()
            ));
        }
        let excludes: Vec<String> = excludes.iter().map(|e| toml::Value::from(e.as_str()).to_string()).collect();
        text.push_str(&format!(
            "\n# how it unpacks\n[unpack]\nstrip_components = 1  # top/\nprefix = \"/opt/java\"\nexclude = [{}]\n",
            excludes.join(", ")
        ));
        text
    }

    fn parse(text: &str) -> Recipe {
        Recipe::parse(Path::new("recipes/jdk.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the recipe holds besides its sources is kept, comments included; its
        /// sources are exactly the files given; a source pinning a file given stays as it was.
        #[test]
        fn only_the_sources_change(
            env in prop::collection::btree_map("[A-Z][A-Z_]{0,8}", "[ -~]{0,12}", 0..4),
            excludes in prop::collection::vec("[a-z.]{1,8}", 0..4),
            old in prop::collection::btree_map(1u8..6, prop::sample::select(vec!["linux/amd64", "linux/arm64", "linux/s390x"]), 1..3),
            new in prop::collection::btree_map(3u8..9, prop::sample::select(vec!["linux/amd64", "linux/arm64", "linux/ppc64le"]), 1..3),
        ) {
            let old: Vec<(u8, &str)> = old.into_iter().collect();
            let mut platforms: Vec<&str> = old.iter().map(|(_, p)| *p).collect();
            platforms.sort();
            platforms.dedup();
            prop_assume!(platforms.len() == old.len());
            let new: Vec<(u8, &str)> = new.into_iter().collect();
            let mut new_platforms: Vec<&str> = new.iter().map(|(_, p)| *p).collect();
            new_platforms.sort();
            new_platforms.dedup();
            prop_assume!(new_platforms.len() == new.len());
            let text = recipe_text(&env, &excludes, &old);
            let before = parse(&text);
            let proposals: Vec<Proposal> =
                new.iter().map(|(b, p)| tarball(&format!("f{b}.tgz"), *b, Some(p), None)).collect();
            let updated = update(Path::new("recipes/jdk.toml"), &text, &proposals).unwrap();
            let after = parse(&updated.text);
            prop_assert_eq!(&after.name, &before.name);
            prop_assert_eq!(&after.version, &before.version);
            prop_assert_eq!(&after.env, &before.env);
            prop_assert_eq!(&after.path, &before.path);
            prop_assert_eq!(&after.unpack.exclude, &before.unpack.exclude);
            prop_assert_eq!((&after.unpack.prefix, after.unpack.strip_components), (&before.unpack.prefix, 1));
            let pinned: Vec<Hash> = after.sources.iter().map(|s| s.hash.clone()).collect();
            prop_assert_eq!(pinned, new.iter().map(|(b, _)| hash(*b)).collect::<Vec<_>>());
            for comment in ["# about this recipe", "# upstream's", "# how it unpacks", "# top/"] {
                prop_assert!(updated.text.contains(comment), "{} lost:\n{}", comment, updated.text);
            }
            for (s, (byte, platform)) in after.sources.iter().zip(&new) {
                let kept = old.iter().any(|(b, p)| b == byte && p == platform);
                prop_assert_eq!(kept, !s.urls.is_empty(), "{}", updated.text);
            }
            prop_assert_eq!(updated.kept + updated.replaced, new.len());
        }
    }

    #[test]
    fn the_file_a_recipe_pins_changes_nothing() {
        let text = recipe_text(&BTreeMap::new(), &["src.zip".into()], &[(1, "linux/amd64")]);
        let same = update(Path::new("r.toml"), &text, &[tarball("f.tgz", 1, Some("linux/amd64"), Some("1.0"))]);
        assert_eq!(same.unwrap().text, text);
    }

    #[test]
    fn the_version_follows_the_files_name_when_it_says_one() {
        let text = recipe_text(&BTreeMap::new(), &[], &[(1, "linux/amd64")]);
        let new = update(Path::new("r.toml"), &text, &[tarball("f-2.0.tgz", 2, Some("linux/amd64"), Some("2.0"))]);
        let new = new.unwrap();
        assert_eq!(parse(&new.text).version, "2.0");
        assert_eq!(new.version, Some(("1.0".to_string(), "2.0".to_string())));
        let none = update(Path::new("r.toml"), &text, &[tarball("f.tgz", 2, Some("linux/amd64"), None)]).unwrap();
        assert_eq!(parse(&none.text).version, "1.0");
    }

    #[test]
    fn kinds_and_platforms_are_checked() {
        let text = recipe_text(&BTreeMap::new(), &[], &[(1, "linux/amd64")]);
        let two = [tarball("a.tgz", 2, Some("linux/amd64"), None), tarball("b.tgz", 3, Some("linux/amd64"), None)];
        let e = update(Path::new("r.toml"), &text, &two).unwrap_err();
        assert!(matches!(&e, Error::Usage(m) if m.contains("a.tgz and b.tgz are both for linux/amd64")), "{e}");
        let image = Proposal {
            name: "x".into(),
            version: None,
            input: "base.tar".into(),
            location: Location::File("base.tar".into()),
            kind: ProposalKind::Image {
                reference: Some("docker.io/library/debian".into()),
                index_digest: None,
                images: vec![oci::Image {
                    digest: Sha256Digest::of(b"m"),
                    platform: "linux/amd64".parse::<Platform>().unwrap(),
                }],
                skipped: Vec::new(),
            },
        };
        let e = update(Path::new("r.toml"), &text, std::slice::from_ref(&image)).unwrap_err();
        assert!(matches!(&e, Error::Usage(m) if m.contains("is a tarball recipe, and base.tar is an image")), "{e}");

        // An image recipe: its sources, `image` and `index_digest` follow the archive.
        let image_recipe = format!(
            "name = \"base\"\nversion = \"old\"\nkind = \"oci-image\"\nimage = \"example.org/x\"\nindex_digest = \"{}\"\n\n[[source]]\nplatform = \"linux/arm64\"\ndigest = \"{}\"\n",
            Sha256Digest::of(b"i"),
            Sha256Digest::of(b"a")
        );
        let new = update(Path::new("r.toml"), &image_recipe, std::slice::from_ref(&image)).unwrap();
        let r = parse(&new.text);
        assert_eq!(r.sources.iter().map(|s| s.hash.clone()).collect::<Vec<_>>(), [Sha256Digest::of(b"m").to_hash()]);
        assert!(!new.text.contains("index_digest") && new.text.contains("image = \"docker.io/library/debian\""));
        assert_eq!(r.version, "old", "the archive says no version");
        // The change of `image` is reported, never passed off as "as it was".
        assert_eq!(new.image, Some((Some("example.org/x".into()), "docker.io/library/debian".into())));
        assert!(new.warnings.is_empty(), "{:?}", new.warnings);

        // An archive that names no registry repository keeps the recipe's `image`, and says so.
        let mut unnamed = image;
        if let ProposalKind::Image { reference, .. } = &mut unnamed.kind {
            *reference = None;
        }
        let kept = update(Path::new("r.toml"), &image_recipe, &[unnamed]).unwrap();
        assert!(kept.text.contains("image = \"example.org/x\"") && kept.image.is_none());
        assert!(kept.warnings.iter().any(|w| w.contains("`image = \"example.org/x\"` stays")), "{:?}", kept.warnings);
    }
}
