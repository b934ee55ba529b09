//! File descriptors, dump half (the restore half is `restore/files.rs`):
//! regular files, directories, character devices (/dev/null, /dev/zero),
//! files unlinked while open (ghosts: contents saved), pipes (queued bytes
//! saved), terminals (recorded; only `--shell-job` accepts them).
//!
//! Everything is read from outside the frozen task: /proc/PID/fd links and
//! fdinfo, a reopen of /proc/PID/fd/N for ghost contents and for pipes
//! (tee(2) duplicates the queued bytes without consuming them), and
//! kcmp(KCMP_FILE) to find fds that share one open file description.

use super::proc;
use crate::model::{Fd, FileDesc, Ghost, PipeData};
use crate::pr_debug;
use crate::sys::process as p;
use crate::sys::Pid;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// Upstream's default `--ghost-limit`: larger unlinked files are refused.
pub const GHOST_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading fd {fd} of {pid}")]
    Io { pid: Pid, fd: i32, #[source] source: io::Error },
    #[error("fd {fd} of {pid} is {what:?}: this kind of file is not supported yet")]
    Unsupported { pid: Pid, fd: i32, what: String },
    #[error("fd {fd} of {pid}: ghost file {path} is {size} bytes, over the {GHOST_LIMIT}-byte ghost limit")]
    GhostTooBig { pid: Pid, fd: i32, path: String, size: u64 },
    #[error("fd {fd} of {pid}: {path} was unlinked but the inode still has {nlink} links (link remap is not supported yet)")]
    LinkRemap { pid: Pid, fd: i32, path: String, nlink: u64 },
    #[error("reading the queued bytes of pipe {pipe_id} (fd {fd} of {pid})")]
    PipeData { pid: Pid, fd: i32, pipe_id: u32, #[source] source: io::Error },
}

/// Major numbers of terminals: VT/serial (4), /dev/tty + console + ptmx
/// (5), Unix98 pty slaves (136..=143).
fn is_tty_major(major: u64) -> bool {
    major == 4 || major == 5 || (136..=143).contains(&major)
}

/// glibc's `major()` of a `dev_t`.
pub fn dev_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

/// Whether regular-file size is recorded and checked: upstream skips it for
/// write-only append files (logs keep growing).
pub fn should_check_size(flags: u32) -> bool {
    !((flags as i32 & libc::O_ACCMODE) == libc::O_WRONLY && flags as i32 & libc::O_APPEND != 0)
}

/// kcmp(KCMP_FILE): do `a` and `b` of `pid` share one open file description?
fn same_description(pid: Pid, a: i32, b: i32) -> bool {
    const KCMP_FILE: u64 = 0;
    p::syscall6(libc::SYS_kcmp, [pid as u64, pid as u64, KCMP_FILE, a as u64, b as u64, 0]).ok() == Some(0)
}

/// The queued bytes of the pipe behind `/proc/PID/fd/FD`, not consumed.
fn pipe_data(pid: Pid, fd: i32, pipe_id: u32) -> Result<PipeData, FilesError> {
    let err = |e| FilesError::PipeData { pid, fd, pipe_id, source: e };
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(err)?;
    let size = p::syscall6(libc::SYS_fcntl, [src.as_raw_fd() as u64, libc::F_GETPIPE_SZ as u64, 0, 0, 0, 0]).map_err(err)? as u32;
    let (rd, wr) = p::pipe().map_err(err)?;
    p::syscall6(libc::SYS_fcntl, [wr.as_raw_fd() as u64, libc::F_SETPIPE_SZ as u64, u64::from(size), 0, 0, 0]).map_err(err)?;
    let n = match p::syscall6(
        libc::SYS_tee,
        [src.as_raw_fd() as u64, wr.as_raw_fd() as u64, u64::from(size), libc::SPLICE_F_NONBLOCK as u64, 0, 0],
    ) {
        Ok(n) => n as usize,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
        Err(e) => return Err(err(e)),
    };
    drop(wr);
    let mut data = Vec::with_capacity(n);
    std::fs::File::from(rd).read_to_end(&mut data).map_err(err)?;
    if data.len() != n {
        return Err(err(io::Error::other(format!("tee copied {n} bytes but {} came out", data.len()))));
    }
    pr_debug!("Dumping data from pipe {pipe_id:#x} fd {fd}: {n} bytes (pipe size {size})");
    Ok(PipeData { pipe_id, size, data })
}

fn ghost(pid: Pid, fd: i32, path: &str, meta: &std::fs::Metadata) -> Result<Ghost, FilesError> {
    if meta.size() > GHOST_LIMIT {
        return Err(FilesError::GhostTooBig { pid, fd, path: path.to_string(), size: meta.size() });
    }
    let contents = std::fs::read(format!("/proc/{pid}/fd/{fd}")).map_err(|e| FilesError::Io { pid, fd, source: e })?;
    pr_debug!("Dumping ghost file contents for fd {fd} ({path}, {} bytes)", contents.len());
    Ok(Ghost {
        dev: meta.dev(),
        ino: meta.ino(),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode(),
        atime: (meta.atime() as u64, meta.atime_nsec() as u64 / 1000),
        mtime: (meta.mtime() as u64, meta.mtime_nsec() as u64 / 1000),
        contents,
    })
}

/// Every fd of `pid` (sorted) and the queued bytes of its pipes.
pub fn collect_fds(pid: Pid) -> Result<(Vec<Fd>, Vec<PipeData>), FilesError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| FilesError::Io { pid, fd: -1, source: e })?;
    let mut fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    fds.sort_unstable();
    pr_debug!("Found {} file descriptors", fds.len());
    let mut out: Vec<Fd> = Vec::new();
    let mut pipes: Vec<PipeData> = Vec::new();
    let mut links: Vec<String> = Vec::new();
    let mut ndesc = 0;
    for fd in fds {
        let io_err = |e| FilesError::Io { pid, fd, source: e };
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(io_err)?;
        let link = link.to_string_lossy().to_string();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(io_err)?;
        let (pos, flags, _mnt) = proc::parse_fdinfo(&info);
        pr_debug!("{pid} fdinfo {fd}: pos: {pos:#x} flags: {flags:o} [{link}]");
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        let flags = flags & !(libc::O_CLOEXEC as u32);
        // an fd sharing its description with an earlier one: same desc, same file
        if let Some((prev, _)) = out.iter().zip(&links).find(|(f, l)| **l == link && same_description(pid, f.fd, fd)) {
            out.push(Fd { fd, cloexec, desc: prev.desc, file: prev.file.clone() });
            links.push(link);
            continue;
        }
        links.push(link.clone());
        let file = if let Some(ino) = link.strip_prefix("pipe:[").and_then(|s| s.strip_suffix(']')) {
            let pipe_id: u32 = ino.parse().unwrap_or(0);
            // as upstream: the bytes are taken through a read end (a pipe
            // whose reader lives elsewhere keeps its bytes there)
            let read_end = flags as i32 & libc::O_ACCMODE == libc::O_RDONLY;
            if read_end && !pipes.iter().any(|d| d.pipe_id == pipe_id) {
                pipes.push(pipe_data(pid, fd, pipe_id)?);
            }
            FileDesc::Pipe { pipe_id, flags }
        } else if link.starts_with('/') {
            let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(io_err)?;
            let ft = meta.file_type();
            if std::os::unix::fs::FileTypeExt::is_char_device(&ft) && is_tty_major(dev_major(meta.rdev())) {
                FileDesc::Tty { path: link, flags, rdev: meta.rdev() }
            } else if let Some(orig) = link.strip_suffix(" (deleted)") {
                if !ft.is_file() {
                    return Err(FilesError::Unsupported { pid, fd, what: link });
                }
                if meta.nlink() != 0 {
                    return Err(FilesError::LinkRemap { pid, fd, path: orig.to_string(), nlink: meta.nlink() });
                }
                // fds of one unlinked inode (opened separately) share one ghost
                let g = match out.iter().find_map(|f| match &f.file {
                    FileDesc::Reg { ghost: Some(g), .. } if g.dev == meta.dev() && g.ino == meta.ino() => Some(g.clone()),
                    _ => None,
                }) {
                    Some(g) => g,
                    None => Box::new(ghost(pid, fd, orig, &meta)?),
                };
                FileDesc::Reg { path: orig.to_string(), flags, pos, mode: meta.mode(), size: Some(meta.size()), ghost: Some(g) }
            } else {
                let size = (ft.is_file() && should_check_size(flags)).then(|| meta.size());
                FileDesc::Reg { path: link, flags, pos, mode: meta.mode(), size, ghost: None }
            }
        } else {
            return Err(FilesError::Unsupported { pid, fd, what: link });
        };
        ndesc += 1;
        out.push(Fd { fd, cloexec, desc: ndesc, file });
    }
    Ok((out, pipes))
}

/// Number the open file descriptions of several processes' fd tables
/// (each numbered on its own by [`collect_fds`]) across all of them: fds of
/// different processes that share one description (inherited over fork)
/// get one `desc`, so the images have one files.img entry for it. The
/// descriptions seen so far are kept sorted by kcmp(KCMP_FILE)'s order (a
/// total order on the kernel's file pointers), so each fd costs O(log n)
/// kcmp calls.
pub fn share_descriptions(tables: &mut [(Pid, &mut Vec<Fd>)]) -> Result<(), FilesError> {
    const KCMP_FILE: u64 = 0;
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
                match p::syscall6(libc::SYS_kcmp, [rp as u64, pid as u64, KCMP_FILE, rfd as u64, f.fd as u64, 0]) {
                    Ok(0) => std::cmp::Ordering::Equal,
                    Ok(1) => std::cmp::Ordering::Less,
                    Ok(2) => std::cmp::Ordering::Greater,
                    other => {
                        err.get_or_insert_with(|| match other {
                            Err(e) => e,
                            Ok(v) => io::Error::other(format!("kcmp(KCMP_FILE) with fd {rfd} of {rp} returned {v}")),
                        });
                        std::cmp::Ordering::Less
                    }
                }
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
        assert_eq!(dev_major(0x8803), 136); // /dev/pts/3
        assert!(is_tty_major(dev_major(0x8803)));
        assert!(is_tty_major(dev_major(0x0500))); // /dev/tty
        assert!(!is_tty_major(dev_major(0x0103))); // /dev/null
    }
}
