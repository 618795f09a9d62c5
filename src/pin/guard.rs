//! A pin is never replaced silently: a file given to `recipe --update` or `recipe --add` under
//! the name of an upstream file a recipe pins, but with other bytes, is refused (bad input)
//! with the recipe's URL, both hashes and the flag that replaces the pin on purpose. The same
//! name with other bytes is a mislabelled download or a tampered one, not a new version; a new
//! version has a new name (`zookeeper-3.4.14.tar.gz`) and is not in the way here.

use std::path::Path;

use super::name::normalized;
use super::{Location, Proposal, ProposalKind};
use crate::digest::{Algorithm, Hash};
use crate::error::{escape, Error, Result};
use crate::recipe::{Recipe, Source};

/// The flag that replaces a pin on purpose.
pub(crate) const REPLACE_FLAG: &str = "--replace-pin";

/// The file name a proposal's source gets (what a recipe's `file_name` is compared with).
pub(crate) fn file_name(location: &Location) -> &str {
    match location {
        Location::Url(url) => crate::recipe::url_file_name(url),
        Location::File(name) => name,
    }
}

/// Refuses the first tarball of `given` (each with the file it was read from) that is named as
/// a source of `recipes` expects but does not hash to its pin. `hash_in` hashes a file in a
/// pin's algorithm when the proposal was hashed in the other one.
pub(crate) fn check(
    recipes: &[&Recipe],
    given: &[(&Proposal, &Path)],
    hash_in: impl Fn(&Path, Algorithm) -> Result<Hash>,
) -> Result<()> {
    for (proposal, path) in given {
        let ProposalKind::Tarball { hash, .. } = &proposal.kind else { continue };
        let names = given_names(&proposal.location, path);
        for recipe in recipes {
            let expected = recipe.sources.iter().filter(|s| names.contains(&normalized(&s.file_name)));
            for source in expected {
                let found = match source.hash.algorithm() == hash.algorithm() {
                    true => hash.clone(),
                    false => hash_in(path, source.hash.algorithm())?,
                };
                if found != source.hash {
                    return Err(refusal(recipe, source, proposal, &found));
                }
            }
        }
    }
    Ok(())
}

/// Every name the given file goes by, normalized: the one its proposal pins, the name it was
/// given as, and the names of the links it was reached through (the one it points to, and
/// the file at the end). Any of them being upstream's makes it the file a pin is about.
fn given_names(location: &Location, path: &Path) -> Vec<Vec<u8>> {
    let linked = [std::fs::read_link(path).ok(), std::fs::canonicalize(path).ok()];
    let paths = std::iter::once(Some(path.to_path_buf())).chain(linked).flatten();
    let from_paths = paths.filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut names: Vec<Vec<u8>> =
        std::iter::once(file_name(location).to_string()).chain(from_paths).map(|n| normalized(&n)).collect();
    names.dedup();
    names
}

fn refusal(recipe: &Recipe, source: &Source, proposal: &Proposal, found: &Hash) -> Error {
    let platform = source.platform.as_ref().map_or("every platform".into(), |p| p.to_string());
    let from = match source.urls.first() {
        Some(url) => format!("from {}", escape(url)),
        None => "(a `file` source: no URL)".into(),
    };
    Error::Definition {
        file: recipe.file.clone(),
        message: format!(
            "{name} is the upstream file recipe {recipe_name} pins for {platform}, but {given} has other bytes; \
             the pin was left as it is\n  pinned: {pinned} {from}\n  given:  {found}\n  \
             a file named as upstream's with other content is not upstream's file: check where it came from. \
             To replace the pin with it on purpose (the recipe's URL and hash go), run the command again \
             with {REPLACE_FLAG}",
            name = escape(&source.file_name),
            recipe_name = escape(&recipe.name),
            given = escape(&proposal.input),
            pinned = source.hash,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;
    use crate::pin::tarball::Layout;

    fn recipe(sources: Vec<Source>) -> Recipe {
        let text = "name = \"zk\"\nversion = \"1\"\n[[source]]\nurl = \"https://e.org/zk.tgz\"\nsha256 = \""
            .to_string()
            + &"0".repeat(64)
            + "\"\n";
        let mut r = Recipe::parse(Path::new("recipes/zk.toml"), &text).unwrap();
        r.sources = sources;
        r
    }

    fn hash(algorithm: Algorithm, byte: u8) -> Hash {
        crate::digest::hash_reader(algorithm, &[byte][..]).unwrap().0
    }

    fn proposal(location: Location, hash: Hash) -> Proposal {
        let layout = Layout::Listed { top_dir: None, has_bin: false, entries: 1 };
        let kind = ProposalKind::Tarball { platform: None, hash, size: 1, layout, prefix: None };
        Proposal { name: "zk".into(), version: None, input: "given.tgz".into(), location, kind }
    }

    proptest! {
        /// Refused exactly when a source expects the name and pins other bytes, in whichever
        /// algorithm it pins by; the refusal says the URL, both hashes and the flag.
        #[test]
        fn a_pin_is_refused_exactly_when_the_name_matches_and_the_bytes_do_not(
            pinned_byte in 0u8..3, given_byte in 0u8..3,
            pinned_sha512: bool, given_sha512: bool,
            same_name: bool, by_url: bool,
        ) {
            let alg = |sha512| if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
            let source = Source {
                platform: None,
                urls: vec!["https://e.org/dist/zk-1.tgz".into()],
                file_name: "zk-1.tgz".into(),
                hash: hash(alg(pinned_sha512), pinned_byte),
            };
            let r = recipe(vec![source]);
            let name = if same_name { "zk-1.tgz" } else { "zk-2.tgz" };
            let location = match by_url {
                true => Location::Url(format!("https://mirror.example/x/{name}?a=b")),
                false => Location::File(name.into()),
            };
            let p = proposal(location, hash(alg(given_sha512), given_byte));
            let path = PathBuf::from("given.tgz");
            let result = check(&[&r], &[(&p, &path)], |_, a| Ok(hash(a, given_byte)));
            let refused = same_name && pinned_byte != given_byte;
            prop_assert_eq!(result.is_err(), refused, "{:?}", result);
            if let Err(e) = result {
                prop_assert_eq!(e.exit_code(), crate::error::ExitCode::Input);
                let text = e.to_string();
                let pinned = r.sources[0].hash.to_string();
                let given = hash(alg(pinned_sha512), given_byte).to_string();
                prop_assert!(text.contains("https://e.org/dist/zk-1.tgz") && text.contains(&pinned), "{}", text);
                prop_assert!(text.contains(&given) && text.contains(REPLACE_FLAG), "{}", text);
            }
        }
    }

    /// `name` with the characters `encode` picks written as `%XX` (upper or lower hex).
    fn encoded(name: &str, encode: &[(bool, bool)]) -> String {
        let chosen = name.bytes().zip(encode.iter().cycle());
        chosen
            .map(|(b, (enc, upper))| match (enc, upper) {
                (false, _) => (b as char).to_string(),
                (true, true) => format!("%{b:02X}"),
                (true, false) => format!("%{b:02x}"),
            })
            .collect()
    }

    proptest! {
        /// Any two encodings of one name are the same name, and the same as the name itself
        /// (`%2B`, `%2b` and `+`); the guard refuses the file under either spelling, on
        /// either side (the recipe's URL, the URL given).
        #[test]
        fn encodings_of_one_name_are_one_name(
            name in "[a-zA-Z0-9._+~ -]{1,24}",
            a in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..8),
            b in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..8),
        ) {
            let (ea, eb) = (encoded(&name, &a), encoded(&name, &b));
            prop_assert_eq!(normalized(&ea), name.as_bytes().to_vec());
            prop_assert_eq!(normalized(&ea), normalized(&eb));
            let source = Source {
                platform: None,
                urls: vec![format!("https://e.org/dist/{ea}")],
                file_name: crate::recipe::url_file_name(&format!("https://e.org/dist/{ea}")).into(),
                hash: hash(Algorithm::Sha256, 0),
            };
            let r = recipe(vec![source]);
            let p = proposal(Location::Url(format!("https://m.example/{eb}")), hash(Algorithm::Sha256, 1));
            let path = PathBuf::from("given.tgz");
            prop_assert!(check(&[&r], &[(&p, &path)], |_, a| Ok(hash(a, 1))).is_err());
        }
    }

    /// A link named as upstream's file, to a file of another name: the name given counts as
    /// much as the name it points to (and a link to upstream's name counts too).
    #[test]
    fn a_link_is_upstreams_file_by_either_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (evil, upstream_link, to_upstream) = (dir.join("evil.tgz"), dir.join("zk-1.tgz"), dir.join("to-up.tgz"));
        std::fs::write(&evil, "x").unwrap();
        std::os::unix::fs::symlink("evil.tgz", &upstream_link).unwrap();
        std::os::unix::fs::symlink("zk-1.tgz", &to_upstream).unwrap();
        let source = Source {
            platform: None,
            urls: vec!["https://e.org/dist/zk-1.tgz".into()],
            file_name: "zk-1.tgz".into(),
            hash: hash(Algorithm::Sha256, 0),
        };
        let r = recipe(vec![source]);
        for path in [&upstream_link, &to_upstream] {
            let p = proposal(Location::File("evil.tgz".into()), hash(Algorithm::Sha256, 1));
            assert!(check(&[&r], &[(&p, path.as_path())], |_, a| Ok(hash(a, 1))).is_err(), "{}", path.display());
        }
        let p = proposal(Location::File("evil.tgz".into()), hash(Algorithm::Sha256, 1));
        assert!(check(&[&r], &[(&p, evil.as_path())], |_, a| Ok(hash(a, 1))).is_ok());
    }
}
