//! Integration tests: they drive the real `imgbuild` binary on inputs they generate, served
//! from a loopback HTTP server, and check its outputs with independent tools (skopeo, umoci).

mod debian;
mod fixtures;
mod harness;
mod http;
mod registry_server;

mod core;
mod ensemble;
mod failures;
mod hostile_layers;
mod registry;
mod reliability;
mod vm;
