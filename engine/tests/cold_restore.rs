//! A tree restored from a cold page cache (restore/readahead.rs and the
//! read-ahead-free copy-on-write reads of restore/cow.rs), with real
//! processes: tools/bench/treehog.c, a root with 1 MiB of private memory
//! its children inherit and three children that each write 24 MiB of
//! their own; every process checks its memory every tick. The pages
//! files are evicted from the page cache (fsync, POSIX_FADV_DONTNEED)
//! before each restore.
//!
//! - Up to the moment every process has reported (fault point
//!   `after-reports`, the read-ahead off), the forked children have read
//!   their copy-on-write runs and not much more of the image set: a
//!   fault on the pages file's mapping used to read an 8 MiB window
//!   around each run, nearly the whole set before any process was filled.
//! - A cold restore reads the pages files ahead of the fill (its log
//!   line names every one of them), and the tree ticks on with every
//!   page as it was (each process checks its memory each tick).
//!
//! Needs root, gcc, unshare and setsid, and a file system for the test
//! directory that drops clean pages on POSIX_FADV_DONTNEED (not tmpfs).

mod common;

use common::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHILDREN: usize = 3;
const CHILD_MIB: u64 = 24;

fn pages_files(img: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img")))
        .collect();
    v.sort();
    v
}

/// (pages in the page cache, pages) over `files`.
fn cached(files: &[PathBuf]) -> (usize, usize) {
    let mut t = (0, 0);
    for p in files {
        let f = File::open(p).unwrap();
        let len = f.metadata().unwrap().len();
        t.0 += engine::sys::mmap::cached_pages(&f, len).unwrap();
        t.1 += len.div_ceil(4096) as usize;
    }
    t
}

/// Write the files back and drop them from the page cache; `Some` reason
/// when their file system keeps them anyway (tmpfs).
fn evict(files: &[PathBuf]) -> Option<String> {
    for p in files {
        let f = File::open(p).unwrap();
        f.sync_all().unwrap();
        engine::sys::mmap::advise_dontneed(&f).unwrap();
    }
    let (have, all) = cached(files);
    (have * 10 > all).then(|| format!("{have} of {all} pages of the pages files stay in memory after POSIX_FADV_DONTNEED (tmpfs?): no cold restore here"))
}

/// A treehog tree dumped by our engine: (tree handle, images, pages files).
fn dumped(tag: &str) -> (PathBuf, TreeHog, PathBuf, Vec<PathBuf>) {
    let tmp = test_dir(&format!("cold-restore-{tag}"));
    let h = TreeHog::start(&tmp, CHILDREN, CHILD_MIB, true);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let root = h.root().expect("treehog's root");
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &img, "dump.log");
    h.gone();
    let files = pages_files(&img);
    assert_eq!(files.len(), CHILDREN + 1, "one pages file a process: {files:?}");
    (tmp, h, img, files)
}

#[test]
fn forked_children_read_no_more_than_their_runs() {
    require!(why_not_root().or_else(|| why_not_tools(&["gcc", "unshare", "setsid"])));
    let (tmp, h, img, files) = dumped("forks");
    require!(evict(&files));
    let (st, log) = criu_env(
        Path::new(CRIU),
        &["restore", "-d"],
        &img,
        "restore-forks.log",
        &[("CRIU_RS_FAULT_AT", "after-reports"), ("CRIU_RS_READAHEAD", "off")],
    );
    assert_killed(st, "after-reports", &log);
    assert!(log.contains("copy-on-write candidates"), "the tree's children had nothing to read (no copy-on-write candidates):\n{log}");
    h.gone();
    let (have, all) = cached(&files);
    eprintln!("{have} of {all} pages of the pages files in the page cache once every process reported");
    // the runs themselves are well under a tenth of the set; a read-ahead
    // window around each was most of it
    assert!(have * 4 < all, "{have} of {all} pages of the pages files read by the time every process reported (the forked children read around their runs)");
    drop(h);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn cold_restore_reads_the_pages_files_ahead() {
    require!(why_not_root().or_else(|| why_not_tools(&["gcc", "unshare", "setsid"])));
    let (tmp, h, img, files) = dumped("ahead");
    require!(evict(&files));
    let log = criu_ok(Path::new(CRIU), &["restore", "-d"], &img, "restore-ahead.log");
    // how far it got is not asserted: a read-ahead thread starved of CPU
    // may still be stopped by the end of the restore (the fill reads what
    // it needs itself); that it reads every file through is the unit test
    // `readahead::tests::reads_every_file_into_the_page_cache`
    let want = format!(" of {} pages files asked for", files.len());
    let before = h.ticks();
    wait_until("ticks after the cold restore", Duration::from_secs(20), || h.ticks() >= before + 2);
    assert!(h.fails().is_empty(), "the restored tree found wrong memory: {:?}", h.fails());
    assert_eq!(live_with_exe(&h.bin).len(), CHILDREN + 1, "every process of the tree restored");
    assert!(log.contains(&want), "no `{want}` in the restore's log:\n{log}");
    drop(h);
    let _ = std::fs::remove_dir_all(&tmp);
}
