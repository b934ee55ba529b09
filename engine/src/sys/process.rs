//! Process creation and control: clone3 with set_tid, signals, prctl,
//! rt_sigaction with raw kernel structs, pidfd.

use super::{last_err, Pid};
use std::io;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What a fork-like clone returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    Parent(Pid),
    Child,
}

/// clone3(2) without CLONE_VM (fork semantics): `flags` (e.g. CLONE_NEWPID),
/// `set_tid` the wanted pid per pid-namespace level, innermost first.
///
/// The calling process must be single-threaded: the child continues in a
/// copy of this address space with only the calling thread.
pub fn fork3(flags: u64, set_tid: &[Pid], exit_signal: i32) -> io::Result<Forked> {
    assert_eq!(flags & libc::CLONE_VM as u64, 0, "fork3 is fork-like only");
    let args = CloneArgs {
        flags,
        exit_signal: exit_signal as u64,
        set_tid: if set_tid.is_empty() { 0 } else { set_tid.as_ptr() as u64 },
        set_tid_size: set_tid.len() as u64,
        ..Default::default()
    };
    // SAFETY: without CLONE_VM the child gets its own copy of the address
    // space, so both sides continue on their own stacks exactly like fork();
    // `args` and `set_tid` are valid for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match r {
        -1 => Err(last_err()),
        0 => Ok(Forked::Child),
        p => Ok(Forked::Parent(p as Pid)),
    }
}

/// Size of `struct clone_args` as the kernel takes it (for injected clone3).
pub const CLONE_ARGS_SIZE: usize = std::mem::size_of::<CloneArgs>();

/// Encode a `struct clone_args` for a thread-creating clone3 to be run in
/// another process (all pointers are addresses in that process).
pub fn clone_args_bytes(flags: u64, set_tid_ptr: u64, set_tid_size: u64) -> Vec<u8> {
    let words = [flags, 0, 0, 0, 0, 0, 0, 0, set_tid_ptr, set_tid_size, 0];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// kill(2).
pub fn kill(pid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    if unsafe { libc::kill(pid, sig) } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// _exit(2) of the current process (used by a forked child on error).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: terminates the process; no invariants to uphold.
    unsafe { libc::_exit(code) }
}

/// Kernel `struct sigaction` (x86_64 rt_sigaction ABI).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// rt_sigaction(2) in the calling process with a raw kernel struct; the
/// handler address is not interpreted (a forked restore child sets the
/// handlers of the image before its memory is replaced).
pub fn set_sigaction_raw(sig: i32, act: &KSigaction) -> io::Result<()> {
    // SAFETY: `act` points to a valid kernel sigaction; oldact is NULL.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act as *const KSigaction, 0usize, 8usize) };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// Block every signal in the calling thread (rt_sigprocmask).
pub fn block_all_signals() -> io::Result<()> {
    let all: u64 = !0;
    // SAFETY: valid pointer to an 8-byte set; oldset NULL.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &all as *const u64, 0usize, 8usize) };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// prctl(2) with integer arguments.
pub fn prctl(op: i32, a2: u64, a3: u64, a4: u64, a5: u64) -> io::Result<i32> {
    // SAFETY: only integer-argument prctl ops are passed through here.
    let r = unsafe { libc::prctl(op, a2, a3, a4, a5) };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

/// Thin raw syscall for integer-only calls in the current process.
pub fn syscall6(nr: i64, a: [u64; 6]) -> io::Result<u64> {
    // SAFETY: callers pass only syscalls whose arguments are integers or
    // pointers into live buffers they own for the duration of the call.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r as u64)
    }
}

/// dup2(2)/close(2)/setsid(2)/umask(2)/personality(2) helpers for the restore child.
pub fn dup2(old: i32, new: i32) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    if unsafe { libc::dup2(old, new) } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

pub fn close(fd: i32) {
    // SAFETY: closing an fd number we own by construction (restore child).
    unsafe { libc::close(fd) };
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: integer-only syscall.
    if unsafe { libc::setsid() } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

pub fn umask(m: u32) {
    // SAFETY: integer-only syscall.
    unsafe { libc::umask(m) };
}

pub fn personality(p: u64) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    if unsafe { libc::personality(p as libc::c_ulong) } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// clock_gettime(2) of `clock` in the calling process: (sec, nsec).
pub fn clock_gettime(clock: libc::clockid_t) -> io::Result<(u64, u64)> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } < 0 {
        return Err(last_err());
    }
    Ok((ts.tv_sec as u64, ts.tv_nsec as u64))
}

/// kcmp(2): do `pid1` and `pid2` share the kernel object of `kind`
/// (KCMP_VM, KCMP_FILES, ...)?
pub fn kcmp_same(pid1: Pid, pid2: Pid, kind: i32) -> io::Result<bool> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, 0usize, 0usize) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r == 0)
}

/// pidfd_open(2).
pub fn pidfd_open(pid: Pid) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: the kernel returned a fresh fd we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// Is the calling process single-threaded (a precondition of [`fork3`])?
pub fn is_single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").map(|d| d.count() == 1).unwrap_or(false)
}

/// pause(2) forever (a restore child waiting to be seized).
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: no arguments; returns only on signal delivery.
        unsafe { libc::pause() };
    }
}

/// pipe2(O_CLOEXEC) as owned fds (read, write).
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut p = [0i32; 2];
    // SAFETY: `p` is a valid out-array of two ints.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(last_err());
    }
    // SAFETY: the kernel just returned these two fresh fds to us.
    Ok(unsafe { (std::os::fd::OwnedFd::from_raw_fd(p[0]), std::os::fd::OwnedFd::from_raw_fd(p[1])) })
}

/// Raw pipe2 returning plain fd numbers (restore child: fds it then places).
pub fn pipe_raw() -> io::Result<[i32; 2]> {
    let mut p = [0i32; 2];
    // SAFETY: `p` is a valid out-array of two ints.
    if unsafe { libc::pipe2(p.as_mut_ptr(), 0) } < 0 {
        return Err(last_err());
    }
    Ok(p)
}

/// fcntl(F_SETFD) — set or clear FD_CLOEXEC.
pub fn set_cloexec(fd: i32, on: bool) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// setrlimit(2) via prlimit64 on ourselves.
pub fn set_rlimit(res: u32, cur: u64, max: u64) -> io::Result<()> {
    let l = libc::rlimit64 { rlim_cur: cur, rlim_max: max };
    // SAFETY: `l` is a valid rlimit64; old_limit NULL.
    if unsafe { libc::prlimit64(0, res as _, &l, std::ptr::null_mut()) } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// getrlimit(2).
pub fn get_rlimit(res: u32) -> io::Result<(u64, u64)> {
    let mut l = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `l` is a valid out-parameter.
    if unsafe { libc::prlimit64(0, res as _, std::ptr::null(), &mut l) } < 0 {
        Err(last_err())
    } else {
        Ok((l.rlim_cur, l.rlim_max))
    }
}

/// Write all of `buf` to a raw fd (restore child reporting to the engine).
pub fn write_fd(fd: i32, buf: &[u8]) {
    // SAFETY: `buf` is valid for reads of its length.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Copy `buf.len()` bytes at `remote` in `pid`'s address space into `buf`
/// (process_vm_readv, one iovec each side); the count read, which stops
/// short at the first page the caller may not read (PROT_NONE, unmapped).
pub fn vm_read(pid: Pid, remote: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let rem = libc::iovec { iov_base: remote as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, writable for its whole length and
    // borrowed mutably for the call; `rem` names memory of another process,
    // which the kernel checks and never dereferences in ours.
    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &rem, 1, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// A duplicate of fd `target_fd` of the process behind `pidfd`
/// (pidfd_getfd; needs ptrace access to it), close-on-exec.
pub fn pidfd_getfd(pidfd: &std::os::fd::OwnedFd, target_fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain syscall on a borrowed pidfd; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// Move up to `len` bytes from pipe `from` into `to` at file offset `*off`
/// (splice; `*off` advances). The count moved, 0 at the pipe's end.
pub fn splice_to_file(from: i32, to: i32, off: &mut i64, len: usize) -> io::Result<usize> {
    // SAFETY: `off` is a valid, exclusively borrowed loff_t for the call;
    // the input offset is NULL (a pipe has none).
    let r = unsafe { libc::splice(from, std::ptr::null_mut(), to, off as *mut i64, len, libc::SPLICE_F_MOVE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// CPU mask (1024 CPUs) of thread `tid` (0: the calling thread).
pub fn sched_getaffinity(tid: Pid) -> io::Result<[u64; 16]> {
    let mut m = [0u64; 16];
    // SAFETY: the kernel writes at most 128 bytes, the size of `m`.
    let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, tid, std::mem::size_of_val(&m), m.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(m)
}

/// Set the CPU mask of thread `tid` (0: the calling thread).
pub fn sched_setaffinity(tid: Pid, mask: &[u64; 16]) -> io::Result<()> {
    // SAFETY: the kernel reads 128 bytes, the size of `mask`.
    let r = unsafe { libc::syscall(libc::SYS_sched_setaffinity, tid, std::mem::size_of_val(mask), mask.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU the calling thread runs on.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments, no memory.
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
}

/// The mask of CPU `c` alone.
pub fn one_cpu(c: usize) -> [u64; 16] {
    let mut m = [0u64; 16];
    if c < 1024 {
        m[c / 64] = 1 << (c % 64);
    }
    m
}

/// The calling thread pinned to the CPU it runs on, for as long as this
/// lives: a ptrace-driven exchange with a thread pinned to the same CPU is
/// then a local switch per stop, not a wakeup of another (idle) vCPU
/// (0.05 ms instead of 0.27 ms per injected call on the 2-vCPU VM). Its
/// own CPU mask comes back on drop.
#[derive(Debug)]
pub struct PinnedHere {
    saved: [u64; 16],
    cpu: Option<usize>,
}

impl PinnedHere {
    /// Pin; when the mask can't be read or set, nothing is pinned and
    /// [`cpu`](Self::cpu) is `None` (the exchange is just slower).
    #[allow(clippy::new_without_default)] // pinning is an action, not a default value
    pub fn new() -> PinnedHere {
        let Ok(saved) = sched_getaffinity(0) else {
            return PinnedHere { saved: [!0; 16], cpu: None };
        };
        let cpu = current_cpu().filter(|&c| c < 1024 && saved[c / 64] & (1 << (c % 64)) != 0);
        let cpu = cpu.filter(|&c| sched_setaffinity(0, &one_cpu(c)).is_ok());
        PinnedHere { saved, cpu }
    }

    /// The CPU pinned to, if any.
    pub fn cpu(&self) -> Option<usize> {
        self.cpu
    }

    /// The calling thread's mask before it was pinned.
    pub fn saved(&self) -> [u64; 16] {
        self.saved
    }

    /// Run `f` on the calling thread's own CPUs (threads it starts inherit
    /// them), pinned again after.
    pub fn released<R>(&self, f: impl FnOnce() -> R) -> R {
        let Some(c) = self.cpu else { return f() };
        let _ = sched_setaffinity(0, &self.saved);
        let r = f();
        let _ = sched_setaffinity(0, &one_cpu(c));
        r
    }
}

impl Drop for PinnedHere {
    fn drop(&mut self) {
        if self.cpu.is_some() {
            let _ = sched_setaffinity(0, &self.saved);
        }
    }
}

/// Close every fd except those in `keep` (close_range over the gaps).
pub fn close_all_except(keep: &[i32]) {
    let mut k: Vec<i32> = keep.to_vec();
    k.sort_unstable();
    let mut from: u32 = 0;
    for &fd in &k {
        let fd = fd as u32;
        if fd > from {
            // SAFETY: integer-only syscall on our own fd table.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// kcmp(KCMP_FILE) of fds `a` and `b` of `pid`: how their open file
/// descriptions order (`Equal`: one shared description). The kernel orders
/// them by an obfuscated pointer, consistently within one boot.
pub fn kcmp_file_order(pid: Pid, a: i32, b: i32) -> io::Result<std::cmp::Ordering> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a as usize, b as usize) };
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        r if r < 0 => Err(last_err()),
        r => Err(io::Error::other(format!("kcmp(KCMP_FILE) gave no ordering ({r})"))),
    }
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE: `None` when there is no such
/// region at or after `off` (ENXIO).
pub fn seek_data_hole(fd: std::os::fd::BorrowedFd<'_>, off: u64, whence: i32) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    // SAFETY: integer-only syscall on a borrowed, open fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = last_err();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

/// fcntl(F_GETPIPE_SZ) or, with `set`, F_SETPIPE_SZ on a pipe or FIFO.
pub fn pipe_size(fd: std::os::fd::BorrowedFd<'_>, set: Option<u32>) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: integer-only fcntl on a borrowed, open fd.
    let r = unsafe {
        match set {
            None => libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ),
            Some(n) => libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, n as libc::c_int),
        }
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r as u32)
}

/// poll(2) `fd` for input (or hang-up) for at most `timeout_ms`: whether it
/// became ready.
pub fn poll_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = last_err();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// fstat(2) of an fd of this process: (st_mode, st_size).
pub fn fstat_mode_size(fd: i32) -> io::Result<(u32, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a writable stat buffer; the kernel fills it on success.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } < 0 {
        return Err(last_err());
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let st = unsafe { st.assume_init() };
    Ok((st.st_mode, st.st_size as u64))
}
