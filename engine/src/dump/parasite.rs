//! Syscalls run inside the frozen process to read state that /proc and
//! ptrace don't show (sigactions, itimers, sigaltstack, clear_tid, brk,
//! securebits, ...), made safe against the engine dying at any moment.
//!
//! # Fault safety
//!
//! First the main thread, from its own untouched registers (signals
//! blocked for that one call), runs an mmap of the scratch mapping: a code
//! page, a data area, and a frame slot per thread. Its registers and mask
//! go back right after. Then, before a thread's registers are touched, an
//! `rt_sigframe` is written into its slot: a `ucontext` with its original
//! registers (syscall restart already resolved, as signal delivery would),
//! its original signal mask and its XSAVE state (with the `_fpx_sw_bytes`
//! and `FP_XSTATE_MAGIC2` that `rt_sigreturn` checks). Nothing is written
//! into the target's own memory, its stacks included (a stack may be heap
//! memory with a neighbour's data right below the stack pointer, and the
//! page pump copies pages while threads are parked). While the thread is
//! ours its *parked* state is `rip = the code page's second syscall, rax =
//! __NR_rt_sigreturn, rsp = the frame`: if the engine dies (ptrace
//! detaches on tracer exit) the thread's next instruction is
//! `rt_sigreturn`, which puts back every register, the FPU state and the
//! signal mask.
//!
//! Injected syscalls run from the code page, whose bytes are `syscall;
//! mov $15,%eax; syscall`: the engine points `rip` at the first `syscall`
//! and steps with PTRACE_SYSCALL to the exit stop; if the engine dies
//! anywhere in between, the thread falls through into `rt_sigreturn`.
//! Only the mmap of the mapping itself runs from an instruction found in
//! the target's text (one syscall whose fall-through is foreign code), and
//! only the final munmap of it has no page to fall into (one syscall
//! again). A crashed engine may leave the scratch mapping behind (17 pages
//! and the frame slots, rwx, anonymous); everything else is as it was.
//!
//! A SIGSTOP that reaches a thread while it is stepped is taken off and
//! recorded ([`Frozen::stop_seen`]): the process is stopped again when it
//! is released. Group-stop traps are resumed. See [`step`].
//!
//! `uc_stack.ss_flags` in the frame is deliberately invalid (3), so the
//! `restore_altstack` inside `rt_sigreturn` fails (silently, by design of
//! the kernel) and leaves the thread's sigaltstack as it is.

use super::freeze::Frozen;
use super::task::fixup_syscall_restart;
use crate::sys::ptrace::{self, Regs, Wait};
use crate::sys::Pid;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Size of the data area (results written by the kernel).
pub const SCRATCH_LEN: u64 = 16 * 4096;
/// The code page in front of the data area.
const CODE_LEN: u64 = 4096;
/// Offset of the `syscall` a parked thread sits on (with rax = 15).
const PARK_OFF: u64 = 7;
/// Fds the pump cleanup closes (two pipes' ends).
pub const PUMP_FDS: usize = 4;
/// Scratch offset of the [`PUMP_FDS`] fds ([`Parasite::pump_call`]) that the
/// cleanup code closes: the last bytes of the data area.
pub const PUMP_FDS_OFF: u64 = SCRATCH_LEN - 4 * PUMP_FDS as u64;
/// Scratch offset of the CPU mask (1024 bits) the cleanup gives the main
/// thread back ([`Parasite::arm_pump`]).
pub const PUMP_MASK_OFF: u64 = PUMP_FDS_OFF - 128;
/// Offset of the `syscall` of a pump call: its fall-through is the cleanup.
const PUMP_CALL_OFF: u64 = 9;
/// Offset of the cleanup: close the fds at [`PUMP_FDS_OFF`], put back the
/// CPU mask at [`PUMP_MASK_OFF`], then `rt_sigreturn`.
const CLEANUP_OFF: u64 = 11;
/// Syscalls in the cleanup before its `rt_sigreturn`.
const CLEANUP_SYSCALLS: usize = PUMP_FDS + 1;
/// Bytes of one `mov fdK(%rip),%edi; mov $3,%eax; syscall`.
const CLOSE_LEN: usize = 13;
/// Offset of the fork call (tfork), right after the cleanup.
pub const FORK_OFF: u64 = (CLEANUP_OFF as usize + PUMP_FDS * CLOSE_LEN + 2 + 5 + 7 + 7 + 7) as u64;
/// `syscall; test %rax,%rax; jnz 2 (rt_sigreturn); mov $231,%eax;
/// xor %edi,%edi; syscall` (exit_group(0)): the caller falls into its
/// `rt_sigreturn`, the new child (rax = 0) exits.
const FORK_CODE: [u8; 16] = {
    let rel = (2i64 - (FORK_OFF as i64 + 7)) as i8 as u8;
    [0x0f, 0x05, 0x48, 0x85, 0xc0, 0x75, rel, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05]
};
/// Offset of the batch loop ([`Parasite::reads`]), right after the fork call.
const BATCH_OFF: u64 = FORK_OFF + FORK_CODE.len() as u64;
/// The batch loop, `rbx` pointing at the first record (eight u64s: nr, six
/// arguments, result; `nr` = -1 ends the list):
/// ```text
///  0: mov (%rbx),%rax; cmp $-1,%rax; je 2d
///  9: mov 8(%rbx),%rdi ... mov 48(%rbx),%r9
/// 21: syscall
/// 23: mov %rax,56(%rbx); add $64,%rbx; jmp 0
/// 2d: mov $15,%eax; jmp *%r12        (where the thread is parked)
/// ```
/// Every call runs, failed or not, and the loop falls into where the
/// thread was parked (`r12`, set by the engine): `rt_sigreturn`, or the
/// pump's cleanup and then `rt_sigreturn`. The engine stops it on the
/// last call's return with a signal the batch sends itself (see
/// [`Parasite::reads`]); a dead engine never stops it.
const BATCH_CODE: [u8; 0x35] = [
    0x48, 0x8b, 0x03, // mov (%rbx),%rax
    0x48, 0x83, 0xf8, 0xff, // cmp $-1,%rax
    0x74, 0x24, // je done
    0x48, 0x8b, 0x7b, 0x08, // mov 8(%rbx),%rdi
    0x48, 0x8b, 0x73, 0x10, // mov 16(%rbx),%rsi
    0x48, 0x8b, 0x53, 0x18, // mov 24(%rbx),%rdx
    0x4c, 0x8b, 0x53, 0x20, // mov 32(%rbx),%r10
    0x4c, 0x8b, 0x43, 0x28, // mov 40(%rbx),%r8
    0x4c, 0x8b, 0x4b, 0x30, // mov 48(%rbx),%r9
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x38, // mov %rax,56(%rbx)
    0x48, 0x83, 0xc3, 0x40, // add $64,%rbx
    0xeb, 0xd3, // jmp 0
    0xb8, 0x0f, 0x00, 0x00, 0x00, // done: mov $15,%eax
    0x41, 0xff, 0xe4, // jmp *%r12
];
/// Where a batch thread is after its loop's `syscall` returned.
const BATCH_AFTER_SYSCALL: u64 = BATCH_OFF + 0x23;
const CODE_SIZE: usize = BATCH_OFF as usize + BATCH_CODE.len();
/// The code page:
/// - 0: `syscall; mov $15,%eax; syscall` (a plain call, falling into
///   `rt_sigreturn`, where parked threads sit at [`PARK_OFF`]);
/// - 9: `syscall` (a pump call), falling into
/// - 11: the cleanup: for each pump fd `mov fdK(%rip),%edi; mov $3,%eax;
///   syscall` (close), then `xor %edi,%edi; mov $128,%esi;
///   lea mask(%rip),%rdx; mov $203,%eax; syscall` (sched_setaffinity(0,
///   128, mask)), then `mov $15,%eax; syscall` (rt_sigreturn).
const CODE: [u8; CODE_SIZE] = {
    let mut c = [0u8; CODE_SIZE];
    let head = [0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x05];
    let mut i = 0;
    while i < head.len() {
        c[i] = head[i];
        i += 1;
    }
    let mut k = 0;
    while k < PUMP_FDS {
        let at = CLEANUP_OFF as usize + k * CLOSE_LEN;
        let d = ((CODE_LEN + PUMP_FDS_OFF + 4 * k as u64) - (at as u64 + 6)) as u32;
        let d = d.to_le_bytes();
        let one = [0x8b, 0x3d, d[0], d[1], d[2], d[3], 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05];
        let mut j = 0;
        while j < CLOSE_LEN {
            c[at + j] = one[j];
            j += 1;
        }
        k += 1;
    }
    let at = CLEANUP_OFF as usize + PUMP_FDS * CLOSE_LEN;
    let lea_end = at + 2 + 5 + 7;
    let m = ((CODE_LEN + PUMP_MASK_OFF) - lea_end as u64) as u32;
    let m = m.to_le_bytes();
    let tail = [
        0x31, 0xff, // xor %edi,%edi
        0xbe, 0x80, 0x00, 0x00, 0x00, // mov $128,%esi
        0x48, 0x8d, 0x15, m[0], m[1], m[2], m[3], // lea mask(%rip),%rdx
        0xb8, 0xcb, 0x00, 0x00, 0x00, 0x0f, 0x05, // sched_setaffinity
        0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, // rt_sigreturn
    ];
    let mut j = 0;
    while j < tail.len() {
        c[at + j] = tail[j];
        j += 1;
    }
    let mut j = 0;
    while j < FORK_CODE.len() {
        c[FORK_OFF as usize + j] = FORK_CODE[j];
        j += 1;
    }
    let mut j = 0;
    while j < BATCH_CODE.len() {
        c[BATCH_OFF as usize + j] = BATCH_CODE[j];
        j += 1;
    }
    c
};
const NR_RT_SIGRETURN: u64 = 15;

/// Size of `struct rt_sigframe` on x86_64: pretcode, ucontext, siginfo.
pub const RT_SIGFRAME_SIZE: u64 = 8 + 304 + 128;
const REDZONE: u64 = 128;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
/// Offset of the `_fpx_sw_bytes` in the legacy FXSAVE area.
const SW_RESERVED: usize = 464;
/// FXSAVE area + XSAVE header.
const XSAVE_MIN: usize = 512 + 64;
/// AMX tile data: dynamically enabled, never in a default signal frame.
const XFEATURE_TILEDATA: u64 = 1 << 18;

/// A sigframe ready to be written at `addr`; `rsp` is what the parked
/// thread's stack pointer must be (`frame + 8`, as after a handler's `ret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigFrame {
    pub addr: u64,
    pub rsp: u64,
    pub fpstate: u64,
    pub bytes: Vec<u8>,
}

/// (xstate_size, xfeatures) of a signal frame for this XSAVE buffer: the
/// features the kernel put in the buffer's sw bytes (or its header), sized
/// with this CPU's layout, clamped to the buffer.
fn xstate_geometry(xsave: &[u8]) -> (usize, u64) {
    let rd32 = |o: usize| u32::from_le_bytes(xsave[o..o + 4].try_into().expect("4"));
    let rd64 = |o: usize| u64::from_le_bytes(xsave[o..o + 8].try_into().expect("8"));
    let feats = if rd32(SW_RESERVED) == FP_XSTATE_MAGIC1 { rd64(SW_RESERVED + 8) } else { rd64(512) | 3 };
    let feats = feats & !XFEATURE_TILEDATA;
    let mut size = XSAVE_MIN;
    let mut kept = feats & 3;
    for i in 2..64u32 {
        if feats & (1 << i) == 0 {
            continue;
        }
        if let Some((off, len)) = crate::sys::cpu::xsave_component(i) {
            if off + len <= xsave.len() {
                size = size.max(off + len);
                kept |= 1 << i;
            }
        }
    }
    (size, kept)
}

/// Build the `rt_sigframe` that `rt_sigreturn` turns back into `regs`,
/// `sigmask` and `xsave`, placed below `top` the way the kernel places a
/// signal frame below a stack's red zone (fpstate 64-byte aligned, frame
/// 16-8). `top` is in the scratch mapping ([`Parasite::start`]): nothing
/// is ever written on the thread's own stack.
pub fn build_sigframe(regs: &Regs, sigmask: u64, xsave: &[u8], top: u64) -> SigFrame {
    // FPU state: XSAVE (standard format) + magic2, or legacy FXSAVE only
    let mut fp: Vec<u8>;
    if xsave.len() >= XSAVE_MIN {
        let (size, feats) = xstate_geometry(xsave);
        fp = xsave[..size].to_vec();
        fp[SW_RESERVED..512].fill(0);
        fp[SW_RESERVED..SW_RESERVED + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        fp[SW_RESERVED + 4..SW_RESERVED + 8].copy_from_slice(&(size as u32 + 4).to_le_bytes());
        fp[SW_RESERVED + 8..SW_RESERVED + 16].copy_from_slice(&feats.to_le_bytes());
        fp[SW_RESERVED + 16..SW_RESERVED + 20].copy_from_slice(&(size as u32).to_le_bytes());
        let bv = u64::from_le_bytes(fp[512..520].try_into().expect("8")) & feats;
        fp[512..520].copy_from_slice(&bv.to_le_bytes());
        fp[520..528].fill(0); // xcomp_bv: standard format
        fp.extend(FP_XSTATE_MAGIC2.to_le_bytes());
    } else {
        fp = vec![0u8; 512];
        let n = xsave.len().min(512);
        fp[..n].copy_from_slice(&xsave[..n]);
        fp[SW_RESERVED..512].fill(0);
    }
    let fpstate = top.wrapping_sub(fp.len() as u64) & !63;
    let addr = (fpstate.wrapping_sub(RT_SIGFRAME_SIZE) & !15).wrapping_sub(8);
    let mut b = vec![0u8; usize::try_from(fpstate - addr).expect("small") + fp.len()];
    let put = |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let uc = 8;
    put(&mut b, uc, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    // uc_stack: invalid ss_flags, so rt_sigreturn leaves the sigaltstack alone
    b[uc + 24..uc + 28].copy_from_slice(&3u32.to_le_bytes());
    let sc = uc + 40;
    let r = regs;
    for (i, v) in [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.di, r.si, r.bp, r.bx, r.dx, r.ax, r.cx, r.sp, r.ip, r.flags,
    ]
    .into_iter()
    .enumerate()
    {
        put(&mut b, sc + 8 * i, v);
    }
    b[sc + 144..sc + 146].copy_from_slice(&(r.cs as u16).to_le_bytes());
    b[sc + 146..sc + 148].copy_from_slice(&(r.gs as u16).to_le_bytes());
    b[sc + 148..sc + 150].copy_from_slice(&(r.fs as u16).to_le_bytes());
    b[sc + 150..sc + 152].copy_from_slice(&(r.ss as u16).to_le_bytes());
    put(&mut b, sc + 184, fpstate);
    put(&mut b, uc + 296, sigmask);
    let off = usize::try_from(fpstate - addr).expect("small");
    b[off..].copy_from_slice(&fp);
    SigFrame { addr, rsp: addr + 8, fpstate, bytes: b }
}

/// Find a `syscall` instruction (0f 05) in an executable mapping of `pid`:
/// first right before the main thread's ip (it is usually in a syscall),
/// then anywhere in executable memory.
pub fn find_gadget(pid: Pid, ip: u64, exec_ranges: &[(u64, u64)]) -> io::Result<u64> {
    find_gadget_in(&File::open(format!("/proc/{pid}/mem"))?, pid, ip, exec_ranges)
}

/// [`find_gadget`] through `mem`, `pid`'s /proc/PID/mem already open.
pub fn find_gadget_in(mem: &File, pid: Pid, ip: u64, exec_ranges: &[(u64, u64)]) -> io::Result<u64> {
    let mut b = [0u8; 2];
    if ip >= 2 && mem.read_exact_at(&mut b, ip - 2).is_ok() && b == [0x0f, 0x05] {
        return Ok(ip - 2);
    }
    let mut buf = vec![0u8; 1 << 16];
    for &(s, e) in exec_ranges {
        if let Some(at) = search_range(s, e, &mut buf, |b, a| mem.read_exact_at(b, a))? {
            return Ok(at);
        }
    }
    Err(io::Error::other(format!("no syscall instruction found in the executable memory of {pid}")))
}

/// First `0f 05` in `[s, e)`, read through `read` a buffer at a time; each
/// read starts one byte before the previous one ended (an instruction may
/// straddle two reads), so every step advances by `buf.len() - 1`: with
/// fewer than two bytes left there is nothing more to find. An unreadable
/// piece ends the search of that range.
fn search_range(
    s: u64,
    e: u64,
    buf: &mut [u8],
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<Option<u64>> {
    debug_assert!(buf.len() >= 2);
    let mut a = s;
    while e.saturating_sub(a) >= 2 {
        let n = usize::try_from((e - a).min(buf.len() as u64)).unwrap_or(buf.len());
        if read(&mut buf[..n], a).is_err() {
            break;
        }
        if let Some(i) = buf[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
            return Ok(Some(a + i as u64));
        }
        a += n as u64 - 1;
    }
    Ok(None)
}

/// One thread under injection: what to put back, and where it is parked.
#[derive(Debug)]
struct Session {
    orig: Regs,
    mask: u64,
    parked: Regs,
}

/// An injection session on a frozen process. `Drop` unmaps the scratch
/// mapping and puts every thread's registers and signal mask back.
#[derive(Debug)]
pub struct Parasite {
    pub pid: Pid,
    /// Main thread first.
    order: Vec<Pid>,
    /// Threads parked so far (all of `order` once started).
    threads: BTreeMap<Pid, Session>,
    /// Start of the mapping (the code page); 0 until mapped.
    code: u64,
    /// The code page holds [`CODE`].
    code_ready: bool,
    /// The `syscall` in the target's text the mapping was made from.
    gadget: u64,
    /// Length of the whole mapping (code, data, frames).
    len: u64,
    /// Data area right after the code page.
    pub scratch: u64,
    mem: File,
    /// The main thread's state before the session (for a munmap when it
    /// could not be parked).
    main_orig: (Regs, u64),
    /// Set when a SIGSTOP reached a thread we were stepping (see [`step`]).
    stop_seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// /proc/PID/task/TID/status of each thread, read once
    /// ([`thread_status`](Self::thread_status)).
    status: BTreeMap<Pid, String>,
}

/// One syscall of a batch ([`Parasite::reads`]): a read-only query whose
/// result (and, with `out`, the bytes the kernel wrote into a buffer of
/// the data area, whose address replaces argument `out.0`) comes back.
#[derive(Debug, Clone)]
pub struct Read {
    pub what: &'static str,
    pub nr: i64,
    pub args: [u64; 6],
    pub out: Option<(usize, usize)>,
}

impl Read {
    pub fn new(what: &'static str, nr: i64, args: &[u64]) -> Read {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        Read { what, nr, args: a, out: None }
    }

    /// A buffer of `len` bytes for argument `arg` (0-based).
    pub fn out(mut self, arg: usize, len: usize) -> Read {
        self.out = Some((arg, len));
        self
    }
}

/// What one [`Read`] gave: the raw result (negative errno on failure) and
/// its buffer.
#[derive(Debug, Clone, Default)]
pub struct ReadOut {
    pub raw: i64,
    pub out: Vec<u8>,
}

impl ReadOut {
    /// The result, a failure an error naming the call and the thread.
    pub fn check(&self, tid: Pid, what: &str) -> io::Result<u64> {
        crate::sys::check_raw(self.raw).map_err(|e| io::Error::new(e.kind(), format!("injected {what} in {tid}: {e}")))
    }

    /// The `i`th u64 of the buffer (0 where the buffer is shorter).
    pub fn u64_at(&self, i: usize) -> u64 {
        self.out.get(8 * i..8 * i + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")))
    }
}

/// Bytes of one batch record.
const RECORD: u64 = 64;
/// Signals whose default action is to ignore them and that have no side
/// effect when sent (SIGCONT has one), the batch's stop signal when the
/// process neither catches it nor has one pending.
const BATCH_SIGNALS: [i32; 3] = [libc::SIGURG, libc::SIGWINCH, libc::SIGCHLD];
const SI_TKILL: i32 = -6;

/// How a batch in one thread stops: the signal and the ids the thread
/// sends it with (its own pid namespace's).
#[derive(Debug, Clone, Copy)]
struct BatchStop {
    sig: i32,
    ns_tgid: i32,
    ns_tid: i32,
}

fn shadow_stack(status: &str) -> bool {
    status.lines().any(|l| l.starts_with("x86_Thread_features:") && l.contains("shstk"))
}

/// Bytes each thread's frame gets in the scratch mapping: the largest
/// frame plus the red zone the kernel leaves above one and the alignment
/// slack, in whole pages.
fn frame_slot(frame_len: usize) -> u64 {
    let need = frame_len as u64 + REDZONE + 64 + 16;
    need.div_ceil(4096) * 4096
}

impl Parasite {
    /// Start a session on every frozen thread of `f`; `gadget` is a
    /// `syscall` instruction in the target's text, used once to map the
    /// scratch mapping: the code page, the data area, and one frame slot
    /// per thread where that thread's `rt_sigframe` goes.
    pub fn start(f: &Frozen, gadget: u64) -> io::Result<Parasite> {
        Self::start_on(f, gadget, &f.threads)
    }

    /// [`start`](Self::start) on the main thread only (the others stay
    /// stopped as they are, with their own registers): enough for
    /// [`fork_call`](Self::fork_call) and calls in the main thread, without
    /// a frame written and put back per thread (tfork's fork, in the pause).
    pub fn start_main(f: &Frozen, gadget: u64) -> io::Result<Parasite> {
        Self::start_on(f, gadget, &f.threads[..f.threads.len().min(1)])
    }

    fn start_on(f: &Frozen, gadget: u64, threads: &[super::freeze::FrozenThread]) -> io::Result<Parasite> {
        let pid = f.pid;
        let mem = f.mem()?.try_clone()?;
        let mut xsaves = Vec::with_capacity(threads.len());
        let mut max_frame = 0;
        let mut status = BTreeMap::new();
        for t in threads {
            let tid = t.tid;
            // (kept for thread_status: one read of the file per session)
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
            let shstk = shadow_stack(&st);
            if !st.is_empty() {
                status.insert(tid, st);
            }
            if shstk {
                return Err(io::Error::other(format!(
                    "thread {tid} uses a shadow stack: a sigframe without a shadow-stack token would kill it; not supported yet"
                )));
            }
            let xsave = ptrace::get_xstate(tid).map_err(|e| io::Error::new(e.kind(), format!("XSAVE state of {tid}: {e}")))?;
            max_frame = max_frame.max(build_sigframe(&t.regs, 0, &xsave, 1 << 20).bytes.len());
            xsaves.push(xsave);
        }
        let slot = frame_slot(max_frame);
        let n = u64::try_from(threads.len()).map_err(io::Error::other)?;
        let len = CODE_LEN + SCRATCH_LEN + n * slot;
        let main = threads.first().ok_or_else(|| io::Error::other(format!("{pid}: no thread to inject into")))?;
        let mut p = Parasite {
            pid,
            order: threads.iter().map(|t| t.tid).collect(),
            threads: BTreeMap::new(),
            code: 0,
            code_ready: false,
            gadget,
            len,
            scratch: 0,
            mem,
            main_orig: (main.regs, main.sigmask),
            stop_seen: f.stop_seen.clone(),
            status,
        };
        p.map_scratch(gadget)?;
        p.mem.write_all_at(&CODE, p.code)?;
        p.code_ready = true;
        let frames = p.code + CODE_LEN + SCRATCH_LEN;
        for (i, (t, xsave)) in threads.iter().zip(&xsaves).enumerate() {
            let tid = t.tid;
            let top = frames + (i as u64 + 1) * slot - REDZONE;
            let frame = build_sigframe(&fixup_syscall_restart(t.regs), t.sigmask, xsave, top);
            p.mem.write_all_at(&frame.bytes, frame.addr).map_err(|e| {
                io::Error::new(e.kind(), format!("writing the rt_sigframe of thread {tid} at {:#x}: {e}", frame.addr))
            })?;
            let mut parked = t.regs;
            parked.sp = frame.rsp;
            parked.ax = NR_RT_SIGRETURN;
            parked.orig_ax = u64::MAX;
            parked.ip = p.code + PARK_OFF;
            p.threads.insert(tid, Session { orig: t.regs, mask: t.sigmask, parked });
            // registers first: from here a dead engine means rt_sigreturn,
            // which also puts back the mask blocked next
            ptrace::set_regs(tid, &parked)?;
            ptrace::set_sigmask(tid, !0)?;
            crate::pr_debug!("thread {tid} parked on a sigframe at {:#x}", frame.addr);
        }
        Ok(p)
    }

    /// The one syscall run from foreign code: mmap of the scratch mapping,
    /// in the main thread, from its own untouched state. Signals are
    /// blocked for it (a handler must not run in the middle of a freeze)
    /// only while the registers are the call's, and the thread gets its
    /// mask and registers back right after, before anything is written
    /// into the new mapping: the window is, as it always was, from loading
    /// the call's registers to putting the thread's own back.
    fn map_scratch(&mut self, gadget: u64) -> io::Result<()> {
        let tid = self.order[0];
        let (orig, mask) = self.main_orig;
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let mut r = call_regs(&orig, libc::SYS_mmap, &[0, self.len, prot, flags, u64::MAX, 0]);
        r.ip = gadget;
        let window = crate::fault::window();
        ptrace::set_regs(tid, &r)?;
        let out = ptrace::set_sigmask(tid, !0).and_then(|()| step(tid, &r, &[], &self.stop_seen));
        // back to its own state before anything else: mask, then registers
        let back = ptrace::set_sigmask(tid, mask).and_then(|()| ptrace::set_regs(tid, &orig));
        drop(window);
        back?;
        let a = crate::sys::check_raw(out?.ax as i64)
            .map_err(|e| io::Error::new(e.kind(), format!("injected mmap of the scratch mapping in {tid}: {e}")))?;
        self.code = a;
        self.scratch = a + CODE_LEN;
        crate::pr_debug!("scratch mapping of {} at {a:#x} ({} bytes)", self.pid, self.len);
        Ok(())
    }

    pub fn call(&mut self, tid: Pid, what: &str, nr: i64, args: &[u64]) -> io::Result<u64> {
        let r = self.raw(tid, nr, args)?;
        crate::sys::check_raw(r).map_err(|e| io::Error::new(e.kind(), format!("injected {what} in {tid}: {e}")))
    }

    /// Run syscall `nr` in thread `tid`; the raw result (negative errno on failure).
    pub fn raw(&mut self, tid: Pid, nr: i64, args: &[u64]) -> io::Result<i64> {
        let s = self.threads.get(&tid).ok_or_else(|| io::Error::other(format!("thread {tid} is not frozen")))?;
        let mut r = call_regs(&s.parked, nr, args);
        r.ip = self.code;
        // after the exit stop the thread sits on `mov $15,%eax; syscall`:
        // still parked, so there is nothing to put back between calls
        let points: &[&str] = if tid == self.order[0] { &["mid-inject"] } else { &["mid-inject", "mid-inject-thread"] };
        Ok(step(tid, &r, points, &self.stop_seen)?.ax as i64)
    }

    /// /proc/PID/task/TID/status of thread `tid`, read the first time it
    /// is asked for (the thread is stopped: what it shows stays as it was,
    /// but for signals sent to it meanwhile).
    pub fn thread_status(&mut self, tid: Pid) -> io::Result<&str> {
        if !self.status.contains_key(&tid) {
            let pid = self.pid;
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .map_err(|e| io::Error::new(e.kind(), format!("reading /proc/{pid}/task/{tid}/status: {e}")))?;
            self.status.insert(tid, st);
        }
        Ok(&self.status[&tid])
    }

    /// The signal a batch in `tid` stops itself with, if there is one:
    /// one of [`BATCH_SIGNALS`] that the process does not catch (so a
    /// copy that reaches the thread after a dead engine detached it is
    /// ignored), that is pending neither for the thread nor for the process
    /// (a pending one would merge with ours), and that the thread's own
    /// mask does not block (were one sent by someone else to merge with
    /// ours in the instant between our send and our stop, it would have
    /// been ignored on arrival anyway). The thread must be parked on the
    /// plain `rt_sigreturn` (not on the pump cleanup).
    fn batch_stop(&mut self, tid: Pid, parked_on: u64) -> io::Result<Option<BatchStop>> {
        let Some(s) = self.threads.get(&tid) else { return Ok(None) };
        if s.parked.ip != self.code + parked_on {
            return Ok(None);
        }
        let mask = s.mask;
        let st = self.thread_status(tid)?;
        let hex = |k| super::proc::status_u64_hex(st, k);
        let (Some(pnd), Some(shd), Some(cgt)) = (hex("SigPnd"), hex("ShdPnd"), hex("SigCgt")) else { return Ok(None) };
        let ns = |k| super::proc::status_nums(st, k).last().and_then(|&v| i32::try_from(v).ok());
        let (Some(ns_tgid), Some(ns_tid)) = (ns("NStgid"), ns("NSpid")) else { return Ok(None) };
        let busy = pnd | shd | cgt | mask;
        Ok(BATCH_SIGNALS.into_iter().find(|&sig| busy & (1u64 << (sig - 1)) == 0).map(|sig| BatchStop { sig, ns_tgid, ns_tid }))
    }

    /// Run `calls` in thread `tid`, each with its buffer in the data area;
    /// their results in order. The calls must be queries (nothing is
    /// changed by running one): every call runs, failed or not.
    ///
    /// When the thread can ([`batch_stop`](Self::batch_stop)), they run as
    /// one batch for one stop of the thread instead of two a call: the
    /// records are written into the data area, the thread is pointed at
    /// the batch loop of the code page and resumed with PTRACE_CONT. The
    /// batch ends with two calls of its own: `tgkill` of the stop signal
    /// to the thread itself (blocked, so it stays queued) and
    /// `rt_sigprocmask` unblocking it: on that call's return the signal
    /// brings the thread to a signal-delivery stop, where the engine takes
    /// it off (the thread is parked again, signals all blocked). If the
    /// engine dies before, the thread is no longer traced and the signal
    /// is ignored (the process neither catches it nor has it pending):
    /// the loop falls through into `rt_sigreturn`, as a parked thread does.
    /// Otherwise each call is stepped on its own ([`raw`](Self::raw)).
    pub fn reads(&mut self, tid: Pid, calls: &[Read]) -> io::Result<Vec<ReadOut>> {
        let stop = self.batch_stop(tid, PARK_OFF)?;
        let mut out = Vec::with_capacity(calls.len());
        let mut rest = calls;
        while !rest.is_empty() {
            // as many calls as fit in the data area below the pump slots:
            // records (with the two of the stop and the end marker), then
            // the buffers, then the mask the last call sets
            let mut n = 0;
            let mut used = 3 * RECORD + 16;
            while n < rest.len() {
                let more = RECORD + rest[n].out.map_or(0, |(_, l)| (l as u64).next_multiple_of(8));
                if used + more > PUMP_MASK_OFF {
                    break;
                }
                used += more;
                n += 1;
            }
            if n == 0 {
                return Err(io::Error::other(format!("injected {} in {tid}: its buffer does not fit the data area", rest[0].what)));
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            out.extend(match stop {
                Some(stop) => self.run_batch(tid, chunk, stop, Some("mid-inject"))?,
                None => self.run_stepped(tid, chunk)?,
            });
        }
        Ok(out)
    }

    /// Scratch offsets of each call's buffer, after `records` records; and
    /// the end of the last.
    fn buffers(calls: &[Read], records: usize) -> (Vec<u64>, u64) {
        let mut at = records as u64 * RECORD + 8;
        let offs = calls
            .iter()
            .map(|c| {
                let o = at;
                at += c.out.map_or(0, |(_, l)| (l as u64).next_multiple_of(8));
                o
            })
            .collect();
        (offs, at)
    }

    fn run_stepped(&mut self, tid: Pid, calls: &[Read]) -> io::Result<Vec<ReadOut>> {
        let (offs, _) = Self::buffers(calls, 0);
        let mut out = Vec::with_capacity(calls.len());
        for (c, &off) in calls.iter().zip(&offs) {
            let mut args = c.args;
            if let Some((arg, _)) = c.out {
                args[arg] = self.scratch + off;
            }
            let raw = self.raw(tid, c.nr, &args)?;
            let buf = match c.out {
                Some((_, len)) => self.read(off, len)?,
                None => Vec::new(),
            };
            out.push(ReadOut { raw, out: buf });
        }
        Ok(out)
    }

    /// `point`: the fault point each call counts as (`mid-inject` for
    /// injected queries, `mid-pump` for the pump's pipes; the pump's
    /// cleanup counts as none). The loop's end falls into where the
    /// thread is parked (`rt_sigreturn`, or the pump's cleanup).
    fn run_batch(&mut self, tid: Pid, calls: &[Read], stop: BatchStop, point: Option<&'static str>) -> io::Result<Vec<ReadOut>> {
        let records = calls.len() + 2;
        let (offs, mask_off) = Self::buffers(calls, records);
        let (s, recs) = (self.scratch, self.scratch);
        let mut bytes = Vec::with_capacity(usize::try_from(mask_off + 8).map_err(io::Error::other)?);
        let mut rec = |nr: i64, args: [u64; 6]| {
            bytes.extend_from_slice(&(nr as u64).to_le_bytes());
            args.iter().for_each(|a| bytes.extend_from_slice(&a.to_le_bytes()));
            bytes.extend_from_slice(&(-(libc::ENOSYS as i64) as u64).to_le_bytes());
        };
        for (c, &off) in calls.iter().zip(&offs) {
            let mut args = c.args;
            if let Some((arg, _)) = c.out {
                args[arg] = s + off;
            }
            rec(c.nr, args);
        }
        let sig = stop.sig as u64;
        rec(libc::SYS_tgkill, [stop.ns_tgid as u64, stop.ns_tid as u64, sig, 0, 0, 0]);
        rec(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as u64, s + mask_off, 0, 8, 0, 0]);
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.resize(usize::try_from(mask_off).map_err(io::Error::other)?, 0);
        bytes.extend_from_slice(&(!(1u64 << (sig - 1))).to_le_bytes());
        // the thread is parked (a dead engine sends it to rt_sigreturn)
        // while the records are written
        self.mem
            .write_all_at(&bytes, recs)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {records} batch records into {tid}: {e}")))?;
        let parked = self.threads[&tid].parked;
        let mut r = parked;
        r.ip = self.code + BATCH_OFF;
        r.bx = recs;
        r.r12 = parked.ip;
        r.orig_ax = u64::MAX;
        ptrace::set_regs(tid, &r)?;
        // (the fault points count calls: a SIGSTOP is queued before the
        // batch runs, the engine dies while it runs)
        let main = tid == self.order[0];
        let counted = if point.is_some() { calls.len() } else { 0 };
        let name = point.unwrap_or("mid-inject");
        let inject = name == "mid-inject";
        for _ in 0..counted {
            crate::fault::stop_point(name, tid);
            if inject && !main {
                crate::fault::stop_point("mid-inject-thread", tid);
            }
        }
        ptrace::cont(tid, 0)?;
        for _ in 0..counted {
            crate::fault::point(name);
            if inject && !main {
                crate::fault::point("mid-inject-thread");
            }
        }
        let mut stopped = None;
        for _ in 0..1000 {
            match ptrace::wait(tid)? {
                Wait::Stopped { sig, event: 0 } if sig == stop.sig => {
                    stopped = Some(ptrace::get_siginfo(tid)?);
                    break;
                }
                other => other_stop(tid, other, &self.stop_seen, || "in a batch of injected syscalls".into())?,
            }
            ptrace::cont(tid, 0)?;
        }
        crate::pr_debug!("thread {tid}: {} injected queries in one batch (stopped by signal {})", calls.len(), stop.sig);
        let Some(si) = stopped else {
            return Err(io::Error::other(format!("thread {tid} did not finish a batch of injected syscalls after 1000 stops")));
        };
        let at = ptrace::get_regs(tid)?;
        // parked again before anything else (the stop's signal is
        // discarded by the next resume), signals all blocked
        ptrace::set_regs(tid, &parked)?;
        ptrace::set_sigmask(tid, !0)?;
        if at.ip != self.code + BATCH_AFTER_SYSCALL || at.ax != 0 {
            return Err(io::Error::other(format!(
                "thread {tid} stopped with signal {} at {:#x} (rax {:#x}) in a batch of injected syscalls, not after its last call",
                stop.sig, at.ip, at.ax
            )));
        }
        let rd32 = |o: usize| i32::from_le_bytes(si.0[o..o + 4].try_into().expect("4"));
        if rd32(8) != SI_TKILL || rd32(16) != stop.ns_tgid {
            // someone else's signal, which ours merged into: queued again
            // (to the thread itself: the only sender that may give any siginfo)
            crate::pr_info!("thread {tid}: a signal {} sent by someone else met the batch's own: queued again", stop.sig);
            self.write(0, &si.0)?;
            let nr = libc::SYS_rt_tgsigqueueinfo;
            self.call(tid, "rt_tgsigqueueinfo", nr, &[stop.ns_tgid as u64, stop.ns_tid as u64, sig, s])?;
        }
        let back = self.read(0, usize::try_from(mask_off).map_err(io::Error::other)?)?;
        let mut out = Vec::with_capacity(calls.len());
        for (i, (c, &off)) in calls.iter().zip(&offs).enumerate() {
            let at = i * RECORD as usize + 56;
            let raw = i64::from_le_bytes(back[at..at + 8].try_into().expect("8"));
            let buf = c.out.map_or(Vec::new(), |(_, len)| back[off as usize..off as usize + len].to_vec());
            out.push(ReadOut { raw, out: buf });
        }
        Ok(out)
    }

    /// The main thread (the one pump calls run in).
    pub fn main_tid(&self) -> Pid {
        self.order[0]
    }

    /// Write `bytes` at scratch offset `off`.
    pub fn write(&self, off: u64, bytes: &[u8]) -> io::Result<()> {
        self.mem.write_all_at(bytes, self.scratch + off)
    }

    /// Arm the pump cleanup: the main thread's CPU mask is saved at
    /// [`PUMP_MASK_OFF`], the fd slots at [`PUMP_FDS_OFF`] are set to
    /// -1 (closing -1 is harmless) and the main thread is parked on the
    /// cleanup, so that from here an engine that dies makes the thread close
    /// whatever fds a pump call put there and take its own CPU mask back
    /// before it `rt_sigreturn`s. Then the thread is moved to `cpu` (where
    /// the engine runs: an injected call then costs no cross-CPU wakeups).
    pub fn arm_pump(&mut self, cpu: Option<usize>) -> io::Result<()> {
        let tid = self.order[0];
        let mask = crate::sys::process::sched_getaffinity(tid)?;
        let bytes: Vec<u8> = mask.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.write(PUMP_MASK_OFF, &bytes)?;
        self.write(PUMP_FDS_OFF, &[0xff; 4 * PUMP_FDS])?;
        let code = self.code;
        let s = self.threads.get_mut(&tid).expect("main thread");
        s.parked.ip = code + CLEANUP_OFF;
        ptrace::set_regs(tid, &s.parked)?;
        if let Some(c) = cpu.filter(|&c| c < 1024 && mask[c / 64] & (1 << (c % 64)) != 0) {
            let mut one = [0u64; 16];
            one[c / 64] = 1 << (c % 64);
            if let Err(e) = crate::sys::process::sched_setaffinity(tid, &one) {
                crate::pr_debug!("can't move thread {tid} to CPU {c}: {e}");
            }
        }
        Ok(())
    }

    /// Run syscall `nr` in the main thread from the pump-call `syscall`,
    /// whose fall-through (a dead engine) is the cleanup; after the exit
    /// stop the thread is parked on the cleanup again. The raw result.
    pub fn pump_call(&mut self, nr: i64, args: &[u64]) -> io::Result<i64> {
        let tid = self.order[0];
        let mut r = call_regs(&self.threads[&tid].parked, nr, args);
        r.ip = self.code + PUMP_CALL_OFF;
        Ok(step(tid, &r, &["mid-pump"], &self.stop_seen)?.ax as i64)
    }

    /// Run `calls` in the main thread, armed ([`arm_pump`](Self::arm_pump)):
    /// as one batch whose end falls into the cleanup when a signal fits
    /// ([`reads`](Self::reads)), else each from the pump-call `syscall`
    /// ([`pump_call`](Self::pump_call)); their raw results. A dead engine
    /// mid-batch lets the thread run the rest, then the cleanup: whatever
    /// fds the calls put in the slots at [`PUMP_FDS_OFF`] are closed.
    pub fn pump_calls(&mut self, calls: &[Read]) -> io::Result<Vec<i64>> {
        let tid = self.order[0];
        match self.batch_stop(tid, CLEANUP_OFF)? {
            Some(stop) => Ok(self.run_batch(tid, calls, stop, Some("mid-pump"))?.into_iter().map(|o| o.raw).collect()),
            None => calls.iter().map(|c| self.pump_call(c.nr, &c.args)).collect(),
        }
    }

    /// Disarm: run the cleanup's closes and its sched_setaffinity in the
    /// main thread (a dead engine midway lets the thread finish them
    /// itself), then park it on the plain `rt_sigreturn` again.
    ///
    /// The cleanup's calls run as one batch when a signal fits its end
    /// ([`reads`](Self::reads)): the thread is parked on the cleanup while
    /// the records are written, and a dead engine mid-batch lets the batch
    /// finish the same calls (closing an fd twice is harmless: nothing in
    /// the frozen process opens one in between).
    pub fn disarm_pump(&mut self) -> io::Result<()> {
        let tid = self.order[0];
        if let Some(stop) = self.batch_stop(tid, CLEANUP_OFF)? {
            let fds = self.read(PUMP_FDS_OFF, 4 * PUMP_FDS)?;
            let mut calls: Vec<Read> = fds
                .chunks_exact(4)
                .map(|b| Read::new("close", libc::SYS_close, &[i32::from_le_bytes(b.try_into().expect("4")) as i64 as u64]))
                .collect();
            calls.push(Read::new("sched_setaffinity", libc::SYS_sched_setaffinity, &[0, 128, self.scratch + PUMP_MASK_OFF]));
            self.run_batch(tid, &calls, stop, None)?;
        } else {
            let mut r = self.threads[&tid].parked;
            r.ip = self.code + CLEANUP_OFF;
            for _ in 0..CLEANUP_SYSCALLS {
                r = step(tid, &r, &[], &self.stop_seen)?;
            }
        }
        let code = self.code;
        let s = self.threads.get_mut(&tid).expect("main thread");
        s.parked.ip = code + PARK_OFF;
        s.parked.ax = NR_RT_SIGRETURN;
        ptrace::set_regs(tid, &s.parked)
    }

    /// The scratch mapping: (start, length). A process forked from the
    /// frozen one ([`fork_call`](Self::fork_call)) has its own copy there.
    pub fn mapping(&self) -> (u64, u64) {
        (self.code, self.len)
    }

    /// Fork the frozen process from its main thread: `clone3` with the
    /// `struct clone_args` in `args` (written at scratch offset 0), run from
    /// the fork call of the code page. If the engine dies at any point, the
    /// main thread falls through into its `rt_sigreturn` and the child, if
    /// one was made, into `exit_group(0)` (the child is a ptrace-attached
    /// copy, detached when the engine dies). The fork and clone events are
    /// reported to the engine for this one call only. Returns the raw
    /// result and the new child's pid, stopped in its first ptrace stop
    /// (its registers at the syscall's return, in its copy of this
    /// mapping) and traced with the caller's options (`options`).
    pub fn fork_call(&mut self, args: &[u8], options: u64) -> io::Result<(i64, Option<Pid>)> {
        // (the thread then sits at `test %rax,%rax` on its way to
        // rt_sigreturn: parked)
        self.fork_call_begin(args, options)?;
        self.fork_call_end()
    }

    /// [`fork_call`](Self::fork_call) in two halves, so that several
    /// frozen processes fork at once (tfork's snapshot forks): this one
    /// returns once the clone3 runs (past its syscall-entry stop);
    /// [`fork_call_end`](Self::fork_call_end) waits for it. Nothing else
    /// may be done with this session in between.
    pub fn fork_call_begin(&mut self, args: &[u8], options: u64) -> io::Result<()> {
        let tid = self.order[0];
        self.write(0, args)?;
        let mut r = call_regs(&self.threads[&tid].parked, libc::SYS_clone3, &[self.scratch, args.len() as u64]);
        r.ip = self.code + FORK_OFF;
        let base = ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP;
        ptrace::set_options(tid, base | options)?;
        let out = fork_enter(tid, &r, &self.stop_seen);
        if out.is_err() {
            let _ = ptrace::set_options(tid, base);
        }
        out
    }

    /// The end of the fork [`fork_call_begin`](Self::fork_call_begin)
    /// started: as [`fork_call`](Self::fork_call)'s result.
    pub fn fork_call_end(&mut self) -> io::Result<(i64, Option<Pid>)> {
        let tid = self.order[0];
        let out = fork_leave(tid, &self.stop_seen);
        let back = ptrace::set_options(tid, ptrace::O_TRACESYSGOOD | ptrace::O_SUSPEND_SECCOMP);
        let (regs, child) = out?;
        back?;
        Ok((regs.ax as i64, child))
    }

    /// Read `len` bytes at scratch offset `off`.
    pub fn read(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem.read_exact_at(&mut v, self.scratch + off)?;
        Ok(v)
    }

    pub fn read_u64s(&self, off: u64, n: usize) -> io::Result<Vec<u64>> {
        let b = self.read(off, n * 8)?;
        Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }
}

/// Registers for syscall `nr(args)` from a parked state.
fn call_regs(parked: &Regs, nr: i64, args: &[u64]) -> Regs {
    let mut r = *parked;
    r.ax = nr as u64;
    r.orig_ax = u64::MAX;
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    (r.di, r.si, r.dx, r.r10, r.r8, r.r9) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    r
}

/// Load `r` and run its syscall to the exit stop; the registers there.
///
/// Signals are blocked, but two kinds of stop still come: a SIGSTOP
/// (unblockable) is taken off in its signal-delivery stop and recorded in
/// `stop_seen`, so the freeze goes on and the process is stopped again
/// when it is released ([`Frozen`]'s `Drop`), as upstream does; a
/// group-stop or interrupt trap (PTRACE_EVENT_STOP: the process was
/// stopped before we seized it, or a stop began before the signal was
/// taken) is resumed, since a seized thread runs on from it under ptrace.
/// Anything else means someone else is killing the thread: an error. A
/// syscall that does not finish within a bounded number of such stops is
/// an error too, never a wait without end.
fn step(tid: Pid, r: &Regs, fault_points: &[&str], stop_seen: &std::sync::atomic::AtomicBool) -> io::Result<Regs> {
    ptrace::set_regs(tid, r)?;
    let mut seen_entry = false;
    for _ in 0..1000 {
        // a signal-delivery stop resumed with 0 discards its signal
        ptrace::cont_syscall(tid, 0)?;
        match ptrace::wait(tid)? {
            Wait::Stopped { sig, event: 0 } if sig == (libc::SIGTRAP | 0x80) => {
                if seen_entry {
                    return ptrace::get_regs(tid);
                }
                seen_entry = true;
                for p in fault_points {
                    crate::fault::point(p);
                    crate::fault::stop_point(p, tid);
                }
            }
            other => other_stop(tid, other, stop_seen, || format!("during injected syscall {}", r.ax))?,
        }
    }
    Err(io::Error::other(format!("thread {tid} did not finish injected syscall {} after 1000 stops", r.ax)))
}

/// A stop of `tid` during injection other than the one awaited: a
/// SIGSTOP is taken off and recorded in `stop_seen` (the process is
/// stopped again when released), a group-stop or interrupt trap is
/// resumed (by the caller's next resume); anything else is an error
/// saying what was injected (`during`).
fn other_stop(tid: Pid, w: Wait, stop_seen: &std::sync::atomic::AtomicBool, during: impl FnOnce() -> String) -> io::Result<()> {
    match w {
        Wait::Stopped { sig: libc::SIGSTOP, event: 0 } => {
            crate::pr_info!("thread {tid} got a SIGSTOP during injection: the process is stopped again when released");
            stop_seen.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        Wait::Stopped { event: ptrace::EVENT_STOP, sig } => {
            crate::pr_debug!("thread {tid}: group-stop or interrupt trap ({sig}) during injection, resumed");
            Ok(())
        }
        other => Err(io::Error::other(format!("thread {tid} stopped unexpectedly {}: {other:?}", during()))),
    }
}

/// The first half of an injected fork ([`Parasite::fork_call`]): load `r` and run to its
/// syscall-entry stop, then resume the thread into the syscall and return
/// while it runs ([`fork_leave`] waits for the rest).
fn fork_enter(tid: Pid, r: &Regs, stop_seen: &std::sync::atomic::AtomicBool) -> io::Result<()> {
    ptrace::set_regs(tid, r)?;
    for _ in 0..1000 {
        ptrace::cont_syscall(tid, 0)?;
        match ptrace::wait(tid)? {
            Wait::Stopped { sig, event: 0 } if sig == (libc::SIGTRAP | 0x80) => {
                crate::fault::point("tfork-fork");
                return ptrace::cont_syscall(tid, 0);
            }
            other => other_stop(tid, other, stop_seen, || "during an injected clone3".into())?,
        }
    }
    Err(io::Error::other(format!("thread {tid} did not enter an injected clone3 after 1000 stops")))
}

/// The second half of an injected fork, after [`fork_enter`]: the exit
/// stop's registers and the new child's pid, once it is in its first stop.
fn fork_leave(tid: Pid, stop_seen: &std::sync::atomic::AtomicBool) -> io::Result<(Regs, Option<Pid>)> {
    let mut child = None;
    for _ in 0..1000 {
        match ptrace::wait(tid)? {
            Wait::Stopped { sig, event: 0 } if sig == (libc::SIGTRAP | 0x80) => {
                if let Some(c) = child {
                    wait_first_stop(c)?;
                }
                return Ok((ptrace::get_regs(tid)?, child));
            }
            Wait::Stopped { sig: libc::SIGTRAP, event } if event == ptrace::EVENT_FORK || event == ptrace::EVENT_CLONE => {
                let c = ptrace::event_msg(tid)?;
                child = Some(i32::try_from(c).map_err(io::Error::other)?);
                crate::fault::point("tfork-forked");
            }
            other => other_stop(tid, other, stop_seen, || "during an injected clone3".into())?,
        }
        ptrace::cont_syscall(tid, 0)?;
    }
    Err(io::Error::other(format!("thread {tid} did not finish an injected clone3 after 1000 stops")))
}

/// Wait for the first stop of a process or thread auto-attached by a fork
/// or clone event (PTRACE_EVENT_STOP for a seized parent).
pub fn wait_first_stop(pid: Pid) -> io::Result<()> {
    loop {
        match ptrace::wait(pid)? {
            Wait::Stopped { event: ptrace::EVENT_STOP, .. } => return Ok(()),
            Wait::Stopped { .. } => ptrace::cont(pid, 0)?,
            other => return Err(io::Error::other(format!("new process {pid} died before its first stop: {other:?}"))),
        }
    }
}

impl Drop for Parasite {
    fn drop(&mut self) {
        // Every step keeps each thread restorable: other threads first (they
        // park in the mapping about to go), mask before registers (a parked
        // thread gets its mask from the frame anyway).
        for tid in self.order.iter().skip(1) {
            let Some(s) = self.threads.get(tid) else { continue };
            if let Err(e) = ptrace::set_sigmask(*tid, s.mask).and_then(|()| ptrace::set_regs(*tid, &s.orig)) {
                crate::pr_warn!("can't put back the state of thread {tid}: {e}");
            }
        }
        let Some(&main) = self.order.first() else { return };
        if self.code != 0 && self.threads.get(&main).is_some_and(|s| s.parked.ip == self.code + CLEANUP_OFF) {
            if let Err(e) = self.disarm_pump() {
                crate::pr_warn!("can't close the pump fds in {}: {e}", self.pid);
            }
        }
        let (orig, mask) = self.threads.get(&main).map(|s| (s.orig, s.mask)).unwrap_or(self.main_orig);
        let _window = crate::fault::window();
        if self.code != 0 {
            // the last window: once the mapping is gone the main thread must
            // get its own registers before it runs again (signals blocked for
            // it if it was never parked)
            let from = self.threads.get(&main).map(|s| s.parked).unwrap_or(orig);
            let mut r = call_regs(&from, libc::SYS_munmap, &[self.code, self.len]);
            r.ip = if self.code_ready { self.code } else { self.gadget };
            let blocked = ptrace::set_sigmask(main, !0);
            match blocked.and_then(|()| step(main, &r, &[], &self.stop_seen)).map(|o| crate::sys::check_raw(o.ax as i64)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) | Err(e) => crate::pr_warn!("can't unmap the scratch mapping of {}: {e}", self.pid),
            }
        }
        if let Err(e) = ptrace::set_regs(main, &orig).and_then(|()| ptrace::set_sigmask(main, mask)) {
            crate::pr_warn!("can't put back the state of thread {main}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Regs {
        Regs { sp: 0x7fff_0000_1234, ip: 0x40_1000, ax: 7, cs: 0x33, ss: 0x2b, flags: 0x246, r15: 15, ..Default::default() }
    }

    #[test]
    fn pump_cleanup_code_addresses_its_scratch_slots() {
        // every `mov fdK(%rip),%edi` reads fd slot K, the `lea` the mask
        for k in 0..PUMP_FDS {
            let at = CLEANUP_OFF as usize + k * CLOSE_LEN;
            assert_eq!(&CODE[at..at + 2], &[0x8b, 0x3d]);
            let d = u32::from_le_bytes(CODE[at + 2..at + 6].try_into().unwrap()) as u64;
            assert_eq!(at as u64 + 6 + d, CODE_LEN + PUMP_FDS_OFF + 4 * k as u64);
            assert_eq!(&CODE[at + 6..at + 13], &[0xb8, 0x03, 0, 0, 0, 0x0f, 0x05]);
        }
        let lea = CLEANUP_OFF as usize + PUMP_FDS * CLOSE_LEN + 7;
        assert_eq!(&CODE[lea..lea + 3], &[0x48, 0x8d, 0x15]);
        let d = u32::from_le_bytes(CODE[lea + 3..lea + 7].try_into().unwrap()) as u64;
        assert_eq!(lea as u64 + 7 + d, CODE_LEN + PUMP_MASK_OFF);
        assert_eq!(&CODE[FORK_OFF as usize - 7..FORK_OFF as usize], &[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05]);
        // the fork call's parent branch jumps to `mov $15,%eax; syscall`
        let rel = CODE[FORK_OFF as usize + 6] as i8 as i64;
        assert_eq!(FORK_OFF as i64 + 7 + rel, 2);
        assert_eq!(&CODE[..PUMP_CALL_OFF as usize + 2], &[0x0f, 0x05, 0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x0f, 0x05]);
        // and a disassembler, where there is one, reads the intended sequence
        let path = std::env::temp_dir().join(format!("criu-rs-pump-code-{}", std::process::id()));
        std::fs::write(&path, CODE).unwrap();
        let out = std::process::Command::new("objdump").args(["-D", "-b", "binary", "-m", "i386:x86-64"]).arg(&path).output();
        let _ = std::fs::remove_file(&path);
        let Some(out) = out.ok().filter(|o| o.status.success()) else { return };
        let text = String::from_utf8_lossy(&out.stdout);
        let ops: Vec<String> = text
            .lines()
            .filter_map(|l| l.split('\t').nth(2))
            .map(|i| i.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        let mut want = vec!["syscall", "mov", "syscall", "syscall"];
        for _ in 0..PUMP_FDS {
            want.extend(["mov", "mov", "syscall"]);
        }
        want.extend(["xor", "mov", "lea", "mov", "syscall", "mov", "syscall"]);
        want.extend(["syscall", "test", "jne", "mov", "xor", "syscall"]);
        want.extend(["mov", "cmp", "je", "mov", "mov", "mov", "mov", "mov", "mov", "syscall", "mov", "add", "jmp", "mov", "jmp"]);
        assert_eq!(ops, want, "{text}");
    }

    #[test]
    fn frame_layout_matches_the_kernel() {
        let r = regs();
        let mut xs = vec![0u8; 832];
        xs[SW_RESERVED..SW_RESERVED + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        xs[SW_RESERVED + 8..SW_RESERVED + 16].copy_from_slice(&7u64.to_le_bytes());
        xs[512..520].copy_from_slice(&3u64.to_le_bytes());
        xs[520..528].copy_from_slice(&u64::MAX.to_le_bytes());
        let top = 0x7f00_0000_3000 - 5;
        let f = build_sigframe(&r, 0x5555, &xs, top);
        assert_eq!(f.fpstate % 64, 0);
        assert_eq!((f.addr + 8) % 16, 0, "frame is aligned like at a function entry");
        assert!(f.fpstate + f.bytes.len() as u64 - (f.fpstate - f.addr) <= top, "nothing above the top");
        assert!(f.bytes.len() as u64 + 64 + 16 >= top - f.addr, "frame right below the top");
        assert!(f.fpstate >= f.addr + RT_SIGFRAME_SIZE);
        let rd = |o: u64| u64::from_le_bytes(f.bytes[o as usize..o as usize + 8].try_into().unwrap());
        // sigreturn reads the frame at rsp - 8
        assert_eq!(f.rsp, f.addr + 8);
        assert_eq!(rd(8), UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
        assert_eq!(rd(48 + 7 * 8), 15, "r15");
        assert_eq!(rd(48 + 13 * 8), 7, "ax");
        assert_eq!(rd(48 + 15 * 8), r.sp, "sp");
        assert_eq!(rd(48 + 16 * 8), r.ip, "ip");
        assert_eq!(rd(48 + 184), f.fpstate, "fpstate pointer");
        assert_eq!(rd(304), 0x5555, "uc_sigmask");
        assert_eq!(u32::from_le_bytes(f.bytes[32..36].try_into().unwrap()), 3, "ss_flags left invalid");
        let fo = (f.fpstate - f.addr) as usize;
        let sw = &f.bytes[fo + SW_RESERVED..];
        assert_eq!(u32::from_le_bytes(sw[0..4].try_into().unwrap()), FP_XSTATE_MAGIC1);
        let size = u32::from_le_bytes(sw[16..20].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(sw[4..8].try_into().unwrap()) as usize, size + 4, "extended_size");
        assert_eq!(u32::from_le_bytes(f.bytes[fo + size..fo + size + 4].try_into().unwrap()), FP_XSTATE_MAGIC2);
        assert_eq!(rd(f.fpstate - f.addr + 520), 0, "xcomp_bv cleared");
    }

    #[test]
    fn gadget_search_advances_to_the_end_of_a_range() {
        // a range without `syscall` whose last read leaves one byte: the
        // search must end (it used to read that byte forever)
        let text: Vec<u8> = (0..10u8).collect();
        let read = |b: &mut [u8], a: u64| {
            b.copy_from_slice(&text[a as usize..a as usize + b.len()]);
            Ok(())
        };
        for len in 2..=10 {
            for buf in 2..=6 {
                let mut v = vec![0u8; buf];
                assert_eq!(search_range(0, len, &mut v, read).unwrap(), None, "len {len} buf {buf}");
            }
        }
        assert_eq!(search_range(0, 1, &mut [0u8; 4], read).unwrap(), None);
        assert_eq!(search_range(5, 5, &mut [0u8; 4], read).unwrap(), None);
        // found where it straddles two reads, and at the very end
        let mut t2 = [0x90u8; 12];
        t2[3] = 0x0f;
        t2[4] = 0x05;
        let read2 = |b: &mut [u8], a: u64| {
            b.copy_from_slice(&t2[a as usize..a as usize + b.len()]);
            Ok(())
        };
        assert_eq!(search_range(0, 12, &mut [0u8; 4], read2).unwrap(), Some(3));
        let mut t3 = [0x90u8; 12];
        t3[10] = 0x0f;
        t3[11] = 0x05;
        let read3 = |b: &mut [u8], a: u64| {
            b.copy_from_slice(&t3[a as usize..a as usize + b.len()]);
            Ok(())
        };
        assert_eq!(search_range(0, 12, &mut [0u8; 5], read3).unwrap(), Some(10));
        // an unreadable piece ends the range
        let fail = |_: &mut [u8], _: u64| Err(io::Error::other("EIO"));
        assert_eq!(search_range(0, 100, &mut [0u8; 4], fail).unwrap(), None);
    }

    #[test]
    fn frame_slots_hold_the_largest_frame() {
        for len in [440usize, 1000, 3000, 4096, 9000] {
            let slot = frame_slot(len);
            assert_eq!(slot % 4096, 0);
            assert!(slot >= len as u64 + REDZONE + 64 + 16);
        }
    }

    #[test]
    fn fxsave_only_frame_has_no_magic() {
        let f = build_sigframe(&regs(), 0, &[0u8; 512], 0x7f00_0000_3000);
        let fo = (f.fpstate - f.addr) as usize;
        assert_eq!(f.bytes.len() - fo, 512);
        assert_eq!(&f.bytes[fo + SW_RESERVED..fo + SW_RESERVED + 4], &[0, 0, 0, 0]);
    }
}
