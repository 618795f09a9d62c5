//! `imgbuild prefetch URL`: the hash to pin, as `nix-prefetch-url` prints it.

use crate::digest::Algorithm;
use crate::error::Result;
use crate::fetch::Fetcher;

use super::GlobalArgs;

#[derive(clap::Args)]
pub struct PrefetchArgs {
    /// The URL to download
    pub url: String,
    /// Print a sha512 instead of a sha256
    #[arg(long)]
    pub sha512: bool,
}

pub fn run(global: &GlobalArgs, args: &PrefetchArgs) -> Result<()> {
    let store = global.open_store()?;
    let _fetching = store.build_lock_shared()?;
    let settings = global.fetch_settings()?;
    let reporter = global.reporter();
    let algorithm = if args.sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 };
    let (hash, size) = Fetcher::new(&store, &settings, reporter.as_ref()).prefetch(&args.url, algorithm)?;
    if global.json {
        super::print_json(
            &serde_json::json!({ "url": args.url, "hash": hash.to_string(), "sri": hash.sri(), "size": size }),
        )?;
    } else {
        outln!("{} = \"{}\"", algorithm.name(), hash.hex())?;
        if !global.quiet {
            errln!("{} bytes, SRI {}; the file is now in the store", size, hash.sri());
        }
    }
    Ok(())
}
