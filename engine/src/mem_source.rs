//! The one interface through which restore reads the memory of a dumped
//! address space: a pages image (mmap of pages-N.img), a live process
//! (/proc/PID/mem), or anything else that can produce the bytes of a
//! dumped virtual address range.

use crate::model::PageRun;
use crate::sys::mmap::MappedFile;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("reading {len} bytes at {vaddr:#x} from {what}")]
    Read { what: String, vaddr: u64, len: usize, #[source] source: io::Error },
    #[error("{what} has no page at {vaddr:#x}")]
    Missing { what: String, vaddr: u64 },
    #[error("{what}: pages image is {have} bytes, pagemap needs {need}")]
    Short { what: String, have: u64, need: u64 },
}

/// Bytes of a dumped address space.
pub trait MemSource {
    /// Fill `buf` with the bytes at `vaddr` (a range inside one dumped page run).
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// The bytes at `vaddr` without copying, when the source is in memory.
    fn slice(&self, _vaddr: u64, _len: usize) -> Option<&[u8]> {
        None
    }
}

/// A live (frozen) process read through /proc/PID/mem.
#[derive(Debug)]
pub struct ProcessMem {
    pid: i32,
    file: File,
}

impl ProcessMem {
    pub fn open(pid: i32) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).open(format!("/proc/{pid}/mem"))?;
        Ok(ProcessMem { pid, file })
    }
}

impl MemSource for ProcessMem {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.file.read_exact_at(buf, vaddr).map_err(|e| MemError::Read {
            what: format!("/proc/{}/mem", self.pid),
            vaddr,
            len: buf.len(),
            source: e,
        })
    }
}

/// pages-N.img mapped in memory, indexed by the pagemap's runs.
#[derive(Debug)]
pub struct PagesImage {
    name: String,
    map: MappedFile,
    /// (vaddr, nr_pages, offset in the file), sorted by vaddr.
    runs: Vec<(u64, u64, u64)>,
}

impl PagesImage {
    /// Map `path`; `runs` are the pagemap's entries in file order.
    pub fn open(path: &Path, runs: &[PageRun]) -> Result<Self, MemError> {
        let name = path.display().to_string();
        let f = File::open(path).map_err(|e| MemError::Read { what: name.clone(), vaddr: 0, len: 0, source: e })?;
        let map = MappedFile::map(&f).map_err(|e| MemError::Read { what: name.clone(), vaddr: 0, len: 0, source: e })?;
        let mut off = 0u64;
        let mut idx = Vec::with_capacity(runs.len());
        for r in runs {
            idx.push((r.vaddr, r.nr_pages, off));
            off += r.nr_pages * 4096;
        }
        let have = map.bytes().len() as u64;
        if have < off {
            return Err(MemError::Short { what: name, have, need: off });
        }
        idx.sort_by_key(|r| r.0);
        Ok(PagesImage { name, map, runs: idx })
    }

    fn locate(&self, vaddr: u64, len: usize) -> Option<usize> {
        let i = self.runs.partition_point(|r| r.0 <= vaddr).checked_sub(1)?;
        let (start, nr, off) = self.runs[i];
        let end = start + nr * 4096;
        if vaddr + len as u64 > end {
            return None;
        }
        usize::try_from(off + (vaddr - start)).ok()
    }
}

impl MemSource for PagesImage {
    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let s = self.slice(vaddr, buf.len()).ok_or(MemError::Missing { what: self.name.clone(), vaddr })?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn slice(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let off = self.locate(vaddr, len)?;
        self.map.bytes().get(off..off + len)
    }
}
