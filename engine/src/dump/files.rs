//! File descriptors, dump half (the restore half is `restore/files.rs`):
//! every fd is offered to the resource kinds (`crate::kinds`: tty, pty,
//! fifo, pipe, eventfd, memfd, ..., and last `reg`, the files opened by
//! path); the memfd inodes are read once per tree ([`collect_memfds`]);
//! what no kind claims (pidfds, ...) and non-UTF-8 paths are refused by
//! name. The ghosts' contents (`ghost_of`, `special_ghost`: of files
//! unlinked while open or mapped), the sharing of descriptions across a
//! tree and the `--link-remap` links are made here.
//!
//! Everything is read from outside the frozen task: /proc/PID/fd links,
//! stat and fdinfo, a reopen of /proc/PID/fd/N for ghost contents, and
//! kcmp(KCMP_FILE) to find fds that share one open file description.

use super::proc;
use crate::model::{Fd, FileDesc, FileLock};
use crate::pr_debug;
use crate::sys::process as p;
use crate::sys::Pid;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Upstream's default `--ghost-limit`: unlinked files with more allocated
/// bytes than this (holes do not count) are refused.
pub const GHOST_LIMIT: u64 = 1 << 20;

/// What the command line says about files at dump.
#[derive(Debug, Clone, Copy)]
pub struct FileOpts {
    /// `--ghost-limit`: the most allocated bytes an unlinked open file may
    /// have for its contents to go into the images.
    pub ghost_limit: u64,
    /// `--file-locks`: dump the file locks processes hold (else a process
    /// holding one is refused, as upstream refuses it).
    pub file_locks: bool,
    /// `--link-remap`: a file unlinked from its path but linked elsewhere
    /// gets a hard link `link_remap.N` beside its old path (else refused).
    pub link_remap: bool,
}

impl Default for FileOpts {
    fn default() -> FileOpts {
        FileOpts { ghost_limit: GHOST_LIMIT, file_locks: false, link_remap: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading fd {fd} of {pid}")]
    Io { pid: Pid, fd: i32, #[source] source: io::Error },
    #[error("fd {fd} of {pid} is {what}: this kind of file is not supported yet")]
    Unsupported { pid: Pid, fd: i32, what: String },
    #[error("fd {fd} of {pid}: ghost file {path} has {size} bytes allocated, over the {limit}-byte ghost limit (raise it with --ghost-limit)")]
    GhostTooBig { pid: Pid, fd: i32, path: String, size: u64, limit: u64 },
    #[error("fd {fd} of {pid}: {path} was unlinked but the file still has {nlink} other links: dump with --link-remap")]
    LinkRemap { pid: Pid, fd: i32, path: String, nlink: u64 },
    #[error("reading the queued bytes of pipe {pipe_id} (fd {fd} of {pid})")]
    PipeData { pid: Pid, fd: i32, pipe_id: u32, #[source] source: io::Error },
    #[error("the {what} of {pid} can't be dumped: {why}")]
    Dir { pid: Pid, what: &'static str, why: String },
    #[error("{pid} holds a file lock through fd {fd} ({lock}): dump with --file-locks (-l) to dump it")]
    Locked { pid: Pid, fd: i32, lock: String },
    #[error("fd {fd} of {pid} holds {why}")]
    LockUnsupported { pid: Pid, fd: i32, why: String },
    #[error("fd {fd} of {pid} ({kind}): {why}")]
    Kind { pid: Pid, fd: i32, kind: &'static str, why: String },
    #[error("kcmp(KCMP_FILE) of fds {a} and {b} of {pid} (needed to tell whether they share an open file description)")]
    Kcmp { pid: Pid, a: i32, b: i32, #[source] source: io::Error },
}

/// glibc's `major()` of a `dev_t`.
pub fn dev_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

/// glibc's `minor()` of a `dev_t`.
pub fn dev_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// Whether regular-file size is recorded and checked: upstream skips it for
/// write-only append files (logs keep growing).
pub fn should_check_size(flags: u32) -> bool {
    !((flags as i32 & libc::O_ACCMODE) == libc::O_WRONLY && flags as i32 & libc::O_APPEND != 0)
}

/// HUGETLBFS_MAGIC: a memfd made with MFD_HUGETLB lives there.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// memfd_create's MFD_HUGETLB.
const MFD_HUGETLB: u32 = 4;

/// The longest name memfd_create takes (249 bytes, without the NUL).
pub const MEMFD_NAME_MAX: usize = 249;

/// Every memfd inode the tree's fds and mappings refer to, each read once
/// (its name, owner, mode, size, seals and data runs) through the first fd
/// (`/proc/PID/fd/N`) or mapping (`/proc/PID/map_files/START-END`) that
/// shows it. `tasks`: (host pid, task) of the live processes.
pub fn collect_memfds(tasks: &[(Pid, &crate::model::Task)]) -> Result<Vec<crate::model::Memfd>, FilesError> {
    let mut out: Vec<crate::model::Memfd> = Vec::new();
    for (pid, t) in tasks {
        let pid = *pid;
        let fds = t.fds.iter().filter_map(|f| match &f.file {
            FileDesc::Kind(crate::kinds::Kind::Memfd(crate::kinds::memfd::Memfd { ino, .. })) => Some((*ino, format!("/proc/{pid}/fd/{}", f.fd), f.fd)),
            _ => None,
        });
        let maps = t.mm.vmas.iter().filter_map(|v| {
            let ino = v.file.as_ref()?.memfd?;
            Some((ino, format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end), -1))
        });
        for (ino, path, fd) in fds.chain(maps) {
            if out.iter().any(|m| m.ino == ino) {
                continue;
            }
            out.push(read_memfd(pid, fd, &path, ino)?);
        }
    }
    Ok(out)
}

/// One memfd inode through `path` (an fd or map_files link of `pid`).
fn read_memfd(pid: Pid, fd: i32, path: &str, ino: u64) -> Result<crate::model::Memfd, FilesError> {
    use std::os::fd::AsFd;
    let io_err = |e| FilesError::Io { pid, fd, source: e };
    let unsupported = |what: String| FilesError::Unsupported { pid, fd, what };
    let link = std::fs::read_link(path).map_err(io_err)?;
    let link = link.to_str().ok_or_else(|| unsupported(format!("a memfd whose name is not UTF-8 ({link:?})")))?;
    let name = link
        .strip_prefix("/memfd:")
        .and_then(|n| n.strip_suffix(" (deleted)"))
        .ok_or_else(|| unsupported(format!("{link}, not a memfd name")))?
        .to_string();
    let f = std::fs::File::open(path).map_err(io_err)?;
    let meta = f.metadata().map_err(io_err)?;
    if meta.ino() != ino {
        return Err(io_err(io::Error::other(format!("{path} is inode {} now, not {ino}", meta.ino()))));
    }
    // on hugetlbfs (MFD_HUGETLB): its page size is the file system's block size
    let hugetlb = if p::fs_type(f.as_fd()).map_err(io_err)? == HUGETLBFS_MAGIC {
        let bs = p::fs_block_size(f.as_fd()).map_err(io_err)?;
        if bs < 8192 || !bs.is_power_of_two() {
            return Err(unsupported(format!("a hugetlb memfd ({link}) of {bs}-byte pages?")));
        }
        MFD_HUGETLB | (bs.trailing_zeros() << libc::MAP_HUGE_SHIFT)
    } else {
        0
    };
    let seals = p::fcntl_int(f.as_raw_fd(), libc::F_GET_SEALS, 0).map_err(io_err)? as u32;
    let size = meta.size();
    // the data runs only: their bytes are copied from `path` into the
    // pages file when the images are written (the processes still frozen)
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut off = 0;
    while off < size {
        let Some(start) = p::seek_data_hole(f.as_fd(), off, libc::SEEK_DATA).map_err(io_err)? else { break };
        if start >= size {
            break;
        }
        let start = start & !(crate::sys::PAGE_SIZE - 1);
        let end = p::seek_data_hole(f.as_fd(), start, libc::SEEK_HOLE).map_err(io_err)?.unwrap_or(size).min(size);
        runs.push((start, end - start));
        off = end;
    }
    pr_debug!("memfd {name:?} (inode {ino}): {size} bytes, {} data runs, seals {seals:#x}", runs.len());
    let data = if runs.is_empty() { crate::model::MemfdData::None } else { crate::model::MemfdData::Live(path.to_string()) };
    Ok(crate::model::Memfd { ino, name, uid: meta.uid(), gid: meta.gid(), mode: meta.mode() & 0o7777, size, seals, runs, data, hugetlb })
}

/// One process's fds and the file locks held through them.
pub type FdTable = (Vec<Fd>, Vec<FileLock>);

/// What a non-path fd link (`pipe:[N]`, `socket:[N]`, `anon_inode:[eventfd]`,
/// `net:[N]`, ...) is, in words, for refusals.
fn kernel_object_kind(link: &str) -> String {
    if link.starts_with("socket:") {
        "a socket".to_string()
    } else if let Some(k) = link.strip_prefix("anon_inode:") {
        format!("an anonymous inode ({})", k.trim_start_matches('[').trim_end_matches(']'))
    } else {
        format!("{link:?} (a kernel object without a path)")
    }
}

/// What fds of one open file description agree on: (st_dev, st_ino,
/// offset, status flags).
type DescKey = (u64, u64, u64, u32);

/// Every fd of `pid` (sorted), the queued bytes of its pipes and FIFOs,
/// and the file locks held through its fds (with `--file-locks`).
///
/// Each fd is classified by what `stat` says it is (file type, device
/// major), and by its link only where the type does not tell (a memfd is
/// a regular file named `/memfd:NAME (deleted)`). Fds sharing one open file
/// description are found per inode with kcmp's ordering and a binary
/// search: O(n log n) kcmp calls, not one per pair.
pub fn collect_fds(pid: Pid, opts: &FileOpts) -> Result<FdTable, FilesError> {
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| FilesError::Io { pid, fd: -1, source: e })?;
    let mut fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    fds.sort_unstable();
    pr_debug!("Found {} file descriptors", fds.len());
    let mut out: Vec<Fd> = Vec::with_capacity(fds.len());
    let mut locks: Vec<FileLock> = Vec::new();
    // per inode, offset and status flags (fds of one open file description
    // agree on all three; the task is frozen): (fd, index in `out`) of one
    // fd per open file description, sorted by kcmp order
    let mut descs: HashMap<DescKey, Vec<(i32, usize)>> = HashMap::new();
    let mut ndesc = 0;
    let mut scratch = crate::kinds::Scratch::default();
    for fd in fds {
        let io_err = |e| FilesError::Io { pid, fd, source: e };
        let unsupported = |what: String| FilesError::Unsupported { pid, fd, what };
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(io_err)?;
        let Ok(link) = std::str::from_utf8(link.as_os_str().as_bytes()).map(str::to_string) else {
            return Err(unsupported(format!("{:?}, a path that is not UTF-8", link.as_os_str())));
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(io_err)?;
        let (pos, flags, _mnt) = proc::parse_fdinfo(&info);
        pr_debug!("{pid} fdinfo {fd}: pos: {pos:#x} flags: {flags:o} [{link}]");
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        let flags = flags & !(libc::O_CLOEXEC as u32);
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(io_err)?;
        // an fd sharing its description with an earlier one: same desc, same file
        let group = descs.entry((meta.dev(), meta.ino(), pos, flags)).or_default();
        let mut kcmp_err = None;
        let found = group.binary_search_by(|&(f, _)| {
            p::kcmp_file_order(pid, f, fd).unwrap_or_else(|e| {
                kcmp_err.get_or_insert(FilesError::Kcmp { pid, a: f, b: fd, source: e });
                std::cmp::Ordering::Equal
            })
        });
        if let Some(e) = kcmp_err {
            return Err(e);
        }
        let slot = match found {
            Ok(i) => {
                let prev = &out[group[i].1];
                let (desc, file) = (prev.desc, prev.file.clone());
                out.push(Fd { fd, cloexec, desc, file });
                continue;
            }
            Err(slot) => slot,
        };
        group.insert(slot, (fd, out.len()));
        // the locks held through this open file description (its other fds
        // show the same ones): fdinfo's `lock:` lines, as the kernel lists
        // the locks whose file is this one and whose owner is this
        // process's fd table (POSIX) or this description (flock, OFD)
        for l in info.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let mut lock = proc::parse_lock_line(l.trim()).map_err(|why| FilesError::LockUnsupported { pid, fd, why })?;
            if !opts.file_locks {
                return Err(FilesError::Locked { pid, fd, lock: l.trim().to_string() });
            }
            lock.fd = fd;
            pr_debug!("{pid} fd {fd} holds lock {}", l.trim());
            locks.push(lock);
        }
        // the resource kinds: terminals by device number whatever the
        // path, FIFOs opened by path, pipes, sockets, anonymous inodes,
        // memfds, and last the files opened by path (`kinds::reg`)
        let file = {
            let mut cx = crate::kinds::Collect { pid, fd, link: &link, fdinfo: &info, flags, meta: &meta, pos, opts, scratch: &mut scratch };
            match crate::kinds::collect(&mut cx)? {
                Some(k) => FileDesc::Kind(k),
                None => return Err(unsupported(kernel_object_kind(&link))),
            }
        };
        ndesc += 1;
        out.push(Fd { fd, cloexec, desc: ndesc, file });
    }
    Ok((out, locks))
}

/// Number the open file descriptions of several processes' fd tables
/// (each numbered on its own by [`collect_fds`]) across all of them: fds of
/// different processes that share one description (inherited over fork)
/// get one `desc`, so the images have one files.img entry for it. The
/// descriptions seen so far are kept sorted by kcmp(KCMP_FILE)'s order (a
/// total order on the kernel's file pointers), so each fd costs O(log n)
/// kcmp calls.
pub fn share_descriptions(tables: &mut [(Pid, &mut Vec<Fd>)]) -> Result<(), FilesError> {
    // (pid, fd, global desc), in kcmp order
    let mut reps: Vec<(Pid, i32, u32)> = Vec::new();
    let mut next = 0u32;
    for (pid, fds) in tables.iter_mut() {
        let pid = *pid;
        let mut local: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for f in fds.iter_mut() {
            if let Some(&g) = local.get(&f.desc) {
                f.desc = g;
                continue;
            }
            let mut err = None;
            let at = reps.binary_search_by(|&(rp, rfd, _)| {
                p::kcmp_files_order(rp, rfd, pid, f.fd).unwrap_or_else(|e| {
                    err.get_or_insert(e);
                    std::cmp::Ordering::Less
                })
            });
            if let Some(e) = err {
                return Err(FilesError::Io { pid, fd: f.fd, source: e });
            }
            let g = match at {
                Ok(i) => {
                    pr_debug!("fd {} of {pid} shares its file with fd {} of {}", f.fd, reps[i].1, reps[i].0);
                    reps[i].2
                }
                Err(i) => {
                    next += 1;
                    reps.insert(i, (pid, f.fd, next));
                    next
                }
            };
            local.insert(f.desc, g);
            f.desc = g;
        }
    }
    Ok(())
}

/// Make the hard links `--link-remap` promised (`link: Some("")`), one per
/// file across the tree: `link_remap.N` in the directory of the file's
/// old path (the first N free), made through `/proc/PID/fd/N`, as
/// upstream makes them; every fd of the file gets its name. On an error
/// the links made so far are removed again. Returns the links made, for
/// the caller to remove when the dumped processes run on (`-R`) or the
/// dump fails later.
pub fn make_link_remaps<'a>(tasks: impl Iterator<Item = (Pid, &'a mut crate::model::Task)>) -> Result<Vec<String>, FilesError> {
    use std::os::unix::ffi::OsStrExt;
    let mut made: Vec<((u64, u64), String)> = Vec::new();
    let res = (|| {
        for (pid, t) in tasks {
            for f in t.fds.iter_mut() {
                let FileDesc::Kind(crate::kinds::Kind::Reg(crate::kinds::reg::Reg { path, link: Some(link), .. })) = &mut f.file else { continue };
                if !link.is_empty() {
                    continue;
                }
                let src = format!("/proc/{pid}/fd/{}", f.fd);
                let meta = std::fs::metadata(&src).map_err(|e| FilesError::Io { pid, fd: f.fd, source: e })?;
                if let Some((_, l)) = made.iter().find(|(k, _)| *k == (meta.dev(), meta.ino())) {
                    *link = l.clone();
                    continue;
                }
                let dir = std::path::Path::new(path.as_str()).parent().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
                let csrc = std::ffi::CString::new(src.as_bytes()).expect("no NUL");
                let mut n = 1;
                let name = loop {
                    let name = format!("{}/link_remap.{n}", dir.trim_end_matches('/'));
                    let c = std::ffi::CString::new(std::ffi::OsStr::new(&name).as_bytes())
                        .map_err(|_| FilesError::Unsupported { pid, fd: f.fd, what: format!("{path:?}, a path with a NUL byte") })?;
                    match p::link_follow(&csrc, &c) {
                        Ok(()) => break name,
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 10_000 => n += 1,
                        Err(e) => {
                            return Err(FilesError::Io { pid, fd: f.fd, source: io::Error::new(e.kind(), format!("linking {path} (deleted) to {name}: {e}")) })
                        }
                    }
                };
                pr_debug!("fd {} of {pid}: {path} (deleted) linked as {name} (link remap)", f.fd);
                made.push(((meta.dev(), meta.ino()), name.clone()));
                *link = name;
            }
        }
        Ok(())
    })();
    let names: Vec<String> = made.into_iter().map(|(_, n)| n).collect();
    match res {
        Ok(()) => Ok(names),
        Err(e) => {
            remove_link_remaps(&names);
            Err(e)
        }
    }
}

/// Remove link remaps [`make_link_remaps`] made (the dumped processes run
/// on, or the dump failed after them), as upstream removes them then.
pub fn remove_link_remaps(names: &[String]) {
    for n in names {
        if let Err(e) = std::fs::remove_file(n) {
            crate::pr_warn!("removing link remap {n}: {e}");
        }
    }
}

/// A flock or OFD lock belongs to its open file description: processes
/// that share the description (numbered across the tree by
/// [`share_descriptions`]) each show it; it is kept once, with the first
/// of them (a POSIX lock is its process's own and stays with it).
pub fn share_locks<'a>(tasks: impl Iterator<Item = &'a mut crate::model::Task>) {
    use crate::model::LockKind;
    let mut seen: Vec<(u32, FileLock)> = Vec::new();
    for t in tasks {
        let descs: std::collections::HashMap<i32, u32> = t.fds.iter().map(|f| (f.fd, f.desc)).collect();
        t.locks.retain(|l| {
            if l.kind == LockKind::Posix {
                return true;
            }
            let desc = descs.get(&l.fd).copied().unwrap_or(0);
            let key = FileLock { fd: 0, ..*l };
            if seen.iter().any(|(d, k)| *d == desc && *k == key) {
                return false;
            }
            seen.push((desc, key));
            true
        });
    }
}

/// The working directory (`what` = "cwd") or root of `pid`, refused when
/// it was removed (as upstream, which cannot dump a deleted cwd either)
/// or is not UTF-8.
pub fn fs_path(pid: Pid, what: &'static str) -> Result<String, FilesError> {
    use std::os::unix::ffi::OsStrExt;
    let link = std::fs::read_link(format!("/proc/{pid}/{what}")).map_err(|e| FilesError::Io { pid, fd: -1, source: e })?;
    let Ok(s) = std::str::from_utf8(link.as_os_str().as_bytes()) else {
        return Err(FilesError::Dir { pid, what, why: format!("{:?} is not UTF-8", link.as_os_str()) });
    };
    if s.ends_with(" (deleted)") {
        let nlink = std::fs::metadata(format!("/proc/{pid}/{what}")).map(|m| m.nlink()).unwrap_or(0);
        if nlink == 0 {
            return Err(FilesError::Dir { pid, what, why: format!("{s}: the directory was removed") });
        }
    }
    Ok(s.to_string())
}

/// st_mode of `pid`'s cwd or root directory (`what`), 0 when it can't be
/// read (written as 040755 then).
pub fn fs_mode(pid: Pid, what: &'static str) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/{what}")).map(|m| m.mode()).unwrap_or(0)
}

/// A file type in words.
pub(crate) fn type_name(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket file"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "file of unknown type"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_check_skips_write_only_append() {
        let f = |x: i32| should_check_size(x as u32);
        assert!(!f(libc::O_WRONLY | libc::O_APPEND | libc::O_LARGEFILE));
        assert!(f(libc::O_RDWR | libc::O_APPEND));
        assert!(f(libc::O_WRONLY));
        assert!(f(libc::O_RDONLY));
    }

    #[test]
    fn tty_majors() {
        use crate::kinds::tty::is_tty_major;
        assert_eq!(dev_major(0x8803), 136); // /dev/pts/3
        assert!(is_tty_major(dev_major(0x8803)));
        assert!(is_tty_major(dev_major(0x0500))); // /dev/tty
        assert!(!is_tty_major(dev_major(0x0103))); // /dev/null
    }
}
