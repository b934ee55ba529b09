//! FIFOs (named pipes) opened by path, with the bytes queued in them and
//! their buffer size; a FIFO unlinked while open too.
//!
//! Dump: claimed by type (a FIFO whose link is a path; one unlinked from
//! its path but linked elsewhere is not claimed, and is refused by name);
//! its inode is its id. Its queued bytes are taken once per FIFO and
//! process through the first fd of it, whatever the end (a reopen through
//! /proc and tee(2), [`super::pipe::queued`]). One no longer linked
//! anywhere gets a ghost of mode S_IFIFO (no contents:
//! `kinds::ghost::special_ghost`). Image: as upstream 4.2: a `REG` entry of
//! the path and flags, then the `FIFO` entry naming it (`regf_id`); an
//! unlinked one a `GHOST` remap of that `REG` entry and its
//! ghost-file-N.img (numbered with the regular files' ghosts); one
//! fifo-data.img entry per FIFO (its buffer size, the bytes after it).
//! Restore: each FIFO is first opened O_RDWR|O_NONBLOCK on a working fd (a
//! keeper: no open of it, read-only or write-only, blocking or not, waits
//! for the other side then), which also refills its buffer size and
//! queued bytes; each fd is then opened by path (inside `--root` if
//! given) with the dumped flags and its mode checked. An unlinked FIFO's
//! node is recreated once (the regular files' ghosts, `kinds::ghost::
//! Ghosts`), each fd opened through its old name, unlinked again. A FIFO
//! with fds in several processes of a tree is opened by the root for all
//! ([`FileKind::object`]).

use super::pipe::{queued, refill, DataImage};
use super::{Collect, FileKind, Read, Restore, Write};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::model::{Ghost, PipeData};
use images_proto::magic as mg;
use images_proto::pb;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fifo {
    /// The path it was opened by (its old path when unlinked).
    pub path: String,
    /// File status flags (no O_CLOEXEC).
    pub flags: u32,
    /// Its st_mode, checked on restore.
    pub mode: u32,
    /// Its inode number, shared by every fd of the FIFO.
    pub pipe_id: u32,
    /// Unlinked while open: a ghost of mode S_IFIFO, no contents.
    pub ghost: Option<Box<Ghost>>,
    /// The bytes queued in it, on the fd they were taken through (in each
    /// process, its first fd of the FIFO).
    pub data: Option<Arc<PipeData>>,
}

/// Dump, per fd table: the FIFOs whose bytes are taken, the ghosts read.
#[derive(Default)]
struct Taken {
    data: HashSet<u32>,
    ghosts: HashMap<(u64, u64), Box<Ghost>>,
}

/// fifo-data.img, read once per fd table.
#[derive(Default)]
struct FifoData(DataImage);

/// Restore, per table: FIFO id -> its keeper (a working fd).
#[derive(Default)]
struct Keepers(HashMap<u32, i32>);

impl FileKind for Fifo {
    const TYPE: pb::FdTypes = pb::FdTypes::Fifo;
    const NAME: &'static str = "fifo";
    const EARLY: bool = true;
    const WORKING_FDS: i32 = 2;

    fn claims(link: &str, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        // (one unlinked from this path but linked elsewhere: refused by
        // the orchestration, as any such deleted file that is not regular)
        meta.file_type().is_fifo() && link.starts_with('/') && (!link.ends_with(" (deleted)") || meta.nlink() == 0)
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        use std::os::unix::fs::MetadataExt;
        let meta = cx.meta;
        let pipe_id = meta.ino() as u32;
        let data = if cx.scratch.get::<Taken>().data.insert(pipe_id) { Some(Arc::new(queued(cx.pid, cx.fd, pipe_id, true)?)) } else { None };
        let (path, ghost) = match cx.link.strip_suffix(" (deleted)") {
            // no longer linked anywhere: a ghost of mode S_IFIFO, as upstream
            Some(orig) => {
                let key = (meta.dev(), meta.ino());
                let g = match cx.scratch.get::<Taken>().ghosts.get(&key) {
                    Some(g) => g.clone(),
                    None => {
                        let g = Box::new(super::ghost::special_ghost(cx.pid, cx.fd, orig, meta)?);
                        cx.scratch.get::<Taken>().ghosts.insert(key, g.clone());
                        g
                    }
                };
                (orig.to_string(), Some(g))
            }
            None => (cx.link.to_string(), None),
        };
        Ok(Fifo { path, flags: cx.flags, mode: meta.mode(), pipe_id, ghost, data })
    }

    fn write_entries(&self, cx: &mut Write<'_>) -> Result<u32, ImagesError> {
        // as upstream: the path and flags in a REG entry of its own
        let regf_id = cx.push(crate::images_io::reg_entry(0, &self.path, self.flags, 0, self.mode, None));
        if let Some(g) = &self.ghost {
            // unlinked: a ghost (mode S_IFIFO, no contents) of that REG
            // entry, as upstream writes it
            super::ghost::ghost_remap(cx.dir, cx.acc, regf_id, g)?;
        }
        if let Some(d) = &self.data {
            // (a FIFO read by several processes: its bytes once; empty
            // ones too, which carry the buffer size)
            let bytes = u32::try_from(d.data.len()).map_err(|_| ImagesError::Bad { file: mg::FIFO_DATA.file_name(""), what: format!("pipe {:#x}: {} bytes", d.pipe_id, d.data.len()) })?;
            cx.acc.push_once(&mg::FIFO_DATA, u64::from(d.pipe_id), &pb::PipeDataEntry { pipe_id: d.pipe_id, bytes, size: Some(d.size) }, d.data.clone());
        }
        let e = pb::FileEntry { r#type: pb::FdTypes::Fifo as i32, fifo: Some(pb::FifoEntry { id: 0, pipe_id: self.pipe_id, regf_id: Some(regf_id) }), ..Default::default() };
        Ok(cx.push(e))
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let ff = cx.member(e, "fifo", &e.fifo)?;
        let (dir, fd) = (cx.dir, cx.fd);
        let r = ff
            .regf_id
            .and_then(|id| cx.files.iter().find(|f| f.id == id))
            .and_then(|r| r.reg.as_ref())
            .ok_or_else(|| ImagesError::Bad { file: "files.img".into(), what: format!("fd {fd}: fifo {} has no reg_file_entry (regf_id {:?})", e.id, ff.regf_id) })?;
        let regf_id = ff.regf_id.unwrap_or(0);
        let reads = cx.scratch.get::<super::ghost::GhostReads>();
        let ghost = match reads.remap_of(dir, regf_id)? {
            None => None,
            Some(m) if m.remap_type.unwrap_or(0) == pb::RemapType::Ghost as i32 => {
                let g = reads.ghost(dir, m.remap_id)?;
                if g.mode & libc::S_IFMT != libc::S_IFIFO {
                    return Err(ImagesError::Bad { file: mg::GHOST_FILE.file_name(m.remap_id), what: format!("fd {fd}: FIFO {} has a ghost of mode {:o}, not a FIFO's", r.name, g.mode) });
                }
                Some(g)
            }
            Some(m) => return Err(ImagesError::Bad { file: "remap-fpath.img".into(), what: format!("fd {fd}: remap type {} of FIFO {} is not supported", m.remap_type.unwrap_or(0), r.name) }),
        };
        let data = cx.scratch.get::<FifoData>().0.get(dir, &mg::FIFO_DATA, ff.pipe_id)?;
        Ok(Fifo { path: r.name.clone(), flags: r.flags, mode: r.mode.unwrap_or(libc::S_IFIFO), pipe_id: ff.pipe_id, ghost, data })
    }

    fn object(&self) -> Option<u64> {
        Some(u64::from(self.pipe_id))
    }

    fn restore(&self, cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        use super::ghost::Ghosts;
        use crate::restore::files::{open_image_path, validate};
        let (n, plan, id) = (cx.fd, cx.plan, self.pipe_id);
        let path = &self.path;
        // an unlinked FIFO: its node recreated once (`Ghosts::path`), each
        // open through its old name, unlinked again
        let open_fifo = |ghosts: &mut Ghosts, fl: i32, at: i32| match &self.ghost {
            Some(g) => ghosts.open(plan, path, g, fl, at),
            None => open_image_path(plan, path, fl, at),
        };
        if !cx.scratch.get::<Keepers>().0.contains_key(&id) {
            let keep = cx.work.take();
            open_fifo(cx.scratch.get::<Ghosts>(), libc::O_RDWR | libc::O_NONBLOCK, keep)?;
            let (m, _) = crate::sys::process::fstat_mode_size(keep).map_err(|e| format!("fstat {path}: {e}"))?;
            if m & libc::S_IFMT != libc::S_IFIFO {
                return Err(format!("{path} (fd {n}) was a FIFO but is now mode 0{m:o}"));
            }
            // its bytes: on the fd they were taken through, wherever it is
            // in the table
            let data = cx.all.iter().find_map(|(_, k)| match k {
                super::Kind::Fifo(x) if x.pipe_id == id => x.data.clone(),
                _ => None,
            });
            if let Some(d) = data {
                refill(keep, &d)?;
            }
            cx.scratch.get::<Keepers>().0.insert(id, keep);
        }
        // (opened onto its number, as the ghost's open through the old
        // name needs a target; the phase gets a second handle of it)
        open_fifo(cx.scratch.get::<Ghosts>(), self.flags as i32, n)?;
        validate(n, path, self.mode, None)?;
        crate::sys::tty::dup_number(n).map_err(|e| format!("dup of fd {n}: {e}"))
    }
}
