//! Credentials and the other privilege-bound state of a restored task,
//! applied last, after everything that needs the engine's privileges:
//! scheduling policy and nice, seccomp filters, then uids/gids/groups,
//! securebits, capability sets (bounding, permitted/effective/inheritable,
//! ambient) and no_new_privs, per thread, by syscalls injected into that
//! thread (creds are per-thread in the kernel). A change of euid/egid
//! clears pdeath_signal and resets dumpable, so both are set again after.
//!
//! Seccomp: the restore child is traced with PTRACE_O_SUSPEND_SECCOMP, so
//! the filters installed here (in their original order, oldest first) do
//! not affect the syscalls the engine still injects; they take effect at
//! detach. They are installed while the thread still has CAP_SYS_ADMIN, so
//! no_new_privs is not needed for that and is set only if it was dumped.
//!
//! Process-wide, from the engine: rlimits are checked before the fork
//! (a hard limit can't be raised without CAP_SYS_RESOURCE), oom_score_adj
//! is written through /proc. (loginuid can only be written by the process
//! itself: the restore child does it, `child::restore_loginuid`.)

use super::space::Space;
use super::{ioe, RestoreError};
use crate::model::{Creds, Task, Thread};
use crate::sys::batch::Batch;
use crate::sys::inject::Injector;
use crate::sys::Pid;
use crate::{pr_debug, pr_warn};

const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const SECBIT_NO_CAP_AMBIENT_RAISE: u32 = 1 << 6;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_MODE_STRICT: u64 = 1;
const SECCOMP_MODE_FILTER: u32 = 2;
/// Filter flags that can be given again at install: LOG, SPEC_ALLOW.
/// (TSYNC and NEW_LISTENER describe how it was installed, not the filter.)
const SECCOMP_FLAGS_KEPT: u64 = (1 << 1) | (1 << 2);

const RLIMIT_NAMES: [&str; 16] = [
    "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE",
    "NICE", "RTPRIO", "RTTIME",
];

fn lim(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Check the dumped rlimits against the engine's own hard limits (the
/// restore child inherits them and can't raise a hard limit without
/// CAP_SYS_RESOURCE): a hard limit that doesn't fit is kept lower with a
/// warning; a soft limit that doesn't fit fails the restore.
pub fn check_rlimits(task: &Task) -> Result<(), RestoreError> {
    for (res, &(cur, max)) in task.rlimits.iter().enumerate() {
        let name = RLIMIT_NAMES.get(res).copied().unwrap_or("?");
        let Ok((_, hard)) = crate::sys::process::get_rlimit(res as u32) else { continue };
        if max <= hard {
            continue;
        }
        if cur > hard {
            return Err(RestoreError::Unsupported(format!(
                "RLIMIT_{name}: the soft limit {} is above this engine's hard limit {}, which can't be raised without CAP_SYS_RESOURCE",
                lim(cur),
                lim(hard)
            )));
        }
        pr_warn!("RLIMIT_{name}: hard limit {} can't be raised above {} without CAP_SYS_RESOURCE; restoring with {}", lim(max), lim(hard), lim(hard));
    }
    Ok(())
}

/// Process-wide values written through /proc by the engine (host pid `pid`).
pub fn apply_proc(pid: Pid, task: &Task) {
    // the restore child inherited the engine's value: nothing to read when
    // the image has that one (the engine's read once)
    static ENGINE: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    let engine = *ENGINE.get_or_init(|| std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|v| v.trim().parse::<i32>().ok()));
    if engine == Some(task.oom_score_adj) {
        return;
    }
    let path = format!("/proc/{pid}/oom_score_adj");
    let now = std::fs::read_to_string(&path).ok().and_then(|v| v.trim().parse::<i32>().ok());
    if now != Some(task.oom_score_adj) {
        if let Err(e) = std::fs::write(&path, task.oom_score_adj.to_string()) {
            pr_warn!("can't restore oom_score_adj {} of {pid} (lowering it needs CAP_SYS_RESOURCE): {e}", task.oom_score_adj);
        }
    }
}

/// Scheduling policy/priority and nice of the calling thread.
fn apply_sched(b: &mut Batch, t: &Thread) {
    if t.sched_policy != 0 {
        b.push_data(
            format!("sched_setscheduler(policy {}, priority {})", t.sched_policy, t.sched_prio),
            libc::SYS_sched_setscheduler,
            &[0, u64::from(t.sched_policy), 0],
            2,
            &t.sched_prio.to_le_bytes(),
        );
    }
    b.push(format!("setpriority(nice {})", t.sched_nice), libc::SYS_setpriority, &[libc::PRIO_PROCESS as u64, 0, t.sched_nice as i64 as u64]);
    if t.ioprio != 0 {
        b.push(format!("ioprio_set({:#x})", t.ioprio), libc::SYS_ioprio_set, &[crate::sys::process::IOPRIO_WHO_PROCESS as u64, 0, u64::from(t.ioprio)]);
    }
}

/// The CPU mask thread `t` is given back at the end of its restore: its
/// dumped affinity (when it was pinned) on the CPUs online here, else
/// `inherited` (what the restore found it with). A pinning none of whose
/// CPUs is online here leaves it on `inherited`, with a warning.
pub fn final_cpu_mask(t: &Thread, inherited: &[u64; 16]) -> [u64; 16] {
    if t.cpus.is_empty() {
        return *inherited;
    }
    let online = crate::sys::process::online_cpus().unwrap_or_default();
    let mut mask = [0u64; 16];
    for (i, m) in mask.iter_mut().enumerate() {
        *m = t.cpus.get(i).copied().unwrap_or(0) & online.get(i).copied().unwrap_or(0);
    }
    if mask.iter().all(|w| *w == 0) {
        pr_warn!("thread {}: none of the CPUs it was pinned to ({}) is online here: left on {}", t.tid, cpu_list(&t.cpus), cpu_list(inherited));
        return *inherited;
    }
    pr_debug!("thread {}: pinned to CPUs {} again", t.tid, cpu_list(&mask));
    mask
}

/// CPUs of a mask in words, as `0,2,5`.
fn cpu_list(words: &[u64]) -> String {
    let cpus: Vec<String> = (0..words.len() * 64).filter(|c| words[c / 64] >> (c % 64) & 1 == 1).map(|c| c.to_string()).collect();
    cpus.join(",")
}

/// Install the thread's seccomp filters, oldest first.
fn apply_seccomp(inj: &mut Injector, sp: &Space, t: &Thread) -> Result<(), RestoreError> {
    let tid = inj.tid;
    if t.seccomp_mode == SECCOMP_MODE_STRICT as u32 {
        inj.call("prctl(PR_SET_SECCOMP, strict)", libc::SYS_prctl, &[libc::PR_SET_SECCOMP as u64, SECCOMP_MODE_STRICT])
            .map_err(ioe(tid, "entering seccomp strict mode"))?;
        return Ok(());
    }
    if t.seccomp_mode != SECCOMP_MODE_FILTER {
        return Ok(());
    }
    for (i, f) in t.seccomp.iter().enumerate() {
        // struct sock_fprog { u16 len; pad; struct sock_filter *filter }
        let prog = sp.write(4096, &f.prog)?;
        let mut fprog = Vec::with_capacity(16);
        fprog.extend(((f.prog.len() / 8) as u16).to_le_bytes());
        fprog.extend([0u8; 6]);
        fprog.extend(prog.to_le_bytes());
        let fp = sp.write(0, &fprog)?;
        inj.call("seccomp(SECCOMP_SET_MODE_FILTER)", libc::SYS_seccomp, &[SECCOMP_SET_MODE_FILTER, f.flags & SECCOMP_FLAGS_KEPT, fp])
            .map_err(ioe(tid, format!("installing seccomp filter {i} ({} instructions)", f.prog.len() / 8)))?;
    }
    pr_debug!("thread {tid}: {} seccomp filters installed", t.seccomp.len());
    Ok(())
}

fn cap_last_cap() -> u32 {
    // (read once per engine: a tree's processes each ask)
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(40))
}

/// uids, gids, groups, securebits, capabilities, no_new_privs of the
/// calling thread, in the order that keeps the privileges each step needs.
/// Returns the index in `b` of a second setfsuid whose result (the fsuid
/// set by the first) the caller checks.
fn apply_creds(b: &mut Batch, c: &Creds) -> usize {
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    b.push_data("setgroups", libc::SYS_setgroups, &[c.groups.len() as u64, 0], 1, &groups);
    // keep every capability across the uid change; the sets are loaded below
    b.push("prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP)", libc::SYS_prctl, &[libc::PR_SET_SECUREBITS as u64, SECBIT_NO_SETUID_FIXUP]);
    let [gid, egid, sgid, fsgid] = c.gid.map(u64::from);
    b.push("setresgid", libc::SYS_setresgid, &[gid, egid, sgid]);
    b.push("setfsgid", libc::SYS_setfsgid, &[fsgid]);
    let [uid, euid, suid, fsuid] = c.uid.map(u64::from);
    b.push("setresuid", libc::SYS_setresuid, &[uid, euid, suid]);
    b.push("setfsuid", libc::SYS_setfsuid, &[fsuid]);
    // setfs[ug]id return the previous value: a second call checks the first
    b.push("setfsuid", libc::SYS_setfsuid, &[u64::from(u32::MAX)]);
    let check = b.len() - 1;
    // final securebits while CAP_SETPCAP is still effective; the ambient
    // raise lock only after the ambient set is loaded
    let early = c.secbits & !SECBIT_NO_CAP_AMBIENT_RAISE;
    b.push(format!("prctl(PR_SET_SECUREBITS, {early:#x})"), libc::SYS_prctl, &[libc::PR_SET_SECUREBITS as u64, u64::from(early)]);
    for cap in 0..=cap_last_cap().min(63) {
        if c.cap_bnd & (1 << cap) == 0 {
            b.push(format!("prctl(PR_CAPBSET_DROP, {cap})"), libc::SYS_prctl, &[libc::PR_CAPBSET_DROP as u64, u64::from(cap)]);
        }
    }
    let mut data = Vec::with_capacity(32);
    data.extend(LINUX_CAPABILITY_VERSION_3.to_le_bytes());
    data.extend(0i32.to_le_bytes());
    for half in 0..2 {
        let w = |v: u64| ((v >> (32 * half)) as u32).to_le_bytes();
        data.extend(w(c.cap_eff));
        data.extend(w(c.cap_prm));
        data.extend(w(c.cap_inh));
    }
    b.push_blocks(
        format!("capset(eff {:#x}, prm {:#x}, inh {:#x})", c.cap_eff, c.cap_prm, c.cap_inh),
        libc::SYS_capset,
        &[0, 0],
        &[(0, &data[..8]), (1, &data[8..])],
    );
    b.push("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", libc::SYS_prctl, &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0]);
    for cap in 0..64u64 {
        if c.cap_amb & (1 << cap) != 0 {
            b.push(format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"), libc::SYS_prctl, &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0]);
        }
    }
    if c.secbits != early {
        b.push(
            format!("prctl(PR_SET_SECUREBITS, {:#x}) (needs CAP_SETPCAP in the dumped effective set)", c.secbits),
            libc::SYS_prctl,
            &[libc::PR_SET_SECUREBITS as u64, u64::from(c.secbits)],
        );
    }
    if c.no_new_privs {
        b.push("prctl(PR_SET_NO_NEW_PRIVS)", libc::SYS_prctl, &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0]);
    }
    check
}

/// Everything privilege-bound of one thread, last: sched, seccomp, creds,
/// then pdeath_signal again (a cred change clears it).
pub fn finish_thread(inj: &mut Injector, sp: &Space, t: &Thread) -> Result<(), RestoreError> {
    let tid = inj.tid;
    pr_debug!("thread {tid}: sched, seccomp (mode {}, {} filters), creds", t.seccomp_mode, t.seccomp.len());
    let r = (|| {
        let mut b = Batch::new();
        apply_sched(&mut b, t);
        sp.run(inj, &b, "restoring the scheduling policy")?;
        apply_seccomp(inj, sp, t)?;
        let mut b = Batch::new();
        let check = creds_calls(&mut b, t);
        let out = sp.run(inj, &b, "restoring creds")?;
        check_fsuid(tid, t, out[check])
    })();
    if let Err(e) = &r {
        crate::pr_err!("thread {tid}: {e}");
    }
    r
}

/// [`finish_thread`] of a thread without seccomp as calls appended to one
/// batch (`b`); the index of the result [`check_fsuid`] checks.
pub fn finish_thread_calls(b: &mut Batch, t: &Thread) -> usize {
    apply_sched(b, t);
    creds_calls(b, t)
}

/// Whether the thread has seccomp state to restore (not batched).
pub fn has_seccomp(t: &Thread) -> bool {
    t.seccomp_mode != 0 || !t.seccomp.is_empty()
}

fn creds_calls(b: &mut Batch, t: &Thread) -> usize {
    let check = apply_creds(b, &t.creds);
    b.push("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, &[libc::PR_SET_PDEATHSIG as u64, u64::from(t.pdeath_sig)]);
    check
}

/// The fsuid a second setfsuid returned (`got`) is the one set.
pub fn check_fsuid(tid: Pid, t: &Thread, got: u64) -> Result<(), RestoreError> {
    let fsuid = u64::from(t.creds.uid[3]);
    if got != fsuid {
        return Err(RestoreError::Unsupported(format!("thread {tid}: fsuid is {got} after setting {fsuid}")));
    }
    Ok(())
}

/// After every thread's creds: dumpable again (an euid change resets it).
pub fn finish_process(main: &mut Injector, task: &Task) -> Result<(), RestoreError> {
    if task.mm.dumpable > 1 {
        pr_warn!("dumpable {} can't be set with prctl; leaving it as the creds made it", task.mm.dumpable);
        return Ok(());
    }
    main.call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, u64::from(task.mm.dumpable)])
        .map_err(ioe(main.tid, "PR_SET_DUMPABLE"))?;
    Ok(())
}

/// [`finish_process`] appended to a batch.
pub fn finish_process_calls(b: &mut Batch, task: &Task) {
    if task.mm.dumpable > 1 {
        pr_warn!("dumpable {} can't be set with prctl; leaving it as the creds made it", task.mm.dumpable);
        return;
    }
    b.push("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, u64::from(task.mm.dumpable)]);
}
