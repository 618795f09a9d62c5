//! Registries: pushing node images and pulling pinned bases over the OCI distribution API.
//! imgbuild speaks the protocol itself, as Jib, ko and crane do: no daemon, no external tool.

pub mod auth;
pub(crate) mod budget;
pub mod client;
pub(crate) mod credentials;
pub mod pull;
pub mod push;
pub(crate) mod referrers;
pub(crate) mod tls;
mod token;
mod transport;
mod upload;

pub use crate::reference::Reference;
pub use client::{Access, Client, RegistrySettings};
