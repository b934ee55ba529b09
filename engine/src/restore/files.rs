//! File descriptors, restore half (the dump half is `dump/files.rs`). Runs
//! in the restore child (a fork of the engine, before it is seized), in
//! plain syscalls:
//!
//! - files opened by path (regular files, directories, memory devices)
//!   are a resource kind (`kinds::reg`), made in the kinds' phase below
//!   with the helpers here (`open_image_path_own`, `validate`) and the
//!   ghosts' (`kinds::ghost::Ghosts`);
//! - ghosts (unlinked while open, `kinds::reg`, `kinds::fifo`, and the
//!   files unlinked while mapped): recreated next to the original path as
//!   `<path>.cr.<n>.ghost` with the saved size, data extents (holes stay
//!   holes), mode, owner and times; each fd opens it under the original
//!   name (linked there, opened, unlinked), so it dumps again as it did (no
//!   drift over rounds); the ghost is unlinked once every fd is in place;
//! - memfds: each inode of the image made once, first of all
//!   (`memfd_create` with its name, then its size, data runs, owner, mode
//!   and last its seals), on a working fd; its fds are the `kinds::memfd`
//!   kind's (made in the kinds' phase from that working fd), each file of a
//!   mapping of it a reopen through /proc/self/fd (see `open_at`);
//! - fds that shared an open file description are dup'ed from the first;
//! - then the resource kinds (`crate::kinds`: files by path, memfds,
//!   terminals, pipes, FIFOs, event objects, sockets, ...) in their phase,
//!   `kinds::restore_phase`, with this table's `Scratch` (the
//!   `kinds::ghost::Ghosts` made: an unlinked file's or FIFO's) and working fds (`kinds::Work`).
//!
//! Working fds live just below the service fds: the terminal at
//! `svc_base - 1`, the memfds below it (`memfd_slot`), the kinds' (pipe
//! ends, FIFO keepers) from there down.

use super::child::{ChildPlan, RootDir};
use crate::model::{FileDesc, Task};
use crate::sys::process as p;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

fn cpath(path: &str) -> Result<CString, String> {
    CString::new(path).map_err(|_| format!("path {path:?} has a NUL byte"))
}

/// The flags an fd is opened with: the dumped ones, never O_CREAT/O_TRUNC,
/// and never O_CLOEXEC (FD_CLOEXEC is set from fdinfo).
fn open_flags(flags: i32) -> i32 {
    flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC)
}

/// open(2) `path` (one of the engine's own: /proc/self/fd/N) onto fd `target`.
fn open_onto(path: &str, flags: i32, target: i32) -> Result<(), String> {
    let c = cpath(path)?;
    let fd = p::open_raw(&c, open_flags(flags)).map_err(|e| format!("open {path:?} for fd {target}: {e}"))?;
    if fd != target {
        p::dup2(fd, target).map_err(|e| format!("dup2 {fd} -> {target}: {e}"))?;
        p::close(fd);
    }
    Ok(())
}

/// open(2) `path` (one of the engine's own: /proc/self/fd/N) with the
/// dumped `flags` (see `open_flags`), owned.
pub fn open_own(path: &str, flags: i32) -> Result<OwnedFd, String> {
    let c = cpath(path)?;
    crate::sys::tty::open(&c, open_flags(flags)).map_err(|e| format!("open {path:?}: {e}"))
}

/// Open a path of the image (never one of the engine's own) onto fd
/// `target`: with `--root`, resolved inside the root (RESOLVE_IN_ROOT: an
/// absolute symlink or `..` in the root stays in it), else as it is.
pub fn open_image_path(plan: &ChildPlan, path: &str, flags: i32, target: i32) -> Result<(), String> {
    let Some(root) = &plan.root else { return open_onto(path, flags, target) };
    let fd = root.open(path, open_flags(flags), 0).map_err(|e| format!("open {path:?} in root {} for fd {target}: {e}", root.path.display()))?;
    if fd.as_raw_fd() == target {
        let _ = fd.into_raw_fd(); // it is the restored fd now
    } else {
        p::dup2(fd.as_raw_fd(), target).map_err(|e| format!("dup2 {} -> {target}: {e}", fd.as_raw_fd()))?;
    }
    Ok(())
}

/// [`open_image_path`] onto a new fd (`n`: the fd it is for, in errors).
pub fn open_image_path_own(plan: &ChildPlan, path: &str, flags: i32, n: i32) -> Result<OwnedFd, String> {
    match &plan.root {
        None => p::open_owned(&cpath(path)?, open_flags(flags)).map_err(|e| format!("open {path:?} for fd {n}: {e}")),
        Some(root) => root.open(path, open_flags(flags), 0).map_err(|e| format!("open {path:?} in root {} for fd {n}: {e}", root.path.display())),
    }
}

/// Open `path` for the child's own use (service fds, mapped files; they
/// are mmap'ed, so O_NONBLOCK changes nothing but that a path that is now a
/// FIFO does not block the open). A memfd's key (`images_io::map_key`) is
/// a reopen of the memfd made by `restore_fds`.
pub fn open_at(plan: &ChildPlan, path: &str, flags: i32, target: i32) -> Result<(), String> {
    if let Some(ino) = path.strip_prefix("\0memfd:") {
        let i = plan.memfds.iter().position(|m| m.ino.to_string() == ino).ok_or_else(|| format!("mapped memfd inode {ino} was not planned"))?;
        return open_onto(&format!("/proc/self/fd/{}", memfd_slot(plan, i)), flags, target);
    }
    open_image_path(plan, path, flags | libc::O_NONBLOCK, target)
}

/// The working fd of memfd `i` of the plan, just below the parked terminal.
pub(crate) fn memfd_slot(plan: &ChildPlan, i: usize) -> i32 {
    plan.svc_base - 2 - i as i32
}

/// memfd_create flags (linux/memfd.h).
const MFD_ALLOW_SEALING: u32 = 2;
const MFD_EXEC: u32 = 0x10;

/// Make every memfd inode of the plan on its working fd: its name, size,
/// data runs, owner and mode, then its seals (last: a write seal would
/// refuse the data).
fn create_memfds(plan: &ChildPlan, task: &Task) -> Result<(), String> {
    let mine: Vec<usize> = (0..plan.memfds.len()).filter(|i| !plan.shared_memfds.contains(i) && uses_memfd(task, plan.memfds[*i].ino)).collect();
    make_memfds(plan, &mine)
}

/// In the root, before it forks: the memfds several processes use.
pub fn create_shared_memfds(plan: &ChildPlan) -> Result<(), String> {
    make_memfds(plan, &plan.shared_memfds)
}

/// The working fds of the memfds several processes use (inherited from
/// the root).
pub fn shared_memfd_slots(plan: &ChildPlan) -> Vec<i32> {
    plan.shared_memfds.iter().map(|&i| memfd_slot(plan, i)).collect()
}

/// Make memfds `which` (indices in the plan) on their working fds.
fn make_memfds(plan: &ChildPlan, which: &[usize]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for (i, m) in which.iter().map(|&i| (i, &plan.memfds[i])) {
        let what = |w: &str, e: std::io::Error| format!("memfd {:?} (inode {}): {w}: {e}", m.name, m.ino);
        let name = CString::new(m.name.clone()).map_err(|_| format!("memfd name {:?} has a NUL byte", m.name))?;
        // executable ones asked for as such (vm.memfd_noexec may default to
        // no-exec); a kernel without MFD_EXEC takes them exec anyway
        let exec = m.mode & 0o111 != 0;
        // (a hugetlb one: MFD_HUGETLB and its page size, as dumped)
        let fd = match p::memfd_create(&name, MFD_ALLOW_SEALING | m.hugetlb | if exec { MFD_EXEC } else { 0 }) {
            Err(e) if exec && e.raw_os_error() == Some(libc::EINVAL) => p::memfd_create(&name, MFD_ALLOW_SEALING | m.hugetlb),
            r => r,
        }
        .map_err(|e| what("memfd_create", e))?;
        let f = std::fs::File::from(fd);
        f.set_len(m.size).map_err(|e| what("ftruncate", e))?;
        // the data runs, copied in the kernel from the pages file
        if let crate::model::MemfdData::Image { pages, offsets } = &m.data {
            let src = std::fs::File::open(pages).map_err(|e| what(&format!("opening {}", pages.display()), e))?;
            if m.hugetlb != 0 {
                // hugetlbfs takes no write(2): through a mapping of it
                let len = usize::try_from(m.size).map_err(|_| format!("memfd {:?}: size {} out of range", m.name, m.size))?;
                let mut map = crate::sys::mmap::SharedMut::map(&f, len).map_err(|e| what("mmap of the hugetlb memfd", e))?;
                let dst = map.as_mut_slice();
                for (&(off, len), &from) in m.runs.iter().zip(offsets) {
                    let at = usize::try_from(off).ok().filter(|&a| a.checked_add(len as usize).is_some_and(|e| e <= dst.len()));
                    let at = at.ok_or_else(|| format!("memfd {:?}: run {off}+{len} past its size", m.name))?;
                    std::os::unix::fs::FileExt::read_exact_at(&src, &mut dst[at..at + len as usize], from)
                        .map_err(|e| what(&format!("reading {len} bytes for {off} from {}", pages.display()), e))?;
                }
            }
            for (&(off, len), &from) in m.runs.iter().zip(offsets).filter(|_| m.hugetlb == 0) {
                p::seek_to(f.as_raw_fd(), off).map_err(|e| what(&format!("lseek to {off}"), e))?;
                p::sendfile_all(f.as_fd(), src.as_fd(), from, len).map_err(|e| what(&format!("copying {len} bytes to {off} from {}", pages.display()), e))?;
            }
        }
        std::os::unix::fs::fchown(&f, Some(m.uid), Some(m.gid)).map_err(|e| what("fchown", e))?;
        f.set_permissions(std::fs::Permissions::from_mode(m.mode)).map_err(|e| what(&format!("fchmod {:o}", m.mode), e))?;
        if m.seals != 0 {
            p::fcntl_int(f.as_raw_fd(), libc::F_ADD_SEALS, u64::from(m.seals)).map_err(|e| what(&format!("F_ADD_SEALS {:#x}", m.seals), e))?;
        }
        let slot = memfd_slot(plan, i);
        p::dup2(f.as_raw_fd(), slot).map_err(|e| what(&format!("dup2 to {slot}"), e))?;
    }
    Ok(())
}

/// Whether `task` has an fd or a mapping of memfd inode `ino`.
fn uses_memfd(task: &Task, ino: u64) -> bool {
    task.fds.iter().any(|f| matches!(&f.file, FileDesc::Kind(crate::kinds::Kind::Memfd(m)) if m.ino == ino))
        || task.mm.vmas.iter().any(|v| v.file.as_ref().is_some_and(|f| f.memfd == Some(ino)))
}

/// Close the working fds of the memfds `task` made, once the files of its
/// mappings are open.
pub fn close_memfds(plan: &ChildPlan, task: &Task) {
    for (i, _) in plan.memfds.iter().enumerate().filter(|(i, m)| plan.shared_memfds.contains(i) || uses_memfd(task, m.ino)) {
        p::close(memfd_slot(plan, i));
    }
}

fn is_terminal(fd: i32) -> bool {
    std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| {
        let major = crate::dump::files::dev_major(m.rdev());
        m.file_type().is_char_device() && (major == 4 || major == 5 || (136..=143).contains(&major))
    })
}

/// With `--shell-job`: move the engine's terminal (the first of fds 0..2
/// that is one) to `svc_base - 1` before the fd table is cleared. Returns
/// the fds to keep.
pub fn park_terminal(plan: &ChildPlan) -> Result<Option<i32>, String> {
    if !plan.shell_job {
        return Ok(None);
    }
    let Some(t) = (0..3).find(|&fd| is_terminal(fd)) else { return Ok(None) };
    let slot = plan.svc_base - 1;
    p::dup2(t, slot).map_err(|e| format!("keeping the terminal (fd {t}): {e}"))?;
    Ok(Some(slot))
}

/// Upstream's checks of a reopened regular file: same mode, same size
/// when the size was recorded.
pub fn validate(fd: i32, path: &str, mode: u32, size: Option<u64>) -> Result<(), String> {
    let (m_mode, m_size) = p::fstat_mode_size(fd).map_err(|e| format!("fstat fd {fd} ({path}): {e}"))?;
    if mode != 0 && m_mode != mode {
        return Err(format!("File {path} has bad mode 0{m_mode:o} (expect 0{mode:o})"));
    }
    if let Some(size) = size {
        if m_size != size {
            return Err(format!("File {path} has bad size {m_size} (expect {size})"));
        }
    }
    Ok(())
}

/// Descriptions of the files unlinked while mapped count down from here
/// (files.img ids, which the other descriptions carry, count up from 1).
const MAP_GHOST_DESC: u32 = u32::MAX - 1;

/// The open file descriptions the root makes for the whole tree
/// (`plan.plan.shared`), onto `sh_base + k`, for every process forked
/// after to inherit: each made as its first holder's fd would be (pipes
/// with both ends and their bytes, a FIFO's keeper and bytes, a ghost
/// recreated once for all of its descriptions).
pub fn restore_shared(plan: &ChildPlan, tree: &crate::model::Tree, terminal: Option<i32>) -> Result<(), String> {
    let mut fds = Vec::with_capacity(plan.plan.shared.len());
    // a resource kind's description names other fds (epoll: its targets)
    // by their numbers in its holder: here they are on slots too
    let mut moved: std::collections::HashMap<u32, std::collections::HashMap<i32, i32>> = std::collections::HashMap::new();
    let slot = |d: u32| plan.plan.shared.iter().position(|&x| x == d).map(|k| plan.sh_base + k as i32);
    for (k, &d) in plan.plan.shared.iter().enumerate() {
        let (t, f) = tree.tasks.iter().find_map(|t| Some((t, t.fds.iter().find(|f| f.desc == d)?))).ok_or_else(|| format!("shared file {d} has no fd"))?;
        let FileDesc::Kind(kind) = &f.file;
        let mut m = std::collections::HashMap::new();
        for n in kind.after() {
            let at = t.fds.iter().find(|x| x.fd == n).and_then(|x| slot(x.desc));
            let at = at.ok_or_else(|| format!("fd {} of {} ({}, shared across the tree) needs its fd {n}, which is not made for the tree", f.fd, t.pid, kind.name()))?;
            m.insert(n, at);
        }
        moved.insert(d, m);
        fds.push(crate::model::Fd { fd: plan.sh_base + k as i32, cloexec: false, desc: d, file: f.file.clone() });
    }
    // files unlinked while mapped, after the descriptions (one Ghosts
    // for both: an fd of the same inode gets the same recreated file)
    for (j, (path, g, flags)) in plan.map_ghosts.iter().enumerate() {
        let n = plan.sh_base + (plan.plan.shared.len() + j) as i32;
        let reg = crate::kinds::reg::Reg { path: path.clone(), flags: *flags as u32, pos: 0, mode: g.mode, size: None, ghost: Some(Box::new((**g).clone())), link: None };
        let file = FileDesc::Kind(crate::kinds::Kind::Reg(reg));
        fds.push(crate::model::Fd { fd: n, cloexec: false, desc: MAP_GHOST_DESC - j as u32, file });
    }
    let all = Task { fds, ..Default::default() };
    install(plan, &all, terminal, &std::collections::HashMap::new(), false, &moved)
}

/// Recreate every fd of `task` (the fd table holds only the report pipe,
/// the service fds, the parked terminal and the descriptions the root made
/// for the tree, `shared`: desc -> inherited fd, dup'ed where they belong).
pub fn restore_fds(plan: &ChildPlan, task: &Task, terminal: Option<i32>, shared: &std::collections::HashMap<u32, i32>) -> Result<(), String> {
    install(plan, task, terminal, shared, true, &std::collections::HashMap::new())
}

/// `moved`: for the root's descriptions, where the fds each kind names are
/// (see `kinds::Restore::moved`).
fn install(
    plan: &ChildPlan,
    task: &Task,
    terminal: Option<i32>,
    shared: &std::collections::HashMap<u32, i32>,
    close_terminal: bool,
    moved: &std::collections::HashMap<u32, std::collections::HashMap<i32, i32>>,
) -> Result<(), String> {
    use std::collections::HashMap;
    // the table's scratch: the ghosts made (shared with `kinds::fifo`),
    // the kinds' own state
    let mut scratch = crate::kinds::Scratch::default();
    create_memfds(plan, task)?;
    // svc_base - 1 is the parked terminal's, the memfds' below it; other
    // working fds go below those
    let mut work = crate::kinds::Work::new(plan.svc_base - 1 - plan.memfds.len() as i32);
    let mut descs: HashMap<u32, i32> = HashMap::new(); // desc -> first fd
    // the resource kinds of crate::kinds (terminals, pipes, FIFOs, ...): a
    // phase of their own, after these
    let mut kinds = Vec::new();
    for fd in &task.fds {
        let n = fd.fd;
        if let Some(&first) = descs.get(&fd.desc).or_else(|| shared.get(&fd.desc)) {
            p::dup2(first, n).map_err(|e| format!("dup2 fd {first} -> {n} (shared file): {e}"))?;
            if fd.cloexec {
                p::set_cloexec(n, true).map_err(|e| format!("FD_CLOEXEC fd {n}: {e}"))?;
            }
            descs.entry(fd.desc).or_insert(n);
            continue;
        }
        let FileDesc::Kind(k) = &fd.file;
        kinds.push((fd, k));
    }
    if let Some(r) = &plan.root {
        crate::kinds::unix::refuse_paths_under_root(&kinds, &r.path)?;
    }
    crate::kinds::restore_phase(&mut scratch, &kinds, moved, plan, terminal, &mut work, close_terminal)?;
    // the working fds (pipe ends, FIFO keepers) and the terminal, done
    let used: std::collections::HashSet<i32> = task.fds.iter().map(|f| f.fd).collect();
    work.close(&used);
    if let Some(t) = terminal.filter(|t| close_terminal && !used.contains(t)) {
        p::close(t);
    }
    drop(scratch); // (the ghosts unlinked)
    Ok(())
}

/// Take the file locks of the image again (in the child, every fd in
/// place, nothing left for it to close but the service fds): POSIX locks
/// with F_SETLK (owned by this process, which becomes the restored one),
/// OFD locks with F_OFD_SETLK and flock locks with flock(2) (owned by the
/// fd's open file description). Never waits: a lock someone else holds
/// now fails the restore, naming it. A POSIX lock on a file that is also
/// one of the service fds (a mapped file) is refused: closing that fd at
/// the end of the restore would drop the lock.
pub fn take_locks(plan: &ChildPlan, task: &Task, i: usize) -> Result<(), String> {
    use crate::model::LockKind;
    // (fstat: after a --root chroot there may be no /proc)
    let ident = p::fstat_dev_ino;
    for l in &task.locks {
        let what = format!(
            "{} {} lock of fd {} (bytes {}..{})",
            match l.kind {
                LockKind::Posix => "POSIX",
                LockKind::Flock => "flock",
                LockKind::Ofd => "OFD",
            },
            if l.write { "write" } else { "read" },
            l.fd,
            l.start,
            if l.len == 0 { "EOF".to_string() } else { (l.start + l.len).to_string() }
        );
        if l.kind == LockKind::Posix {
            let me = ident(l.fd).map_err(|e| format!("{what}: fstat: {e}"))?;
            for (k, (path, _)) in plan.map_files[i].iter().enumerate() {
                if ident(plan.svc_base + plan.map_off.get(i).copied().unwrap_or(0) + 1 + k as i32).is_ok_and(|m| m == me) {
                    return Err(format!("{what}: its file is also mapped ({path}), and closing the mapping's fd would drop the lock: not supported yet"));
                }
            }
        }
        let r = match l.kind {
            LockKind::Posix => p::set_range_lock(l.fd, false, l.write, l.start, l.len),
            LockKind::Ofd => p::set_range_lock(l.fd, true, l.write, l.start, l.len),
            LockKind::Flock => p::flock_nb(l.fd, l.write),
        };
        r.map_err(|e| match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => format!("{what}: the file is locked by another process now"),
            _ => format!("{what}: {e}"),
        })?;
    }
    Ok(())
}

/// The files the image maps (executable, libraries, data files) must be the
/// ones that were dumped: an ELF file whose GNU build-id was recorded must
/// still have it (upstream's build-id validation). Checked in the engine
/// before anything is forked.
pub fn check_mapped_files(task: &Task, root: Option<&RootDir>) -> Result<(), String> {
    let files = task.mm.exe.iter().chain(task.mm.vmas.iter().filter_map(|v| v.file.as_ref()));
    let mut seen: Vec<&str> = Vec::new();
    for f in files {
        // (a file unlinked at dump is recreated from its ghost, which is
        // the dumped file itself: nothing at its path to check)
        if f.build_id.is_empty() || f.ghost.is_some() || seen.contains(&f.path.as_str()) {
            continue;
        }
        seen.push(&f.path);
        let (full, id) = match root {
            None => (f.path.clone(), crate::dump::elf::build_id_of(std::path::Path::new(&f.path))),
            Some(r) => {
                let file = r.open(&f.path, libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK, 0).map(std::fs::File::from);
                (format!("{} in root {}", f.path, r.path.display()), file.ok().and_then(|file| crate::dump::elf::build_id(&file)))
            }
        };
        match id {
            Some(id) if id == f.build_id => {}
            Some(_) => return Err(format!("File {full} has bad build-ID: it is not the file that was dumped")),
            None => return Err(format!("File {full} has no build-ID (missing, unreadable or rebuilt without one)")),
        }
    }
    Ok(())
}
