//! crit (CRIU image tool) in Rust: the pieces of the `crit` binary that
//! tests and benchmarks share.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod explore;
pub mod nopl;
pub mod pyjson;
