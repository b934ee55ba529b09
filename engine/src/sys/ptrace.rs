//! ptrace(2) wrappers: seize/interrupt/detach, register sets (general
//! registers, NT_X86_XSTATE), signal masks and queues, rseq configuration,
//! TLS descriptors, and `waitpid(__WALL)` decoding.

use super::{last_err, Pid};
use std::io;

/// `struct user_regs_struct` of x86_64 (NT_PRSTATUS), field order as the kernel's.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// `struct user_desc` (PTRACE_GET_THREAD_AREA), bitfields packed in `flags`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UserDesc {
    pub entry_number: u32,
    pub base_addr: u32,
    pub limit: u32,
    pub flags: u32,
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// Raw 128-byte `siginfo_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawSiginfo(pub [u8; 128]);

impl std::fmt::Debug for RawSiginfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "siginfo(signo {})", i32::from_ne_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]))
    }
}

const NT_PRSTATUS: usize = 1;
const NT_X86_XSTATE: usize = 0x202;
const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;

pub const O_TRACESYSGOOD: u64 = 1;
pub const O_TRACECLONE: u64 = 8;
pub const O_EXITKILL: u64 = 1 << 20;
pub const O_SUSPEND_SECCOMP: u64 = 1 << 21;
pub const EVENT_CLONE: i32 = 3;
pub const EVENT_STOP: i32 = 128;
pub const PEEKSIGINFO_SHARED: u32 = 1;

/// ptrace(2) requests whose `addr` and `data` are integers (signal
/// numbers, option bits, an index) or unused: nothing of ours is read or
/// written through them.
const INTEGER_REQUESTS: &[libc::c_uint] =
    &[PTRACE_SEIZE, PTRACE_INTERRUPT, libc::PTRACE_DETACH, libc::PTRACE_CONT, libc::PTRACE_SYSCALL, libc::PTRACE_SETOPTIONS];

/// ptrace(2) with an integer-only request (see [`INTEGER_REQUESTS`]);
/// anything else is refused with `EINVAL` (a bug: use [`ptrace`]).
fn ptrace_int(req: libc::c_uint, tid: Pid, addr: usize, data: usize) -> io::Result<libc::c_long> {
    if !INTEGER_REQUESTS.contains(&req) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("ptrace request {req:#x} takes a pointer")));
    }
    // SAFETY: the request takes `addr`/`data` as integers (checked above).
    unsafe { ptrace(req, tid, addr, data) }
}

/// ptrace(2).
///
/// # Safety
/// For a request that reads or writes through `addr` or `data`, they must
/// point to live memory of the size and layout the kernel reads or writes
/// there for that request, for the duration of the call.
unsafe fn ptrace(req: libc::c_uint, tid: Pid, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: the caller upholds this function's contract on addr/data.
    let r = unsafe { libc::ptrace(req, tid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r == -1 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

/// PTRACE_SEIZE: attach without stopping the thread.
pub fn seize(tid: Pid, options: u64) -> io::Result<()> {
    ptrace_int(PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

/// PTRACE_INTERRUPT: stop a seized thread (no signal is queued or lost).
pub fn interrupt(tid: Pid) -> io::Result<()> {
    ptrace_int(PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// PTRACE_DETACH, delivering `sig` (0 for none).
pub fn detach(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace_int(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// PTRACE_CONT.
pub fn cont(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace_int(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// PTRACE_SYSCALL: resume until the next syscall entry or exit.
pub fn cont_syscall(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace_int(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// PTRACE_SETOPTIONS.
pub fn set_options(tid: Pid, options: u64) -> io::Result<()> {
    ptrace_int(libc::PTRACE_SETOPTIONS, tid, 0, options as usize).map(drop)
}

/// PTRACE_GETEVENTMSG.
pub fn event_msg(tid: Pid) -> io::Result<u64> {
    let mut v: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long to `data`, which points to `v`.
    unsafe { ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut v as *mut _ as usize) }?;
    Ok(v)
}

fn getregset(tid: Pid, nt: usize, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: `iov` describes `buf`, writable for its length; the kernel writes at most that much and updates `iov.iov_len`.
    unsafe { ptrace(libc::PTRACE_GETREGSET, tid, nt, &mut iov as *mut _ as usize) }?;
    Ok(iov.iov_len)
}

fn setregset(tid: Pid, nt: usize, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `iov` describes `buf`, readable for its length; the kernel only reads it (and may update `iov.iov_len`).
    unsafe { ptrace(libc::PTRACE_SETREGSET, tid, nt, &mut iov as *mut _ as usize) }.map(drop)
}

/// PTRACE_GETREGSET(NT_PRSTATUS).
pub fn get_regs(tid: Pid) -> io::Result<Regs> {
    let mut r = Regs::default();
    let mut iov = libc::iovec { iov_base: (&mut r as *mut Regs).cast(), iov_len: std::mem::size_of::<Regs>() };
    // SAFETY: `iov` describes `r`, a repr(C) user_regs_struct the kernel writes at most size_of::<Regs>() bytes of.
    unsafe { ptrace(libc::PTRACE_GETREGSET, tid, NT_PRSTATUS, &mut iov as *mut _ as usize) }?;
    Ok(r)
}

/// PTRACE_SETREGSET(NT_PRSTATUS).
pub fn set_regs(tid: Pid, r: &Regs) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: (r as *const Regs as *mut Regs).cast(), iov_len: std::mem::size_of::<Regs>() };
    // SAFETY: `iov` describes `r` (repr(C) user_regs_struct), which the kernel only reads.
    unsafe { ptrace(libc::PTRACE_SETREGSET, tid, NT_PRSTATUS, &mut iov as *mut _ as usize) }.map(drop)
}

/// PTRACE_GETREGSET(NT_X86_XSTATE): the XSAVE area, as long as the CPU's.
pub fn get_xstate(tid: Pid) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let n = getregset(tid, NT_X86_XSTATE, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// PTRACE_SETREGSET(NT_X86_XSTATE).
pub fn set_xstate(tid: Pid, xsave: &[u8]) -> io::Result<()> {
    setregset(tid, NT_X86_XSTATE, xsave)
}

/// PTRACE_GETSIGMASK: the thread's blocked signal set.
pub fn get_sigmask(tid: Pid) -> io::Result<u64> {
    let mut m: u64 = 0;
    // SAFETY: `data` points to `m`, 8 writable bytes, the size passed in `addr`.
    unsafe { ptrace(PTRACE_GETSIGMASK, tid, 8, &mut m as *mut u64 as usize) }?;
    Ok(m)
}

/// PTRACE_SETSIGMASK.
pub fn set_sigmask(tid: Pid, mask: u64) -> io::Result<()> {
    let m = mask;
    // SAFETY: `data` points to `m`, 8 readable bytes, the size passed in `addr`.
    unsafe { ptrace(PTRACE_SETSIGMASK, tid, 8, &m as *const u64 as usize) }.map(drop)
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// PTRACE_PEEKSIGINFO: every queued siginfo (per-thread, or the shared queue
/// with [`PEEKSIGINFO_SHARED`]) without dequeuing them.
pub fn peek_siginfo(tid: Pid, flags: u32) -> io::Result<Vec<RawSiginfo>> {
    let mut out = Vec::new();
    let mut buf = [RawSiginfo([0; 128]); 32];
    loop {
        let args = PeekSiginfoArgs { off: out.len() as u64, flags, nr: 32 };
        // SAFETY: `addr` points to `args` (repr(C) ptrace_peeksiginfo_args); `data` to `buf`, room for `args.nr` (32) siginfos of 128 bytes.
        let n = unsafe { ptrace(PTRACE_PEEKSIGINFO, tid, &args as *const _ as usize, buf.as_mut_ptr() as usize) }?;
        let n = usize::try_from(n).unwrap_or(0);
        out.extend_from_slice(&buf[..n]);
        if n < 32 {
            return Ok(out);
        }
    }
}

/// PTRACE_GET_RSEQ_CONFIGURATION.
pub fn rseq_config(tid: Pid) -> io::Result<RseqConfig> {
    let mut c = RseqConfig::default();
    // SAFETY: `data` points to `c`, a repr(C) ptrace_rseq_configuration whose size is passed in `addr`; the kernel writes at most that.
    unsafe { ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, std::mem::size_of::<RseqConfig>(), &mut c as *mut _ as usize) }?;
    Ok(c)
}

/// PTRACE_SECCOMP_GET_FILTER: the `idx`-th seccomp filter of `tid`
/// (0 = the first installed) as a `struct sock_filter` array;
/// `None` past the last one (ENOENT).
pub fn seccomp_filter(tid: Pid, idx: u64) -> io::Result<Option<Vec<u8>>> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    // SAFETY: `data` NULL: the kernel only counts the filter's instructions.
    let n = match unsafe { ptrace(PTRACE_SECCOMP_GET_FILTER, tid, idx as usize, 0) } {
        Ok(n) => usize::try_from(n).unwrap_or(0),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; n * 8];
    // SAFETY: `buf` holds the `n` 8-byte sock_filter entries the first call counted; a stopped thread's filters cannot change in between.
    unsafe { ptrace(PTRACE_SECCOMP_GET_FILTER, tid, idx as usize, buf.as_mut_ptr() as usize) }?;
    Ok(Some(buf))
}

/// PTRACE_SECCOMP_GET_METADATA: the SECCOMP_FILTER_FLAG_* of filter `idx`.
pub fn seccomp_filter_flags(tid: Pid, idx: u64) -> io::Result<u64> {
    const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
    let mut md = [idx, 0u64];
    // SAFETY: `data` points to `md`, the 16-byte seccomp_metadata whose size is passed in `addr`.
    unsafe { ptrace(PTRACE_SECCOMP_GET_METADATA, tid, 16, md.as_mut_ptr() as usize) }?;
    Ok(md[1])
}

/// PTRACE_GET_THREAD_AREA for GDT entry `idx`.
pub fn get_thread_area(tid: Pid, idx: u32) -> io::Result<UserDesc> {
    let mut d = UserDesc::default();
    // SAFETY: `data` points to `d`, a repr(C) user_desc the kernel fills.
    unsafe { ptrace(PTRACE_GET_THREAD_AREA, tid, idx as usize, &mut d as *mut _ as usize) }?;
    Ok(d)
}

/// PTRACE_GETSIGINFO of the current stop.
pub fn get_siginfo(tid: Pid) -> io::Result<RawSiginfo> {
    let mut s = RawSiginfo([0; 128]);
    // SAFETY: `data` points to the 128 bytes of `s`, the size of a siginfo.
    unsafe { ptrace(libc::PTRACE_GETSIGINFO, tid, 0, s.0.as_mut_ptr() as usize) }?;
    Ok(s)
}

/// What `waitpid` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Exited(i32),
    Signaled(i32),
    /// Stopped: signal and ptrace event (status >> 16).
    Stopped { sig: i32, event: i32 },
}

/// waitpid(tid, __WALL) (restarted on EINTR).
pub fn wait(tid: Pid) -> io::Result<Wait> {
    wait_flags(tid, libc::__WALL).map(|w| w.expect("blocking wait"))
}

/// waitpid with flags; `None` when WNOHANG found nothing.
pub fn wait_flags(tid: Pid, flags: i32) -> io::Result<Option<Wait>> {
    let mut st = 0;
    loop {
        // SAFETY: `st` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(tid, &mut st, flags) };
        if r < 0 {
            let e = last_err();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        break;
    }
    Ok(Some(if libc::WIFEXITED(st) {
        Wait::Exited(libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        Wait::Signaled(libc::WTERMSIG(st))
    } else {
        Wait::Stopped { sig: libc::WSTOPSIG(st), event: st >> 16 }
    }))
}

/// waitpid(-1, __WALL): the next child or tracee to change state, blocking;
/// `Err(ECHILD)` when there is none left.
pub fn wait_any() -> io::Result<(Pid, Wait)> {
    let mut st = 0;
    let r = loop {
        // SAFETY: `st` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::__WALL) };
        if r < 0 {
            let e = last_err();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        break r;
    };
    let w = if libc::WIFEXITED(st) {
        Wait::Exited(libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        Wait::Signaled(libc::WTERMSIG(st))
    } else {
        Wait::Stopped { sig: libc::WSTOPSIG(st), event: st >> 16 }
    };
    Ok((r, w))
}

/// get_robust_list(2) of another thread: (head, len).
pub fn get_robust_list(tid: Pid) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: both out-pointers are valid u64 slots (pointer-sized on x86_64).
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut u64) };
    if r < 0 {
        return Err(last_err());
    }
    Ok((head, len))
}
