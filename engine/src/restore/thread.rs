//! Threads: creation with their dumped tids (clone3 + set_tid injected in
//! the main thread), per-thread kernel state, and the final register load.

use super::space::Space;
use super::{ioe, RestoreError};
use crate::model::{Task, Thread};
use crate::sys::batch::Batch;
use crate::sys::inject::Injector;
use crate::sys::process::clone_args_bytes;
use crate::sys::ptrace::{self, Wait};
use crate::sys::Pid;

/// Create a thread with tid `ns_tid` (in the task's pid namespace); returns
/// its host tid, stopped and traced.
pub fn create(main: &mut Injector, sp: &Space, ns_tid: i32) -> Result<Pid, RestoreError> {
    create_with(main, sp, Some(ns_tid))
}

/// Create a thread with the tid `ns_tid` asks for, or (`None`) any tid the
/// kernel hands out (tfork); returns its host tid, stopped and traced.
pub fn create_with(main: &mut Injector, sp: &Space, ns_tid: Option<i32>) -> Result<Pid, RestoreError> {
    let pid = main.tid;
    let flags = (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD | libc::CLONE_SYSVSEM) as u64;
    let args = match ns_tid {
        Some(t) => clone_args_bytes(flags, sp.write(512, &t.to_le_bytes())?, 1),
        None => clone_args_bytes(flags, 0, 0),
    };
    let ns_tid = ns_tid.unwrap_or(0);
    let aptr = sp.write(256, &args)?;
    main.cloned.clear();
    main.call("clone3(thread)", libc::SYS_clone3, &[aptr, args.len() as u64]).map_err(ioe(pid, format!("creating thread {ns_tid}")))?;
    let tid = *main.cloned.last().ok_or_else(|| RestoreError::Unsupported(format!("no clone event for thread {ns_tid}")))?;
    loop {
        match ptrace::wait(tid).map_err(ioe(tid, "waiting for a new thread"))? {
            Wait::Stopped { event: ptrace::EVENT_STOP, .. } => break,
            Wait::Stopped { .. } => ptrace::cont(tid, 0).map_err(ioe(tid, "cont"))?,
            other => return Err(RestoreError::Child { pid: tid, msg: format!("new thread died: {other:?}") }),
        }
    }
    // signals stay blocked until the final mask is loaded
    ptrace::set_sigmask(tid, !0).map_err(ioe(tid, "blocking signals"))?;
    crate::pr_debug!("created thread {ns_tid} (host tid {tid})");
    Ok(tid)
}

/// Per-thread kernel state, by syscalls injected into that thread (one
/// batch, then the pending signals).
pub fn setup(inj: &mut Injector, sp: &Space, t: &Thread) -> Result<(), RestoreError> {
    let tid = inj.tid;
    let e = |what: &str| ioe(tid, what.to_string());
    let mut b = Batch::new();
    setup_calls(&mut b, t);
    sp.run(inj, &b, "thread state")?;
    for si in &t.pending {
        let p = sp.write(0, si)?;
        let signo = u64::from(u32::from_le_bytes(si[0..4].try_into().expect("4")));
        if signo == libc::SIGTRAP as u64 {
            // a trap's SIGTRAP would merge with this one and be discarded with it
            inj.stop_trapping();
        }
        // rt_tgsigqueueinfo takes ids of the caller's pid namespace: the task's own
        inj.call("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, &[sp_tgid(sp, t), t.tid as u64, signo, p]).map_err(e("queueing a signal"))?;
    }
    Ok(())
}

/// The calls of [`setup`] that make one batch (all but the pending
/// signals), appended to `b`: they use no memory of the target's but the
/// batch's own.
pub fn setup_calls(b: &mut Batch, t: &Thread) {
    if t.robust_list.0 != 0 {
        b.push("set_robust_list", libc::SYS_set_robust_list, &[t.robust_list.0, t.robust_list.1]);
    }
    b.push("set_tid_address", libc::SYS_set_tid_address, &[t.clear_tid]);
    if t.altstack.flags & libc::SS_DISABLE as u32 == 0 {
        let mut d = Vec::new();
        d.extend(t.altstack.sp.to_le_bytes());
        d.extend(t.altstack.flags.to_le_bytes());
        d.extend(0u32.to_le_bytes());
        d.extend(t.altstack.size.to_le_bytes());
        b.push_data("sigaltstack", libc::SYS_sigaltstack, &[0, 0], 0, &d);
    }
    for d in &t.tls {
        // entries that were never set read back as "not present, read-exec only"
        if d.base_addr == 0 && d.limit == 0 && d.flags & 0x20 != 0 {
            continue;
        }
        let mut x = Vec::new();
        x.extend(d.entry_number.to_le_bytes());
        x.extend(d.base_addr.to_le_bytes());
        x.extend(d.limit.to_le_bytes());
        x.extend(d.flags.to_le_bytes());
        b.push_data("set_thread_area", libc::SYS_set_thread_area, &[0], 0, &x);
    }
    let mut comm = t.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    b.push_data("prctl(PR_SET_NAME)", libc::SYS_prctl, &[libc::PR_SET_NAME as u64, 0], 1, &comm);
    b.push("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, &[libc::PR_SET_PDEATHSIG as u64, u64::from(t.pdeath_sig)]);
    if let Some(r) = t.rseq {
        b.push("rseq", libc::SYS_rseq, &[r.ptr, u64::from(r.len), 0, u64::from(r.sig)]);
    }
}

fn sp_tgid(sp: &Space, _t: &Thread) -> u64 {
    sp.ns_pid as u64
}

/// Load the dumped XSAVE area, registers and signal mask.
pub fn load_final(tid: Pid, t: &Thread) -> Result<(), RestoreError> {
    if !t.xsave.is_empty() {
        ptrace::set_xstate(tid, &t.xsave).map_err(ioe(tid, "loading the XSAVE area"))?;
    }
    let mut r = t.regs;
    r.orig_ax = u64::MAX;
    ptrace::set_regs(tid, &r).map_err(ioe(tid, "loading registers"))?;
    ptrace::set_sigmask(tid, t.blocked).map_err(ioe(tid, "loading the signal mask"))?;
    Ok(())
}

/// POSIX timers with their dumped ids (PR_TIMER_CREATE_RESTORE_IDS), armed.
pub fn restore_posix_timers(main: &mut Injector, sp: &Space, task: &Task) -> Result<(), RestoreError> {
    const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
    let pid = main.tid;
    let e = |what: &str| ioe(pid, what.to_string());
    crate::pr_debug!("restoring {} POSIX timers", task.posix_timers.len());
    main.call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0])
        .map_err(e("PR_TIMER_CREATE_RESTORE_IDS (kernel 6.16+)"))?;
    for t in &task.posix_timers {
        // struct sigevent: sigval(8) signo(4) notify(4) tid(4) pad
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.sigval.to_le_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        ev[16..20].copy_from_slice(&t.notify_tid.to_le_bytes());
        let evp = sp.write(0, &ev)?;
        let idp = sp.write(128, &t.id.to_le_bytes())?;
        main.call("timer_create", libc::SYS_timer_create, &[t.clock as u64, evp, idp])
            .map_err(e(&format!("timer_create id {} (notify {:#x}, tid {})", t.id, t.notify, t.notify_tid)))
            .inspect_err(|err| crate::pr_err!("{err}"))?;
        // a periodic timer that had just expired reads back as value 0: due now
        let value = if t.value == (0, 0) && t.interval != (0, 0) { (0, 1) } else { t.value };
        if value != (0, 0) {
            let its: Vec<u8> = [t.interval.0, t.interval.1, value.0, value.1].iter().flat_map(|w| w.to_le_bytes()).collect();
            let p = sp.write(192, &its)?;
            main.call("timer_settime", libc::SYS_timer_settime, &[t.id as u64, 0, p, 0]).map_err(e("timer_settime"))?;
        }
    }
    main.call("prctl(PR_TIMER_CREATE_RESTORE_IDS off)", libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0]).map_err(e("PR_TIMER_CREATE_RESTORE_IDS"))?;
    Ok(())
}
