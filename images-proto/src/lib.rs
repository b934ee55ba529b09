//! CRIU image formats: the image-kind table (magics, headers, payloads),
//! entry framing, the protobuf messages (typed, via prost) and their static
//! schema, crit's JSON rendering, and pagemap/pages iteration.
//!
//! Layering: `wire` (raw protobuf) -> `schema` (descriptors) -> `json`
//! (message <-> crit JSON) -> `image` (files: header, entries, payloads);
//! `pb` is the typed API the engine uses; `pages` walks memory images.
#![forbid(unsafe_code)]

pub mod error;
pub mod image;
pub mod json;
pub mod magic;
pub mod pages;
pub mod render;
pub mod schema;
pub mod wire;

/// Typed messages generated from `proto/` (upstream names in CamelCase).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// The `criu swrk` RPC messages (package `rpc` in `proto/rpc.proto`).
#[allow(clippy::all, missing_docs)]
pub mod rpc {
    include!(concat!(env!("OUT_DIR"), "/rpc.rs"));
}

pub use error::{ImageError, Location, Result};
pub use magic::ImageKind;
