//! `imgbuild cache key generate NAME`: a key pair for signing a shared cache's entries.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

use super::GlobalArgs;

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Signing keys of a shared cache (`--cache`)
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Write a new ed25519 key pair: DIR/NAME.secret (mode 0600; builds that push sign with it)
    /// and DIR/NAME.public (builds that pull trust it); prints the public key
    Generate {
        /// The key's name, which signatures carry (letters, digits, `.-_`), e.g. team-cache-1
        name: String,
        /// Where to write the two files [default: $XDG_CONFIG_HOME/imgbuild]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

pub(super) fn run(global: &GlobalArgs, cmd: &CacheCommand) -> Result<()> {
    let CacheCommand::Key(KeyCommand::Generate { name, dir }) = cmd;
    let dir = match dir {
        Some(dir) => dir.clone(),
        None => crate::cache::user_file()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .ok_or_else(|| Error::Usage("no $XDG_CONFIG_HOME or $HOME: name a directory with --dir".into()))?,
    };
    if !dir.exists() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .at(&dir)?;
    }
    let (secret, public) = (dir.join(format!("{name}.secret")), dir.join(format!("{name}.public")));
    let key = crate::cache::generate_key(name, &secret, &public)?;
    if global.json {
        return super::print_json(&serde_json::json!({
            "name": name,
            "public_key": key.to_string(),
            "secret_file": secret,
            "public_file": public,
        }));
    }
    outln!("{key}")?;
    if !global.quiet {
        errln!("wrote {} (secret: keep it to yourself) and {}", secret.display(), public.display());
        errln!(
            "sign what you push: --cache-signing-key {} (or `signing-key` under [cache] in {})",
            secret.display(),
            crate::cache::user_file().map_or("your config file".into(), |f| f.display().to_string())
        );
        errln!(
            "trust it where you pull: `trusted-keys = [\"{key}\"]` under [cache] in the project's {}",
            crate::cache::PROJECT_FILE
        );
    }
    Ok(())
}
