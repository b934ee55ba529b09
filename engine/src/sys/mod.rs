//! The one place with `unsafe` in the engine: thin wrappers over the raw
//! kernel ABI (ptrace, clone3, prctl, mmap, raw syscalls). Every wrapper
//! names the syscall it makes; every `unsafe` block says why it is sound.
//! Everything above this module is `#![forbid(unsafe_code)]`-clean.
#![allow(unsafe_code)]

pub mod batch;
pub mod btrfs;
pub mod cpu;
pub mod event;
pub mod inet;
pub mod inject;
pub mod kmod;
pub mod mmap;
pub mod mount;
pub mod netdev;
pub mod ns;
pub mod pagemap;
pub mod premap;
pub mod regions;
pub mod park;
pub mod process;
pub mod sock;
pub mod sysv;
pub mod tracer;
pub mod tty;
pub mod ptrace;
pub mod rpc;
pub mod uffd;
pub mod uring;

/// A kernel thread/process id as seen from the engine's pid namespace.
pub type Pid = i32;

/// `errno` of the last failed libc call as an `io::Error`.
pub(crate) fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Turn a raw `-errno` syscall return into a `Result`.
pub fn check_raw(ret: i64) -> std::io::Result<u64> {
    if (-4095..0).contains(&ret) {
        Err(std::io::Error::from_raw_os_error(i32::try_from(-ret).unwrap_or(libc::EINVAL)))
    } else {
        Ok(ret as u64)
    }
}

/// Page size of x86_64.
pub const PAGE_SIZE: u64 = 4096;
