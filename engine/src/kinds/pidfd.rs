//! pidfd: a file that names a process (pidfd_open(2), CLONE_PIDFD), held
//! by a process of the tree, of a process of the tree or of one that has
//! exited and been reaped.
//!
//! Dump: fdinfo's `Pid:` (the process in /proc's namespace, the host's
//! here; `-1` once it is reaped) and `NSpid:` (its pid at every level down
//! to its own namespace, where the tree's pids are read), the pidfs inode
//! (`ino:`) and the status flags PIDFD_NONBLOCK (O_NONBLOCK) and
//! PIDFD_THREAD (O_EXCL, a pidfd of one thread). Refused by name: a pidfd
//! of a process outside the dumped tree, of a thread other than its
//! leader (threads are made after the fds), or one open file description
//! held by several processes (inherited over fork: the root makes those
//! for the tree before the processes it names exist).
//!
//! Image: a `PIDFD` files.img entry (`pidfd_entry`) as upstream 4.2 writes
//! it: `nspid` the pid in the tree's namespace (`-1`: reaped), `ino`,
//! `flags` (upstream 4.2 refuses PIDFD_THREAD at dump, and writes the
//! others as we do).
//!
//! Restore (in the restore child, once its own children are forked):
//! pidfd_open of the pid, waiting for that process to be made when it is
//! not an ancestor or a descendant (a sibling forked later). A reaped one:
//! a stand-in child that exits at once, opened while it is a zombie and
//! reaped when the fd table is built, one per pidfs inode (so two pidfds
//! of one reaped process name one process again); it exits with no
//! signal to its parent (clone3 `exit_signal` 0), on a pid above the
//! tree's so that it never takes one a process of the tree is still to
//! get.

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::model::{Fd, FileDesc};
use crate::sys::{process as p, Pid};
use images_proto::pb;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// PIDFD_NONBLOCK (O_NONBLOCK).
const NONBLOCK: u32 = libc::O_NONBLOCK as u32;
/// PIDFD_THREAD (O_EXCL): a pidfd of one thread.
const THREAD: u32 = libc::O_EXCL as u32;

/// How long the restore waits for the process a pidfd names to be made.
const WAIT_FOR_TARGET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Eq)]
pub struct Pidfd {
    /// PIDFD_NONBLOCK and PIDFD_THREAD, as in the file's status flags.
    pub flags: u32,
    /// The pidfs inode: one per process ever named (the key of a reaped
    /// one's stand-in).
    pub ino: u64,
    /// Its pid in the tree's pid namespace; -1: reaped.
    pub nspid: i32,
    /// Dump only: its pid in the host's namespace (0: reaped, or read
    /// from an image), checked against the tree in [`check_tree`].
    pub host: Pid,
}

impl PartialEq for Pidfd {
    /// (what the image holds: not `host`)
    fn eq(&self, o: &Pidfd) -> bool {
        (self.flags, self.ino, self.nspid) == (o.flags, o.ino, o.nspid)
    }
}

/// The numbers of an fdinfo or status line `key:` (tab separated).
fn numbers(text: &str, key: &str) -> Option<Vec<i64>> {
    super::fdinfo_field(text, key)?.split_whitespace().map(|n| n.parse().ok()).collect()
}

impl FileKind for Pidfd {
    const TYPE: pb::FdTypes = pb::FdTypes::Pidfd;
    const NAME: &'static str = "pidfd";

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link == "anon_inode:[pidfd]" || link.starts_with("pidfd:")
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use std::os::unix::fs::MetadataExt;
        let flags = cx.flags & (NONBLOCK | THREAD);
        let ino = cx.meta.ino();
        let pid = numbers(cx.fdinfo, "Pid").and_then(|v| v.first().copied()).ok_or_else(|| cx.refuse(Self::NAME, "no number on its fdinfo's `Pid:` line"))?;
        if pid == -1 {
            return Ok(Pidfd { flags, ino, nspid: -1, host: 0 });
        }
        if pid <= 0 {
            return Err(cx.refuse(Self::NAME, "it names a process outside criu's pid namespace"));
        }
        // the tree's namespace is the holder's: its depth picks the level
        let status = std::fs::read_to_string(format!("/proc/{}/status", cx.pid)).map_err(|e| FilesError::Io { pid: cx.pid, fd: cx.fd, source: e })?;
        let depth = numbers(&status, "NSpid").map(|v| v.len()).unwrap_or(1);
        let levels = numbers(cx.fdinfo, "NSpid").unwrap_or_default();
        let nspid = levels.get(depth - 1).copied().ok_or_else(|| cx.refuse(Self::NAME, format!("it names process {pid}, which is outside the pid namespace of the dumped process")))?;
        Ok(Pidfd { flags, ino, nspid: nspid as i32, host: pid as Pid })
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            pidfd: Some(pb::PidfdEntry { id, ino: self.ino as u32, flags: self.flags, nspid: self.nspid, fown: super::fown() }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "pidfd", &e.pidfd)?;
        // (an access mode, O_RDWR, is what every pidfd has: let through)
        let extra = m.flags & !(NONBLOCK | THREAD | libc::O_ACCMODE as u32);
        if extra != 0 {
            return Err(cx.bad(e, "pidfd.flags", format!("{:#o}: flags a pidfd does not take", m.flags)));
        }
        if m.nspid == 0 || m.nspid < -1 {
            return Err(cx.bad(e, "pidfd.nspid", format!("{}: neither a pid nor -1 (reaped)", m.nspid)));
        }
        Ok(Pidfd { flags: m.flags & (NONBLOCK | THREAD), ino: u64::from(m.ino), nspid: m.nspid, host: 0 })
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        if self.nspid == -1 {
            let tree: HashSet<Pid> = cx.plan.plan.nodes.iter().map(|n| n.pid).collect();
            let stand_ins = cx.scratch.get::<StandIns>();
            let pid = stand_ins.of(self.ino, &tree)?;
            return p::pidfd_open_flags(pid, self.flags).map_err(|e| format!("pidfd_open of the stand-in {pid} for a reaped process: {e}"));
        }
        let start = Instant::now();
        loop {
            match p::pidfd_open_flags(self.nspid, self.flags) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) && start.elapsed() < WAIT_FOR_TARGET => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(format!("pidfd_open of pid {} (flags {:#o}): {e}", self.nspid, self.flags)),
            }
        }
    }
}

/// Pids tried for one stand-in before giving up.
const MAX_STAND_IN_TRIES: u32 = 4096;

/// Stand-ins for reaped processes, by pidfs inode: children that exited at
/// once, left zombies until the fd table is built (then reaped, on drop).
#[derive(Default)]
struct StandIns(HashMap<u64, Pid>);

impl StandIns {
    /// The stand-in of inode `ino`, made the first time, on a free pid
    /// above the tree's largest (none of the tree's processes, some of
    /// which may not exist yet, can want it); where those are past
    /// pid_max (set_tid refused with EINVAL), on a free pid below it that
    /// is not the tree's.
    fn of(&mut self, ino: u64, tree: &HashSet<Pid>) -> Result<Pid, String> {
        if let Some(&pid) = self.0.get(&ino) {
            return Ok(pid);
        }
        let top = tree.iter().copied().max().unwrap_or(1);
        let mut want = top.saturating_add(1 + self.0.len() as Pid);
        let mut down = false;
        let mut tries = 0;
        let pid = loop {
            tries += 1;
            if tries > MAX_STAND_IN_TRIES || want < 2 {
                return Err(format!("no free pid for a stand-in of a reaped process in {MAX_STAND_IN_TRIES} tries (the tree's largest pid is {top})"));
            }
            if down && tree.contains(&want) {
                want -= 1;
                continue;
            }
            // (exit signal 0: its end sends the parent no SIGCHLD)
            match p::fork3(0, &[want], 0, || p::exit_now(0)) {
                Ok(pid) => break pid,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => want = if down { want - 1 } else { want + 1 },
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !down => {
                    crate::pr_debug!("pid {want} refused for a stand-in ({e}: past pid_max): looking below the tree's pids");
                    down = true;
                    want = top - 1;
                }
                Err(e) => return Err(format!("clone3 of a stand-in for a reaped process (pid {want}): {e}")),
            }
        };
        self.0.insert(ino, pid);
        p::wait_exited_unreaped(pid).map_err(|e| format!("waiting for stand-in {pid} to exit: {e}"))?;
        Ok(pid)
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        for &pid in self.0.values() {
            let _ = p::reap_child(pid);
        }
    }
}

/// Dump, across the tree (host pids `ns_pid` maps to the tree's): every
/// pidfd names a process of the tree (its leader, for PIDFD_THREAD), and
/// none is one open file description of several processes.
pub fn check_tree(tables: &[(Pid, &mut Vec<Fd>)], ns_pid: &HashMap<Pid, i32>) -> Result<(), FilesError> {
    let mut holders: HashMap<u32, Pid> = HashMap::new();
    for (pid, fds) in tables {
        for f in fds.iter() {
            let FileDesc::Kind(super::Kind::Pidfd(x)) = &f.file else { continue };
            let refuse = |why: String| FilesError::Kind { pid: *pid, fd: f.fd, kind: Pidfd::NAME, why };
            if let Some(&other) = holders.get(&f.desc).filter(|&&o| o != *pid) {
                return Err(refuse(format!("its open file description is held by process {other} too (inherited over fork): restoring a pidfd shared by several processes is not supported yet")));
            }
            holders.insert(f.desc, *pid);
            if x.nspid == -1 {
                continue;
            }
            if ns_pid.get(&x.host) != Some(&x.nspid) {
                let what = if x.flags & THREAD != 0 { "thread" } else { "process" };
                let leader = std::fs::read_to_string(format!("/proc/{}/status", x.host)).ok().and_then(|s| numbers(&s, "Tgid")).and_then(|v| v.first().copied());
                let why = match leader {
                    Some(l) if l != i64::from(x.host) && ns_pid.contains_key(&(l as Pid)) => {
                        format!("it names thread {} of process {l}, not the process's leader: restoring a pidfd of such a thread is not supported yet", x.host)
                    }
                    _ => format!("it names {what} {}, which is not in the dumped tree", x.host),
                };
                return Err(refuse(why));
            }
        }
    }
    Ok(())
}

/// Restore, image check of the whole tree (before anything is made): every
/// pidfd names a process of the tree or a reaped one, and none is an open
/// file description of several processes.
pub fn check_image(tree: &crate::model::Tree) -> Result<(), String> {
    let pids: HashSet<i32> = tree.tasks.iter().map(|t| t.pid).collect();
    let mut holders: HashMap<u32, i32> = HashMap::new();
    for t in &tree.tasks {
        for f in &t.fds {
            let FileDesc::Kind(super::Kind::Pidfd(x)) = &f.file else { continue };
            if let Some(&other) = holders.get(&f.desc).filter(|&&o| o != t.pid) {
                return Err(format!("fd {} of process {} (pidfd): its open file description is held by process {other} too: restoring a pidfd shared by several processes is not supported yet", f.fd, t.pid));
            }
            holders.insert(f.desc, t.pid);
            if x.nspid != -1 && !pids.contains(&x.nspid) {
                return Err(format!("fd {} of process {} (pidfd): it names pid {}, which is no process of the image's tree", f.fd, t.pid, x.nspid));
            }
        }
    }
    Ok(())
}
