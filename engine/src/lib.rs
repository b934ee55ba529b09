//! The checkpoint/restore engine behind the `criu` binary.
//!
//! Layers: [`dump`] collects a process tree from the kernel into the
//! [`model`]; [`images_io`] writes the model to CRIU image files and reads
//! it back; [`restore`] recreates processes from the model, reading page
//! contents through a [`mem_source::MemSource`]; [`tfork`] makes live
//! clones of a running process. All `unsafe` lives in
//! [`sys`].
#![deny(unsafe_code)]

pub mod log;
pub mod cli;
pub mod cgroups;
pub mod cpuinfo;
pub mod dump;
pub mod fault;
pub mod images_io;
pub mod kinds;
pub mod mem_source;
pub mod mntns;
pub mod model;
pub mod notify;
pub mod options;
pub mod restore;
pub mod root_snapshot;
pub mod sys;
pub mod tfork;
pub mod utsipc;
pub mod netns;
pub mod inherit;
pub mod validate;
