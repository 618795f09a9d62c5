//! A pin is never replaced silently: a file given to `recipe --update` or `recipe --add` under
//! the name of an upstream file a recipe pins, but with other bytes, is refused (bad input)
//! with the recipe's URL, both hashes and the flag that replaces the pin on purpose. The same
//! name with other bytes is a mislabelled download or a tampered one, not a new version; a new
//! version has a new name (`zookeeper-3.4.14.tar.gz`) and is not in the way here.

use std::path::Path;

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
        let name = file_name(&proposal.location);
        for recipe in recipes {
            for source in recipe.sources.iter().filter(|s| s.file_name == name) {
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
}
