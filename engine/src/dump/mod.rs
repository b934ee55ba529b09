//! Dump: freeze a process and collect its state from /proc and ptrace into
//! the [`model`](crate::model). Writing images is `images_io`'s job; the
//! page contents are read from the still-frozen process through
//! [`ProcessMem`](crate::mem_source::ProcessMem).

pub mod cgroup_freeze;
pub mod elf;
pub mod files;
pub mod freeze;
pub mod mm;
pub mod page_pump;
pub mod parasite;
pub mod proc;
pub mod staging;
pub mod task;

use crate::model::{Task, Tree, VmaKind};
use crate::sys::Pid;
use crate::pr_debug;
use freeze::Frozen;
use parasite::Parasite;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {0} does not exist")]
    NoProcess(Pid),
    #[error("process {pid} has children ({children:?}): dumping process trees is not supported yet")]
    Children { pid: Pid, children: Vec<Pid> },
    #[error(transparent)]
    Freeze(#[from] freeze::FreezeError),
    #[error(transparent)]
    Cgroup(#[from] cgroup_freeze::CgroupError),
    #[error(transparent)]
    Mm(#[from] mm::MmError),
    #[error(transparent)]
    Task(#[from] task::TaskError),
    #[error(transparent)]
    Files(#[from] files::FilesError),
    #[error("process {pid}: {what}")]
    Namespace { pid: Pid, what: String },
    #[error("{what} of {pid}")]
    Io { pid: Pid, what: &'static str, #[source] source: io::Error },
}

/// Last value of an `NS*` line of status: the id in the innermost pid ns.
fn ns_last(status: &str, key: &str) -> Option<i32> {
    proc::status_nums(status, key).last().map(|v| *v as i32)
}

/// `/proc/PID/task/TID/ns/KIND` (or `/proc/self/ns/KIND`) as `kind:[inode]`.
fn ns_link(path: &str) -> Option<String> {
    std::fs::read_link(path).ok().map(|l| l.to_string_lossy().into_owned())
}

/// Namespace kinds a dumped task must share with the engine, since restore
/// creates none of them (checked per thread: a thread can unshare some).
/// (A time namespace of its own is kept: the timens image has its clocks,
/// and restore makes a new one in which they continue.)
const SAME_NS: [&str; 6] = ["net", "ipc", "uts", "mnt", "user", "cgroup"];

/// Refuse, by name, every namespace of thread `tid` of `pid` that the
/// restore would not give back: a net, ipc, uts, mnt, user or cgroup
/// namespace other than the engine's; a pid namespace other than the
/// engine's unless `pid` is its pid 1 and it sits directly below the
/// engine's (restore then makes one with CLONE_NEWPID); and a pending
/// `unshare` of the pid or time
/// namespace (`*_for_children` differs: the children would get one the
/// images can't carry).
pub fn check_namespaces(pid: Pid, tid: Pid) -> Result<(), DumpError> {
    let err = |what: String| DumpError::Namespace { pid, what };
    let base = format!("/proc/{pid}/task/{tid}/ns");
    let mut differ = Vec::new();
    for kind in SAME_NS {
        let (Some(theirs), Some(ours)) = (ns_link(&format!("{base}/{kind}")), ns_link(&format!("/proc/self/ns/{kind}"))) else {
            continue; // a kind this kernel lacks
        };
        if theirs != ours {
            differ.push(format!("{kind} ({theirs}, criu's is {ours})"));
        }
    }
    if !differ.is_empty() {
        return Err(err(format!(
            "thread {tid} is in namespaces other than criu's: {}; dumping namespaces other than a pid namespace is not supported yet",
            differ.join(", ")
        )));
    }
    for kind in ["pid", "time"] {
        let (Some(now), Some(children)) = (ns_link(&format!("{base}/{kind}")), ns_link(&format!("{base}/{kind}_for_children"))) else {
            continue;
        };
        if now != children {
            return Err(err(format!(
                "thread {tid} has unshared a {kind} namespace for its children ({kind}_for_children is {children}, its own is {now}): not supported"
            )));
        }
    }
    let (Some(theirs), Some(ours)) = (ns_link(&format!("{base}/pid")), ns_link("/proc/self/ns/pid")) else { return Ok(()) };
    if theirs != ours {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| DumpError::Io { pid, what: "status", source: e })?;
        let me = std::fs::read_to_string("/proc/self/status").map_err(|e| DumpError::Io { pid, what: "criu's own status", source: e })?;
        let (nspid, mine) = (proc::status_nums(&st, "NSpid"), proc::status_nums(&me, "NSpid"));
        if nspid.last() != Some(&1) || nspid.len() != mine.len() + 1 {
            return Err(err(format!(
                "it is in a pid namespace ({theirs}) other than criu's ({ours}) without being its pid 1 one level below criu's (NSpid {nspid:?}): only the pid 1 of a pid namespace of its own is supported"
            )));
        }
    }
    Ok(())
}

/// Freeze `pid` and collect its state. The returned guard keeps it frozen
/// until dropped (then it runs on, or is killed if `kill_on_release` is set).
pub fn collect(pid: Pid) -> Result<(Tree, Frozen), DumpError> {
    collect_with(pid, None)
}

/// [`collect`], freezing the cgroup at `freeze_cgroup` first if given
/// (`--freeze-cgroup`).
pub fn collect_with(pid: Pid, freeze_cgroup: Option<&std::path::Path>) -> Result<(Tree, Frozen), DumpError> {
    collect_within(pid, freeze_cgroup, cgroup_freeze::DEFAULT_TIMEOUT)
}

/// [`collect_with`], waiting at most `timeout` for the cgroup to freeze
/// (`--timeout`).
pub fn collect_within(
    pid: Pid,
    freeze_cgroup: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> Result<(Tree, Frozen), DumpError> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(DumpError::NoProcess(pid));
    }
    let io_err = |what| move |e| DumpError::Io { pid, what, source: e };
    let mut frozen = match freeze_cgroup {
        None => Frozen::freeze(pid)?,
        Some(cg) => {
            let mut cgf = cgroup_freeze::CgroupFreeze::freeze_within(cg, timeout)?;
            cgf.check_member(pid)?;
            Frozen::freeze_frozen(pid, || cgf.thaw().map_err(io::Error::other))?
        }
    };
    crate::fault::point("after-freeze");
    // (frozen: no thread can unshare or setns any more)
    for t in &frozen.threads {
        check_namespaces(pid, t.tid)?;
    }
    let mut children = Vec::new();
    for t in &frozen.threads {
        let c = std::fs::read_to_string(format!("/proc/{pid}/task/{}/children", t.tid)).map_err(io_err("children"))?;
        children.extend(c.split_whitespace().filter_map(|v| v.parse::<Pid>().ok()));
    }
    if !children.is_empty() {
        return Err(DumpError::Children { pid, children });
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(io_err("status"))?;
    let nspids = proc::status_nums(&status, "NSpid");
    let own_ns = nspids.len() > 1 && nspids.last() == Some(&1);
    let vmas = mm::collect_vmas(pid)?;
    let zero_pfn = crate::sys::mmap::zero_page_pfn().map_err(io_err("zero page pfn"))?;
    let pages = mm::collect_pages(pid, &vmas, zero_pfn)?;
    pr_debug!("{} vmas, {} page runs", vmas.len(), pages.len());
    let exec: Vec<(u64, u64)> = vmas
        .iter()
        .filter(|v| v.prot & libc::PROT_EXEC as u32 != 0 && v.kind != VmaKind::Vsyscall)
        .map(|v| (v.start, v.end))
        .collect();
    let gadget = parasite::find_gadget(pid, frozen.threads[0].regs.ip, &exec).map_err(io_err("syscall gadget"))?;
    frozen.gadget = gadget;
    task::fixup_rseq_all(pid, &mut frozen)?;
    let mut par = Parasite::start(&frozen, gadget).map_err(io_err("parasite session"))?;
    let brk = par.call(pid, "brk", libc::SYS_brk, &[0]).map_err(io_err("brk"))?;
    let mut task = Task {
        pid: ns_last(&status, "NSpid").unwrap_or(pid),
        ppid: if own_ns { 0 } else { proc::status_field(&status, "PPid").and_then(|v| v.parse().ok()).unwrap_or(0) },
        pgid: ns_last(&status, "NSpgid").unwrap_or(0),
        sid: ns_last(&status, "NSsid").unwrap_or(0),
        ..Default::default()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(io_err("stat"))?;
    let (comm, f) = proc::parse_stat(&stat).unwrap_or_default();
    task.comm = comm;
    task.flags = proc::stat_field(&f, 9) as u32;
    task::collect_process(pid, &mut par, &mut task)?;
    for ft in &frozen.threads {
        let st = std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", ft.tid)).map_err(io_err("thread status"))?;
        let ns_tid = ns_last(&st, "NSpid").unwrap_or(ft.tid);
        task.threads.push(task::collect_thread(pid, ft, &mut par, ns_tid)?);
    }
    drop(par);
    crate::fault::point("after-parasite");
    task.stop_signo = frozen.stop_signo.map(|s| s as u32);
    // A SIGSTOP still queued was sent before the freeze: the process is
    // stopped (it is not a signal restore could queue again).
    let is_stop = |si: &[u8; 128]| i32::from_le_bytes([si[0], si[1], si[2], si[3]]) == libc::SIGSTOP;
    let queued_stop = task.shared_pending.iter().chain(task.threads.iter().flat_map(|t| &t.pending)).any(is_stop);
    if queued_stop {
        task.shared_pending.retain(|si| !is_stop(si));
        for t in &mut task.threads {
            t.pending.retain(|si| !is_stop(si));
        }
        task.stop_signo.get_or_insert(libc::SIGSTOP as u32);
    }
    if let Some(sig) = task.stop_signo {
        pr_debug!("{pid} is stopped (signal {sig}): dumped as TASK_STOPPED");
    }
    // the scratch page is gone again; the VMAs collected before it are the truth
    let (dumpable, thp_disabled) = (task.mm.dumpable, task.mm.thp_disabled);
    task.mm = mm::collect_mm(pid, vmas, pages, brk)?;
    // (read by injection in collect_process)
    task.mm.dumpable = dumpable;
    task.mm.thp_disabled = thp_disabled;
    (task.fds, task.pipe_data) = files::collect_fds(pid)?;
    (task.fs.cwd, task.fs.root) = (files::fs_path(pid, "cwd")?, files::fs_path(pid, "root")?);
    let (root_ids, ids) = task::collect_ids(&[pid])?;
    task.ids = ids[0];
    let timens = Some(task::collect_timens(pid)?);
    Ok((Tree { root_owns_pid_ns: own_ns, tasks: vec![task], root_ids, timens }, frozen))
}
