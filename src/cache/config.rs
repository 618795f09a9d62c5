//! Where a build finds the cache keys it trusts and the key it signs with, as `nix.conf`'s
//! `trusted-public-keys` and `secret-key-files`:
//!
//! - the project's `imgbuild.toml` (`[cache] trusted-keys = ["NAME:BASE64", …]`): the keys a
//!   team's cache is signed with, shared with the recipes (which decide the images anyway);
//! - the user's `$XDG_CONFIG_HOME/imgbuild/config.toml` (default `~/.config/imgbuild/…`):
//!   `trusted-keys`, and `signing-key = "PATH"` (relative to that file's directory);
//! - `--cache-trusted-key` and `--cache-signing-key` (or their variables).
//!
//! Trusted keys add up; the signing key on the command line wins over the user's. A project
//! file never names a signing key: a cloned project must not choose what signs your pushes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::sign::{PublicKey, SecretKey, TrustedKeys};
use crate::error::Result;
use crate::toml_file::TomlFile;

/// The project's file, in the project directory.
pub(crate) const PROJECT_FILE: &str = "imgbuild.toml";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    cache: CacheSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CacheSection {
    #[serde(default)]
    trusted_keys: Vec<toml::Spanned<String>>,
    signing_key: Option<toml::Spanned<String>>,
}

/// The keys of a build's cache, from every place they may be named.
#[derive(Debug, Default)]
pub struct Keys {
    pub trusted: TrustedKeys,
    pub signing: Option<SecretKey>,
}

/// The user's config file: `$XDG_CONFIG_HOME/imgbuild/config.toml`, else under `~/.config`.
pub(crate) fn user_file() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config")))?;
    Some(dir.join("imgbuild").join("config.toml"))
}

/// Reads the keys named by the project at `project`, the user's file and the command line.
pub(crate) fn load(project: &Path, cli_trusted: &[PublicKey], cli_signing: Option<&Path>) -> Result<Keys> {
    let mut trusted = cli_trusted.to_vec();
    let mut signing = cli_signing.map(Path::to_path_buf);
    if let Some(file) = read(&project.join(PROJECT_FILE))? {
        if let Some(key) = &file.value.cache.signing_key {
            return Err(file.error_at(
                key.span(),
                "`signing-key` belongs in your own config file (or --cache-signing-key), not in a project's",
            ));
        }
        trusted.extend(keys_of(&file)?);
    }
    if let Some(path) = user_file() {
        if let Some(file) = read(&path)? {
            trusted.extend(keys_of(&file)?);
            if let (None, Some(key)) = (&signing, &file.value.cache.signing_key) {
                let dir = path.parent().expect("a config file has a directory");
                signing = Some(dir.join(key.get_ref()));
            }
        }
    }
    let signing = signing.map(|p| SecretKey::load(&p)).transpose()?;
    Ok(Keys { trusted: TrustedKeys::new(trusted), signing })
}

fn read(path: &Path) -> Result<Option<TomlFile<ConfigFile>>> {
    match path.is_file() {
        true => TomlFile::read(path).map(Some),
        false => Ok(None),
    }
}

fn keys_of(file: &TomlFile<ConfigFile>) -> Result<Vec<PublicKey>> {
    let parse = |key: &toml::Spanned<String>| {
        key.get_ref().parse::<PublicKey>().map_err(|why| file.error_at(key.span(), format!("trusted-keys: {why}")))
    };
    file.value.cache.trusted_keys.iter().map(parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_file_names_trusted_keys_but_never_a_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = format!("team-1:{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 32]));
        let file = dir.path().join(PROJECT_FILE);
        std::fs::write(&file, format!("[cache]\ntrusted-keys = [\"{key}\"]\n")).unwrap();
        let keys = load(dir.path(), &[], None).unwrap();
        assert!(!keys.trusted.is_empty() && keys.signing.is_none());
        std::fs::write(&file, "[cache]\nsigning-key = \"/home/me/key.secret\"\n").unwrap();
        let err = load(dir.path(), &[], None).unwrap_err().to_string();
        assert!(err.contains("imgbuild.toml") && err.contains(":2:") && err.contains("signing-key"), "{err}");
        std::fs::write(&file, "[cache]\ntrusted-keys = [\"team-1:short\"]\n").unwrap();
        let err = load(dir.path(), &[], None).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("trusted-keys"), "{err}");
        std::fs::write(&file, "[cache]\ntrusted = []\n").unwrap();
        assert!(load(dir.path(), &[], None).unwrap_err().to_string().contains("unknown field"));
    }
}
