//! Wrapper for the optional `vma_cherrypick` kernel module (`kmod/` in this
//! repository): `/dev/vma_cherrypick` gives the caller one VMA of a stopped
//! process copy-on-write, the way `fork()` would copy it, without copying
//! its pages.
//!
//! The module is optional. [`is_available`] says whether the device can be
//! used; every entry point returns [`Error::Unavailable`] when it cannot, so
//! a caller falls back to copying memory (e.g. `process_vm_readv`):
//!
//! ```ignore
//! match kmod::cherry_pick(pidfd, vma_start, 0) {
//!     Ok(()) => {}
//!     Err(e) if e.should_fall_back() => copy_vma_the_slow_way()?,
//!     Err(e) => return Err(e.into()),
//! }
//! ```
//!
//! The ABI mirrors `kmod/src/vma_cherrypick.h`; keep the two in sync (the
//! tests below pin the struct layout and the ioctl numbers).
//!
//! This file depends only on `std` and `libc`.

// A complete wrapper of the module's ABI: in the `criu` binary not every item
// has a caller (e.g. the map-file mode), which is not an error.
#![allow(dead_code)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

/// Path of the misc device created by the module.
pub const DEVICE_PATH: &str = "/dev/vma_cherrypick";

/// ABI version this wrapper speaks (`VMA_CP_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

/// Also take VMAs marked `VM_DONTCOPY` (`MADV_DONTFORK`), which fork skips.
pub const FLAG_ALLOW_DONTCOPY: u32 = 1 << 0;
/// Map a caller-given file at the address and copy only the source's
/// anonymous pages into it (see [`Device::cherry_pick_map_file`]).
pub const FLAG_MAP_FILE: u32 = 1 << 1;
/// Every flag the module knows.
pub const ALL_FLAGS: u32 = FLAG_ALLOW_DONTCOPY | FLAG_MAP_FILE;

/// `struct vma_cherrypick_args` of `kmod/src/vma_cherrypick.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmaCherrypickArgs {
    /// In: `size_of::<VmaCherrypickArgs>()`.
    pub size: u32,
    /// In: `FLAG_*`.
    pub flags: u32,
    /// In: pidfd of the stopped source process.
    pub src_pidfd: i32,
    /// In: `FLAG_MAP_FILE` only: file to map, else -1.
    pub file_fd: i32,
    /// In: start address of a VMA in the source.
    pub src_addr: u64,
    /// In: must equal `src_addr`.
    pub dst_addr: u64,
    /// In: `FLAG_MAP_FILE` only: page-aligned offset into `file_fd`.
    pub file_offset: u64,
    /// Out: length of the VMA taken, in bytes.
    pub out_len: u64,
    /// Out: `FLAG_MAP_FILE`: anonymous pages copied; otherwise 0.
    pub out_pages: u64,
}

const IOC_MAGIC: u64 = 0xC7;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IOC_MAGIC << 8) | nr
}

/// `VMA_CP_IOC_VERSION`: `_IOR(0xC7, 0, __u32)`.
pub const IOC_VERSION: u64 = ioc(IOC_READ, 0, std::mem::size_of::<u32>());
/// `VMA_CP_IOC_PICK`: `_IOWR(0xC7, 1, struct vma_cherrypick_args)`.
pub const IOC_PICK: u64 = ioc(
    IOC_READ | IOC_WRITE,
    1,
    std::mem::size_of::<VmaCherrypickArgs>(),
);

/// Why a cherry-pick (or opening the device) failed. Each refusal of the
/// module has its own errno, mapped to its own variant.
#[derive(Debug)]
pub enum Error {
    /// No module loaded / no device node (or no driver behind it).
    Unavailable,
    /// The module speaks another ABI version.
    AbiMismatch { module: u32, wrapper: u32 },
    /// EPERM: the caller lacks CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN.
    PermissionDenied,
    /// EINVAL: bad flags, unaligned address, or destination != source address.
    InvalidArgument,
    /// EBADF: the pidfd (or the file of `FLAG_MAP_FILE`) is not valid.
    BadFd,
    /// ESRCH: the source process is gone or has no memory map any more.
    NoSuchProcess,
    /// ENXIO: no VMA of the source starts at that address.
    NotVmaStart,
    /// EEXIST: something is already mapped in the caller in that range.
    DestinationBusy,
    /// ELOOP: the source is the caller's own memory map.
    SelfSource,
    /// EBUSY: a thread of the source is neither stopped, traced nor frozen.
    SourceNotStopped,
    /// EOPNOTSUPP: a VMA kind fork does not copy (VM_IO, VM_PFNMAP, hugetlb).
    UnsupportedVma,
    /// EACCES: a VM_DONTCOPY VMA without `FLAG_ALLOW_DONTCOPY`.
    DontCopy,
    /// EINTR: interrupted while waiting for a memory-map lock.
    Interrupted,
    /// ENOMEM: out of memory (or over the commit limit).
    OutOfMemory,
    /// Any other errno.
    Os(io::Error),
}

impl Error {
    /// Map an errno returned by `VMA_CP_IOC_PICK`.
    pub fn from_errno(errno: i32) -> Error {
        match errno {
            libc::EPERM => Error::PermissionDenied,
            libc::EINVAL => Error::InvalidArgument,
            libc::EBADF => Error::BadFd,
            libc::ESRCH => Error::NoSuchProcess,
            libc::ENXIO => Error::NotVmaStart,
            libc::EEXIST => Error::DestinationBusy,
            libc::ELOOP => Error::SelfSource,
            libc::EBUSY => Error::SourceNotStopped,
            libc::EOPNOTSUPP => Error::UnsupportedVma,
            libc::EACCES => Error::DontCopy,
            libc::EINTR => Error::Interrupted,
            libc::ENOMEM => Error::OutOfMemory,
            libc::ENOTTY => Error::Unavailable, // something else behind the node
            e => Error::Os(io::Error::from_raw_os_error(e)),
        }
    }

    /// The errno this error stands for, if any.
    pub fn errno(&self) -> Option<i32> {
        Some(match self {
            Error::Unavailable | Error::AbiMismatch { .. } => return None,
            Error::PermissionDenied => libc::EPERM,
            Error::InvalidArgument => libc::EINVAL,
            Error::BadFd => libc::EBADF,
            Error::NoSuchProcess => libc::ESRCH,
            Error::NotVmaStart => libc::ENXIO,
            Error::DestinationBusy => libc::EEXIST,
            Error::SelfSource => libc::ELOOP,
            Error::SourceNotStopped => libc::EBUSY,
            Error::UnsupportedVma => libc::EOPNOTSUPP,
            Error::DontCopy => libc::EACCES,
            Error::Interrupted => libc::EINTR,
            Error::OutOfMemory => libc::ENOMEM,
            Error::Os(e) => return e.raw_os_error(),
        })
    }

    /// True when the caller should take the VMA another way (copying its
    /// pages) rather than fail: the module is absent or incompatible, the
    /// caller is not privileged enough for it, or it refuses this VMA kind.
    pub fn should_fall_back(&self) -> bool {
        matches!(
            self,
            Error::Unavailable
                | Error::AbiMismatch { .. }
                | Error::PermissionDenied
                | Error::UnsupportedVma
                | Error::DontCopy
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable => write!(f, "{DEVICE_PATH} is not available (module not loaded)"),
            Error::AbiMismatch { module, wrapper } => write!(
                f,
                "vma_cherrypick ABI mismatch: module {module}, engine {wrapper}"
            ),
            Error::PermissionDenied => {
                write!(
                    f,
                    "cherry-pick needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN"
                )
            }
            Error::InvalidArgument => write!(f, "invalid cherry-pick arguments"),
            Error::BadFd => write!(f, "bad pidfd or file descriptor"),
            Error::NoSuchProcess => write!(f, "source process is gone"),
            Error::NotVmaStart => write!(f, "no source VMA starts at that address"),
            Error::DestinationBusy => write!(f, "destination range is already mapped"),
            Error::SelfSource => write!(f, "source is the caller's own memory map"),
            Error::SourceNotStopped => write!(f, "source process is not stopped or frozen"),
            Error::UnsupportedVma => {
                write!(
                    f,
                    "VMA kind not copied by fork (VM_IO, VM_PFNMAP or hugetlb)"
                )
            }
            Error::DontCopy => write!(f, "VMA is VM_DONTCOPY (MADV_DONTFORK)"),
            Error::Interrupted => write!(f, "interrupted"),
            Error::OutOfMemory => write!(f, "out of memory"),
            Error::Os(e) => write!(f, "vma_cherrypick: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Os(e) => e,
            Error::Unavailable => io::Error::new(io::ErrorKind::NotFound, e),
            other => match other.errno() {
                Some(errno) => io::Error::from_raw_os_error(errno),
                None => io::Error::other(other),
            },
        }
    }
}

/// What a successful cherry-pick took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Length of the VMA now mapped in the caller, bytes.
    pub len: u64,
    /// `FLAG_MAP_FILE`: anonymous pages copied; otherwise 0.
    pub pages_copied: u64,
}

/// An open `/dev/vma_cherrypick`.
#[derive(Debug)]
pub struct Device {
    file: File,
    abi: u32,
}

impl Device {
    /// Open [`DEVICE_PATH`]. `Ok(None)` when the module is not loaded.
    pub fn open() -> Result<Option<Device>, Error> {
        Self::open_path(Path::new(DEVICE_PATH))
    }

    /// Open the device at `path`. `Ok(None)` when there is nothing usable
    /// there (no node, no driver behind it, or not this driver).
    pub fn open_path(path: &Path) -> Result<Option<Device>, Error> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOENT | libc::ENXIO | libc::ENODEV | libc::ENOTDIR) => Ok(None),
                    _ => Err(Error::Os(e)),
                }
            }
        };
        let mut abi: u32 = 0;
        // SAFETY: `file` is an open descriptor we own for the whole call;
        // IOC_VERSION is `_IOR(.., __u32)`: the kernel writes exactly 4 bytes
        // to the pointer, which points to a live, aligned, writable u32.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), IOC_VERSION as _, &mut abi as *mut u32) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // Not our driver behind that node.
                Some(libc::ENOTTY | libc::EINVAL) => Ok(None),
                _ => Err(Error::Os(e)),
            };
        }
        if abi != ABI_VERSION {
            return Err(Error::AbiMismatch {
                module: abi,
                wrapper: ABI_VERSION,
            });
        }
        Ok(Some(Device { file, abi }))
    }

    /// ABI version reported by the module.
    pub fn abi_version(&self) -> u32 {
        self.abi
    }

    /// Run `VMA_CP_IOC_PICK` with `args` (size is filled in here).
    pub fn pick_raw(&self, args: &mut VmaCherrypickArgs) -> Result<Picked, Error> {
        args.size = std::mem::size_of::<VmaCherrypickArgs>() as u32;
        // SAFETY: the descriptor is open and owned by `self`; IOC_PICK is
        // `_IOWR(.., struct vma_cherrypick_args)` and `args` is a live,
        // exclusively borrowed #[repr(C)] value whose layout matches that
        // struct (pinned by the tests below): the kernel reads and writes
        // exactly size_of::<VmaCherrypickArgs>() bytes there. The module
        // only maps memory into this process at `src_addr`, which the caller
        // asked for and which the kernel checks is not mapped yet.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOC_PICK as _,
                args as *mut VmaCherrypickArgs,
            )
        };
        if r < 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            return Err(Error::from_errno(errno));
        }
        Ok(Picked {
            len: args.out_len,
            pages_copied: args.out_pages,
        })
    }

    /// Duplicate the source VMA starting at `addr` into this process at the
    /// same address, copy-on-write, as fork() would. `flags`: 0 or
    /// [`FLAG_ALLOW_DONTCOPY`].
    pub fn cherry_pick(&self, src_pidfd: RawFd, addr: u64, flags: u32) -> Result<Picked, Error> {
        let mut a = VmaCherrypickArgs {
            flags,
            src_pidfd,
            file_fd: -1,
            src_addr: addr,
            dst_addr: addr,
            ..Default::default()
        };
        self.pick_raw(&mut a)
    }

    /// Map `file` (privately, at `file_offset`, with the source VMA's
    /// protection) at `addr` in this process and copy into it only the
    /// anonymous pages of the source VMA starting at `addr`.
    pub fn cherry_pick_map_file(
        &self,
        src_pidfd: RawFd,
        addr: u64,
        file: RawFd,
        file_offset: u64,
        flags: u32,
    ) -> Result<Picked, Error> {
        let mut a = VmaCherrypickArgs {
            flags: flags | FLAG_MAP_FILE,
            src_pidfd,
            file_fd: file,
            src_addr: addr,
            dst_addr: addr,
            file_offset,
            ..Default::default()
        };
        self.pick_raw(&mut a)
    }
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The process-wide device, opened on first use. `None` when absent or
/// unusable (the reason is kept in the error of [`device`]).
fn shared() -> &'static Result<Device, Error> {
    static DEV: OnceLock<Result<Device, Error>> = OnceLock::new();
    DEV.get_or_init(|| match Device::open() {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(Error::Unavailable),
        Err(e) => Err(e),
    })
}

/// The process-wide device, or `None` when the module is absent/unusable.
pub fn device() -> Option<&'static Device> {
    shared().as_ref().ok()
}

/// Whether `/dev/vma_cherrypick` is present and speaks our ABI. Checked once
/// per process; the answer is cached.
pub fn is_available() -> bool {
    device().is_some()
}

/// Duplicate the VMA of the stopped process `src_pidfd` that starts at
/// `addr` into this process at the same address, copy-on-write (flags: 0 or
/// [`FLAG_ALLOW_DONTCOPY`]). [`Error::Unavailable`] (or another error with
/// [`Error::should_fall_back`]) when the caller should copy instead.
pub fn cherry_pick(src_pidfd: RawFd, addr: u64, flags: u32) -> Result<(), Error> {
    let dev = match shared() {
        Ok(d) => d,
        Err(Error::AbiMismatch { module, wrapper }) => {
            return Err(Error::AbiMismatch {
                module: *module,
                wrapper: *wrapper,
            })
        }
        Err(_) => return Err(Error::Unavailable),
    };
    dev.cherry_pick(src_pidfd, addr, flags).map(|_| ())
}

/// How [`take_anon_vma`] gave this process the VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Shared copy-on-write through the module, no page copied.
    CherryPicked,
    /// Copied with `process_vm_readv` into a fresh private anonymous mapping
    /// (module absent, or it declined: see [`Error::should_fall_back`]).
    Copied,
}

/// Give this process the private anonymous VMA `[addr, addr + len)` of the
/// stopped process `src_pid` (`src_pidfd` refers to it) at the same address:
/// copy-on-write through the module when it is available, else by copying.
///
/// The fallback maps `len` bytes of private anonymous memory at `addr`
/// (`MAP_FIXED_NOREPLACE`: the range must be free), copies the source's
/// contents with `process_vm_readv` (needs ptrace access to the source) and
/// applies `prot` (`PROT_*`). `flags` go to the module only.
pub fn take_anon_vma(
    src_pid: libc::pid_t,
    src_pidfd: RawFd,
    addr: u64,
    len: u64,
    prot: i32,
    flags: u32,
) -> Result<Taken, Error> {
    match cherry_pick(src_pidfd, addr, flags) {
        Ok(()) => return Ok(Taken::CherryPicked),
        Err(e) if e.should_fall_back() => {}
        Err(e) => return Err(e),
    }
    copy_anon_vma(src_pid, addr, len, prot)?;
    Ok(Taken::Copied)
}

/// The fallback of [`take_anon_vma`]: map and copy with `process_vm_readv`.
pub fn copy_anon_vma(src_pid: libc::pid_t, addr: u64, len: u64, prot: i32) -> Result<(), Error> {
    let ulen = usize::try_from(len).map_err(|_| Error::InvalidArgument)?;
    if ulen == 0 || addr & 0xfff != 0 {
        return Err(Error::InvalidArgument);
    }
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no
    // memory this program uses can be affected; the result is checked.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            ulen,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(Error::from_errno(errno));
    }
    let unmap = |p: *mut libc::c_void| {
        // SAFETY: `p`/`ulen` is the mapping created just above, which no
        // reference points into.
        unsafe { libc::munmap(p, ulen) };
    };
    if p as u64 != addr {
        // A kernel older than 4.17 treats MAP_FIXED_NOREPLACE as a hint.
        unmap(p);
        return Err(Error::DestinationBusy);
    }
    let mut done = 0usize;
    while done < ulen {
        let local = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: ulen - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: ulen - done,
        };
        // SAFETY: `local` lies inside the writable mapping created above and
        // owned by this function; `remote` is only read, in another process.
        let n = unsafe { libc::process_vm_readv(src_pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            let err = if n == 0 {
                Error::Os(io::Error::from_raw_os_error(libc::EFAULT))
            } else {
                let errno = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
                Error::from_errno(errno)
            };
            unmap(p);
            return Err(err);
        }
        done += n as usize;
    }
    // SAFETY: changes the protection of our own mapping only.
    if unsafe { libc::mprotect(p, ulen, prot) } != 0 {
        let e = io::Error::last_os_error();
        unmap(p);
        return Err(Error::Os(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn args_layout_matches_uapi_header() {
        // Values from kmod/src/vma_cherrypick.h compiled with gcc on x86_64.
        assert_eq!(size_of::<VmaCherrypickArgs>(), 56);
        assert_eq!(align_of::<VmaCherrypickArgs>(), 8);
        assert_eq!(offset_of!(VmaCherrypickArgs, size), 0);
        assert_eq!(offset_of!(VmaCherrypickArgs, flags), 4);
        assert_eq!(offset_of!(VmaCherrypickArgs, src_pidfd), 8);
        assert_eq!(offset_of!(VmaCherrypickArgs, file_fd), 12);
        assert_eq!(offset_of!(VmaCherrypickArgs, src_addr), 16);
        assert_eq!(offset_of!(VmaCherrypickArgs, dst_addr), 24);
        assert_eq!(offset_of!(VmaCherrypickArgs, file_offset), 32);
        assert_eq!(offset_of!(VmaCherrypickArgs, out_len), 40);
        assert_eq!(offset_of!(VmaCherrypickArgs, out_pages), 48);
    }

    #[test]
    fn ioctl_numbers_match_uapi_header() {
        assert_eq!(IOC_VERSION, 0x8004_c700);
        assert_eq!(IOC_PICK, 0xc038_c701);
    }

    #[test]
    fn errno_mapping_round_trips() {
        for e in [
            libc::EPERM,
            libc::EINVAL,
            libc::EBADF,
            libc::ESRCH,
            libc::ENXIO,
            libc::EEXIST,
            libc::ELOOP,
            libc::EBUSY,
            libc::EOPNOTSUPP,
            libc::EACCES,
            libc::EINTR,
            libc::ENOMEM,
            libc::EIO,
        ] {
            assert_eq!(Error::from_errno(e).errno(), Some(e), "errno {e}");
        }
        assert!(matches!(
            Error::from_errno(libc::ENOTTY),
            Error::Unavailable
        ));
        assert!(Error::Unavailable.should_fall_back());
        assert!(Error::UnsupportedVma.should_fall_back());
        assert!(!Error::SourceNotStopped.should_fall_back());
        assert!(!Error::DestinationBusy.should_fall_back());
    }

    #[test]
    fn absent_device_is_none() {
        let p = Path::new("/nonexistent-dir/vma_cherrypick");
        assert!(matches!(Device::open_path(p), Ok(None)));
    }

    #[test]
    fn other_driver_is_none() {
        // /dev/null answers our VERSION ioctl with ENOTTY: not our device.
        assert!(matches!(
            Device::open_path(Path::new("/dev/null")),
            Ok(None)
        ));
    }

    #[test]
    fn falls_back_cleanly_when_absent() {
        if Path::new(DEVICE_PATH).exists() {
            test_support::skip(format!("{DEVICE_PATH} exists (module loaded): the fallback is not taken here"));
            return;
        }
        assert!(!is_available());
        let e = cherry_pick(-1, 0x1000, 0).unwrap_err();
        assert!(matches!(e, Error::Unavailable));
        assert!(e.should_fall_back());
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn take_anon_vma_falls_back_to_copying() {
        if Path::new(DEVICE_PATH).exists() {
            // would cherry-pick instead: covered by kmod/test.sh
            test_support::skip(format!("{DEVICE_PATH} exists (module loaded): the fallback is not taken here"));
            return;
        }
        const ADDR: u64 = 0x2500_0000_0000;
        const LEN: usize = 8 * 4096;
        // SAFETY: the child only makes raw libc calls (no allocation, no
        // locks) before stopping itself; the fixed range is unused.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; the child owns its copy of the address space.
            unsafe {
                let p = libc::mmap(
                    ADDR as *mut libc::c_void,
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                );
                if p as u64 != ADDR {
                    libc::_exit(3);
                }
                for i in 0..LEN / 4096 {
                    *(p as *mut u8).add(i * 4096 + 1) = i as u8 + 1;
                }
                libc::raise(libc::SIGSTOP);
                libc::_exit(0);
            }
        }
        assert!(pid > 0);
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
        assert!(libc::WIFSTOPPED(st), "child status {st:#x}");
        // SAFETY: pidfd_open on our child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
        let r = take_anon_vma(pid, pidfd, ADDR, LEN as u64, libc::PROT_READ, 0);
        // SAFETY: kill + reap our own child, close our pidfd.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(pidfd);
        }
        if let Err(Error::PermissionDenied | Error::Os(_)) = &r {
            // A sandbox that forbids process_vm_readv (seccomp, yama): nothing
            // to check here; kmod/test.sh covers this path in its guest.
            test_support::skip(format!("process_vm_readv not permitted here: {r:?}"));
            return;
        }
        assert_eq!(r.unwrap(), Taken::Copied);
        for i in 0..LEN / 4096 {
            // SAFETY: take_anon_vma mapped LEN readable bytes at ADDR.
            let b = unsafe { *((ADDR as usize + i * 4096 + 1) as *const u8) };
            assert_eq!(b, i as u8 + 1);
        }
        // The range is taken now: a second copy must refuse, not clobber.
        let e = copy_anon_vma(pid, ADDR, LEN as u64, libc::PROT_READ).unwrap_err();
        assert!(matches!(e, Error::DestinationBusy), "{e:?}");
        // SAFETY: unmapping the mapping this test created.
        unsafe { libc::munmap(ADDR as *mut libc::c_void, LEN) };
    }
}
