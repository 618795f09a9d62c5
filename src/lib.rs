//! imgbuild: reproducible OCI images (and VM disks) for clusters whose every input is pinned.
//!
//! One module per pipeline stage:
//! `recipe` → `fetch` → `store` → `layer` → `image` → `output`, wired by `build`.

#![warn(unreachable_pub)]

pub(crate) mod atomic_file;
pub(crate) mod build;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod compress;
pub(crate) mod date;
pub(crate) mod deploy;
pub(crate) mod diff;
pub(crate) mod digest;
pub(crate) mod entrypoint;
pub mod error;
pub(crate) mod fetch;
pub(crate) mod gc;
pub(crate) mod health;
pub(crate) mod host;
pub(crate) mod image;
pub(crate) mod image_def;
pub(crate) mod image_path;
pub(crate) mod import;
pub(crate) mod layer;
pub(crate) mod net;
pub(crate) mod node;
pub(crate) mod oci_doc;
pub(crate) mod output;
pub(crate) mod pin;
pub(crate) mod platform;
pub(crate) mod progress;
pub(crate) mod project;
pub(crate) mod recipe;
pub(crate) mod reference;
pub(crate) mod registry;
pub(crate) mod resume;
pub(crate) mod retry;
pub(crate) mod store;
pub(crate) mod supply;
pub(crate) mod toml_file;
pub(crate) mod tree;
pub(crate) mod tree_path;
pub(crate) mod verify;
pub(crate) mod yaml;

/// What the integration tests and benchmarks use of the library, in one place: the rest is
/// crate-private (the binary needs only `cli` and `error`).
pub mod testing {
    pub use crate::compress::{Codec, Compressor, LayerWriter, Parallelism};
    pub use crate::digest::{hash_reader, Algorithm};
    pub use crate::error::is_unsafe_char;
    pub use crate::health::{probe, shell_check, ServiceHealth};
    pub use crate::image_def::{is_host, ImageDef};
    pub use crate::layer::GeneratedEntry;
    pub use crate::node::{cluster_layer_files, ENTRYPOINT_SCRIPT};
    pub use crate::project::Project;
    pub use crate::recipe::{load_dir, Recipe, RecipeKind};
}
