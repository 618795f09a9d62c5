//! imgbuild: reproducible OCI images (and VM disks) for clusters whose every input is pinned.
//!
//! One module per pipeline stage:
//! `recipe` → `fetch` → `store` → `layer` → `image` → `output`, wired by `build`.

pub mod build;
pub mod cache;
pub mod cli;
pub mod compress;
pub(crate) mod deploy;
pub mod digest;
pub mod error;
pub mod fetch;
pub mod gc;
pub mod image;
pub mod image_def;
pub(crate) mod image_path;
pub mod import;
pub mod layer;
pub mod node;
pub mod oci_doc;
pub mod output;
pub mod pin;
pub mod platform;
pub mod progress;
pub mod project;
pub mod recipe;
pub mod registry;
pub mod store;
pub(crate) mod supply;
pub mod toml_file;
pub mod tree;
