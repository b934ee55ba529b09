//! Per-process and per-thread state: registers, xsave, TLS, rseq, signal
//! masks and queues, sigactions, itimers, POSIX timers, rlimits, creds,
//! sigaltstack, robust list, clear_tid, comm, personality, prctl flags.

use super::freeze::FrozenThread;
use super::parasite::{Parasite, Read};
use super::proc;
use crate::model::{AltStack, Creds, Itimer, KobjIds, PosixTimer, Rseq, SeccompFilter, Task, Thread, TimeNs};
use crate::sys::process::KSigaction;
use crate::sys::ptrace::{self, Regs};
use crate::sys::Pid;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{what} of {tid}")]
    /// `loc`: where in the engine it arose (the `io_err` call), for the log.
    Io { tid: Pid, what: &'static str, #[source] source: io::Error, loc: &'static std::panic::Location<'static> },
    #[error("process {pid}: {what}")]
    Unsupported { pid: Pid, what: String },
    #[error("thread {tid} has {n} seccomp filters; more than {max} is not supported")]
    SeccompChain { tid: Pid, n: usize, max: usize },
}

#[track_caller]
fn io_err(tid: Pid, what: &'static str) -> impl FnOnce(io::Error) -> TaskError {
    let loc = std::panic::Location::caller();
    move |e| TaskError::Io { tid, what, source: e, loc }
}

impl TaskError {
    /// Where in the engine the error arose, when it knows.
    pub fn location(&self) -> Option<&'static std::panic::Location<'static>> {
        match self {
            TaskError::Io { loc, .. } => Some(loc),
            _ => None,
        }
    }
}

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// Registers as the thread must resume: an interrupted syscall is either
/// rewound to run again or made to return -EINTR, as the kernel would on
/// signal delivery.
pub fn fixup_syscall_restart(mut r: Regs) -> Regs {
    if (r.orig_ax as i64) >= 0 {
        match -(r.ax as i64 as i32 as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.ax = r.orig_ax;
                r.ip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                crate::pr_warn!("Will restore with interrupted system call");
                r.ax = (-libc::EINTR as i64) as u64;
            }
            _ => {}
        }
    }
    r
}

fn parse_creds(status: &str) -> Creds {
    let four = |k| {
        let v = proc::status_nums(status, k);
        [0, 1, 2, 3].map(|i| v.get(i).copied().unwrap_or(0) as u32)
    };
    Creds {
        uid: four("Uid"),
        gid: four("Gid"),
        groups: proc::status_nums(status, "Groups").into_iter().map(|g| g as u32).collect(),
        cap_inh: proc::status_u64_hex(status, "CapInh").unwrap_or(0),
        cap_prm: proc::status_u64_hex(status, "CapPrm").unwrap_or(0),
        cap_eff: proc::status_u64_hex(status, "CapEff").unwrap_or(0),
        cap_bnd: proc::status_u64_hex(status, "CapBnd").unwrap_or(0),
        cap_amb: proc::status_u64_hex(status, "CapAmb").unwrap_or(0),
        secbits: 0,
        no_new_privs: proc::status_field(status, "NoNewPrivs") == Some("1"),
    }
}

const RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL: u32 = 1 << 1;

/// Threads stopped inside an rseq critical section resume at the
/// section's abort handler, as the kernel moves them on preemption or
/// signal delivery (struct rseq.rseq_cs at offset 8 -> struct rseq_cs:
/// version, flags, start_ip, post_commit_offset, abort_ip). The frozen
/// registers are changed, so the dump records the abort handler and a
/// thread left running resumes there too.
///
/// Must run before any syscall is injected: the kernel handles the pending
/// rseq notification on that syscall's return, sees an ip outside the
/// section and clears rseq_cs.
pub fn fixup_rseq_all(_pid: Pid, frozen: &mut super::freeze::Frozen) -> Result<(), TaskError> {
    for i in 0..frozen.threads.len() {
        let tid = frozen.threads[i].tid;
        let rc = ptrace::rseq_config(tid).map_err(io_err(tid, "rseq configuration"))?;
        if rc.rseq_abi_pointer != 0 {
            let mem = frozen.mem().map_err(io_err(tid, "rseq area"))?.try_clone().map_err(io_err(tid, "rseq area"))?;
            fixup_rseq(&mem, tid, rc.rseq_abi_pointer, &mut frozen.threads[i].regs)?;
        }
    }
    Ok(())
}

fn fixup_rseq(mem: &std::fs::File, tid: Pid, rseq_ptr: u64, regs: &mut Regs) -> Result<(), TaskError> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    mem.read_exact_at(&mut b, rseq_ptr + 8).map_err(io_err(tid, "rseq area"))?;
    let cs_ptr = u64::from_le_bytes(b);
    if cs_ptr == 0 {
        return Ok(());
    }
    let mut cs = [0u8; 32];
    mem.read_exact_at(&mut cs, cs_ptr).map_err(io_err(tid, "rseq critical section descriptor"))?;
    let w = |o: usize| u64::from_le_bytes(cs[o..o + 8].try_into().expect("8"));
    let flags = u32::from_le_bytes(cs[4..8].try_into().expect("4"));
    let (start, post_commit, abort) = (w(8), w(16), w(24));
    if regs.ip.wrapping_sub(start) < post_commit && flags & RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL == 0 {
        crate::pr_warn!("thread {tid} is in an rseq critical section at {:#x}: it resumes at the abort handler {abort:#x}", regs.ip);
        regs.ip = abort;
    }
    Ok(())
}

/// Seccomp filters of one thread, oldest first, with their flags.
fn collect_seccomp(tid: Pid) -> Result<Vec<SeccompFilter>, TaskError> {
    const MAX: usize = 512;
    let mut v = Vec::new();
    while let Some(prog) = ptrace::seccomp_filter(tid, v.len() as u64).map_err(io_err(tid, "PTRACE_SECCOMP_GET_FILTER"))? {
        let flags = ptrace::seccomp_filter_flags(tid, v.len() as u64).unwrap_or(0);
        v.push(SeccompFilter { prog, flags });
        if v.len() > MAX {
            return Err(TaskError::SeccompChain { tid, n: v.len(), max: MAX });
        }
    }
    // index 0 is the oldest filter (kernel's __get_nth_filter counts from the first installed)
    Ok(v)
}

/// Dump one thread (registers come from the freeze).
pub fn collect_thread(pid: Pid, ft: &FrozenThread, par: &mut Parasite, ns_tid: i32) -> Result<Thread, TaskError> {
    let tid = ft.tid;
    let xsave = ptrace::get_xstate(tid).map_err(io_err(tid, "NT_X86_XSTATE"))?;
    let tls = (12..15).map(|i| ptrace::get_thread_area(tid, i)).collect::<Result<Vec<_>, _>>().map_err(io_err(tid, "TLS"))?;
    let rc = ptrace::rseq_config(tid).map_err(io_err(tid, "rseq configuration"))?;
    let rseq = (rc.rseq_abi_pointer != 0).then_some(Rseq { ptr: rc.rseq_abi_pointer, len: rc.rseq_abi_size, sig: rc.signature });
    let robust_list = ptrace::get_robust_list(tid).map_err(io_err(tid, "robust list"))?;
    let pending = ptrace::peek_siginfo(tid, 0).map_err(io_err(tid, "pending signals"))?.into_iter().map(|s| s.0).collect();
    // one batch of injected queries (see Parasite::reads)
    let calls = [
        Read::new("sigaltstack", libc::SYS_sigaltstack, &[0, 0]).out(1, 24),
        Read::new("prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, &[libc::PR_GET_TID_ADDRESS as u64, 0]).out(1, 8),
        Read::new("prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, &[libc::PR_GET_SECUREBITS as u64]),
        Read::new("prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, &[libc::PR_GET_PDEATHSIG as u64, 0]).out(1, 4),
    ];
    let r = par.reads(tid, &calls).map_err(io_err(tid, "injected queries"))?;
    r[0].check(tid, calls[0].what).map_err(io_err(tid, "sigaltstack"))?;
    let ss = &r[0].out;
    let altstack = AltStack {
        sp: u64::from_le_bytes(ss[0..8].try_into().expect("8")),
        flags: u32::from_le_bytes(ss[8..12].try_into().expect("4")),
        size: u64::from_le_bytes(ss[16..24].try_into().expect("8")),
    };
    r[1].check(tid, calls[1].what).map_err(io_err(tid, "clear_tid"))?;
    let clear_tid = r[1].u64_at(0);
    let secbits = r[2].check(tid, calls[2].what).map_err(io_err(tid, "securebits"))?;
    r[3].check(tid, calls[3].what).map_err(io_err(tid, "pdeath_signal"))?;
    let pdeath_sig = r[3].out.clone();
    let status = par.thread_status(tid).map_err(io_err(tid, "status"))?.to_string();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).map_err(io_err(tid, "stat"))?;
    let (comm, f) = proc::parse_stat(&stat).unwrap_or_default();
    let mut creds = parse_creds(&status);
    creds.secbits = secbits as u32;
    let seccomp_mode = proc::status_field(&status, "Seccomp").and_then(|v| v.parse().ok()).unwrap_or(0);
    let seccomp = if seccomp_mode == 2 { collect_seccomp(tid)? } else { Vec::new() };
    // (an rseq critical section was left for its abort handler at freeze: fixup_rseq_all)
    let regs = fixup_syscall_restart(ft.regs);
    let sched_policy = proc::stat_field(&f, 41) as u32;
    let rt = sched_policy == libc::SCHED_FIFO as u32 || sched_policy == libc::SCHED_RR as u32;
    // (read from outside, by host tid)
    let cpus = pinned_cpus(&ft.affinity).map_err(io_err(tid, "the CPUs online"))?;
    let ioprio = crate::sys::process::ioprio_get(tid).map_err(io_err(tid, "ioprio_get"))?;
    Ok(Thread {
        tid: ns_tid,
        regs,
        xsave,
        tls,
        rseq,
        altstack,
        robust_list,
        clear_tid,
        blocked: ft.sigmask,
        pending,
        comm,
        creds,
        sched_nice: proc::stat_field(&f, 19) as i64 as i32,
        sched_policy,
        sched_prio: if rt { proc::stat_field(&f, 40) as u32 } else { 0 },
        cpus,
        ioprio,
        pdeath_sig: u32::from_le_bytes(pdeath_sig.try_into().expect("4")),
        seccomp_mode,
        seccomp,
    })
}

/// A thread's CPU affinity `mask` (as seized, before the dump pinned it)
/// when it leaves out some CPU online now (`taskset`, sched_setaffinity);
/// empty when it has them all.
fn pinned_cpus(mask: &[u64; 16]) -> std::io::Result<Vec<u64>> {
    let online = super::cache::online_cpus()?;
    let all = online.iter().enumerate().all(|(i, w)| mask.get(i).copied().unwrap_or(0) & w == *w);
    let used = mask.iter().rposition(|w| *w != 0).map_or(0, |i| i + 1);
    Ok(if all { Vec::new() } else { mask[..used].to_vec() })
}

/// The id of host thread `tid` of `pid` in the task's own pid namespace.
fn ns_tid(pid: Pid, tid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .and_then(|st| proc::status_nums(&st, "NSpid").last().map(|v| *v as i32))
        .unwrap_or(tid)
}

/// Process-wide state into `t` (threads, mm, files are filled elsewhere).
pub fn collect_process(pid: Pid, par: &mut Parasite, t: &mut Task) -> Result<(), TaskError> {
    // every injected query of the process in one batch (see Parasite::reads)
    let sigs: Vec<u64> = (1..=64u64).filter(|&s| s != libc::SIGKILL as u64 && s != libc::SIGSTOP as u64).collect();
    let itimers = [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF];
    let timers_txt = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    let timers = proc::parse_timers(&timers_txt);
    let mut calls = vec![Read::new("brk", libc::SYS_brk, &[0])];
    calls.extend(sigs.iter().map(|&sig| Read::new("rt_sigaction", libc::SYS_rt_sigaction, &[sig, 0, 0, 8]).out(2, 32)));
    calls.extend(itimers.iter().map(|&w| Read::new("getitimer", libc::SYS_getitimer, &[w as u64, 0]).out(1, 32)));
    calls.extend(timers.iter().map(|tm| Read::new("timer_gettime", libc::SYS_timer_gettime, &[tm.0 as u64, 0]).out(1, 32)));
    calls.push(Read::new("prctl(PR_GET_CHILD_SUBREAPER)", libc::SYS_prctl, &[libc::PR_GET_CHILD_SUBREAPER as u64, 0]).out(1, 4));
    calls.push(Read::new("prctl(PR_GET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_GET_DUMPABLE as u64]));
    calls.push(Read::new("prctl(PR_GET_THP_DISABLE)", libc::SYS_prctl, &[PR_GET_THP_DISABLE]));
    calls.push(Read::new("membarrier(GET_REGISTRATIONS)", libc::SYS_membarrier, &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0]));
    let res = par.reads(pid, &calls).map_err(io_err(pid, "injected queries"))?;
    let mut res = calls.iter().zip(res);
    let mut next = |what: &'static str| {
        let (c, r) = res.next().expect("one result a call");
        debug_assert_eq!(c.what, what);
        r
    };
    t.mm.brk = next("brk").check(pid, "brk").map_err(io_err(pid, "brk"))?;
    let mut acts = Vec::with_capacity(64);
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            acts.push(KSigaction::default());
            continue;
        }
        let r = next("rt_sigaction");
        r.check(pid, "rt_sigaction").map_err(io_err(pid, "sigaction"))?;
        acts.push(KSigaction { handler: r.u64_at(0), flags: r.u64_at(1), restorer: r.u64_at(2), mask: r.u64_at(3) });
    }
    t.sigactions = acts;
    for i in 0..itimers.len() {
        let r = next("getitimer");
        r.check(pid, "getitimer").map_err(io_err(pid, "itimer"))?;
        t.itimers[i] = Itimer { isec: r.u64_at(0), iusec: r.u64_at(1), vsec: r.u64_at(2), vusec: r.u64_at(3) };
    }
    for (id, signo, notify, ntid, clock, sigval) in timers {
        let r = next("timer_gettime");
        r.check(pid, "timer_gettime").map_err(io_err(pid, "timer_gettime"))?;
        let w = [r.u64_at(0), r.u64_at(1), r.u64_at(2), r.u64_at(3)];
        const SIGEV_THREAD_ID: i32 = libc::SIGEV_THREAD_ID;
        let (kind, thread_id) = match notify.split_once('/') {
            Some((k, _)) => (k, SIGEV_THREAD_ID),
            None => (notify.as_str(), 0),
        };
        let notify = thread_id
            | match kind {
                "none" => libc::SIGEV_NONE,
                "thread" => libc::SIGEV_THREAD,
                _ => libc::SIGEV_SIGNAL,
            };
        t.posix_timers.push(PosixTimer {
            id,
            clock,
            signo,
            notify,
            // the pid /proc shows for SIGEV_SIGNAL is the owner, not a target thread;
            // a target thread is shown as a host tid: the image wants the task's own
            notify_tid: if notify & SIGEV_THREAD_ID != 0 { ns_tid(pid, ntid) } else { 0 },
            sigval,
            overrun: 0,
            interval: (w[0], w[1]),
            value: (w[2], w[3]),
        });
    }
    let sub = next("prctl(PR_GET_CHILD_SUBREAPER)");
    t.child_subreaper = sub.raw >= 0 && sub.out != [0, 0, 0, 0];
    t.mm.dumpable = next("prctl(PR_GET_DUMPABLE)").check(pid, "prctl(PR_GET_DUMPABLE)").map_err(io_err(pid, "dumpable"))? as u32;
    // mm-wide state that only the process itself can ask for
    let thp = next("prctl(PR_GET_THP_DISABLE)");
    t.mm.thp_disabled = match thp.check(pid, "prctl(PR_GET_THP_DISABLE)").map_err(io_err(pid, "THP disable"))? {
        0 => false,
        1 => true,
        v => {
            return Err(TaskError::Unsupported {
                pid,
                what: format!("PR_GET_THP_DISABLE says {v:#b} (THP disabled except where advised): the image can only say disabled or not"),
            })
        }
    };
    // (the raw result: `call`'s error keeps the errno's kind, not its number)
    t.membarrier = match next("membarrier(GET_REGISTRATIONS)").raw {
        r if r >= 0 => r as u32,
        r if r == -i64::from(libc::EINVAL) => {
            // before Linux 6.3 the registrations can't be read
            crate::pr_warn!("membarrier registrations of {pid} can't be read on this kernel (no MEMBARRIER_CMD_GET_REGISTRATIONS): not dumped");
            0
        }
        r => return Err(io_err(pid, "membarrier registrations")(std::io::Error::from_raw_os_error(-r as i32))),
    };
    t.shared_pending = ptrace::peek_siginfo(pid, ptrace::PEEKSIGINFO_SHARED).map_err(io_err(pid, "shared pending"))?.into_iter().map(|s| s.0).collect();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).map_err(io_err(pid, "limits"))?;
    t.rlimits = proc::parse_limits(&limits);
    let pers = std::fs::read_to_string(format!("/proc/{pid}/personality")).map_err(io_err(pid, "personality"))?;
    t.personality = u32::from_str_radix(pers.trim(), 16).unwrap_or(0);
    t.loginuid = std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(u32::MAX);
    t.oom_score_adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    // (the main thread's status is the process's)
    let status = par.thread_status(pid).map_err(io_err(pid, "status"))?;
    t.seccomp_mode = proc::status_field(status, "Seccomp").and_then(|v| v.parse().ok()).unwrap_or(0);
    t.fs.umask = proc::status_field(status, "Umask").and_then(|v| u32::from_str_radix(v, 8).ok()).unwrap_or(0o22);
    t.fs.cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(io_err(pid, "cwd"))?.to_string_lossy().into();
    t.fs.root = std::fs::read_link(format!("/proc/{pid}/root")).map_err(io_err(pid, "root"))?.to_string_lossy().into();
    (t.fs.cwd_mode, t.fs.root_mode) = (super::files::fs_mode(pid, "cwd"), super::files::fs_mode(pid, "root"));
    Ok(())
}

const PR_GET_THP_DISABLE: u64 = 42;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;

const NS_KINDS: [&str; 8] = ["pid", "net", "ipc", "uts", "time", "mnt", "user", "cgroup"];

/// Inode of `/proc/PID/ns/KIND` (`net:[4026531840]`).
fn ns_ino(pid: Pid, kind: &str) -> Option<u64> {
    let l = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let l = l.to_string_lossy();
    l.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok()
}

/// Kernel-object ids numbered as upstream does: the dumping engine itself
/// first (its ids become inventory's root_ids), then each task. mm, fd
/// table, fs and sighand get a counter each (ids in order of first
/// appearance) and are compared with kcmp(2), the objects seen so far kept
/// in kcmp's order so each task costs O(log n) calls per kind;
/// namespaces share one counter, keyed by their inode, in the order
/// pid, net, ipc, uts, time, mnt, user, cgroup. A namespace kind this
/// kernel lacks gets id 0 (absent from the image).
pub fn collect_ids(pids: &[Pid]) -> Result<(KobjIds, Vec<KobjIds>), TaskError> {
    let me = std::process::id() as Pid;
    // per kind: (representative pid, id), sorted by kcmp order
    let mut reps: [Vec<(Pid, u32)>; 4] = Default::default();
    let mut next = [0u32; 4];
    let mut ns: Vec<(&str, u64, u32)> = Vec::new();
    let mut one = |pid: Pid| -> Result<KobjIds, TaskError> {
        let mut k = [0u32; 4];
        for (i, kind) in [1, 2, 3, 4].into_iter().enumerate() {
            let mut err = None;
            let at = reps[i].binary_search_by(|&(rp, _)| {
                crate::sys::process::kcmp_order(rp, pid, kind).unwrap_or_else(|e| {
                    err.get_or_insert(e);
                    std::cmp::Ordering::Less
                })
            });
            if let Some(e) = err {
                return Err(io_err(pid, "kcmp")(e));
            }
            k[i] = match at {
                Ok(j) => reps[i][j].1,
                Err(j) => {
                    next[i] += 1;
                    reps[i].insert(j, (pid, next[i]));
                    next[i]
                }
            };
        }
        let mut n = [0u32; 8];
        for (i, kind) in NS_KINDS.into_iter().enumerate() {
            let Some(ino) = ns_ino(pid, kind) else { continue };
            n[i] = match ns.iter().find(|(k2, i2, _)| *k2 == kind && *i2 == ino) {
                Some(&(_, _, id)) => id,
                None => {
                    let id = ns.len() as u32 + 1;
                    ns.push((kind, ino, id));
                    crate::pr_debug!("Add {kind} ns {id} pid {pid}");
                    id
                }
            };
        }
        Ok(KobjIds {
            vm: k[0], files: k[1], fs: k[2], sighand: k[3],
            pid_ns: n[0], net_ns: n[1], ipc_ns: n[2], uts_ns: n[3], time_ns: n[4], mnt_ns: n[5], user_ns: n[6], cgroup_ns: n[7],
        })
    };
    let root = one(me)?;
    let tasks = pids.iter().map(|&p| one(p)).collect::<Result<Vec<_>, _>>()?;
    Ok((root, tasks))
}

/// `/proc/PID/timens_offsets`: (monotonic, boottime) offsets in ns.
pub(crate) fn timens_offsets(pid: &str) -> (i128, i128) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).unwrap_or_default();
    let get = |name: &str| -> i128 {
        t.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == name).then(|| {
                    let s: i128 = it.next()?.parse().ok()?;
                    let ns: i128 = it.next()?.parse().ok()?;
                    Some(s * 1_000_000_000 + ns)
                })?
            })
            .unwrap_or(0)
    };
    (get("monotonic"), get("boottime"))
}

/// CLOCK_MONOTONIC and CLOCK_BOOTTIME as the task `pid` sees them now
/// (the engine's clocks shifted by the difference of the time namespaces'
/// offsets), what upstream writes into timens-0.img.
pub fn collect_timens(pid: Pid) -> Result<TimeNs, TaskError> {
    let (tm, tb) = timens_offsets(&pid.to_string());
    let (sm, sb) = timens_offsets("self");
    let clock = |c, off: i128| -> Result<(u64, u64), TaskError> {
        let (s, n) = crate::sys::process::clock_gettime(c).map_err(io_err(pid, "clock_gettime"))?;
        let v = (i128::from(s) * 1_000_000_000 + i128::from(n) + off).max(0);
        Ok(((v / 1_000_000_000) as u64, (v % 1_000_000_000) as u64))
    };
    Ok(TimeNs { monotonic: clock(libc::CLOCK_MONOTONIC, tm - sm)?, boottime: clock(libc::CLOCK_BOOTTIME, tb - sb)? })
}
