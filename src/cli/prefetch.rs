//! `imgbuild prefetch URL|FILE`: the hash to pin, as `nix-prefetch-url` prints it, with the
//! file put into the store. Files are found as `imgbuild recipe` finds them: a path, a
//! `file://` URL or a name in a `--mirror` directory is read where it is; an http(s) URL is
//! looked for in the `--mirror` directories, then downloaded, never with `--offline`.

use crate::digest::Algorithm;
use crate::error::Result;

use super::recipe::{find, Finder, LazyStore};
use super::GlobalArgs;

#[derive(clap::Args)]
pub struct PrefetchArgs {
    /// What to pin: an http(s):// or file:// URL, a path, or the name of a file in a --mirror
    /// directory
    #[arg(value_name = "URL|FILE")]
    pub input: String,
    /// Print a sha512 instead of a sha256
    #[arg(long)]
    pub sha512: bool,
}

pub(super) fn run(global: &GlobalArgs, args: &PrefetchArgs) -> Result<()> {
    let algorithm = if args.sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
    let mut store = LazyStore::new(global);
    let found = find(global, &mut store, &args.input, algorithm, Finder::Prefetch)?;
    let (hash, size) = match found.downloaded {
        Some(downloaded) => downloaded,
        None => store.get()?.add_file(&found.path, algorithm, None)?,
    };
    if global.json {
        return super::print_json(
            &serde_json::json!({ "input": args.input, "hash": hash.to_string(), "sri": hash.sri(), "size": size }),
        );
    }
    outln!("{} = \"{}\"", algorithm.name(), hash.hex())?;
    if !global.quiet {
        errln!("{} bytes, SRI {}; the file is now in the store", size, hash.sri());
    }
    Ok(())
}
