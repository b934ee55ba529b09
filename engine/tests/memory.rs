//! Memory: every VMA kind of a normal process through dump and restore, with
//! real processes. `progs/memkinds.c` (built with gcc, dynamically linked so
//! shared libraries are mapped) maps each kind, writes patterns and checks
//! them every tick. Tests touch the kernel and need root, gcc, unshare and
//! setsid; without them each prints SKIP with the reason and returns.

mod common;

use common::{require, skip, wait_until, why_not_here, CRIU};
use engine::dump::mm;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn build(out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/memkinds.c");
    let bin = out.join("memkinds");
    let st = Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "building memkinds");
    bin
}

fn ticks(log: &Path) -> u64 {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!s.contains("FAIL"), "memkinds reported a failure:\n{}", s.lines().filter(|l| l.contains("FAIL")).take(20).collect::<Vec<_>>().join("\n"));
    s.lines().filter(|l| l.ends_with(" ok")).count() as u64
}

/// Kills the process when dropped.
struct Proc(i32);
impl Drop for Proc {
    fn drop(&mut self) {
        if self.0 > 0 {
            let _ = Command::new("kill").args(["-9", &self.0.to_string()]).status();
        }
    }
}

/// A scratch directory with the program running in `work/`.
struct Run {
    tmp: PathBuf,
    work: PathBuf,
    proc: Proc,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.proc.0.to_string()]).status();
        self.proc.0 = 0;
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Start memkinds (with `dense_mib` MiB of extra dense memory) as pid 1 of a
/// new pid namespace, as the fixtures run.
fn start(name: &str, dense_mib: u64) -> Run {
    let tmp = std::env::temp_dir().join(format!("criu-rs-mem-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let bin = build(&tmp);
    let mut child = common::only_stdio(&mut Command::new("setsid"))
        .args(["unshare", "--pid", "--fork"])
        .arg(&bin)
        .arg(dense_mib.to_string())
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memkinds");
    wait_until("ready", Duration::from_secs(20), || work.join("ready").exists());
    let log = work.join("progress.log");
    wait_until("first tick", Duration::from_secs(10), || ticks(&log) >= 1);
    let mut pid = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) {
            pid = pid.max(p);
        }
    }
    assert!(pid > 0, "memkinds not running");
    let _ = child.try_wait();
    Run { tmp, work, proc: Proc(pid) }
}

fn criu(args: &[&str], dir: &Path, log: &str) {
    criu_env(args, dir, log, &[]);
}

fn criu_env(args: &[&str], dir: &Path, log: &str, env: &[(&str, &str)]) {
    let mut cmd = Command::new(CRIU);
    cmd.args(args).arg("-D").arg(dir).args(["-v4", "-o", log]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let st = cmd.status().expect("run criu");
    if !st.success() {
        panic!("criu {args:?} failed:\n{}", std::fs::read_to_string(dir.join(log)).unwrap_or_default());
    }
}

/// One VMA as /proc/PID/smaps shows it: the maps fields that define the
/// layout (inode and device left out: a restored shmem object is a new one)
/// and its VmFlags.
#[derive(Debug, PartialEq, Eq)]
struct Area {
    range: String,
    perms: String,
    offset: String,
    name: String,
    anon: bool,
    flags: Vec<String>,
}

fn layout(pid: i32) -> Vec<Area> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out: Vec<Area> = Vec::new();
    for l in text.lines() {
        if let Some(f) = l.strip_prefix("VmFlags:") {
            let mut v: Vec<String> = f.split_whitespace().map(str::to_string).collect();
            v.sort();
            out.last_mut().unwrap().flags = v;
            continue;
        }
        let first = l.split(' ').next().unwrap_or("");
        if !first.contains('-') || first.ends_with(':') {
            continue;
        }
        let f: Vec<&str> = l.splitn(6, ' ').collect();
        let name = f.get(5).map(|s| s.trim().to_string()).unwrap_or_default();
        out.push(Area {
            range: f[0].into(),
            perms: f[1].into(),
            offset: f[2].into(),
            anon: f[4] == "0" || name == "/dev/zero (deleted)",
            name,
            flags: Vec::new(),
        });
    }
    out
}

/// Contents of the anonymous PROT_NONE regions, read through /proc/PID/mem.
fn prot_none_contents(pid: i32) -> Vec<(String, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    layout(pid)
        .into_iter()
        .filter(|a| a.perms == "---p" && a.name.is_empty())
        .map(|a| {
            let (s, e) = a.range.split_once('-').unwrap();
            let (s, e) = (u64::from_str_radix(s, 16).unwrap(), u64::from_str_radix(e, 16).unwrap());
            let mut b = vec![0u8; (e - s) as usize];
            mem.read_exact_at(&mut b, s).unwrap();
            (a.range, b)
        })
        .collect()
}

fn pages_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Every VMA kind through dump + restore, twice: the program keeps ticking
/// `ok`, and the restored layout (addresses, permissions, offsets, paths,
/// anon vs file, VmFlags) and the contents of PROT_NONE regions are the
/// original's.
/// Through the page pump, kept to the end (`CRIU_RS_PUMP=always`: no
/// handing over to O_DIRECT however slow the page cache is).
#[test]
fn memkinds_layout_and_contents_survive() {
    memkinds_cycles("kinds", 8, &[("CRIU_RS_PUMP", "always")], "page pump:");
}

/// The same through the two-copy path with O_DIRECT writes (what dumps over
/// the pump's size take), with enough dense memory for its pipelined copy.
#[test]
fn memkinds_through_o_direct_writes() {
    memkinds_cycles("kinds-direct", 64, &[("CRIU_RS_PUMP", "never"), ("CRIU_RS_DUMP_DIRECT", "always")], "(O_DIRECT)");
}

/// The same with the pump handing over to O_DIRECT after its first 4 MiB
/// (what it does when the page cache turns slow; forced here with an
/// impossible minimum rate).
#[test]
fn memkinds_through_the_pump_then_o_direct() {
    memkinds_cycles("kinds-switch", 24, &[("CRIU_RS_PUMP_MIN_RATE", "1e15")], "switching to O_DIRECT for the other");
}

fn memkinds_cycles(name: &str, dense_mib: u64, env: &[(&str, &str)], path_mark: &str) {
    require!(why_not_here());
    let mut run = start(name, dense_mib);
    let log = run.work.join("progress.log");
    for cycle in 0..2 {
        let pid = run.proc.0;
        // the program never changes its layout after `ready`
        let before = layout(pid);
        let hidden = prot_none_contents(pid);
        assert!(before.iter().any(|a| a.name == "/dev/zero (deleted)" && a.offset != "00000000"), "no split shared anon mapping: {before:#?}");
        let dir = run.tmp.join(format!("img{cycle}"));
        std::fs::create_dir_all(&dir).unwrap();
        criu_env(&["dump", "-t", &pid.to_string()], &dir, "dump.log", env);
        run.proc.0 = 0;
        let dlog = std::fs::read_to_string(dir.join("dump.log")).unwrap();
        assert!(dlog.contains(path_mark), "the dump did not take the path marked {path_mark:?}:\n{dlog}");
        if path_mark == "page pump:" {
            // the page pump (vmsplice) copied the memory; the PROT_NONE pages
            // holding data, which vmsplice can't take, went the forced way
            let forced: u64 = dlog
                .lines()
                .filter_map(|l| l.split("page pump: ").nth(1)?.rsplit("; ").next()?.strip_suffix(" bytes read the forced way")?.parse::<u64>().ok())
                .sum();
            assert!(forced >= 2 * 4096, "only {forced} bytes read the forced way; the PROT_NONE data is 2 pages:\n{dlog}");
        }
        assert!(
            std::fs::read_dir(&dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("pagemap-shmem-")),
            "no pagemap-shmem image"
        );
        let t = ticks(&log);
        let pidfile = run.tmp.join(format!("pid{cycle}"));
        let st = Command::new(CRIU)
            .args(["restore", "-d", "-v4", "-o", "restore.log", "--pidfile"])
            .arg(&pidfile)
            .arg("-D")
            .arg(&dir)
            .current_dir(&run.work)
            .status()
            .unwrap();
        assert!(st.success(), "restore failed:\n{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
        let rpid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        run.proc.0 = rpid;
        wait_until("ticks after restore", Duration::from_secs(10), || ticks(&log) > t + 3);
        let after = layout(rpid);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b, a, "cycle {cycle}: VMA differs after restore");
        }
        assert_eq!(before.len(), after.len(), "cycle {cycle}: VMA count differs:\nbefore {before:#?}\nafter {after:#?}");
        assert_eq!(hidden, prot_none_contents(rpid), "cycle {cycle}: PROT_NONE contents differ");
    }
}

/// A 1 GiB mapping with 8 pages written (plus the program's few MiB) makes
/// a pages file of a few MiB, not a GiB, and no zero pages are written.
#[test]
fn sparse_gib_makes_small_pages_file() {
    require!(why_not_here());
    let run = start("sparse", 0);
    let dir = run.tmp.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    let pid = run.proc.0;
    assert!(layout(pid).iter().any(|a| {
        let (s, e) = a.range.split_once('-').unwrap();
        u64::from_str_radix(e, 16).unwrap() - u64::from_str_radix(s, 16).unwrap() == 1 << 30
    }));
    criu(&["dump", "-t", &pid.to_string(), "--leave-running"], &dir, "dump.log");
    let n = pages_bytes(&dir);
    eprintln!("pages files: {n} bytes");
    assert!(n < 4 << 20, "pages files hold {n} bytes for a mostly empty address space");
    let t = ticks(&run.work.join("progress.log"));
    wait_until("ticks after --leave-running", Duration::from_secs(10), || ticks(&run.work.join("progress.log")) > t + 2);
}

/// PAGEMAP_SCAN and the per-entry /proc/PID/pagemap walk choose the same
/// pages; prints both times for a process with 256 MiB dense and 1 GiB
/// sparse memory.
#[test]
fn pagemap_scan_matches_pagemap_read() {
    require!(why_not_here());
    let run = start("scan", 256);
    let pid = run.proc.0;
    let _ = Command::new("kill").args(["-STOP", &pid.to_string()]).status();
    let vmas = mm::collect_vmas(pid, engine::dump::files::GHOST_LIMIT).unwrap();
    let zero = engine::sys::mmap::zero_page_pfn().unwrap();
    if let Err(e) = mm::collect_pages_with(pid, &vmas, zero, mm::PageWalk::Scan) {
        skip(format!("PAGEMAP_SCAN (kernel 6.7+) is not usable here: {e}"));
        return;
    }
    // best of 5 each, alternating (the machine is shared and noisy)
    let (mut t_scan, mut t_read) = (Duration::MAX, Duration::MAX);
    let (mut scan, mut read) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        scan = mm::collect_pages_with(pid, &vmas, zero, mm::PageWalk::Scan).unwrap();
        t_scan = t_scan.min(t.elapsed());
        let t = Instant::now();
        read = mm::collect_pages_with(pid, &vmas, zero, mm::PageWalk::Pagemap).unwrap();
        t_read = t_read.min(t.elapsed());
    }
    let n: u64 = scan.iter().map(|r| r.nr_pages).sum();
    eprintln!("{} runs, {n} pages: PAGEMAP_SCAN {t_scan:?}, pagemap read {t_read:?}", scan.len());
    assert_eq!(scan, read);
    assert!(n >= 256 * 256, "dense memory missing: {n} pages");
}

fn build_cases(out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/memcases.c");
    let bin = out.join("memcases");
    let st = Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "building memcases");
    bin
}

/// Start `memcases ARGS` as pid 1 of a new pid namespace; `None` when the
/// program says the kernel lacks what the mode needs (its `NO...` line).
fn start_cases(name: &str, args: &[&str]) -> Result<Run, String> {
    let tmp = std::env::temp_dir().join(format!("criu-rs-mem-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let bin = build_cases(&tmp);
    let mut child = common::only_stdio(&mut Command::new("setsid"))
        .args(["unshare", "--pid", "--fork"])
        .arg(&bin)
        .args(args)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memcases");
    let log = work.join("progress.log");
    wait_until("ready", Duration::from_secs(60), || {
        work.join("ready").exists() || std::fs::read_to_string(&log).unwrap_or_default().starts_with("NO")
    });
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    if said.starts_with("NO") {
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(said.trim().to_string());
    }
    wait_until("first tick", Duration::from_secs(30), || ticks(&log) >= 1);
    let mut pid = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) {
            pid = pid.max(p);
        }
    }
    assert!(pid > 0, "memcases not running");
    let _ = child.try_wait();
    Ok(Run { tmp, work, proc: Proc(pid) })
}

/// Dump `run` (killing it) into `img`, restore it with `env`, wait for ticks
/// after restore; the restored pid.
fn dump_restore(run: &mut Run, img: &str, env: &[(&str, &str)]) -> i32 {
    let dir = run.tmp.join(img);
    std::fs::create_dir_all(&dir).unwrap();
    criu_env(&["dump", "-t", &run.proc.0.to_string()], &dir, "dump.log", env);
    run.proc.0 = 0;
    let log = run.work.join("progress.log");
    let t = ticks(&log);
    let pidfile = run.tmp.join(format!("{img}.pid"));
    let st = Command::new(CRIU)
        .args(["restore", "-d", "-v4", "-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .arg("-D")
        .arg(&dir)
        .envs(env.iter().copied())
        .current_dir(&run.work)
        .status()
        .unwrap();
    assert!(st.success(), "restore failed:\n{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
    let rpid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    run.proc.0 = rpid;
    wait_until("ticks after restore", Duration::from_secs(30), || ticks(&log) > t + 2);
    rpid
}

/// Fragmented memory: 256 MiB with every other page written (32,768 runs)
/// and with every 16th. PAGEMAP_SCAN fills its result vector many times
/// over; the runs must come out once each, in order (the kernel's
/// `walk_end` after a full vector lies below the last region it returned:
/// restarting there wrote overlapping runs that restore refused), and the
/// process must come back with every page.
#[test]
fn fragmented_memory_dumps_and_restores() {
    test_support::require!(common::why_not_here());
    for stride in ["2", "16"] {
        let mut run = start_cases(&format!("frag{stride}"), &["frag", "256", stride]).unwrap();
        let pid = run.proc.0;
        let _ = Command::new("kill").args(["-STOP", &pid.to_string()]).status();
        let vmas = mm::collect_vmas(pid, engine::dump::files::GHOST_LIMIT).unwrap();
        let zero = engine::sys::mmap::zero_page_pfn().unwrap();
        let scan = mm::collect_pages_with(pid, &vmas, zero, mm::PageWalk::Scan).unwrap();
        let read = mm::collect_pages_with(pid, &vmas, zero, mm::PageWalk::Pagemap).unwrap();
        assert_eq!(scan.len(), read.len(), "stride {stride}: PAGEMAP_SCAN and pagemap differ in run count");
        assert_eq!(scan, read, "stride {stride}: PAGEMAP_SCAN and pagemap differ");
        assert!(scan.len() >= 256 * 256 / stride.parse::<usize>().unwrap(), "stride {stride}: {} runs", scan.len());
        let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        dump_restore(&mut run, "img", &[]);
    }
}

/// Offsets from an image are checked, not wrapped: a shared anonymous VMA
/// whose `pgoff` is near 2^64 (so `pgoff + len` overflows) is refused by
/// `criu restore` naming the image, the VMA and the field, before anything
/// is forked; with the offset put back the same image set restores.
#[test]
fn hostile_pgoff_is_refused_by_name() {
    use images_proto::{image, magic as mg, pb};
    test_support::require!(common::why_not_here());
    let mut run = start("pgoff", 0);
    let dir = run.tmp.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    let pid = run.proc.0;
    criu(&["dump", "-t", &pid.to_string()], &dir, "dump.log");
    run.proc.0 = 0;
    // memkinds runs as pid 1 of its namespace
    let name = mg::MM.file_name(1);
    let good: pb::MmEntry = image::read_one(&dir, &name, &mg::MM).unwrap();
    let i = good.vmas.iter().position(|v| v.shmid != 0 && v.status & (1 << 8) != 0).expect("a shared anonymous VMA");
    let mut bad = good.clone();
    bad.vmas[i].pgoff = !4095u64;
    std::fs::remove_file(dir.join(&name)).unwrap();
    image::write_all(&dir, &name, &mg::MM, &[bad]).unwrap();
    let pidfile = run.tmp.join("pid");
    let restore = || {
        Command::new(CRIU)
            .args(["restore", "-d", "-v4", "-o", "restore.log", "--pidfile"])
            .arg(&pidfile)
            .arg("-D")
            .arg(&dir)
            .current_dir(&run.work)
            .status()
            .unwrap()
    };
    let st = restore();
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    if st.success() {
        if let Ok(p) = std::fs::read_to_string(&pidfile) {
            run.proc.0 = p.trim().parse().unwrap_or(0);
        }
    }
    assert!(!st.success(), "restore accepted pgoff {:#x}:\n{log}", !4095u64);
    assert!(log.contains(&format!("{name}: vma {i} at")) && log.contains("bad pgoff"), "the error does not name the image, VMA and field:\n{log}");
    std::fs::remove_file(dir.join(&name)).unwrap();
    image::write_all(&dir, &name, &mg::MM, &[good]).unwrap();
    let st = restore();
    assert!(st.success(), "restore of the unmodified set failed:\n{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
    run.proc.0 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let log = run.work.join("progress.log");
    let t = ticks(&log);
    wait_until("ticks after restore", Duration::from_secs(10), || ticks(&log) > t + 2);
}

/// Guard pages (MADV_GUARD_INSTALL, Linux 6.13+) are swap-entry markers
/// that PAGEMAP_SCAN shows as swapped pages; reading them through
/// /proc/PID/mem fails with EIO, which failed the whole dump. They are left
/// out of the pages, kept as guard regions (criu-rs-guards-PID.img) and
/// installed again by restore: the restored process has guards exactly
/// there (pagemap bit 58), and the pages around them come back intact.
#[test]
fn guard_pages_survive_dump_and_restore() {
    use std::os::unix::fs::FileExt;
    test_support::require!(common::why_not_here());
    let mut run = match start_cases("guard", &["guard"]) {
        Ok(r) => r,
        Err(why) => {
            test_support::skip(format!("the kernel has no MADV_GUARD_INSTALL ({why})"));
            return;
        }
    };
    let addr = u64::from_str_radix(std::fs::read_to_string(run.work.join("addr")).unwrap().trim(), 16).unwrap();
    let guard_bits = |pid: i32| -> Vec<bool> {
        let pm = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
        let mut b = [0u8; 16 * 8];
        pm.read_exact_at(&mut b, addr / 4096 * 8).unwrap();
        b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) & (1 << 58) != 0).collect()
    };
    let want: Vec<bool> = (0..16).map(|i| (5..10).contains(&i)).collect();
    assert_eq!(guard_bits(run.proc.0), want, "memcases guard: guard pages not where expected");
    let rpid = dump_restore(&mut run, "img", &[]);
    assert_eq!(guard_bits(rpid), want, "guard pages after restore");
    assert!(run.tmp.join("img").join("criu-rs-guards-1.img").exists(), "no guard region image");
}

/// Locked memory stays locked: an mlock()ed region, a MAP_LOCKED one and
/// an mlock2(MLOCK_ONFAULT) one come back with VM_LOCKED (VmFlags `lo`)
/// and as many locked kB (the on-fault one is locked in full: the image
/// format has no place for MLOCK_ONFAULT, which the dump log says).
#[test]
fn locked_memory_stays_locked() {
    test_support::require!(common::why_not_here());
    let mut run = start_cases("lock", &["lock"]).unwrap();
    let locked = |pid: i32| -> Vec<(String, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut out = Vec::new();
        let (mut range, mut kb) = (String::new(), 0u64);
        for l in text.lines() {
            let first = l.split(' ').next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                range = first.to_string();
            } else if let Some(v) = l.strip_prefix("Locked:") {
                kb = v.trim().trim_end_matches(" kB").trim().parse().unwrap();
            } else if let Some(f) = l.strip_prefix("VmFlags:") {
                if f.split_whitespace().any(|x| x == "lo") {
                    out.push((range.clone(), kb));
                }
            }
        }
        out
    };
    let before = locked(run.proc.0);
    assert_eq!(before.len(), 3, "memcases lock: {before:?}");
    let rpid = dump_restore(&mut run, "img", &[]);
    let after = locked(rpid);
    // the same address ranges locked (the on-fault region, no longer
    // different, may merge with its neighbour), and the on-fault one (half
    // its pages touched) locked in full now
    let spans = |v: &[(String, u64)]| -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (r, _) in v {
            let (s, e) = r.split_once('-').unwrap();
            let (s, e) = (u64::from_str_radix(s, 16).unwrap(), u64::from_str_radix(e, 16).unwrap());
            match out.last_mut() {
                Some(l) if l.1 == s => l.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    };
    assert_eq!(spans(&after), spans(&before), "locked ranges differ after restore: {after:?}, before {before:?}");
    assert_eq!(after.iter().map(|a| a.1).sum::<u64>(), 3 * 32, "locked kB after restore: {after:?}");
    let dlog = std::fs::read_to_string(run.tmp.join("img/dump.log")).unwrap();
    assert!(dlog.contains("is locked on fault"), "the dump log does not say MLOCK_ONFAULT is lost:\n{dlog}");
}
