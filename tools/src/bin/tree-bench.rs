//! Process-tree benchmark: our `criu` beside upstream CRIU 4.2 in the same
//! run, on trees of `tools/bench/treehog.c` (a root that writes SHARED MiB
//! of private memory, then forks N children that inherit it copy-on-write
//! and each write CHILD MiB of their own; every process checks its memory
//! every tick), started as pid 1 of a new pid namespace.
//!
//! Per case and run, for each engine: time of `criu dump`, time of
//! `criu restore -d`, and the memory of the tree (the sum of its
//! processes' PSS, which counts a shared page once) before the dump and
//! after the restore; the restored tree must go on ticking `ok`.
//!
//! `tree-bench [--criu PATH] [--base PATH] [--upstream PATH] [--cases N:CHILD:SHARED,...] [--runs N] [--dir DIR] [--cold] [--rounds]`
//! (default cases `20:17:0,100:1:0,10:1:64`). `--base`: a second build of
//! ours (another branch's) run in turn with the two others in every run,
//! its row marked `(base)`, its ratios against the same upstream runs.
//!
//! Ours and upstream alternate within each run. By default each restore
//! follows its own dump at once (what a user on one host sees: whatever
//! the engine's dump left in the page cache is there for its restore);
//! `--cold` drops the page cache (`echo 3 > /proc/sys/vm/drop_caches`)
//! before every restore (images that came from another host). `--rounds`
//! prints each run's pair too, with the load average and how much of each
//! engine's pages files the page cache held right after its dump (`fincore`).
//! `--fresh` drops the page cache before every dump as well. On this VM a
//! guest page the host has not backed yet costs a fault on the host at its
//! first touch: with every earlier run's images kept in the page cache,
//! each dump's page-cache writes land on ever fresher memory, and the
//! later runs of either engine pay for it (a 20 x 17 dump of ours: 0.27 s
//! of system time in the first run, 0.9 s in the fourth; 0.25 s after a
//! drop). `--fresh` measures the engines without that cost of the host.
//!
//! Every engine's run starts from the same state of the machine: each dump
//! writes into a directory of its own, none is removed before the end of
//! the invocation (on an ext4 without a journal, as here, a file created
//! within minutes of a deletion scans past every recently freed inode of
//! its group: removing the previous run's ~700 image files made the next
//! dump, either engine's, pay for them, more with every run); dirty pages
//! are written back (`sync`) before each dump, so no dump runs against
//! the write-back of the images before it; and the restored tree of the
//! previous run is gone (its pid namespace reaped) before the next starts.
//! The image sets are removed once all runs are done.
//!
//! Needs root and gcc; the upstream binary defaults to
//! ../shared/upstream-criu/criu-4.2 (its columns are NaN without it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tools::bench::{each_option, kill, median, ns_init_pid, ok_ticks, wait_for};

struct Opts {
    criu: PathBuf,
    base: Option<PathBuf>,
    upstream: PathBuf,
    cases: Vec<(usize, usize, usize)>,
    runs: usize,
    dir: PathBuf,
    cold: bool,
    /// Drop the page cache before every dump too.
    fresh: bool,
    rounds: bool,
}

fn opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        criu: root.join("target/release/criu"),
        base: None,
        upstream: root.join("../shared/upstream-criu/criu-4.2"),
        cases: vec![(20, 17, 0), (100, 1, 0), (10, 1, 64)],
        runs: 3,
        dir: PathBuf::from("/tmp/tree-bench"),
        cold: false,
        fresh: false,
        rounds: false,
    };
    each_option(&["--cold", "--fresh", "--rounds"], |name, value| {
        match name {
            "--criu" => o.criu = PathBuf::from(value),
            "--base" => o.base = Some(PathBuf::from(value)),
            "--upstream" => o.upstream = PathBuf::from(value),
            "--cases" => {
                o.cases = value
                    .split(',')
                    .filter_map(|c| {
                        let v: Vec<usize> = c.split(':').filter_map(|x| x.parse().ok()).collect();
                        (v.len() == 3).then(|| (v[0], v[1], v[2]))
                    })
                    .collect()
            }
            "--runs" => o.runs = value.parse().unwrap_or(3),
            "--dir" => o.dir = PathBuf::from(value),
            "--cold" => o.cold = true,
            "--fresh" => o.fresh = true,
            "--rounds" => o.rounds = true,
            _ => return false,
        }
        true
    });
    o
}

/// `root` and its descendants.
fn members(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        out.push(p);
        let c = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        stack.extend(c.split_whitespace().filter_map(|v| v.parse::<i32>().ok()));
    }
    out
}

/// Sum of the PSS of the tree's processes, MiB.
fn pss_mib(root: i32) -> f64 {
    let kib: u64 = members(root)
        .iter()
        .map(|p| {
            let s = fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            s.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum();
    kib as f64 / 1024.0
}

struct Run {
    dump: f64,
    /// CPU seconds (user + system) of the dump's engine process and the
    /// children it waited for (not its injected code, which runs in the
    /// tree's processes).
    dump_cpu: f64,
    restore: f64,
    pss_before: f64,
    pss_after: f64,
    /// Share of the pages files in the page cache right after the dump.
    cached: f64,
}

/// Share (0..1) of the bytes of `dir`'s pages-*.img files in the page
/// cache, by `fincore` (NaN without it).
fn cached_share(dir: &Path) -> f64 {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("pages-"))).collect())
        .unwrap_or_default();
    if files.is_empty() {
        return f64::NAN;
    }
    let Ok(out) = Command::new("fincore").args(["-b", "-n", "-o", "RES,SIZE"]).args(&files).output() else { return f64::NAN };
    let (mut res, mut size) = (0u64, 0u64);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Vec<u64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if let [r, s] = v[..] {
            res += r;
            size += s;
        }
    }
    if size == 0 { f64::NAN } else { res as f64 / size as f64 }
}

/// The 1-minute load average.
fn load() -> f64 {
    fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

/// Write back dirty pages and drop the clean page cache (and slab caches).
fn drop_caches() -> Result<(), String> {
    Command::new("sync").status().map_err(|e| format!("sync: {e}"))?;
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}

/// CPU seconds (user + system) of the children waited for so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed rusage it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// Start the tree, dump it with `criu` into `dir` (a directory not used
/// before in this invocation), restore it; the times and memory.
fn one(criu: &Path, prog: &Path, dir: &Path, (n, child, shared): (usize, usize, usize), cold: bool, fresh: bool) -> Result<Run, String> {
    let work = dir.join("work");
    let img = dir.join("img");
    fs::create_dir_all(&work).unwrap();
    fs::create_dir_all(&img).unwrap();
    let mut launcher = Command::new("unshare")
        .args(["--pid", "--fork", "setsid"])
        .arg(prog)
        .args([n.to_string(), child.to_string(), shared.to_string()])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the workload: {e}"))?;
    let root = ns_init_pid(launcher.id()).ok_or("the workload's root not found")?;
    std::thread::spawn(move || launcher.wait());
    let log = work.join("progress.log");
    wait_for("the workload", Duration::from_secs(120), || work.join("ready").exists() && ok_ticks(&log).unwrap_or(0) >= 2)?;
    let pss_before = pss_mib(root);
    let run = |args: &[&str], logname: &str| -> Result<(f64, f64), String> {
        let c = children_cpu();
        let t = Instant::now();
        let out = Command::new(criu).args(args).args(["-o", logname]).arg("-D").arg(&img).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        let cpu = children_cpu() - c;
        if !out.status.success() {
            let text = fs::read_to_string(img.join(logname)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(4).collect();
            return Err(format!("{} {} failed: {tail:?}", criu.display(), args[0]));
        }
        Ok((secs, cpu))
    };
    // no dirty pages of an earlier run's images written back meanwhile
    Command::new("sync").status().map_err(|e| format!("sync: {e}"))?;
    if fresh {
        drop_caches()?;
    }
    let dump = run(&["dump", "-t", &root.to_string()], "dump.log");
    if dump.is_err() {
        kill(root);
    }
    let (dump, dump_cpu) = dump?;
    let cached = cached_share(&img);
    wait_for("the dumped tree's exit", Duration::from_secs(10), || !Path::new(&format!("/proc/{root}")).exists())?;
    if cold {
        drop_caches()?;
    }
    let pidfile = img.join("restored.pid");
    let (restore, _) = run(&["restore", "-d", "--pidfile", pidfile.to_str().unwrap()], "restore.log")?;
    let new_root: i32 = fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()).ok_or("no pidfile")?;
    let before = ok_ticks(&log)?;
    let ticked = wait_for("ticks after restore", Duration::from_secs(30), || ok_ticks(&log).unwrap_or(0) >= before + 2);
    let pss_after = pss_mib(new_root);
    let alive = members(new_root).len();
    kill(new_root);
    // the next run starts once this tree is gone (its init, killed, exits
    // when every process of its namespace is reaped)
    let gone = wait_for("the restored tree's exit", Duration::from_secs(30), || !tools::bench::alive(new_root));
    ticked?;
    gone?;
    ok_ticks(&log)?;
    if alive != n + 1 {
        return Err(format!("{alive} processes after the restore, {} dumped", n + 1));
    }
    Ok(Run { dump, dump_cpu, restore, pss_before, pss_after, cached })
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).unwrap();
    // (image sets an interrupted invocation left)
    remove_runs(&o.dir);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/treehog.c");
    let prog = o.dir.join("treehog");
    let st = Command::new("gcc").args(["-O2", "-o"]).arg(&prog).arg(&src).status().expect("gcc");
    assert!(st.success(), "building treehog");
    let have_up = o.upstream.exists();
    println!("| tree (children x own MiB + inherited MiB) | ours dump s | upstream dump s | dump ours/up | ours restore s | upstream restore s | restore ours/up | PSS MiB dumped | PSS MiB after ours | after upstream |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &case in &o.cases {
        let mut ours: Vec<Run> = Vec::new();
        let mut base: Vec<Run> = Vec::new();
        let mut up: Vec<Run> = Vec::new();
        let mut note = String::new();
        for r in 0..o.runs {
            let l0 = load();
            let (n0, u0) = (ours.len(), up.len());
            let (n, c, s) = case;
            let dir = |who: &str| o.dir.join(format!("{n}x{c}+{s}-run{r}-{who}"));
            match one(&o.criu, &prog, &dir("ours"), case, o.cold, o.fresh) {
                Ok(r) => ours.push(r),
                Err(e) => note = format!("ours: {e}"),
            }
            if let Some(b) = &o.base {
                match one(b, &prog, &dir("base"), case, o.cold, o.fresh) {
                    Ok(r) => base.push(r),
                    Err(e) => note = format!("base: {e}"),
                }
            }
            if have_up {
                match one(&o.upstream, &prog, &dir("upstream"), case, o.cold, o.fresh) {
                    Ok(r) => up.push(r),
                    Err(e) => note = format!("upstream: {e}"),
                }
            }
            // (each run's dump times on stderr: ratios within one run)
            let last = |v: &[Run]| v.last().map_or(f64::NAN, |r| r.dump);
            eprintln!("{case:?} run dump s: ours {:.3} base {:.3} upstream {:.3}", last(&ours), last(&base), last(&up));
            if o.rounds && ours.len() > n0 && up.len() > u0 {
                if let (Some(a), Some(b)) = (ours.last(), up.last()) {
                    eprintln!(
                        "round {n} x {c} + {s}{}: load {l0:.1}-{:.1}; dump ours {:.3} up {:.3} ({:.2}), engine cpu ours {:.3} up {:.3}; restore ours {:.3} up {:.3} ({:.2}); pages cached after dump: ours {:.0}%, up {:.0}%",
                        if o.cold { " cold" } else { "" },
                        load(),
                        a.dump,
                        b.dump,
                        a.dump / b.dump,
                        a.dump_cpu,
                        b.dump_cpu,
                        a.restore,
                        b.restore,
                        a.restore / b.restore,
                        a.cached * 100.0,
                        b.cached * 100.0
                    );
                }
            }
        }
        let m = |v: &[Run], f: fn(&Run) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            if x.is_empty() { f64::NAN } else { median(&mut x) }
        };
        let (ud, ur) = (m(&up, |r| r.dump), m(&up, |r| r.restore));
        let (n, c, s) = case;
        let rows: &[(&str, &[Run])] = if o.base.is_some() { &[("", &ours), (" (base)", &base)] } else { &[("", &ours)] };
        for (label, runs) in rows {
            let (od, or) = (m(runs, |r| r.dump), m(runs, |r| r.restore));
            println!(
                "| {n} x {c} + {s}{label} | {od:.3} | {ud:.3} | {:.2} | {or:.3} | {ur:.3} | {:.2} | {:.0} | {:.0} | {:.0} |{}",
                od / ud,
                or / ur,
                m(runs, |r| r.pss_before),
                m(runs, |r| r.pss_after),
                m(&up, |r| r.pss_after),
                if note.is_empty() { String::new() } else { format!(" {note}") }
            );
        }
    }
    if !have_up {
        println!("(no upstream binary at {}: its columns are NaN)", o.upstream.display());
    }
    remove_runs(&o.dir);
}

/// Remove the runs' directories (images and workload dirs) under `dir`.
fn remove_runs(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_str().is_some_and(|n| n.contains("-run")) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}
