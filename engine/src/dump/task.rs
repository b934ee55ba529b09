//! Per-process and per-thread state: registers, xsave, TLS, rseq, signal
//! masks and queues, sigactions, itimers, POSIX timers, rlimits, creds,
//! sigaltstack, robust list, clear_tid, comm, personality, prctl flags.

use super::freeze::FrozenThread;
use super::parasite::Parasite;
use super::proc;
use crate::model::{AltStack, Creds, Itimer, PosixTimer, Rseq, Task, Thread};
use crate::sys::process::KSigaction;
use crate::sys::ptrace::{self, Regs};
use crate::sys::Pid;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{what} of {tid}")]
    Io { tid: Pid, what: &'static str, #[source] source: io::Error },
}

fn io_err(tid: Pid, what: &'static str) -> impl FnOnce(io::Error) -> TaskError {
    move |e| TaskError::Io { tid, what, source: e }
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

/// Dump one thread (registers come from the freeze).
pub fn collect_thread(pid: Pid, ft: &FrozenThread, par: &mut Parasite, ns_tid: i32) -> Result<Thread, TaskError> {
    let tid = ft.tid;
    let xsave = ptrace::get_xstate(tid).map_err(io_err(tid, "NT_X86_XSTATE"))?;
    let tls = (12..15).map(|i| ptrace::get_thread_area(tid, i)).collect::<Result<Vec<_>, _>>().map_err(io_err(tid, "TLS"))?;
    let rc = ptrace::rseq_config(tid).map_err(io_err(tid, "rseq configuration"))?;
    let rseq = (rc.rseq_abi_pointer != 0).then_some(Rseq { ptr: rc.rseq_abi_pointer, len: rc.rseq_abi_size, sig: rc.signature });
    let robust_list = ptrace::get_robust_list(tid).map_err(io_err(tid, "robust list"))?;
    let pending = ptrace::peek_siginfo(tid, 0).map_err(io_err(tid, "pending signals"))?.into_iter().map(|s| s.0).collect();
    let s = par.scratch;
    par.call(tid, "sigaltstack", libc::SYS_sigaltstack, &[0, s]).map_err(io_err(tid, "sigaltstack"))?;
    let ss = par.read(0, 24).map_err(io_err(tid, "sigaltstack"))?;
    let altstack = AltStack {
        sp: u64::from_le_bytes(ss[0..8].try_into().expect("8")),
        flags: u32::from_le_bytes(ss[8..12].try_into().expect("4")),
        size: u64::from_le_bytes(ss[16..24].try_into().expect("8")),
    };
    par.call(tid, "prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, &[libc::PR_GET_TID_ADDRESS as u64, s]).map_err(io_err(tid, "clear_tid"))?;
    let clear_tid = par.read_u64s(0, 1).map_err(io_err(tid, "clear_tid"))?[0];
    let secbits = par.call(tid, "prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, &[libc::PR_GET_SECUREBITS as u64]).map_err(io_err(tid, "securebits"))?;
    par.call(tid, "prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, &[libc::PR_GET_PDEATHSIG as u64, s]).map_err(io_err(tid, "pdeath_signal"))?;
    let pdeath_sig = par.read(0, 4).map_err(io_err(tid, "pdeath_signal"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).map_err(io_err(tid, "status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).map_err(io_err(tid, "stat"))?;
    let (comm, f) = proc::parse_stat(&stat).unwrap_or_default();
    let mut creds = parse_creds(&status);
    creds.secbits = secbits as u32;
    Ok(Thread {
        tid: ns_tid,
        regs: fixup_syscall_restart(ft.regs),
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
        sched_policy: proc::stat_field(&f, 41) as u32,
        pdeath_sig: u32::from_le_bytes(pdeath_sig.try_into().expect("4")),
    })
}

/// Process-wide state into `t` (threads, mm, files are filled elsewhere).
pub fn collect_process(pid: Pid, par: &mut Parasite, t: &mut Task) -> Result<(), TaskError> {
    let s = par.scratch;
    let mut acts = Vec::with_capacity(64);
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            acts.push(KSigaction::default());
            continue;
        }
        par.call(pid, "rt_sigaction", libc::SYS_rt_sigaction, &[sig, 0, s, 8]).map_err(io_err(pid, "sigaction"))?;
        let w = par.read_u64s(0, 4).map_err(io_err(pid, "sigaction"))?;
        acts.push(KSigaction { handler: w[0], flags: w[1], restorer: w[2], mask: w[3] });
    }
    t.sigactions = acts;
    for (i, which) in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF].into_iter().enumerate() {
        par.call(pid, "getitimer", libc::SYS_getitimer, &[which as u64, s]).map_err(io_err(pid, "itimer"))?;
        let w = par.read_u64s(0, 4).map_err(io_err(pid, "itimer"))?;
        t.itimers[i] = Itimer { isec: w[0], iusec: w[1], vsec: w[2], vusec: w[3] };
    }
    let timers = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    for (id, signo, notify, ntid, clock, sigval) in proc::parse_timers(&timers) {
        par.call(pid, "timer_gettime", libc::SYS_timer_gettime, &[id as u64, s]).map_err(io_err(pid, "timer_gettime"))?;
        let w = par.read_u64s(0, 4).map_err(io_err(pid, "timer_gettime"))?;
        let notify = match notify.as_str() {
            "signal" => libc::SIGEV_SIGNAL,
            "thread" => libc::SIGEV_THREAD_ID,
            "none" => libc::SIGEV_NONE,
            _ => libc::SIGEV_SIGNAL,
        };
        t.posix_timers.push(PosixTimer {
            id,
            clock,
            signo,
            notify,
            notify_tid: ntid,
            sigval,
            overrun: 0,
            interval: (w[0], w[1]),
            value: (w[2], w[3]),
        });
    }
    let sub = par.call(pid, "prctl(PR_GET_CHILD_SUBREAPER)", libc::SYS_prctl, &[libc::PR_GET_CHILD_SUBREAPER as u64, s]);
    t.child_subreaper = sub.is_ok() && par.read(0, 4).map(|b| b != [0, 0, 0, 0]).unwrap_or(false);
    t.mm.dumpable = par.call(pid, "prctl(PR_GET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_GET_DUMPABLE as u64]).map_err(io_err(pid, "dumpable"))? as u32;
    t.shared_pending = ptrace::peek_siginfo(pid, ptrace::PEEKSIGINFO_SHARED).map_err(io_err(pid, "shared pending"))?.into_iter().map(|s| s.0).collect();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).map_err(io_err(pid, "limits"))?;
    t.rlimits = proc::parse_limits(&limits);
    let pers = std::fs::read_to_string(format!("/proc/{pid}/personality")).map_err(io_err(pid, "personality"))?;
    t.personality = u32::from_str_radix(pers.trim(), 16).unwrap_or(0);
    t.loginuid = std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(u32::MAX);
    t.oom_score_adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(io_err(pid, "status"))?;
    t.seccomp_mode = proc::status_field(&status, "Seccomp").and_then(|v| v.parse().ok()).unwrap_or(0);
    t.fs.umask = proc::status_field(&status, "Umask").and_then(|v| u32::from_str_radix(v, 8).ok()).unwrap_or(0o22);
    t.fs.cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(io_err(pid, "cwd"))?.to_string_lossy().into();
    t.fs.root = std::fs::read_link(format!("/proc/{pid}/root")).map_err(io_err(pid, "root"))?.to_string_lossy().into();
    Ok(())
}
