//! Reading the pages files ahead of the fill, so that a restore from a cold
//! page cache keeps the disk busy while the workers inject and copy.
//!
//! Without it the disk is read only where a process is being filled: the
//! workers (one a CPU) each populate the mapping of one process's pages
//! file at a time, a read-ahead window or two in flight each, and the
//! rest of the restore (injection) leaves the disk idle. Upstream's
//! restorers, one in every process, each preadv their own pages at once.
//! Here one engine thread, started once every process of the tree has
//! reported (their own copy-on-write reads, `cow.rs`, done: asked for
//! before, the whole set was queued ahead of them; the engine forks
//! nothing more), asks for the pages files in the order the workers take
//! the processes (pstree order), a few MiB per `POSIX_FADV_WILLNEED` and
//! at most [`DEPTH`] bytes queued and not yet in (a deeper queue measured
//! no faster; what a worker faults in itself waits behind less). The
//! fill then finds the pages in the page cache or in flight. Files of a
//! process whose fill reads O_DIRECT when cold
//! ([`crate::sys::uffd::DIRECT_FILL_MIN`] or more) are left out (they
//! would be read twice). Advice only: errors end the read-ahead, never the
//! restore; pages already cached cost a lookup (a warm restore measured
//! no slower).
//!
//! `CRIU_RS_READAHEAD=off` turns it off, `CRIU_RS_READAHEAD_DEPTH=MiB`
//! sets the depth (measurements, docs/PERFORMANCE.md).

use crate::mem_source::MemSource;
use crate::model::Tree;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Bytes per advice (the disk takes requests of up to 4 MiB here).
pub(crate) const PIECE: u64 = 4 << 20;
/// Bytes asked for and not known to be in the page cache, at most.
pub(crate) const DEPTH: u64 = 32 << 20;

/// The pages files to read ahead for the live processes `live` of `tree`
/// (indexes into `mems`), in that order, each once; none of a process
/// whose pages files hold [`crate::sys::uffd::DIRECT_FILL_MIN`] bytes or
/// more.
pub(crate) fn files(tree: &Tree, mems: &[&dyn MemSource], live: &[usize]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for &i in live {
        let (Some(_), Some(m)) = (tree.tasks.get(i), mems.get(i)) else { continue };
        let fs = m.files();
        let bytes: u64 = fs.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
        if bytes >= crate::sys::uffd::DIRECT_FILL_MIN as u64 {
            continue;
        }
        for f in fs {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out
}

/// What one read-ahead did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done {
    /// Bytes asked for.
    pub bytes: u64,
    /// Files gone through to the end.
    pub files: usize,
    /// Stopped before the end ([`Readahead`] dropped).
    pub stopped: bool,
}

/// Ask for `files` in order, `piece` bytes per advice and at most `depth`
/// bytes not yet known to be in (a 1-byte read of the last page of the
/// oldest piece waits for it). Ends early when `stop` is set or an advice
/// fails.
pub(crate) fn run(files: &[PathBuf], stop: &AtomicBool, piece: u64, depth: u64) -> Done {
    let mut done = Done::default();
    let mut open: Vec<File> = Vec::with_capacity(files.len());
    // (file, offset of the piece's last byte, piece length)
    let mut queued: VecDeque<(usize, u64, u64)> = VecDeque::new();
    let mut in_flight = 0u64;
    let piece = piece.max(4096);
    let wait_oldest = |open: &[File], queued: &mut VecDeque<(usize, u64, u64)>, in_flight: &mut u64| {
        if let Some((k, last, len)) = queued.pop_front() {
            let mut b = [0u8; 1];
            let _ = open[k].read_at(&mut b, last);
            *in_flight -= len;
        }
    };
    for path in files {
        // a regular file only, without blocking (the image directory is untrusted)
        let Ok(f) = images_proto::image::open_regular(path) else { continue };
        let Ok(len) = f.metadata().map(|m| m.len()) else { continue };
        let _ = crate::sys::mmap::advise_sequential(&f);
        open.push(f);
        let k = open.len() - 1;
        let mut off = 0u64;
        while off < len {
            if stop.load(Ordering::Relaxed) {
                done.stopped = true;
                return done;
            }
            while in_flight >= depth && !queued.is_empty() {
                wait_oldest(&open, &mut queued, &mut in_flight);
            }
            let n = piece.min(len - off);
            if crate::sys::mmap::advise_willneed_at(&open[k], off, n).is_err() {
                return done;
            }
            queued.push_back((k, off + n - 1, n));
            in_flight += n;
            done.bytes += n;
            off += n;
        }
        done.files += 1;
    }
    done
}

/// A read-ahead on a thread of its own; dropping it stops and joins it.
pub(crate) struct Readahead {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Readahead {
    /// Start reading `files` ahead (nothing when the list is empty or
    /// `CRIU_RS_READAHEAD=off`). The engine must not fork while it runs.
    pub(crate) fn start(files: Vec<PathBuf>) -> Option<Readahead> {
        if files.is_empty() || std::env::var("CRIU_RS_READAHEAD").as_deref() == Ok("off") {
            return None;
        }
        let depth = std::env::var("CRIU_RS_READAHEAD_DEPTH").ok().and_then(|v| v.parse::<u64>().ok()).map_or(DEPTH, |m| m.saturating_mul(1 << 20));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("readahead".into())
            .spawn(move || {
                let t = Instant::now();
                let d = run(&files, &s, PIECE, depth);
                crate::pr_debug!(
                    "readahead: {} bytes of {} of {} pages files asked for in {:.3} s{}",
                    d.bytes,
                    d.files,
                    files.len(),
                    t.elapsed().as_secs_f64(),
                    if d.stopped { " (stopped)" } else { "" }
                );
            })
            .ok()?;
        Some(Readahead { stop, thread: Some(thread) })
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// Files of `sizes` MiB in a new directory, written, synced and evicted
    /// from the page cache.
    fn cold_files(tag: &str, sizes: &[u64]) -> (PathBuf, Vec<PathBuf>) {
        let dir = std::env::temp_dir().join(format!("criu-rs-readahead-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        for (k, mib) in sizes.iter().enumerate() {
            let p = dir.join(format!("pages-{k}.img"));
            let mut f = File::create(&p).unwrap();
            let block = vec![0x5au8 + k as u8; 1 << 20];
            for _ in 0..*mib {
                f.write_all(&block).unwrap();
            }
            f.sync_all().unwrap();
            crate::sys::mmap::advise_dontneed(&f).unwrap();
            out.push(p);
        }
        (dir, out)
    }

    fn cached(p: &PathBuf) -> (usize, usize) {
        let f = File::open(p).unwrap();
        let len = f.metadata().unwrap().len();
        (crate::sys::mmap::cached_pages(&f, len).unwrap(), len.div_ceil(4096) as usize)
    }

    /// A file system whose clean pages do not leave the page cache on
    /// POSIX_FADV_DONTNEED (tmpfs) can't show the read-ahead.
    fn evicts(files: &[PathBuf]) -> bool {
        files.iter().all(|p| cached(p).0 * 4 < cached(p).1)
    }

    fn why_not_evicted(dir: &std::path::Path, files: &[PathBuf]) -> Option<String> {
        (!evicts(files)).then(|| {
            let _ = std::fs::remove_dir_all(dir);
            format!("{} keeps its files in memory (tmpfs?): nothing to read ahead from a disk", dir.display())
        })
    }

    #[test]
    fn reads_every_file_into_the_page_cache() {
        let (dir, files) = cold_files("all", &[9, 3, 6]);
        test_support::require!(why_not_evicted(&dir, &files));
        let stop = AtomicBool::new(false);
        // depth of one piece: each piece is in before the next is asked for
        let d = run(&files, &stop, 1 << 20, 1 << 20);
        assert_eq!(d, Done { bytes: 18 << 20, files: 3, stopped: false });
        // all but the last piece waited for; the last has had its reads queued
        std::thread::sleep(Duration::from_millis(200));
        for p in &files {
            let (have, pages) = cached(p);
            assert!(have == pages, "{}: {have} of {pages} pages in the page cache after the read-ahead", p.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stops_when_told() {
        let (dir, files) = cold_files("stop", &[2, 2]);
        test_support::require!(why_not_evicted(&dir, &files));
        let stop = AtomicBool::new(true);
        let d = run(&files, &stop, 1 << 20, 8 << 20);
        assert_eq!(d, Done { bytes: 0, files: 0, stopped: true });
        std::thread::sleep(Duration::from_millis(100));
        assert!(files.iter().all(|p| cached(p).0 == 0), "a stopped read-ahead asked for pages");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
