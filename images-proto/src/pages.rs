//! Process memory in images: `pagemap-N.img` lists runs of pages
//! (`pagemap_head` naming the pages file, then one `pagemap_entry` per run),
//! `pages-M.img` holds the contents of the runs flagged `PE_PRESENT`,
//! back to back, in pagemap order, with no header.
//!
//! The reader walks runs and computes each one's offset in the pages file
//! without touching page data; the writer appends runs. Neither holds more
//! than one entry in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, Location, Result};
use crate::image::{ImageReader, ImageWriter};
use crate::magic;
use crate::pb::{PagemapEntry, PagemapHead};

/// The pages are in the parent image directory (incremental dumps).
pub const PE_PARENT: u32 = 1 << 0;
/// The pages may be served lazily (upstream marks private anon runs so).
pub const PE_LAZY: u32 = 1 << 1;
/// The pages are in this image's pages file.
pub const PE_PRESENT: u32 = 1 << 2;

pub const PAGE_SIZE: u64 = 4096;

/// One run of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
    /// Byte offset of the run in the pages file (meaningful when present).
    pub offset: u64,
}

impl PageRun {
    pub fn len(&self) -> u64 {
        self.nr_pages * PAGE_SIZE
    }
    pub fn is_empty(&self) -> bool {
        self.nr_pages == 0
    }
    pub fn end(&self) -> u64 {
        self.vaddr + self.len()
    }
    pub fn present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
}

/// Number of pages of an entry: 4.x writes `nr_pages`, older images only
/// the 32-bit `compat_nr_pages`.
pub fn entry_pages(e: &PagemapEntry) -> u64 {
    e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages))
}

/// Name of the pagemap image of task (or shmem segment) `id`.
pub fn pagemap_name(id: impl std::fmt::Display) -> String {
    magic::PAGEMAP.file_name(id)
}

/// Name of pages file `pages_id`.
pub fn pages_name(pages_id: u32) -> String {
    format!("pages-{pages_id}.img")
}

/// Walks the runs of one pagemap image.
pub struct PagemapReader {
    rd: ImageReader,
    pages_id: u32,
    next_offset: u64,
    last_end: u64,
}

impl PagemapReader {
    pub fn open(dir: &Path, name: &str) -> Result<Self> {
        let mut rd = ImageReader::open(dir, name, &magic::PAGEMAP)?;
        let head: PagemapHead = rd.next_entry()?.ok_or_else(|| ImageError::Truncated {
            at: Location { file: dir.join(name), entry: Some(0), field: Some("pages_id".into()) },
            wanted: 4,
            left: 0,
        })?;
        Ok(PagemapReader { rd, pages_id: head.pages_id, next_offset: 0, last_end: 0 })
    }

    /// Id of the pages file (`pages-<id>.img`) the present runs are in.
    pub fn pages_id(&self) -> u32 {
        self.pages_id
    }

    /// The next run, checked: page-aligned, non-empty, no overflow, in
    /// ascending address order.
    pub fn next_run(&mut self) -> Result<Option<PageRun>> {
        let idx = self.rd.index();
        let Some(e) = self.rd.next_entry::<PagemapEntry>()? else {
            return Ok(None);
        };
        let bad = |field: &str, what: String| ImageError::Format {
            at: Location { file: self.rd.path().to_path_buf(), entry: Some(idx), field: Some(field.into()) },
            what,
        };
        let nr = entry_pages(&e);
        if e.vaddr % PAGE_SIZE != 0 {
            return Err(bad("vaddr", format!("{:#x} is not page aligned", e.vaddr)));
        }
        let len = nr.checked_mul(PAGE_SIZE).filter(|l| e.vaddr.checked_add(*l).is_some());
        let Some(len) = len else {
            return Err(bad("nr_pages", format!("{nr} pages at {:#x} overflow the address space", e.vaddr)));
        };
        if e.vaddr < self.last_end {
            return Err(bad("vaddr", format!("{:#x} overlaps or precedes the previous run", e.vaddr)));
        }
        let flags = e.flags.unwrap_or(if e.in_parent == Some(true) { PE_PARENT } else { PE_PRESENT });
        let run = PageRun { vaddr: e.vaddr, nr_pages: nr, flags, offset: self.next_offset };
        if run.present() {
            self.next_offset = self.next_offset.checked_add(len).ok_or_else(|| bad("nr_pages", format!("{nr} pages at {:#x} overflow the pages file offset", e.vaddr)))?;
        }
        self.last_end = e.vaddr + len;
        Ok(Some(run))
    }

    /// All runs (small: one entry per run, not per page).
    pub fn runs(mut self) -> Result<Vec<PageRun>> {
        let mut v = Vec::new();
        while let Some(r) = self.next_run()? {
            v.push(r);
        }
        Ok(v)
    }
}

/// A pages file opened for reading at offsets.
pub struct PagesFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl PagesFile {
    pub fn open(dir: &Path, pages_id: u32) -> Result<Self> {
        let path = dir.join(pages_name(pages_id));
        let file = crate::image::open_regular(&path)?;
        let size = file.metadata().map_err(|e| ImageError::io("stat", &path, e))?.len();
        Ok(PagesFile { path, file, size })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Check that a run's pages are inside the file.
    pub fn check(&self, run: &PageRun) -> Result<()> {
        if run.offset.checked_add(run.len()).is_none_or(|end| end > self.size) {
            return Err(ImageError::Truncated {
                at: Location { file: self.path.clone(), entry: None, field: Some(format!("run at {:#x}", run.vaddr)) },
                wanted: run.offset.saturating_add(run.len()),
                left: self.size,
            });
        }
        Ok(())
    }

    /// Read `buf.len()` bytes of page data at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| ImageError::io("read", &self.path, e))
    }
}

/// Appends runs to a pagemap image and its pages file.
pub struct PagesWriter {
    pagemap: ImageWriter,
    pages_path: PathBuf,
    pages: BufWriter<File>,
    offset: u64,
}

impl PagesWriter {
    /// Create `pagemap-<id>.img` and `pages-<pages_id>.img` in `dir`.
    pub fn create(dir: &Path, id: impl std::fmt::Display, pages_id: u32) -> Result<Self> {
        let mut pagemap = ImageWriter::create(dir, &pagemap_name(id), &magic::PAGEMAP)?;
        pagemap.write_entry(&PagemapHead { pages_id })?;
        let pages_path = dir.join(pages_name(pages_id));
        let f = File::create(&pages_path).map_err(|e| ImageError::io("create", &pages_path, e))?;
        Ok(PagesWriter { pagemap, pages_path, pages: BufWriter::with_capacity(1 << 20, f), offset: 0 })
    }

    fn entry(vaddr: u64, nr_pages: u64, flags: u32) -> PagemapEntry {
        PagemapEntry { vaddr, compat_nr_pages: 0, in_parent: None, flags: Some(flags), nr_pages: Some(nr_pages) }
    }

    /// Record a run whose data follows in `data` (whole pages).
    pub fn add(&mut self, vaddr: u64, data: &[u8], flags: u32) -> Result<()> {
        debug_assert_eq!(data.len() as u64 % PAGE_SIZE, 0);
        let nr = data.len() as u64 / PAGE_SIZE;
        self.pagemap.write_entry(&Self::entry(vaddr, nr, flags | PE_PRESENT))?;
        self.pages.write_all(data).map_err(|e| ImageError::io("write", &self.pages_path, e))?;
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Record a run whose data the caller writes itself at [`Self::offset`]
    /// of the pages file (e.g. with io_uring or splice), after `flush_pages`.
    pub fn add_header_only(&mut self, vaddr: u64, nr_pages: u64, flags: u32) -> Result<u64> {
        self.pagemap.write_entry(&Self::entry(vaddr, nr_pages, flags))?;
        let at = self.offset;
        if flags & PE_PRESENT != 0 {
            self.offset += nr_pages * PAGE_SIZE;
        }
        Ok(at)
    }

    /// Bytes of page data the pagemap accounts for so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Flush buffered page data and return the pages file.
    pub fn flush_pages(&mut self) -> Result<&File> {
        self.pages.flush().map_err(|e| ImageError::io("write", &self.pages_path, e))?;
        Ok(self.pages.get_ref())
    }

    pub fn finish(mut self) -> Result<()> {
        self.flush_pages()?;
        self.pagemap.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_runs() {
        let dir = std::env::temp_dir().join(format!("pages-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = PagesWriter::create(&dir, 7, 7).unwrap();
        w.add(0x1000, &[1u8; 8192], PE_LAZY).unwrap();
        w.add_header_only(0x10000, 3, PE_PARENT).unwrap();
        w.add(0x20000, &[2u8; 4096], 0).unwrap();
        w.finish().unwrap();

        let r = PagemapReader::open(&dir, "pagemap-7.img").unwrap();
        assert_eq!(r.pages_id(), 7);
        let runs = r.runs().unwrap();
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0], PageRun { vaddr: 0x1000, nr_pages: 2, flags: PE_LAZY | PE_PRESENT, offset: 0 });
        assert!(!runs[1].present());
        assert_eq!(runs[2].offset, 8192);
        let pf = PagesFile::open(&dir, 7).unwrap();
        let mut b = [0u8; 4096];
        pf.read_at(runs[2].offset, &mut b).unwrap();
        assert!(b.iter().all(|x| *x == 2));
        pf.check(&runs[2]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
