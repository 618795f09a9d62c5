//! Integration tests: they drive the real `imgbuild` binary on inputs they generate, served
//! from a loopback HTTP server, and check its outputs with independent tools (skopeo, umoci).

mod debian;
mod fixtures;
mod harness;
mod http;
mod registry_server;

mod base_image;
mod cache;
mod compression;
mod core;
mod definitions;
mod deploy;
mod diff;
mod docs;
mod doctor;
mod downloads;
mod ensemble;
mod entrypoint;
mod failures;
mod first_hour;
mod first_hour_fixes;
mod health;
mod hostile_io;
mod hostile_layers;
mod hostile_registry;
mod origins;
mod outputs;
mod pins;
mod planted_links;
mod registry;
mod registry_access;
mod registry_load;
mod reliability;
mod seed;
mod supply_chain;
mod vm;
