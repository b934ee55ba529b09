//! tfork benchmark: `criu tfork` beside a live copy made the upstream way
//! (`criu dump --leave-running` + `criu restore -d`), with our engine and
//! with upstream CRIU 4.2, in the same run.
//!
//! For each size (MiB of patterned private anonymous memory, touched) and
//! thread count it starts `tools/bench/memhog.c` in the host pid namespace
//! and, for each N, runs `criu tfork -t PID --copies N`: the engine's own
//! timings (source pause = freeze to the source's release; first clone and
//! all N released, from the freeze), the command's wall time, then with
//! the clones idle for 0.5 s: RSS and PSS per clone (smaps_rollup) and the
//! system's extra memory per clone (MemAvailable before - after, / N: what
//! the clones really cost, page tables included). Clones are killed after
//! each N. The baseline starts the same workload as pid 1 of a new pid
//! namespace (a restore of a still-running host process would find its
//! pid taken) and times `dump --leave-running` and `restore -d` of it with
//! our `criu`, then with upstream's, images in the page cache; and the
//! time until `criu tfork --copies 1 --persist=sync` has its image set
//! durable (the host workload, 4 KiB pages).
//! Prints markdown tables for docs/PERFORMANCE.md.
//!
//! Each workload runs twice: with 4 KiB pages and with its area madvised
//! MADV_HUGEPAGE (`--thp 0,1`): a fork copies a page table entry per
//! 4 KiB page but one per 2 MiB huge page.
//!
//! Each tfork row is the median of `--runs` runs (default 3), column by
//! column; the baseline and `--persist=sync` are one run each.
//!
//! `--persist-only`: only the image set, `--runs` rounds interleaved per
//! size (4 KiB pages, host workload, `sync` before each): `criu tfork
//! --copies 1 --persist=sync` with io_uring and with plain writes
//! (`CRIU_RS_IO_URING=off`), time until durable (engine's timing, from
//! the freeze) and command wall time; `criu dump --leave-running` of our
//! engine and of upstream 4.2 (wall time, and wall time until its files
//! and directory are fsynced after it: neither dump syncs). Medians.
//!
//! `tfork-bench [--criu PATH] [--upstream PATH] [--sizes 256,1024] [--threads 1,16] [--copies 1,4,16,100] [--thp 0,1] [--runs N] [--dir DIR] [--persist-only] [--tfork-only]`
//!
//! `--tfork-only`: the tfork rows alone (no `--persist=sync` run, no
//! dump + restore baseline): the pause and the clones, quickly, e.g. to
//! compare two binaries (`--criu`) run after one another.

use tools::bench::{each_option, alive, kill, ns_init_pid, parse_list};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    criu: PathBuf,
    upstream: PathBuf,
    sizes: Vec<usize>,
    threads: Vec<usize>,
    copies: Vec<usize>,
    /// Page kinds: 0 = 4 KiB pages, 1 = transparent huge pages (MADV_HUGEPAGE).
    thp: Vec<usize>,
    /// tfork runs per row; the table gives each column's median.
    runs: usize,
    dir: PathBuf,
    persist_only: bool,
    tfork_only: bool,
}

fn opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        criu: root.join("target/release/criu"),
        upstream: root.join("../shared/upstream-criu/criu-4.2"),
        sizes: vec![256, 1024],
        threads: vec![1, 16],
        copies: vec![1, 4, 16, 100],
        thp: vec![0, 1],
        runs: 3,
        dir: PathBuf::from("/tmp/tfork-bench"),
        persist_only: false,
        tfork_only: false,
    };
    let mut persist_only = false;
    let mut tfork_only = false;
    each_option(&["--persist-only", "--tfork-only"], |name, value| {
        match name {
            "--criu" => o.criu = PathBuf::from(value),
            "--upstream" => o.upstream = PathBuf::from(value),
            "--sizes" => o.sizes = parse_list(value),
            "--threads" => o.threads = parse_list(value),
            "--copies" => o.copies = parse_list(value),
            "--thp" => o.thp = parse_list(value),
            "--runs" => o.runs = value.parse().unwrap_or(1).max(1),
            "--dir" => o.dir = PathBuf::from(value),
            "--persist-only" => persist_only = true,
            "--tfork-only" => tfork_only = true,
            _ => return false,
        }
        true
    });
    o.persist_only = persist_only;
    o.tfork_only = tfork_only;
    o
}

fn build_memhog(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/memhog.c");
    let out = dir.join("memhog");
    let st = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&out).arg(&src).arg("-lpthread").status().expect("run gcc");
    assert!(st.success(), "gcc failed on {}", src.display());
    out
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > Duration::from_secs(secs) {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn ticks(work: &Path) -> Result<usize, String> {
    let s = fs::read_to_string(work.join("progress.log")).unwrap_or_default();
    if let Some(l) = s.lines().find(|l| l.starts_with("FAIL")) {
        return Err(format!("workload failed: {l}"));
    }
    Ok(s.lines().filter(|l| l.ends_with(" ok")).count())
}

/// Kill a child of ours (a clone: a sibling of the workload, which this
/// benchmark started) and reap it.
fn kill_reap(pid: i32) {
    kill(pid);
    // SAFETY: waitpid of one child of ours, by pid.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
}

fn status_kb(pid: i32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key)?.trim_start_matches(':').split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn rollup_kb(pid: i32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key)?.trim_start_matches(':').split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

struct TforkRow {
    pause_ms: f64,
    first_ms: f64,
    all_ms: f64,
    wall_ms: f64,
    rss_mib: f64,
    pss_mib: f64,
    own_mib: f64,
}

/// "tfork of P: source paused X ms, first clone running after Y ms, all N after Z ms"
fn parse_timings(log: &str) -> Option<(f64, f64, f64)> {
    let l = log.lines().rev().find(|l| l.contains("tfork of "))?;
    let num_after = |key: &str| -> Option<f64> { l.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
    let all = l.split(" after ").nth(2)?.split_whitespace().next()?.parse().ok()?;
    Some((num_after("source paused ")?, num_after("first clone running after ")?, all))
}

fn one_tfork(o: &Opts, pid: i32, work: &Path, n: usize) -> Result<TforkRow, String> {
    std::thread::sleep(Duration::from_millis(300));
    let log = o.dir.join("tfork.log");
    let _ = fs::remove_file(&log);
    let t = Instant::now();
    let out = Command::new(&o.criu)
        .args(["tfork", "-t", &pid.to_string(), "--copies", &n.to_string(), "-v3", "-o"])
        .arg(&log)
        .arg("-D")
        .arg(&o.dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let clones: Vec<i32> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    let res = (|| {
        if !out.status.success() || clones.len() != n {
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            return Err(format!("tfork failed: {tail:?}"));
        }
        let (pause_ms, first_ms, all_ms) = parse_timings(&text).ok_or("no timings in the log")?;
        let before = ticks(work)?;
        std::thread::sleep(Duration::from_millis(500));
        // source and clones share progress.log: it must grow by more than the source alone does
        let after = ticks(work)?;
        if after < before + 5 {
            return Err(format!("progress.log grew by {} ticks only", after - before));
        }
        if let Some(c) = clones.iter().find(|&&c| !alive(c)) {
            return Err(format!("clone {c} is not running"));
        }
        let rss: u64 = clones.iter().map(|&c| rollup_kb(c, "Rss")).sum();
        // what only this clone holds: its unshared pages and its page tables
        let own: u64 = clones.iter().map(|&c| rollup_kb(c, "Private_Clean") + rollup_kb(c, "Private_Dirty") + status_kb(c, "VmPTE")).sum();
        let pss: u64 = clones.iter().map(|&c| rollup_kb(c, "Pss")).sum();
        let nf = n as f64;
        Ok(TforkRow {
            pause_ms,
            first_ms,
            all_ms,
            wall_ms: wall.as_secs_f64() * 1e3,
            rss_mib: rss as f64 / 1024.0 / nf,
            pss_mib: pss as f64 / 1024.0 / nf,
            own_mib: own as f64 / 1024.0 / nf,
        })
    })();
    for &c in &clones {
        kill_reap(c);
    }
    res
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each column's median over the runs.
fn median_row(rows: Vec<TforkRow>) -> TforkRow {
    let col = |f: fn(&TforkRow) -> f64| median(rows.iter().map(f).collect());
    TforkRow {
        pause_ms: col(|r| r.pause_ms),
        first_ms: col(|r| r.first_ms),
        all_ms: col(|r| r.all_ms),
        wall_ms: col(|r| r.wall_ms),
        rss_mib: col(|r| r.rss_mib),
        pss_mib: col(|r| r.pss_mib),
        own_mib: col(|r| r.own_mib),
    }
}

/// Host pid of the namespace's init started by `unshare --pid --fork`.
/// `dump --leave-running` + `restore -d` of an own-pid-namespace workload
/// with `criu`: (dump s, restore s).
fn live_copy(criu: &Path, pid: i32, dir: &Path) -> Result<(f64, f64), String> {
    let img = dir.join("img");
    let _ = fs::remove_dir_all(&img);
    fs::create_dir_all(&img).unwrap();
    let run = |args: &[&str], log: &str| -> Result<f64, String> {
        let t = Instant::now();
        let out = Command::new(criu).args(args).arg("-D").arg(&img).args(["-o", log]).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            let text = fs::read_to_string(img.join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            return Err(format!("{} {} failed: {tail:?}", criu.display(), args[0]));
        }
        Ok(secs)
    };
    let d = run(&["dump", "--leave-running", "-t", &pid.to_string()], "dump.log")?;
    let pidfile = img.join("restored.pid");
    let r = run(&["restore", "-d", "--pidfile", pidfile.to_str().unwrap()], "restore.log")?;
    let restored: i32 = fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()).ok_or("no pidfile")?;
    let ok = wait_for("the restored copy", 5, || alive(restored));
    kill(restored);
    ok?;
    let _ = fs::remove_dir_all(&img);
    Ok((d, r))
}

struct BaseRow {
    ours: Result<(f64, f64), String>,
    upstream: Result<(f64, f64), String>,
}

/// `criu tfork --copies 1 --persist=sync`: ms until the image set was
/// durable (the engine's own timing, from the freeze).
fn persist_sync(o: &Opts, pid: i32) -> Result<f64, String> {
    persist_sync_env(o, pid, &[]).map(|(d, _)| d)
}

/// [`persist_sync`] with `env`: (ms until durable, command wall ms).
fn persist_sync_env(o: &Opts, pid: i32, env: &[(&str, &str)]) -> Result<(f64, f64), String> {
    let img = o.dir.join("persist");
    let _ = fs::remove_dir_all(&img);
    fs::create_dir_all(&img).unwrap();
    let t = Instant::now();
    let out = Command::new(&o.criu)
        .args(["tfork", "-t", &pid.to_string(), "--copies", "1", "--persist=sync", "-v3", "-o", "tfork.log", "-D"])
        .arg(&img)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let text = fs::read_to_string(img.join("tfork.log")).unwrap_or_default();
    for c in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        kill_reap(c);
    }
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        return Err(format!("tfork --persist=sync failed: {tail:?}"));
    }
    for e in fs::read_dir(&img).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".img") {
            let _ = fs::remove_file(e.path());
        }
    }
    let l = text.lines().find(|l| l.contains("image set durable after")).ok_or("no durable time in the log")?;
    let ms = l.split("durable after ").nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok()).ok_or_else(|| "bad log line".to_string())?;
    let want = if env.is_empty() { "pages by io_uring" } else { "pages by plain writes" };
    if !text.contains(want) {
        return Err(format!("the log does not say {want:?}"));
    }
    Ok((ms, wall))
}

/// `dump --leave-running` of `pid` with `criu` into a fresh dir: (wall s,
/// wall s until every image file and the directory are fsynced).
fn dump_durable(criu: &Path, pid: i32, img: &Path) -> Result<(f64, f64), String> {
    let _ = fs::remove_dir_all(img);
    fs::create_dir_all(img).unwrap();
    let t = Instant::now();
    let out = Command::new(criu)
        .args(["dump", "--leave-running", "-t", &pid.to_string(), "-o", "dump.log", "-D"])
        .arg(img)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let dump = t.elapsed().as_secs_f64();
    if !out.status.success() {
        let text = fs::read_to_string(img.join("dump.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        return Err(format!("{} dump failed: {tail:?}", criu.display()));
    }
    for e in fs::read_dir(img).map_err(|e| e.to_string())?.flatten() {
        fs::File::open(e.path()).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    }
    fs::File::open(img).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    let durable = t.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(img);
    Ok((dump, durable))
}

/// Flush everything dirty, so one measurement's writeback does not slow the next.
fn sync_all() {
    let _ = Command::new("sync").status();
}

/// `--persist-only`: see the module docs.
fn persist_only(o: &Opts, memhog: &Path) {
    println!("| MiB | threads | tfork --persist=sync, io_uring: durable s | same, plain writes: durable s | plain / io_uring | tfork wall s (io_uring, plain) | ours: dump --leave-running s | ours: dump + fsync s | upstream: dump --leave-running s | upstream: dump + fsync s | upstream dump + fsync / tfork io_uring durable |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &mib in &o.sizes {
        for &threads in &o.threads {
            let work = o.dir.join(format!("work-p-{mib}-{threads}"));
            let _ = fs::remove_dir_all(&work);
            fs::create_dir_all(&work).unwrap();
            // its own session, as upstream's dump wants of a root (setsid
            // execs in place: a child of ours leads no group)
            let mut src = Command::new("setsid")
                .arg(memhog)
                .args([mib.to_string(), threads.to_string(), "0".into()])
                .current_dir(&work)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start memhog");
            let pid = src.id() as i32;
            let res = (|| -> Result<String, String> {
                wait_for("the workload", 120, || work.join("ready").exists() && ticks(&work).unwrap_or(0) >= 1)?;
                let (mut ur, mut pl, mut uw, mut pw, mut od, mut odf, mut ud, mut udf) = Default::default();
                let push = |v: &mut Vec<f64>, x: f64| v.push(x);
                for _ in 0..o.runs {
                    sync_all();
                    let (d, w) = persist_sync_env(o, pid, &[])?;
                    push(&mut ur, d / 1e3);
                    push(&mut uw, w / 1e3);
                    sync_all();
                    let (d, w) = persist_sync_env(o, pid, &[("CRIU_RS_IO_URING", "off")])?;
                    push(&mut pl, d / 1e3);
                    push(&mut pw, w / 1e3);
                    sync_all();
                    let (d, f) = dump_durable(&o.criu, pid, &o.dir.join("dump-ours"))?;
                    push(&mut od, d);
                    push(&mut odf, f);
                    if o.upstream.exists() {
                        sync_all();
                        let (d, f) = dump_durable(&o.upstream, pid, &o.dir.join("dump-upstream"))?;
                        push(&mut ud, d);
                        push(&mut udf, f);
                    }
                }
                let (ur, pl, uw, pw, od, odf) = (median(ur), median(pl), median(uw), median(pw), median(od), median(odf));
                let (us, ufs, ratio) = if ud.is_empty() {
                    ("no upstream".to_string(), String::new(), String::new())
                } else {
                    let (d, f) = (median(ud), median(udf));
                    (format!("{d:.3}"), format!("{f:.3}"), format!("{:.2}x", f / ur))
                };
                Ok(format!("| {mib} | {threads} | {ur:.3} | {pl:.3} | {:.2}x | {uw:.3}, {pw:.3} | {od:.3} | {odf:.3} | {us} | {ufs} | {ratio} |", pl / ur))
            })();
            let _ = src.kill();
            let _ = src.wait();
            match res {
                Ok(row) => println!("{row}"),
                Err(e) => println!("| {mib} | {threads} | failed: {e} | | | | | | | | |"),
            }
        }
    }
}

fn baseline(o: &Opts, memhog: &Path, mib: usize, threads: usize) -> Result<BaseRow, String> {
    let dir = o.dir.join(format!("base-{mib}-{threads}"));
    let _ = fs::remove_dir_all(&dir);
    let work = dir.join("work");
    fs::create_dir_all(&work).unwrap();
    let mut launcher = Command::new("unshare")
        .args(["--pid", "--fork", "setsid"])
        .arg(memhog)
        .args([mib.to_string(), threads.to_string()])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let res = (|| {
        wait_for("the workload", 120, || work.join("ready").exists() && ticks(&work).unwrap_or(0) >= 1)?;
        let pid = ns_init_pid(launcher.id()).ok_or("no namespace init")?;
        let ours = live_copy(&o.criu, pid, &dir.join("ours"));
        let upstream = if o.upstream.exists() { live_copy(&o.upstream, pid, &dir.join("upstream")) } else { Err("no upstream binary".into()) };
        kill(pid);
        Ok(BaseRow { ours, upstream })
    })();
    let _ = launcher.kill();
    let _ = launcher.wait();
    res
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).unwrap();
    let memhog = build_memhog(&o.dir);
    if o.persist_only {
        persist_only(&o, &memhog);
        return;
    }
    let mut rows = Vec::new();
    let mut bases = Vec::new();
    let mut persists = Vec::new();
    for &mib in &o.sizes {
        for &threads in &o.threads {
          for &thp in &o.thp {
            let work = o.dir.join(format!("work-{mib}-{threads}-{thp}"));
            let _ = fs::remove_dir_all(&work);
            fs::create_dir_all(&work).unwrap();
            let mut src = Command::new(&memhog)
                .args([mib.to_string(), threads.to_string(), thp.to_string()])
                .current_dir(&work)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start memhog");
            let pid = src.id() as i32;
            let ready = wait_for("the workload", 120, || work.join("ready").exists() && ticks(&work).unwrap_or(0) >= 1);
            for &n in &o.copies {
                let r = ready.clone().and_then(|()| {
                    let all: Vec<TforkRow> = (0..o.runs).map(|_| one_tfork(&o, pid, &work, n)).collect::<Result<_, _>>()?;
                    Ok(median_row(all))
                });
                if let Err(e) = &r {
                    eprintln!("{mib} MiB, {threads} threads, N={n}: {e}");
                }
                rows.push((mib, threads, thp, n, r));
            }
            if thp == 0 && !o.tfork_only {
                let p = ready.clone().and_then(|()| persist_sync(&o, pid));
                if let Err(e) = &p {
                    eprintln!("{mib} MiB, {threads} threads, --persist=sync: {e}");
                }
                persists.push(((mib, threads), p));
            }
            let _ = src.kill();
            let _ = src.wait();
            if thp == 0 && !o.tfork_only {
                let b = baseline(&o, &memhog, mib, threads);
                if let Err(e) = &b {
                    eprintln!("{mib} MiB, {threads} threads, baseline: {e}");
                }
                bases.push((mib, threads, b));
            }
          }
        }
    }
    println!("| MiB | threads | pages | N | source pause ms | first clone running ms | all N running ms | `criu tfork` wall ms | RSS per clone MiB | PSS per clone MiB | private + page tables per clone MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mib, threads, thp, n, r) in &rows {
        let pages = if *thp == 1 { "THP" } else { "4 KiB" };
        match r {
            Ok(r) => println!(
                "| {mib} | {threads} | {pages} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
                r.pause_ms, r.first_ms, r.all_ms, r.wall_ms, r.rss_mib, r.pss_mib, r.own_mib
            ),
            Err(e) => println!("| {mib} | {threads} | {pages} | {n} | failed: {e} | | | | | | |"),
        }
    }
    println!();
    println!("(4 KiB pages)");
    println!("| MiB | threads | ours: dump --leave-running s | ours: restore s | ours: copy running s | upstream: dump --leave-running s | upstream: restore s | upstream: copy running s | tfork N=1: first clone running s | upstream copy / tfork | tfork --persist=sync: image set durable s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mib, threads, b) in &bases {
        let tf = rows.iter().find(|(m, t, thp, n, _)| m == mib && t == threads && *thp == 0 && *n == 1).and_then(|(_, _, _, _, r)| r.as_ref().ok()).map(|r| r.first_ms / 1e3);
        let cell = |v: &Result<(f64, f64), String>| match v {
            Ok((d, r)) => (format!("{d:.3}"), format!("{r:.3}"), format!("{:.3}", d + r), Some(d + r)),
            Err(e) => (format!("failed: {e}"), String::new(), String::new(), None),
        };
        match b {
            Ok(b) => {
                let (od, or, ot, _) = cell(&b.ours);
                let (ud, ur, ut, utot) = cell(&b.upstream);
                let ratio = match (utot, tf) {
                    (Some(u), Some(t)) if t > 0.0 => format!("{:.0}x", u / t),
                    _ => String::new(),
                };
                let tfs = tf.map(|t| format!("{t:.3}")).unwrap_or_default();
                let ps = match persists.iter().find(|(k, _)| *k == (*mib, *threads)).map(|(_, p)| p) {
                    Some(Ok(ms)) => format!("{:.3}", ms / 1e3),
                    Some(Err(e)) => format!("failed: {e}"),
                    None => String::new(),
                };
                println!("| {mib} | {threads} | {od} | {or} | {ot} | {ud} | {ur} | {ut} | {tfs} | {ratio} | {ps} |");
            }
            Err(e) => println!("| {mib} | {threads} | failed: {e} | | | | | | | | |"),
        }
    }
}
