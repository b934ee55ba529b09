//! Memory of tfork's restored clones (a namespace init, a process tree)
//! without the kmod device: parked once in the engine and inherited
//! copy-on-write by every clone (docs/ARCHITECTURE.md, "tfork", "Memory
//! of a clone tree"). With tests/progs/parktree.c (a root with a large
//! private region and a MADV_HUGEPAGE one, N children that wrote part of
//! theirs and dropped some pages; every process checks every page of its
//! memory ten times a second and exits on a wrong one):
//!
//! - the clones' private pages are the same physical pages across the
//!   clone trees (page frame numbers from /proc/PID/pagemap), and each
//!   clone tree's PSS is well below its RSS;
//! - a write in one clone is seen in no other clone nor in the source;
//! - /proc/PID/maps of every clone process is its source process's, line
//!   for line (anonymous memory stays anonymous);
//! - MADV_DONTNEED in a clone gives zeroes, and a fork() inside a clone
//!   gets the clone's memory;
//! - every process of the source and of every clone tree runs on, its
//!   memory checked by itself.
//!
//! Needs root and gcc; otherwise skips with the reason (fails under CI=true).

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 48;
const PAGE: u64 = 4096;

fn why_not() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["gcc", "unshare", "setsid"]))
}

/// The pid of `pid` in its own namespace (last of NSpid).
fn ns_pid(pid: i32) -> i32 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse().ok()).unwrap_or(-1)
}

/// `root` and its descendants (host pids), the root first.
fn tree_of(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

/// (Rss, Pss) in KiB of `pid`.
fn rss_pss(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (get("Rss:"), get("Pss:"))
}

/// Page frame of `addr` in `pid`, if present.
fn pfn(pid: i32, addr: u64) -> Option<u64> {
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr / PAGE * 8).ok()?;
    let e = u64::from_le_bytes(b);
    (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
}

fn page(pid: i32, addr: u64) -> Vec<u8> {
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = vec![0u8; PAGE as usize];
    f.read_exact_at(&mut b, addr).unwrap_or_else(|e| panic!("reading {addr:#x} of {pid}: {e}"));
    b
}

/// /proc/PID/maps of `pid`, whitespace normalised.
fn maps_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

/// Start of the program's big region (the anonymous VMA of exactly MIB MiB)
/// and of its huge-page one (4 MiB).
fn regions(pid: i32) -> (u64, u64) {
    let find = |len: u64| {
        maps_of(pid)
            .iter()
            .filter(|l| l.split(' ').count() == 5)
            .find_map(|l| {
                let (a, b) = l.split(' ').next()?.split_once('-')?;
                let (a, b) = (u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?);
                (b - a == len).then_some(a)
            })
            .unwrap_or_else(|| panic!("no anonymous VMA of {len} bytes in {pid}: {:?}", maps_of(pid)))
    };
    (find(MIB << 20), find(4 << 20))
}

/// KiB of the parked memory filled by UFFDIO_COPY in the snapshots, by
/// UFFDIO_COPY in the engine and read in place, from the engine's log line.
fn parked_by(log: &str) -> (u64, u64, u64) {
    let line = log.lines().find(|l| l.contains("parked:")).unwrap_or_default();
    let num = |after: &str| -> u64 {
        line.split(after).next().and_then(|h| h.rsplit(['(', ' ']).next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no '{after}' in {line:?}"))
    };
    (num(" KiB by UFFDIO_COPY in the snapshots"), num(" KiB by UFFDIO_COPY,"), num(" KiB read in place"))
}

/// The value of smaps field `key` (e.g. "VmFlags:") of the VMA of `pid`
/// starting at `start`; None when the VMA or the field is not there.
fn smaps_field(pid: i32, start: u64, key: &str) -> Option<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let head = format!("{start:x}-");
    smaps
        .split('\n')
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| l.split_whitespace().next().is_some_and(|k| k.ends_with(':')))
        .find_map(|l| l.strip_prefix(key))
        .map(str::to_string)
}

/// Whether the VMA of `pid` starting at `start` has `flag` in its VmFlags.
fn vm_flag(pid: i32, start: u64, flag: &str) -> bool {
    smaps_field(pid, start, "VmFlags:").unwrap_or_else(|| panic!("no VMA at {start:x} in {pid}")).split_whitespace().any(|f| f == flag)
}

/// AnonHugePages (KiB) of the VMA of `pid` starting at `start`.
fn huge_kib(pid: i32, start: u64) -> u64 {
    smaps_field(pid, start, "AnonHugePages:").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// parktree with `children` children in `work`, in the host's pid
/// namespace or as pid 1 of its own; its root's host pid.
fn start(bin: &Path, work: &Path, children: u32, own_ns: bool) -> i32 {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let mut cmd = if own_ns {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "setsid"]);
        c
    } else {
        Command::new("setsid")
    };
    let mut child = only_stdio(&mut cmd)
        .arg(bin)
        .args([MIB.to_string(), children.to_string()])
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start parktree");
    std::thread::spawn(move || child.wait());
    wait_until("parktree ready", Duration::from_secs(20), || work.join("ready").exists());
    let roots = roots_with_exe(bin);
    assert_eq!(roots.len(), 1, "{roots:?}");
    roots[0]
}

/// No FAIL line in the log, and `n` more ticks (all roots tick into it).
fn ticks_on(work: &Path, n: usize, what: &str) {
    let log = work.join("progress.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let t = text().lines().count();
    wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || text().lines().count() >= t + n || text().contains("FAIL"));
    assert!(!text().contains("FAIL"), "{what}: {}", text().lines().filter(|l| l.starts_with("FAIL")).collect::<Vec<_>>().join("; "));
}

/// Kills every process running `0` (the program, its clones) when dropped,
/// a failed test's too.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in live_with_exe(&self.0) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// tfork parktree (`children` children; own pid namespace or the host's)
/// into 3 clone trees and check the memory of every clone process.
fn clones_share_memory(tag: &str, children: u32, own_ns: bool) {
    clones_share_memory_filled(tag, children, own_ns, None);
}

/// [`clones_share_memory`], the parking fill forced down another path
/// (`CRIU_RS_TFORK_PARK_FILL`: `pread`, UFFDIO_COPY by the engine's own
/// threads; `read`, every region read in place).
fn clones_share_memory_filled(tag: &str, children: u32, own_ns: bool, fill: Option<&str>) {
    require!(why_not());
    let dir = test_dir(tag);
    let bin = dir.join("parktree");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-Wall", "-o"])
        .arg(&bin)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/parktree.c"))
        .status()
        .expect("gcc");
    assert!(st.success(), "building parktree");
    let work = dir.join("work");
    let _guard = KillOnDrop(bin.clone());
    let root = start(&bin, &work, children, own_ns);
    let src = tree_of(root);
    assert_eq!(src.len(), 1 + children as usize, "{src:?}");
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let mut cmd = Command::new(CRIU);
    cmd.args(["tfork", "-t", &root.to_string(), "--copies", "3", "-D"]).arg(&img).args(["-v4", "-o", "tfork.log"]).stdin(Stdio::null());
    match fill {
        Some("snapshot-fails") => cmd.env("CRIU_RS_FAULT_AT", "tforktree-mid-park:fail"),
        Some(f) => cmd.env("CRIU_RS_TFORK_PARK_FILL", f),
        None => &mut cmd,
    };
    let out = cmd.output().unwrap();
    let log = std::fs::read_to_string(img.join("tfork.log")).unwrap_or_default() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let clones: Vec<i32> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(clones.len(), 3, "{log}");
    assert!(log.contains("parked:"), "the clones' memory was not parked: {log}");
    // how it was parked: the 4 KiB-page regions by UFFDIO_COPY injected
    // into the snapshot forks (each copying its own pages), the
    // MADV_HUGEPAGE one in place (so that it gets huge pages), as the
    // kernel's THP setting has it
    let (by_snaps, copied, read) = parked_by(&log);
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    match fill {
        None => {
            assert!(!log.contains("not by UFFDIO_COPY"), "the parking fill did not use userfaultfd: {log}");
            assert!(by_snaps >= MIB * 1024 / 2, "{by_snaps} KiB parked by UFFDIO_COPY in the snapshots: {log}");
            assert_eq!(copied, 0, "parked by UFFDIO_COPY in the engine, not the snapshots: {log}");
        }
        Some("pread") => {
            assert_eq!(by_snaps, 0, "{log}");
            assert!(copied >= MIB * 1024 / 2, "{copied} KiB parked by UFFDIO_COPY in the engine: {log}");
        }
        Some("snapshot-fails") => {
            // every snapshot gave up after its first page run, whose pages
            // the engine's threads then find there (skipped) and the rest
            // they copy
            assert_eq!(by_snaps, 0, "{log}");
            assert!(log.contains("stops copying its memory into the parked regions (injected failure"), "{log}");
            assert!(copied >= MIB * 1024 / 2, "{copied} KiB parked by UFFDIO_COPY in the engine: {log}");
        }
        Some(_) => {
            assert_eq!(by_snaps + copied, 0, "{log}");
            assert!(log.contains("not by UFFDIO_COPY: CRIU_RS_TFORK_PARK_FILL=read"), "{log}");
        }
    }
    if fill == Some("read") {
        assert!(read >= MIB * 1024 / 2, "{log}");
    } else if thp.contains("[never]") {
        assert_eq!(read, 0, "{log}");
    } else {
        assert!(read >= 4096, "the MADV_HUGEPAGE region not read in place ({read} KiB): {log}");
    }
    let trees: Vec<Vec<i32>> = clones.iter().map(|&c| tree_of(c)).collect();
    let by_ns = |t: &[i32], n: i32| *t.iter().find(|&&p| ns_pid(p) == n).unwrap_or_else(|| panic!("no process {n} in {t:?}"));
    for t in &trees {
        assert_eq!(t.len(), src.len(), "clone tree {t:?} of {src:?}");
    }
    ticks_on(&work, 8, "of the source and its clones");
    for &s in &src {
        let n = ns_pid(s);
        let procs: Vec<i32> = trees.iter().map(|t| by_ns(t, n)).collect();
        // maps: the source's, line for line; the regions anonymous
        let want = maps_of(s);
        for &p in &procs {
            assert_eq!(maps_of(p), want, "maps of clone process {p} (source {s})");
        }
        // the same page frames in every clone, for the pages all have
        let (big, huge) = regions(s);
        let (mut same, mut all) = (0u64, 0u64);
        for a in (big..big + (MIB << 20)).step_by(PAGE as usize).chain((huge..huge + (4 << 20)).step_by(PAGE as usize)) {
            let f: Vec<Option<u64>> = procs.iter().map(|&p| pfn(p, a)).collect();
            if f.iter().all(Option::is_some) {
                all += 1;
                same += u64::from(f.windows(2).all(|w| w[0] == w[1]));
            }
        }
        assert!(all > (MIB << 20) / PAGE / 2, "process {n}: only {all} pages present in every clone");
        assert!(same * 10 >= all * 9, "process {n}: {same} of {all} pages on the same frame in the 3 clones (copy-on-write sharing expected)");
        // MADV_DONTFORK ("dc") as the source has it (the restore's forks
        // mark the parked memory so for a moment)
        for &p in &procs {
            for at in [big, huge] {
                assert_eq!(vm_flag(p, at, "dc"), vm_flag(s, at, "dc"), "clone process {p}: VM_DONTCOPY of {at:#x} not as in the source {s}");
            }
        }
        // huge pages where the source has them
        if huge_kib(s, huge) > 0 {
            for &p in &procs {
                assert!(huge_kib(p, huge) > 0, "clone process {p}: no huge page in its MADV_HUGEPAGE region, the source {s} has {} KiB", huge_kib(s, huge));
            }
        }
    }
    // each clone tree: PSS well below RSS (its private pages shared 3 ways)
    for t in &trees {
        let (rss, pss) = t.iter().map(|&p| rss_pss(p)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert!(rss > MIB * 1024 / 2, "clone tree {t:?}: RSS {rss} KiB");
        assert!(pss * 10 < rss * 6, "clone tree {t:?}: PSS {pss} KiB, RSS {rss} KiB (shared copy-on-write expected)");
    }
    // a write in one clone is seen in no other, nor in the source
    let n = ns_pid(*src.last().unwrap());
    let procs: Vec<i32> = trees.iter().map(|t| by_ns(t, n)).collect();
    let s = by_ns(&src, n);
    let (big, _) = regions(s);
    let before = page(s, big + PAGE);
    assert!(procs.iter().all(|&p| page(p, big + PAGE) == before), "page 1 as the source's in every clone");
    Command::new("kill").args(["-USR1", &procs[0].to_string()]).status().unwrap();
    wait_until("the clone's write", Duration::from_secs(5), || work.join(format!("wrote-{n}")).exists());
    assert_ne!(page(procs[0], big + PAGE), before, "the clone's own write");
    for &p in procs[1..].iter().chain([&s]) {
        assert_eq!(page(p, big + PAGE), before, "process {p} sees clone {}'s write", procs[0]);
    }
    assert_ne!(pfn(procs[0], big + PAGE), pfn(procs[1], big + PAGE), "the written page unshared");
    assert_eq!(pfn(procs[1], big + PAGE), pfn(procs[2], big + PAGE), "the other clones still share it");
    // MADV_DONTNEED in a clone: zeroes (the others keep theirs); fork() inside
    Command::new("kill").args(["-USR2", &procs[1].to_string()]).status().unwrap();
    let done = |f: &str| std::fs::read_dir(&work).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|x| x.starts_with(f));
    wait_until("the clone's dontneed", Duration::from_secs(5), || done(&format!("dontneed-{n}-")).is_some());
    assert_eq!(done(&format!("dontneed-{n}-")).unwrap(), format!("dontneed-{n}-0-0"), "MADV_DONTNEED gives zeroes; the forked child finds its memory right");
    assert!(page(procs[1], big + 2 * PAGE).iter().all(|&b| b == 0));
    assert!(page(procs[2], big + 2 * PAGE).iter().any(|&b| b != 0), "another clone keeps its page 2");
    assert!(page(s, big + 2 * PAGE).iter().any(|&b| b != 0), "the source keeps its page 2");
    // everyone runs on, each checking its own memory
    ticks_on(&work, 8, "after the write and the dontneed");
    for p in src.iter().chain(trees.iter().flatten()) {
        assert!(alive(*p), "process {p} ended");
    }
    for p in live_with_exe(&bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
    }
    wait_until("every parktree process gone", Duration::from_secs(10), || live_with_exe(&bin).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn namespace_init_clones_share_their_memory_copy_on_write() {
    clones_share_memory("tforkpark-nsinit", 0, true);
}

#[test]
fn tree_clones_in_the_host_namespace_share_their_memory_copy_on_write() {
    clones_share_memory("tforkpark-host", 2, false);
}

#[test]
fn tree_clones_in_their_own_pid_namespace_share_their_memory_copy_on_write() {
    clones_share_memory("tforkpark-ownns", 2, true);
}

/// The parking fill's other paths give the same clones: UFFDIO_COPY by
/// the engine's threads from /proc/SNAP/mem (where the snapshots can't copy
/// their own memory), every region read in place (where userfaultfd is
/// refused).
#[test]
fn tree_clones_parked_by_the_engine_or_in_place_share_their_memory() {
    clones_share_memory_filled("tforkpark-pread", 2, false, Some("pread"));
    clones_share_memory_filled("tforkpark-read", 2, false, Some("read"));
}

/// A snapshot that stops copying its memory (fault point
/// `tforktree-mid-park:fail`, after its first page run) leaves the rest to
/// the engine's threads, which skip the pages already there: the clones'
/// memory is whole all the same.
#[test]
fn tree_clones_parked_after_the_snapshots_stop_copying_share_their_memory() {
    clones_share_memory_filled("tforkpark-snapfail", 2, false, Some("snapshot-fails"));
}
