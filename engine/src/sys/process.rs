//! Process creation and control: clone3 with set_tid, signals, prctl,
//! rt_sigaction with raw kernel structs, pidfd.
//!
//! What may only be done in the restore child (rewriting its fd table by
//! number, installing the image's signal handlers) is safe only there:
//! [`fork3`] runs the child's code as a closure that never returns, marks the
//! process as its child, and those functions refuse to run anywhere else.
//! Everything else here is safe in any process.

use super::{last_err, Pid};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Set in the child of [`fork3`] (and only there): this process is
/// single-threaded, and the code running in it is the closure given to
/// `fork3`, which never returns to the frames that existed before the fork.
static IN_FORK3_CHILD: AtomicBool = AtomicBool::new(false);

/// Whether the calling process is the child of a [`fork3`].
pub fn in_fork3_child() -> bool {
    IN_FORK3_CHILD.load(Ordering::Relaxed)
}

/// Refuse `what` outside the child of [`fork3`]: the functions that
/// rewrite the fd table by number or install raw signal handlers are sound
/// only there. Calling them elsewhere is a bug in the engine, not an error
/// of its input, so this panics.
fn only_in_fork3_child(what: &str) {
    assert!(in_fork3_child(), "{what} is only allowed in the child of fork3 (single-threaded, owning its whole fd table)");
}

/// clone3(2) without CLONE_VM (fork semantics): `flags` (e.g. CLONE_NEWPID),
/// `set_tid` the wanted pid per pid-namespace level, innermost first. The
/// child runs `child` and never comes back: it cannot return (its type is
/// `Infallible`), and a panic in it ends the child with exit status 70
/// instead of unwinding into the caller's frames, whose values (fds, locks,
/// buffers) belong to the parent. Returns the child's pid in the parent.
///
/// Refused with an error naming the thread count when the calling process
/// has more than one thread: the child would continue with
/// only the calling thread, and whatever lock another thread held
/// (malloc's, the logger's) would never be released there.
pub fn fork3(flags: u64, set_tid: &[Pid], exit_signal: i32, child: impl FnOnce() -> std::convert::Infallible) -> io::Result<Pid> {
    assert_eq!(flags & libc::CLONE_VM as u64, 0, "fork3 is fork-like only");
    // Only a thread of this process can start another one, and this one is
    // busy here: a single-threaded process stays so until clone3.
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!("fork3: the calling process has {threads} threads; a fork-like clone needs exactly one")));
    }
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
        0 => {
            IN_FORK3_CHILD.store(true, Ordering::Relaxed);
            let never = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child));
            // Only a panic gets here (`Infallible` has no value).
            drop(never);
            exit_now(70)
        }
        p => Ok(p as Pid),
    }
}

/// Threads of the calling process (`Threads:` of /proc/self/status).
fn thread_count() -> io::Result<usize> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
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

/// rt_sigaction(2) in the calling process with a raw kernel struct whose
/// handler address is not interpreted: the restore child sets the handlers
/// of the image before its memory is replaced by the image's. Such a
/// handler must never run on the engine's memory, so this is refused (a
/// panic: a bug) outside the child of [`fork3`] and refused (an error)
/// unless every signal is blocked in it (the child is single-threaded, so
/// nothing is delivered; a fault with its signal blocked kills it with the
/// default action). The signals are unblocked only by the engine, through
/// ptrace, after the image's memory is in place.
pub fn set_sigaction_raw(sig: i32, act: &KSigaction) -> io::Result<()> {
    only_in_fork3_child("set_sigaction_raw");
    let blocked = blocked_signals()?;
    // SIGKILL and SIGSTOP cannot be blocked, and have no handlers.
    let must = !((1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1)));
    if blocked & must != must {
        return Err(io::Error::other(format!("rt_sigaction {sig}: not every signal is blocked (mask {blocked:#x}); a raw handler could run on this memory")));
    }
    // SAFETY: `act` points to a valid kernel sigaction; oldact is NULL. The
    // handler it names cannot run here: every signal is blocked in this
    // single-threaded process (checked above), and the engine unblocks them
    // only after the image's memory, which the handler belongs to, is in place.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act as *const KSigaction, 0usize, 8usize) };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// The calling thread's blocked-signal mask (rt_sigprocmask, no change).
pub fn blocked_signals() -> io::Result<u64> {
    let mut old: u64 = 0;
    // SAFETY: set NULL (nothing changes); `old` is a valid 8-byte out-parameter.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, std::ptr::null::<u64>(), &mut old as *mut u64, 8usize) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(old)
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

/// prctl(2) ops whose arguments are all integers (nothing read or written
/// through a pointer, nothing of this process's memory layout changed).
const PRCTL_INTEGER_OPS: &[i32] = &[
    libc::PR_SET_PDEATHSIG,
    libc::PR_SET_CHILD_SUBREAPER,
    libc::PR_SET_DUMPABLE,
    libc::PR_GET_DUMPABLE,
    libc::PR_SET_KEEPCAPS,
    libc::PR_GET_KEEPCAPS,
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_GET_NO_NEW_PRIVS,
    libc::PR_SET_THP_DISABLE,
    libc::PR_GET_THP_DISABLE,
    libc::PR_SET_TIMERSLACK,
    libc::PR_GET_TIMERSLACK,
    libc::PR_SET_SECUREBITS,
    libc::PR_GET_SECUREBITS,
    libc::PR_CAPBSET_READ,
    libc::PR_CAPBSET_DROP,
];

/// prctl(2) with integer arguments only: an op that reads or writes memory
/// through an argument (PR_SET_NAME, PR_GET_PDEATHSIG, PR_SET_MM, ...) is
/// refused with `EINVAL`; those have typed wrappers ([`set_comm`],
/// [`mm_map_size`]).
pub fn prctl(op: i32, a2: u64, a3: u64, a4: u64, a5: u64) -> io::Result<i32> {
    if !PRCTL_INTEGER_OPS.contains(&op) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("prctl op {op} is not an integer-only op; use its typed wrapper")));
    }
    // SAFETY: `op` is one of PRCTL_INTEGER_OPS: the kernel takes the other
    // arguments as integers and touches no memory of ours.
    let r = unsafe { libc::prctl(op, a2, a3, a4, a5) };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

/// PR_SET_NAME: the calling thread's comm (the kernel keeps 15 bytes).
pub fn set_comm(name: &CStr) -> io::Result<()> {
    // SAFETY: the kernel reads a NUL-terminated string of at most 16 bytes
    // from `name`, which is NUL-terminated and lives across the call.
    let r = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// PR_SET_MM(PR_SET_MM_MAP_SIZE): the size of `struct prctl_mm_map` the
/// kernel expects (nothing is changed; it answers whether PR_SET_MM_MAP is there).
pub fn mm_map_size() -> io::Result<u32> {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one u32 to arg3, a valid, aligned
    // out-parameter living across the call; it changes nothing else.
    let r = unsafe {
        libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP_SIZE as libc::c_ulong, &mut size as *mut u32 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(size)
}

/// A raw syscall in the calling process.
///
/// ```compile_fail
/// // not callable without `unsafe`:
/// engine::sys::process::syscall6(39 /* getpid */, [0; 6]).unwrap();
/// ```
///
/// # Safety
/// `nr` and `a` must make a call that is sound here: every pointer argument
/// points to memory valid for what the kernel reads or writes there, for the
/// duration of the call; no fd owned by something else is closed or
/// replaced; the process's memory layout, signal handlers and threads are
/// changed only as the caller's own invariants allow. Prefer the typed
/// wrappers of this module, which are safe.
pub unsafe fn syscall6(nr: i64, a: [u64; 6]) -> io::Result<u64> {
    // SAFETY: the caller upholds this function's contract for `nr` and `a`.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r as u64)
    }
}

/// dup2(2) in the restore child, which lays out its fd table by number:
/// fd `new` is replaced, whatever it was. Refused (a panic: a bug) outside
/// the child of [`fork3`], where `new` may belong to a `File` or an
/// `OwnedFd` that would then read, write or close another file.
pub fn dup2(old: i32, new: i32) -> io::Result<()> {
    only_in_fork3_child("dup2");
    // SAFETY: the child of fork3 owns every fd of its table: the values that
    // held fds before the fork live in frames it never returns to (fork3 runs
    // it as a closure that cannot return and ends the process on a panic).
    if unsafe { libc::dup2(old, new) } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// close(2) of fd number `fd` in the restore child. Refused (a panic: a
/// bug) outside the child of [`fork3`]; elsewhere, own the fd as an
/// `OwnedFd` and drop it.
pub fn close(fd: i32) {
    only_in_fork3_child("close");
    // SAFETY: as in `dup2`: in the child of fork3 no live value owns `fd`.
    unsafe { libc::close(fd) };
}

/// kcmp(KCMP_FILE): are fd `fd1` of `pid1` and fd `fd2` of `pid2` one open
/// file description?
pub fn kcmp_file(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> io::Result<bool> {
    const KCMP_FILE: libc::c_int = 0;
    // SAFETY: integer-only syscall; it only compares kernel objects.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1 as libc::c_ulong, fd2 as libc::c_ulong) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r == 0)
}

/// fcntl(2) commands whose argument is an integer (none is a pointer).
const FCNTL_INTEGER_CMDS: &[i32] = &[
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_GETPIPE_SZ,
    libc::F_SETPIPE_SZ,
    libc::F_GET_SEALS,
    libc::F_ADD_SEALS,
];

/// fcntl(2) with an integer argument on fd number `fd`: F_GETFD, F_SETFD,
/// F_GETFL, F_SETFL, F_GETPIPE_SZ, F_SETPIPE_SZ, F_GET_SEALS, F_ADD_SEALS;
/// any other command is
/// refused with `EINVAL` (it may take a pointer, or make or close fds).
pub fn fcntl_int(fd: i32, cmd: i32, arg: u64) -> io::Result<u64> {
    if !FCNTL_INTEGER_CMDS.contains(&cmd) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fcntl command {cmd} is not an integer-argument one")));
    }
    // SAFETY: `cmd` takes an integer argument (checked above): no memory is
    // passed, and no fd is created or closed.
    let r = unsafe { libc::fcntl(fd, cmd, arg as libc::c_ulong) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r as u64)
}

/// tee(2): duplicate up to `len` bytes queued in pipe `from` into pipe `to`
/// without consuming them. The count duplicated.
pub fn tee(from: impl AsFd, to: impl AsFd, len: usize, flags: u32) -> io::Result<usize> {
    // SAFETY: two borrowed fds and integers; no memory is passed.
    let r = unsafe { libc::tee(from.as_fd().as_raw_fd(), to.as_fd().as_raw_fd(), len, flags) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r as usize)
}

/// Whether userfaultfd(2) with `flags` works here: one is created and
/// closed at once. The engine never keeps a userfaultfd of its own mm (one
/// it could register its own memory with, which `uffd::copy` would then
/// write into): the restore fill uses the target's, taken by pidfd_getfd
/// (tfork's parking fill makes one for its own regions, private to
/// `park::fill_all` and closed before it returns).
pub fn probe_userfaultfd(flags: i32) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: the kernel returned a fresh fd that nothing else owns; it is
    // closed on drop, right here.
    drop(unsafe { OwnedFd::from_raw_fd(r as i32) });
    Ok(())
}

/// chroot(2).
pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    if unsafe { libc::chroot(path.as_ptr()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// chdir(2).
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    if unsafe { libc::chdir(path.as_ptr()) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// open(2) of `path` with `flags` (mode 0 if they create): the new fd's
/// number, which the caller (the restore child, placing fds by number) owns.
pub fn open_raw(path: &CStr, flags: i32) -> io::Result<i32> {
    // SAFETY: `path` is NUL-terminated and lives across the call; the mode
    // argument is always passed.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(last_err());
    }
    Ok(fd)
}

/// lseek(2) of fd number `fd` to `pos` (SEEK_SET).
pub fn seek_to(fd: i32, pos: u64) -> io::Result<()> {
    let pos = i64::try_from(pos).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("offset {pos} is past i64")))?;
    // SAFETY: integer-only syscall.
    if unsafe { libc::lseek(fd, pos, libc::SEEK_SET) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// write(2) of `buf` to fd number `fd`: the count written.
pub fn write_raw(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length across the call.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r as usize)
}

/// read(2) from fd number `fd` into `buf`: the count read.
pub fn read_raw(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length across the call.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r as usize)
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

/// kcmp(2) of a whole object kind (`KCMP_VM`, `KCMP_FILES`, ...) as an
/// ordering: the kernel orders the objects by their (obfuscated) pointers,
/// a total order, so object sets can be kept sorted and binary searched.
pub fn kcmp_order(pid1: Pid, pid2: Pid, kind: i32) -> io::Result<std::cmp::Ordering> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, 0usize, 0usize) };
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        r if r < 0 => Err(last_err()),
        r => Err(io::Error::other(format!("kcmp({pid1}, {pid2}, {kind}) returned {r}"))),
    }
}

/// ioprio_get(IOPRIO_WHO_PROCESS, tid): thread `tid`'s I/O priority.
pub fn ioprio_get(tid: Pid) -> io::Result<u32> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(r as u32)
}

/// IOPRIO_WHO_PROCESS: ioprio_get/set of one thread.
pub const IOPRIO_WHO_PROCESS: i32 = 1;

/// The CPUs online on this machine (/sys/devices/system/cpu/online) as
/// 64-bit words of a mask.
pub fn online_cpus() -> io::Result<Vec<u64>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("/sys/devices/system/cpu/online: {:?}", text.trim()));
    let mut words: Vec<u64> = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b || b >= 8192 {
            return Err(bad());
        }
        for c in a..=b {
            if words.len() <= c / 64 {
                words.resize(c / 64 + 1, 0);
            }
            words[c / 64] |= 1 << (c % 64);
        }
    }
    Ok(words)
}

/// pidfd_open(2).
pub fn pidfd_open(pid: Pid) -> io::Result<std::os::fd::OwnedFd> {
    pidfd_open_flags(pid, 0)
}

/// pidfd_open(2) with `flags` (PIDFD_NONBLOCK, PIDFD_THREAD).
pub fn pidfd_open_flags(pid: Pid, flags: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
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

/// [`is_single_threaded`], giving threads that were joined a moment
/// (up to 200 ms) to be gone: a joined thread's task may still be listed
/// for a few microseconds after its join returned (the join waits for the
/// kernel to clear its tid, which happens before the task is released).
pub fn single_threaded_soon() -> bool {
    let t0 = std::time::Instant::now();
    while !is_single_threaded() {
        if t0.elapsed() > std::time::Duration::from_millis(200) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    true
}

/// pause(2) forever (a restore child waiting to be seized).
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: no arguments; returns only on signal delivery.
        unsafe { libc::pause() };
    }
}

/// open(2) of `path` with `flags` (mode 0 if they create), owned.
pub fn open_owned(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let fd = open_raw(path, flags)?;
    // SAFETY: the kernel just created fd `fd` for this process; nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Take fd `n`, handed down open by the process that executed us and
/// named on our command line, as ours (made close-on-exec). For a
/// process's start-up only (the `criu` re-executions that serve the
/// engine: nothing else in the process refers to such a number); an fd
/// that is not open is an error.
pub fn take_inherited(n: i32) -> io::Result<OwnedFd> {
    if n < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {n} is not one handed down")));
    }
    // SAFETY: F_GETFD on a number only reads the fd table.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(last_err());
    }
    // SAFETY: `n` is open (just checked) and was handed down for this
    // process to own: nothing else in it refers to the number.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    // SAFETY: F_SETFD on our own open fd.
    unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
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
        // (a thread pinned to that one CPU already, e.g. a restore worker:
        // nothing to set, here nor in `released` and on drop)
        let cpu = cpu.filter(|&c| saved == one_cpu(c) || sched_setaffinity(0, &one_cpu(c)).is_ok());
        PinnedHere { saved, cpu }
    }

    /// Whether the calling thread was on this one CPU before.
    fn was_pinned(&self) -> bool {
        self.cpu.is_some_and(|c| self.saved == one_cpu(c))
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
        let Some(c) = self.cpu.filter(|_| !self.was_pinned()) else { return f() };
        let _ = sched_setaffinity(0, &self.saved);
        let r = f();
        let _ = sched_setaffinity(0, &one_cpu(c));
        r
    }
}

impl Drop for PinnedHere {
    fn drop(&mut self) {
        if self.cpu.is_some() && !self.was_pinned() {
            let _ = sched_setaffinity(0, &self.saved);
        }
    }
}

/// Close every fd except those in `keep` (close_range over the gaps): the
/// restore child clearing the table it inherited. Refused (a panic: a bug)
/// outside the child of [`fork3`], where those fds belong to live values.
pub fn close_all_except(keep: &[i32]) {
    only_in_fork3_child("close_all_except");
    let mut k: Vec<i32> = keep.to_vec();
    k.sort_unstable();
    let mut from: u32 = 0;
    for &fd in &k {
        let fd = fd as u32;
        if fd > from {
            // SAFETY: integer-only syscall; in the child of fork3 (checked
            // above) no live value owns these fds (see `dup2`).
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
    kcmp_files_order(pid, a, pid, b)
}

/// [`kcmp_file_order`] of fd `a` of `pid1` and fd `b` of `pid2` (two
/// processes: a description shared across a fork).
pub fn kcmp_files_order(pid1: Pid, a: i32, pid2: Pid, b: i32) -> io::Result<std::cmp::Ordering> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, a as usize, b as usize) };
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        r if r < 0 => Err(last_err()),
        r => Err(io::Error::other(format!("kcmp(KCMP_FILE) gave no ordering ({r})"))),
    }
}

/// Take a byte-range lock on fd number `fd` without waiting: `ofd` an OFD
/// lock (F_OFD_SETLK, owned by the open file description), else a POSIX
/// one (F_SETLK, owned by this process); `write` a write lock, else a read
/// lock; bytes `start..start + len` (`len` 0: to the end of the file).
pub fn set_range_lock(fd: i32, ofd: bool, write: bool, start: i64, len: i64) -> io::Result<()> {
    // SAFETY: an all-zero struct flock is a valid value of it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_pid = 0;
    let cmd = if ofd { libc::F_OFD_SETLK } else { libc::F_SETLK };
    // SAFETY: `fl` is a valid struct flock alive for the call; F_SETLK and
    // F_OFD_SETLK only read it.
    if unsafe { libc::fcntl(fd, cmd, &fl as *const libc::flock) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// flock(2) on fd number `fd`, without waiting: LOCK_EX if `write`, else
/// LOCK_SH.
pub fn flock_nb(fd: i32, write: bool) -> io::Result<()> {
    let op = if write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    // SAFETY: integer-only call.
    if unsafe { libc::flock(fd, op) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// sendfile(2): copy up to `len` bytes from `from` at `*off` (advanced)
/// to `to` at its file position, in the kernel. The count copied (0 at
/// the end of `from`).
pub fn sendfile(to: std::os::fd::BorrowedFd<'_>, from: std::os::fd::BorrowedFd<'_>, off: &mut u64, len: usize) -> io::Result<usize> {
    let mut o = i64::try_from(*off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: two borrowed open fds and a valid offset cell alive for the call.
    let r = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), &mut o, len) };
    if r < 0 {
        return Err(last_err());
    }
    *off = o as u64;
    Ok(r as usize)
}

/// Copy `len` bytes of `from` at `off` to `to` at its file position with
/// [`sendfile`]; an early end of `from` is an error.
pub fn sendfile_all(to: std::os::fd::BorrowedFd<'_>, from: std::os::fd::BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
    let (mut at, end) = (off, off.checked_add(len).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?);
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
        let n = sendfile(to, from, &mut at, want)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the source ended at {at}, before {end}")));
        }
    }
    Ok(())
}

/// memfd_create(2): a new memfd named `name` with `flags` (MFD_*).
pub fn memfd_create(name: &CStr, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name alive for the call; the fd returned on
    // success is new and ours alone.
    let r = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: `r` is a freshly created fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The file system type (`f_type` of fstatfs(2)) of an open file.
pub fn fs_type(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is a writable statfs buffer; the fd is borrowed and open.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(last_err());
    }
    // SAFETY: fstatfs succeeded, so the buffer is initialised.
    Ok(unsafe { st.assume_init() }.f_type)
}

/// The file system type (`f_type` of fstatfs(2)) of the file at `path`,
/// opened `O_PATH` (so that files nobody may read, such as memfd_secret
/// areas through /proc/PID/fd or map_files, still answer).
pub fn fs_type_of_path(path: &std::path::Path) -> io::Result<i64> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path)?;
    fs_type(f.as_fd())
}

/// `SECRETMEM_MAGIC`: statfs f_type of a memfd_secret(2) file.
pub const SECRETMEM_MAGIC: i64 = 0x5345_434d;

/// Whether `path` (a /proc/PID/fd or map_files link whose target reads
/// `/secretmem (deleted)`) is a memfd_secret(2) area: memory the kernel
/// keeps out of its own direct map, which no ptrace, /proc/PID/mem or
/// process_vm_readv can read, so no engine can dump it.
pub fn is_secretmem(path: &std::path::Path) -> bool {
    fs_type_of_path(path).is_ok_and(|t| t == SECRETMEM_MAGIC)
}

/// The block size (`f_bsize` of fstatfs(2)) of an open file's file system
/// (on hugetlbfs: its huge page size).
pub fn fs_block_size(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is a writable statfs buffer; the fd is borrowed and open.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(last_err());
    }
    // SAFETY: fstatfs succeeded, so the buffer is initialised.
    Ok(unsafe { st.assume_init() }.f_bsize as u64)
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE: `None` when there is no such
/// region at or after `off` (ENXIO).
pub fn seek_data_hole(fd: std::os::fd::BorrowedFd<'_>, off: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: integer-only syscall on a borrowed, open fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = last_err();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

/// poll(2) `fd` for input (or hang-up) for at most `timeout_ms`: whether it
/// became ready.
pub fn poll_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
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

/// fstat(2) of an fd of this process: (st_dev, st_ino).
pub fn fstat_dev_ino(fd: i32) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a writable stat buffer; the kernel fills it on success.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } < 0 {
        return Err(last_err());
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
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

/// linkat(2) of the name `old` to the name `new`, both in directory `dir`.
pub fn link_in(dir: std::os::fd::BorrowedFd<'_>, old: &CStr, new: &CStr) -> io::Result<()> {
    // SAFETY: a borrowed open fd and two NUL-terminated names alive for the call.
    if unsafe { libc::linkat(dir.as_raw_fd(), old.as_ptr(), dir.as_raw_fd(), new.as_ptr(), 0) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// linkat(2) with AT_SYMLINK_FOLLOW: a new name `new` for the file `old`
/// names once its symlinks are followed (`/proc/PID/fd/N`: the open file
/// itself, even when its path was unlinked, as long as it has links).
pub fn link_follow(old: &CStr, new: &CStr) -> io::Result<()> {
    // SAFETY: two NUL-terminated paths alive for the call.
    if unsafe { libc::linkat(libc::AT_FDCWD, old.as_ptr(), libc::AT_FDCWD, new.as_ptr(), libc::AT_SYMLINK_FOLLOW) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// renameat2(2) of the name `old` to `new`, both in directory `dir`
/// (`flags`: 0 or RENAME_EXCHANGE, ...).
pub fn rename_in(dir: std::os::fd::BorrowedFd<'_>, old: &CStr, new: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: a borrowed open fd and two NUL-terminated names alive for the call.
    if unsafe { libc::syscall(libc::SYS_renameat2, dir.as_raw_fd(), old.as_ptr(), dir.as_raw_fd(), new.as_ptr(), flags) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// unlinkat(2) of `name` in directory `dir` with `flags` (AT_REMOVEDIR
/// for a directory).
pub fn unlink_in_flags(dir: std::os::fd::BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: a borrowed open fd and a NUL-terminated name alive for the call.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// mkdirat(2), mknodat(2) or symlinkat(2) of `name` in directory `dir`:
/// a directory, a device node (`rdev`, glibc encoding) or a symlink to
/// `target`, by the type bits of `mode`; then its owner (not following a
/// symlink) and, but for a symlink, its permission bits.
pub fn make_node_in(dir: std::os::fd::BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64, target: Option<&CStr>, uid: u32, gid: u32) -> io::Result<()> {
    let d = dir.as_raw_fd();
    let r = match mode & libc::S_IFMT {
        // SAFETY: a borrowed open fd and a NUL-terminated name alive for the call.
        libc::S_IFDIR => unsafe { libc::mkdirat(d, name.as_ptr(), mode & 0o7777) },
        // SAFETY: as above; `rdev` is plain data.
        libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => unsafe { libc::mknodat(d, name.as_ptr(), mode, rdev) },
        libc::S_IFLNK => {
            let t = target.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: two NUL-terminated strings and a borrowed fd alive for the call.
            unsafe { libc::symlinkat(t.as_ptr(), d, name.as_ptr()) }
        }
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: as above.
    if unsafe { libc::fchownat(d, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(last_err());
    }
    // SAFETY: as above (a symlink's own bits can't be set: skipped).
    if mode & libc::S_IFMT != libc::S_IFLNK && unsafe { libc::fchmodat(d, name.as_ptr(), mode & 0o7777, 0) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// readlinkat(fd, "") of an fd of a symlink itself (O_PATH|O_NOFOLLOW, or
/// taken with pidfd_getfd): the symlink's target.
pub fn readlink_fd(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: an empty NUL-terminated name, a borrowed fd and a writable
    // buffer of its length alive for the call.
    let n = unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_err());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// unlinkat(2) of the name `name` in directory `dir`.
pub fn unlink_in(dir: std::os::fd::BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: a borrowed open fd and a NUL-terminated name alive for the call.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// poll(2) fd `fd` (a number this process owns, e.g. a pidfd kept in the
/// child of [`fork3`]) until it is readable or fails.
pub fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `pfd` is a valid pollfd array of length 1 for the call.
    while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 && last_err().raw_os_error() == Some(libc::EINTR) {}
}

/// setpgid(2) of the calling process: `setpgid(0, 0)` makes a group of its
/// own, `setpgid(0, G)` joins group G of its session.
pub fn setpgid_self(pgid: Pid) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    if unsafe { libc::setpgid(0, pgid) } < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// waitpid(2) for child `pid` to exit, reaping it; its wait status.
pub fn reap_child(pid: Pid) -> io::Result<i32> {
    let mut st = 0i32;
    loop {
        // SAFETY: `st` is a valid out-parameter for the call.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
        if r >= 0 {
            return Ok(st);
        }
        let e = last_err();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Wait until child `pid` has exited, leaving it a zombie (waitid with
/// WNOWAIT: not reaped).
pub fn wait_exited_unreaped(pid: Pid) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value, and
        // `si` is a valid out-parameter for the call.
        let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; integer arguments otherwise.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut si, libc::WEXITED | libc::WNOWAIT | libc::__WALL) };
        if r >= 0 {
            return Ok(());
        }
        let e = last_err();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Take every pending instance of `sig` (blocked in the caller) without
/// waiting: sigtimedwait with a zero timeout until none is left.
pub fn drain_signal(sig: i32) {
    let set: u64 = 1 << (sig - 1);
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    for _ in 0..64 {
        // SAFETY: `set` is an 8-byte kernel sigset; info NULL; `zero` valid.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigtimedwait, &set as *const u64, std::ptr::null_mut::<libc::siginfo_t>(), &zero as *const libc::timespec, 8usize) };
        if r < 0 {
            break;
        }
    }
}

/// End the calling process with wait status `status` as its parent will
/// see it: `exit(code)` for an exit, death by the signal for a kill (no
/// core file: RLIMIT_CORE is set to 0 first). Only in the child of
/// [`fork3`] (a restored zombie).
pub fn die_with_status(status: u32) -> ! {
    only_in_fork3_child("die_with_status");
    let sig = (status & 0x7f) as i32;
    if sig == 0 {
        exit_now(((status >> 8) & 0xff) as i32);
    }
    let _ = set_rlimit(libc::RLIMIT_CORE, 0, 0);
    let dfl = KSigaction::default();
    let _ = set_sigaction_raw(sig, &dfl);
    let one: u64 = 1 << (sig - 1);
    // SAFETY: valid pointer to an 8-byte set; oldset NULL. The signal's
    // action is the default (set above): unblocking it runs no handler.
    unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_UNBLOCK, &one as *const u64, 0usize, 8usize) };
    let _ = kill(std::process::id() as Pid, sig);
    // a signal whose default is to be ignored (or stop) does not end it
    exit_now(((status >> 8) & 0xff) as i32)
}

/// The `sockaddr_un` of the abstract unix socket `name` (no leading NUL in
/// `name`) and its length.
pub fn abstract_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, u32)> {
    // SAFETY: sockaddr_un is plain data: all-zero is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() + 1 > a.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "abstract socket name too long"));
    }
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in a.sun_path[1..].iter_mut().zip(name) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((a, len as u32))
}

/// Send `fd` (SCM_RIGHTS, with one byte of data) in a datagram to the
/// abstract unix socket `name` (no leading NUL).
pub fn send_fd_abstract(name: &[u8], fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let (addr, addr_len) = abstract_addr(name)?;
    // SAFETY: integer-only syscall.
    let s = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(last_err());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // room for one cmsg with one int, 8-byte aligned
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe { (libc::CMSG_SPACE(4) as usize, libc::CMSG_LEN(4) as usize) };
    assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data: all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&addr as *const libc::sockaddr_un).cast_mut().cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points to `space` bytes of `control`, which holds
    // at least one cmsghdr (checked above): CMSG_FIRSTHDR is non-null and
    // its data has room for one int.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = len as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd.as_raw_fd());
    }
    // SAFETY: every pointer in `msg` (address, iovec, control) points to
    // locals alive for the call.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// A new fd (close-on-exec) at `min` or above for the file open on fd
/// number `n` of this process (F_DUPFD_CLOEXEC), for a file the caller
/// knows only by number (criu's own fds named by `--inherit-fd`).
pub fn dup_number_above(n: i32, min: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes integers; `n` is not assumed owned.
    let r = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: the kernel just created fd `r` for this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness runs each test on a thread of its own, so this
    /// process has at least two threads: fork3 must refuse, naming them.
    #[test]
    fn fork3_refuses_a_multithreaded_caller() {
        let other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        let r = fork3(0, &[], libc::SIGCHLD, || exit_now(0));
        let e = r.expect_err("fork3 from a multi-threaded process must be refused");
        assert!(e.to_string().contains("threads"), "{e}");
        other.join().unwrap();
    }

    #[test]
    fn fd_table_rewrites_only_in_the_fork3_child() {
        assert!(!in_fork3_child());
        // `a` stands for any fd a File or OwnedFd of this process owns.
        let (a, _b) = pipe().unwrap();
        let n = a.as_raw_fd();
        for (what, f) in [
            ("dup2", Box::new(move || drop(dup2(0, n))) as Box<dyn FnOnce() + std::panic::UnwindSafe>),
            ("close", Box::new(move || close(n))),
            ("close_all_except", Box::new(|| close_all_except(&[0, 1, 2]))),
        ] {
            let r = std::panic::catch_unwind(f);
            assert!(r.is_err(), "{what} outside the fork3 child must be refused");
        }
        // the owned fd is untouched: still the read end of our pipe
        assert_eq!(fcntl_int(n, libc::F_GETFL, 0).unwrap() & libc::O_ACCMODE as u64, libc::O_RDONLY as u64);
    }

    #[test]
    fn raw_sigaction_only_in_the_fork3_child() {
        let act = KSigaction { handler: 0x1234, ..Default::default() };
        assert!(std::panic::catch_unwind(|| set_sigaction_raw(libc::SIGUSR1, &act)).is_err());
    }

    #[test]
    fn prctl_and_fcntl_refuse_pointer_arguments() {
        let mut sig: i32 = -1;
        let e = prctl(libc::PR_GET_PDEATHSIG, &mut sig as *mut i32 as u64, 0, 0, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(sig, -1, "nothing may be written through the pointer");
        assert!(prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0).is_ok());
        let e = fcntl_int(0, libc::F_GETLK, 0x1000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(mm_map_size().map(|n| n > 0).unwrap_or(true));
    }
}


