//! Registries: pushing node images and pulling pinned bases over the OCI distribution API.
//! imgbuild speaks the protocol itself, as Jib, ko and crane do: no daemon, no external tool.

pub(crate) mod auth;
pub(crate) mod budget;
pub(crate) mod client;
pub(crate) mod credentials;
pub(crate) mod pull;
pub(crate) mod push;
pub(crate) mod referrers;
pub(crate) mod tls;
mod token;
mod transport;
mod upload;

pub(crate) use crate::reference::Reference;
pub(crate) use client::{Access, Client, RegistrySettings};
