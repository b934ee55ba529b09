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
    #[error("{what} of {pid}")]
    Io { pid: Pid, what: &'static str, #[source] source: io::Error },
}

/// Last value of an `NS*` line of status: the id in the innermost pid ns.
fn ns_last(status: &str, key: &str) -> Option<i32> {
    proc::status_nums(status, key).last().map(|v| *v as i32)
}

/// Freeze `pid` and collect its state. The returned guard keeps it frozen
/// until dropped (then it runs on, or is killed if `kill_on_release` is set).
pub fn collect(pid: Pid) -> Result<(Tree, Frozen), DumpError> {
    collect_with(pid, None)
}

/// [`collect`], freezing the cgroup at `freeze_cgroup` first if given
/// (`--freeze-cgroup`).
pub fn collect_with(pid: Pid, freeze_cgroup: Option<&std::path::Path>) -> Result<(Tree, Frozen), DumpError> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(DumpError::NoProcess(pid));
    }
    let io_err = |what| move |e| DumpError::Io { pid, what, source: e };
    let mut frozen = match freeze_cgroup {
        None => Frozen::freeze(pid)?,
        Some(cg) => {
            let mut cgf = cgroup_freeze::CgroupFreeze::freeze(cg)?;
            cgf.check_member(pid)?;
            Frozen::freeze_frozen(pid, || cgf.thaw().map_err(io::Error::other))?
        }
    };
    crate::fault::point("after-freeze");
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
    // the scratch page is gone again; the VMAs collected before it are the truth
    let dumpable = task.mm.dumpable;
    task.mm = mm::collect_mm(pid, vmas, pages, brk)?;
    task.mm.dumpable = dumpable;
    (task.fds, task.pipe_data) = files::collect_fds(pid)?;
    (task.fs.cwd, task.fs.root) = (files::fs_path(pid, "cwd")?, files::fs_path(pid, "root")?);
    let (root_ids, ids) = task::collect_ids(&[pid])?;
    task.ids = ids[0];
    let timens = Some(task::collect_timens(pid)?);
    Ok((Tree { root_owns_pid_ns: own_ns, tasks: vec![task], root_ids, timens }, frozen))
}
