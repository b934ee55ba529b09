//! Pipes: one end of an anonymous pipe, with the bytes queued in it and
//! its buffer size.
//!
//! Dump: claimed by its link (`pipe:[INO]`, a FIFO by type); its inode is
//! the pipe's id, shared by both ends. As upstream, the queued bytes are
//! taken through a read end (a pipe whose reader lives elsewhere keeps its
//! bytes there), once per pipe and process, without consuming them
//! ([`queued`]: a reopen through /proc and tee(2)); they ride on that
//! end's model value. Image: a `PIPE` files.img entry (`pipe_entry`: the
//! pipe's id and the end's flags) per open file description, and one
//! pipes-data.img entry per pipe (its buffer size, the bytes after it),
//! however many processes read it. Restore: one new pipe per dumped pipe,
//! its ends on two working fds for the whole table, its buffer size set
//! and its bytes written back; the first description of each end is that
//! end, a second one a reopen through /proc; each description's status
//! flags set exactly. A pipe with ends in several processes of a tree is
//! made by the root for all ([`FileKind::object`]).

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::model::PipeData;
use crate::pr_debug;
use crate::sys::process as p;
use crate::sys::Pid;
use images_proto::magic as mg;
use images_proto::pb;
use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipe {
    /// The pipe's inode number.
    pub pipe_id: u32,
    /// File status flags (O_RDONLY: the read end, O_WRONLY: the write end).
    pub flags: u32,
    /// The bytes queued in the pipe, on the read end they were taken
    /// through (in each process, its first read end of the pipe).
    pub data: Option<Arc<PipeData>>,
}

/// The status flags a pipe or FIFO fd can have changed with F_SETFL.
pub const PIPE_SETFL: i32 = libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT;

/// The queued bytes and buffer size of the pipe or FIFO behind
/// `/proc/PID/fd/FD`, not consumed: a reopen for reading (non-blocking, so
/// a FIFO with no writer does not wait), tee(2) into a pipe of ours.
pub fn queued(pid: Pid, fd: i32, pipe_id: u32, fifo: bool) -> Result<PipeData, FilesError> {
    let err = |e| FilesError::PipeData { pid, fd, pipe_id, source: e };
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(err)?;
    let size = p::fcntl_int(src.as_raw_fd(), libc::F_GETPIPE_SZ, 0).map_err(err)? as u32;
    let (rd, wr) = p::pipe().map_err(err)?;
    p::fcntl_int(wr.as_raw_fd(), libc::F_SETPIPE_SZ, u64::from(size)).map_err(err)?;
    let n = match p::tee(&src, &wr, size as usize, libc::SPLICE_F_NONBLOCK) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
        Err(e) => return Err(err(e)),
    };
    drop(wr);
    let mut data = Vec::with_capacity(n);
    std::fs::File::from(rd).read_to_end(&mut data).map_err(err)?;
    if data.len() != n {
        return Err(err(std::io::Error::other(format!("tee copied {n} bytes but {} came out", data.len()))));
    }
    pr_debug!("Dumping data from {} {pipe_id:#x} fd {fd}: {n} bytes (pipe size {size})", if fifo { "fifo" } else { "pipe" });
    Ok(PipeData { pipe_id, fifo, size, data })
}

/// Write all of `data` into the write end `fd` of a fresh pipe.
fn fill_pipe(fd: i32, data: &[u8]) -> Result<(), String> {
    let mut off = 0;
    while off < data.len() {
        let n = p::write_raw(fd, &data[off..]).map_err(|e| format!("writing {} queued bytes into a pipe: {e}", data.len()))?;
        off += n as usize;
    }
    Ok(())
}

/// The dumped buffer size and queued bytes of a pipe or FIFO, put back
/// through `wr` (a write end of it).
pub fn refill(wr: i32, d: &PipeData) -> Result<(), String> {
    let what = if d.fifo { "fifo" } else { "pipe" };
    let cur = p::fcntl_int(wr, libc::F_GETPIPE_SZ, 0).unwrap_or(0);
    if d.size != 0 && u64::from(d.size) != cur {
        p::fcntl_int(wr, libc::F_SETPIPE_SZ, u64::from(d.size)).map_err(|e| format!("F_SETPIPE_SZ {} on {what} {:#x}: {e}", d.size, d.pipe_id))?;
    }
    fill_pipe(wr, &d.data).map_err(|e| format!("{what} {:#x}: {e}", d.pipe_id))
}

/// The entries of pipes-data.img or fifo-data.img (`kind`), read once:
/// by pipe id; the ids given twice apart (refused when an fd needs them).
#[derive(Default)]
pub struct DataImage {
    loaded: bool,
    by_id: HashMap<u32, Arc<PipeData>>,
    twice: HashSet<u32>,
}

impl DataImage {
    /// The data of pipe (or FIFO) `pipe_id` in the image of `kind` in
    /// `dir`, if it has any.
    pub fn get(&mut self, dir: &std::path::Path, kind: &'static images_proto::magic::ImageKind, pipe_id: u32) -> Result<Option<Arc<PipeData>>, ImagesError> {
        let name = kind.file_name("");
        if !self.loaded {
            self.loaded = true;
            if dir.join(&name).exists() {
                let fifo = std::ptr::eq(kind, &mg::FIFO_DATA);
                let mut r = images_proto::image::ImageReader::open(dir, &name, kind)?;
                while let Some(e) = r.next_entry::<pb::PipeDataEntry>()? {
                    let data = r.read_payload(u64::from(e.bytes))?;
                    let d = Arc::new(PipeData { pipe_id: e.pipe_id, fifo, size: e.size.unwrap_or(0), data });
                    if self.by_id.insert(e.pipe_id, d).is_some() {
                        self.twice.insert(e.pipe_id);
                    }
                }
            }
        }
        if self.twice.contains(&pipe_id) {
            return Err(ImagesError::Bad { file: name, what: format!("pipe {pipe_id:#x} has two entries") });
        }
        Ok(self.by_id.get(&pipe_id).cloned())
    }
}

/// pipes-data.img, read once per fd table.
#[derive(Default)]
struct PipesData(DataImage);

/// The pipes whose bytes this fd table has taken (dump).
#[derive(Default)]
struct Taken(HashSet<u32>);

/// The pipes made in this table (restore): pipe id -> its two ends
/// (working fds) and whether each end's first description is handed out.
#[derive(Default)]
struct Made(HashMap<u32, ([i32; 2], [bool; 2])>);

impl FileKind for Pipe {
    const TYPE: pb::FdTypes = pb::FdTypes::Pipe;
    const NAME: &'static str = "pipe";
    const EARLY: bool = true;
    const WORKING_FDS: i32 = 2;

    fn claims(link: &str, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::FileTypeExt;
        link.starts_with("pipe:[") && meta.file_type().is_fifo()
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let ino = cx.link.strip_prefix("pipe:[").and_then(|s| s.strip_suffix(']'));
        let pipe_id: u32 = ino.and_then(|i| i.parse().ok()).ok_or_else(|| FilesError::Unsupported { pid: cx.pid, fd: cx.fd, what: format!("a pipe with an odd link {:?}", cx.link) })?;
        // as upstream: the bytes are taken through a read end (a pipe
        // whose reader lives elsewhere keeps its bytes there)
        let read_end = cx.flags as i32 & libc::O_ACCMODE == libc::O_RDONLY;
        let data = if read_end && cx.scratch.get::<Taken>().0.insert(pipe_id) { Some(Arc::new(queued(cx.pid, cx.fd, pipe_id, false)?)) } else { None };
        Ok(Pipe { pipe_id, flags: cx.flags, data })
    }

    fn write(&self, id: u32, acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        if let Some(d) = &self.data {
            // (a pipe read by several processes: its bytes once; empty
            // ones too, which carry the buffer size)
            let bytes = u32::try_from(d.data.len()).map_err(|_| ImagesError::Bad { file: mg::PIPES_DATA.file_name(""), what: format!("pipe {:#x}: {} bytes", d.pipe_id, d.data.len()) })?;
            acc.push_once(&mg::PIPES_DATA, u64::from(d.pipe_id), &pb::PipeDataEntry { pipe_id: d.pipe_id, bytes, size: Some(d.size) }, d.data.clone());
        }
        Ok(pb::FileEntry { r#type: pb::FdTypes::Pipe as i32, id, pipe: Some(pb::PipeEntry { id, pipe_id: self.pipe_id, flags: self.flags, fown: super::fown() }), ..Default::default() })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let pp = cx.member(e, "pipe", &e.pipe)?;
        let dir = cx.dir;
        let data = cx.scratch.get::<PipesData>().0.get(dir, &mg::PIPES_DATA, pp.pipe_id)?;
        Ok(Pipe { pipe_id: pp.pipe_id, flags: pp.flags, data })
    }

    fn object(&self) -> Option<u64> {
        Some(u64::from(self.pipe_id))
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let id = self.pipe_id;
        if let Some(from) = cx.plan.inherited(&crate::inherit::pipe_key(id)) {
            return inherited(from, id, self.flags);
        }
        let (ends, used) = match cx.scratch.get::<Made>().0.get(&id) {
            Some(&e) => e,
            None => {
                let e = p::pipe_raw().map_err(|e| format!("pipe: {e}"))?;
                // keep the pipe's two ends out of the way of later fds
                let hi = [cx.work.take(), cx.work.take()];
                for (from, to) in e.iter().zip(hi) {
                    p::dup2(*from, to).map_err(|e| format!("pipe {id:#x}: dup2 {from} -> {to}: {e}"))?;
                    p::close(*from);
                }
                // its bytes: on the read end they were taken through,
                // wherever it is in the table
                let data = cx.all.iter().find_map(|(_, k)| match k {
                    super::Kind::Pipe(x) if x.pipe_id == id => x.data.clone(),
                    _ => None,
                });
                if let Some(d) = data {
                    refill(hi[1], &d)?;
                }
                (hi, [false; 2])
            }
        };
        let w = usize::from(self.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY);
        let f = if used[w] {
            // another open file description of this end: a reopen
            crate::restore::files::open_own(&format!("/proc/self/fd/{}", ends[w]), self.flags as i32 & !PIPE_SETFL)?
        } else {
            crate::sys::tty::dup_number(ends[w]).map_err(|e| format!("dup of pipe {id:#x}'s end {}: {e}", ends[w]))?
        };
        let mut used = used;
        used[w] = true;
        cx.scratch.get::<Made>().0.insert(id, (ends, used));
        p::fcntl_int(f.as_raw_fd(), libc::F_SETFL, (self.flags as i32 & PIPE_SETFL) as u64).map_err(|e| format!("F_SETFL: {e}"))?;
        Ok(f)
    }
}

/// `--inherit-fd fd[N]:pipe:[ID]`: one open file description of the
/// dumped pipe `id` as a new open of the inherited pipe (on fd `from`),
/// with the dumped end's flags (its direction and status flags its own,
/// not the caller's), as upstream reopens it. Non-blocking for the open
/// (a write end with no reader would wait forever: ENXIO, named), then
/// the flags exactly. The dump's bytes of the pipe are not written.
fn inherited(from: i32, id: u32, flags: u32) -> Result<OwnedFd, String> {
    let path = format!("/proc/self/fd/{from}");
    let f = crate::restore::files::open_own(&path, (flags as i32 & !PIPE_SETFL) | libc::O_NONBLOCK).map_err(|e| {
        if e.contains("No such device or address") {
            format!("pipe {id:#x} (inherited, fd {from}): the inherited pipe has no reader for this write end: {e}")
        } else {
            format!("pipe {id:#x} (inherited, fd {from}): {e}")
        }
    })?;
    p::fcntl_int(f.as_raw_fd(), libc::F_SETFL, (flags as i32 & PIPE_SETFL) as u64).map_err(|e| format!("F_SETFL: {e}"))?;
    pr_debug!("pipe {id:#x}: reopened from the inherited fd {from}");
    Ok(f)
}
