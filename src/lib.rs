//! imgbuild: reproducible OCI images (and VM disks) for clusters whose every input is pinned.
//!
//! One module per pipeline stage:
//! `recipe` → `fetch` → `store` → `layer` → `image` → `output`, wired by `build`.

#![warn(unreachable_pub)]

pub(crate) mod atomic_file;
pub(crate) mod build;
pub(crate) mod cache;
pub mod cli;
pub mod compress;
pub(crate) mod date;
pub(crate) mod deploy;
pub(crate) mod diff;
pub mod digest;
pub(crate) mod entrypoint;
pub mod error;
pub(crate) mod fetch;
pub(crate) mod gc;
pub(crate) mod host;
pub(crate) mod image;
pub mod image_def;
pub(crate) mod image_path;
pub(crate) mod import;
pub mod layer;
pub(crate) mod net;
pub mod node;
pub(crate) mod oci_doc;
pub(crate) mod output;
pub(crate) mod pin;
pub(crate) mod platform;
pub(crate) mod progress;
pub mod project;
pub mod recipe;
pub(crate) mod reference;
pub(crate) mod registry;
pub(crate) mod resume;
pub(crate) mod retry;
pub(crate) mod store;
pub(crate) mod supply;
pub(crate) mod toml_file;
pub(crate) mod tree;
pub(crate) mod verify;
pub(crate) mod yaml;
