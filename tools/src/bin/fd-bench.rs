//! Fd-table benchmark: dump and restore of a process holding N fds (half
//! opens of one file, half dups of those: `tools/bench/manyfds.c`), with our
//! `criu` and with upstream CRIU in the same run, interleaved per round.
//! Prints a markdown table (seconds, and ours/upstream ratios) for
//! docs/PERFORMANCE.md.
//!
//! `fd-bench [--criu PATH] [--upstream PATH] [--counts 1000,4000,10000] [--runs N] [--dir DIR]`
//!
//! N is bounded by the hard RLIMIT_NOFILE (the workload raises its soft
//! limit to it; the restore needs a few fds more than N).

use tools::bench::{each_option, kill, median};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    criu: PathBuf,
    upstream: PathBuf,
    counts: Vec<usize>,
    runs: usize,
    dir: PathBuf,
}

fn opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        criu: root.join("target/release/criu"),
        upstream: root.join("../shared/upstream-criu/criu-4.2"),
        counts: vec![1000, 4000, 10000, 19000],
        runs: 3,
        dir: PathBuf::from("/tmp/fd-bench"),
    };
    each_option(&[], |name, value| {
        match name {
            "--criu" => o.criu = PathBuf::from(value),
            "--upstream" => o.upstream = PathBuf::from(value),
            "--counts" => o.counts = value.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
            "--runs" => o.runs = value.parse().unwrap_or(3),
            "--dir" => o.dir = PathBuf::from(value),
            _ => return false,
        }
        true
    });
    o
}

/// Newest process whose argv[0] is `bin`.
fn pid_of(bin: &Path) -> Option<i32> {
    let mut found = None;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) {
            found = Some(found.map_or(pid, |f: i32| f.max(pid)));
        }
    }
    found
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn last_tick(work: &Path) -> Result<u64, String> {
    let s = fs::read_to_string(work.join("progress.log")).unwrap_or_default();
    if s.contains("FAIL") {
        return Err(format!("workload failed: {s}"));
    }
    Ok(s.lines().filter_map(|l| l.strip_prefix("tick ")?.split_whitespace().next()?.parse().ok()).next_back().unwrap_or(0))
}

/// One dump + restore of an N-fd workload with `criu`: (dump, restore).
fn one(criu: &Path, bin: &Path, dir: &Path, n: usize) -> Result<(Duration, Duration), String> {
    let work = dir.join("work");
    let imgs = dir.join("img");
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    fs::create_dir_all(&imgs).map_err(|e| e.to_string())?;
    let mut launcher = Command::new("unshare")
        .args(["--pid", "--fork", "setsid"])
        .arg(bin)
        .arg(n.to_string())
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let r = (|| {
        wait_for("ready", Duration::from_secs(60), || work.join("ready").exists())?;
        wait_for("a tick", Duration::from_secs(10), || last_tick(&work).is_ok_and(|t| t >= 1))?;
        let pid = pid_of(bin).ok_or("workload not found")?;
        let t = Instant::now();
        let st = Command::new(criu).args(["dump", "-t", &pid.to_string(), "-D"]).arg(&imgs).args(["-o", "dump.log"]).status();
        let dump = t.elapsed();
        if !st.is_ok_and(|s| s.success()) {
            kill(pid);
            return Err(format!("{} dump failed (see {})", criu.display(), imgs.join("dump.log").display()));
        }
        let _ = launcher.wait();
        let before = last_tick(&work)?;
        let t = Instant::now();
        let st = Command::new(criu).args(["restore", "-d", "-D"]).arg(&imgs).args(["-o", "restore.log"]).current_dir(&work).status();
        let restore = t.elapsed();
        if !st.is_ok_and(|s| s.success()) {
            return Err(format!("{} restore failed (see {})", criu.display(), imgs.join("restore.log").display()));
        }
        let ok = wait_for("ticks after restore", Duration::from_secs(10), || last_tick(&work).is_ok_and(|t| t > before + 2));
        if let Some(p) = pid_of(bin) {
            kill(p);
        }
        ok?;
        Ok((dump, restore))
    })();
    if let Some(p) = pid_of(bin) {
        kill(p);
    }
    let _ = launcher.kill();
    let _ = launcher.wait();
    if r.is_ok() {
        let _ = fs::remove_dir_all(dir);
    }
    r
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).expect("bench dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/manyfds.c");
    let bin = o.dir.join("manyfds");
    let st = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "building {}", src.display());
    println!("# fd-bench: ours = {}, upstream = {}, {} runs each (medians), interleaved", o.criu.display(), o.upstream.display(), o.runs);
    println!();
    println!("| fds | dump s, ours | dump s, upstream | dump ours/upstream | restore s, ours | restore s, upstream | restore ours/upstream |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &o.counts {
        let (mut od, mut orr, mut ud, mut ur) = (vec![], vec![], vec![], vec![]);
        let mut note = String::new();
        for _ in 0..o.runs {
            for (criu, d, r, tag) in [(&o.criu, &mut od, &mut orr, "ours"), (&o.upstream, &mut ud, &mut ur, "upstream")] {
                match one(criu, &bin, &o.dir.join(format!("{tag}-{n}")), n) {
                    Ok((dd, rr)) => {
                        d.push(dd.as_secs_f64());
                        r.push(rr.as_secs_f64());
                    }
                    Err(e) => note = format!("{tag}: {e}"),
                }
            }
        }
        let m = |v: &mut Vec<f64>| if v.is_empty() { None } else { Some(median(v)) };
        let (od, orr, ud, ur) = (m(&mut od), m(&mut orr), m(&mut ud), m(&mut ur));
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        println!("| {n} | {} | {} | {} | {} | {} | {} |{}", f(od), f(ud), ratio(od, ud), f(orr), f(ur), ratio(orr, ur), if note.is_empty() { String::new() } else { format!(" {note}") });
    }
}
