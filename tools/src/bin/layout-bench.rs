//! Many-VMA and many-thread benchmark: our `criu` beside upstream CRIU 4.2
//! in the same run.
//!
//! For each VMA count and thread count it starts `tools/bench/manyvma.c`
//! (N one-page private VMAs, each written, alternately read-only so none
//! merge; T idle threads) as pid 1 of a new pid namespace, times
//! `criu dump` and `criu restore -d` of it, and checks that the restored
//! program goes on ticking `ok` (it checks every page each tick). Each run
//! does ours and upstream's back to back, so both see the same moment of
//! this noisy VM; the table gives medians and the ours/upstream ratio.
//!
//! `layout-bench [--criu PATH] [--upstream PATH] [--vmas 100,1000,5000,20000] [--threads 1,64,256] [--runs N] [--dir DIR]`
//!
//! Needs root and gcc; the upstream binary defaults to
//! ../shared/upstream-criu/criu-4.2 (rows without it say so).

use tools::bench::{each_option, median, parse_list};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    criu: PathBuf,
    upstream: PathBuf,
    vmas: Vec<usize>,
    threads: Vec<usize>,
    runs: usize,
    dir: PathBuf,
}

fn opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        criu: root.join("target/release/criu"),
        upstream: root.join("../shared/upstream-criu/criu-4.2"),
        vmas: vec![100, 1000, 5000, 20000],
        threads: vec![1, 64, 256],
        runs: 3,
        dir: PathBuf::from("/tmp/layout-bench"),
    };
    each_option(&[], |name, value| {
        match name {
            "--criu" => o.criu = PathBuf::from(value),
            "--upstream" => o.upstream = PathBuf::from(value),
            "--vmas" => o.vmas = parse_list(value),
            "--threads" => o.threads = parse_list(value),
            "--runs" => o.runs = value.parse().unwrap_or(3),
            "--dir" => o.dir = PathBuf::from(value),
            _ => return false,
        }
        true
    });
    o
}

fn ticks(work: &Path) -> usize {
    let s = fs::read_to_string(work.join("progress.log")).unwrap_or_default();
    if let Some(l) = s.lines().find(|l| l.starts_with("FAIL")) {
        panic!("workload failed in {}: {l}", work.display());
    }
    s.lines().filter(|l| l.ends_with(" ok")).count()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pid (in this namespace) of the live process running `exe` with `arg1`.
fn find(exe: &Path, arg1: &str) -> Option<i32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut parts = cmd.split(|b| *b == 0);
        if parts.next() == Some(exe.as_os_str().as_encoded_bytes()) && parts.next() == Some(arg1.as_bytes()) {
            let st = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if !st.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')) {
                return Some(pid);
            }
        }
    }
    None
}

/// One dump + restore with `criu`; (dump s, restore s) or the failure.
fn one(criu: &Path, prog: &Path, dir: &Path, nvmas: usize, nthreads: usize) -> Result<(f64, f64), String> {
    let _ = fs::remove_dir_all(dir);
    let work = dir.join("work");
    let img = dir.join("img");
    fs::create_dir_all(&work).unwrap();
    fs::create_dir_all(&img).unwrap();
    let arg1 = nvmas.to_string();
    let mut launcher = Command::new("unshare")
        .args(["--pid", "--fork", "setsid"])
        .arg(prog)
        .args([&arg1, &nthreads.to_string()])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the workload: {e}"))?;
    std::thread::spawn(move || launcher.wait());
    wait_for("the workload", 60, || work.join("ready").exists() && ticks(&work) >= 1);
    let pid = find(prog, &arg1).ok_or("workload not found")?;
    let run = |args: &[&str]| -> Result<f64, String> {
        let t = Instant::now();
        let out = Command::new(criu).args(args).arg("-D").arg(&img).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            let log = fs::read_to_string(img.join(if args[0] == "dump" { "dump.log" } else { "restore.log" })).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(4).collect();
            return Err(format!("{} {} failed: {:?}", criu.display(), args[0], tail));
        }
        Ok(secs)
    };
    let pid_s = pid.to_string();
    let d = run(&["dump", "-t", &pid_s, "-o", "dump.log"]);
    if d.is_err() {
        let _ = Command::new("kill").args(["-9", &pid_s]).status();
    }
    let d = d?;
    wait_for("the source's exit", 10, || find(prog, &arg1).is_none());
    let pidfile = img.join("restored.pid");
    let r = run(&["restore", "-d", "-o", "restore.log", "--pidfile", pidfile.to_str().unwrap()])?;
    let before = ticks(&work);
    wait_for("ticks after restore", 30, || ticks(&work) >= before + 2);
    if let Some(p) = find(prog, &arg1) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    wait_for("the restored program's exit", 10, || find(prog, &arg1).is_none());
    Ok((d, r))
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/manyvma.c");
    let prog = o.dir.join("manyvma");
    let st = Command::new("gcc").args(["-O2", "-o"]).arg(&prog).arg(&src).arg("-lpthread").status().expect("gcc");
    assert!(st.success(), "building manyvma");
    let have_up = o.upstream.exists();
    println!("| VMAs | threads | ours dump s | upstream dump s | dump ours/up | ours restore s | upstream restore s | restore ours/up |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &t in &o.threads {
        for &n in &o.vmas {
            let (mut od, mut orr, mut ud, mut ur) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut note = String::new();
            for _ in 0..o.runs {
                match one(&o.criu, &prog, &o.dir.join("ours"), n, t) {
                    Ok((d, r)) => {
                        od.push(d);
                        orr.push(r);
                    }
                    Err(e) => note = format!("ours: {e}"),
                }
                if have_up {
                    match one(&o.upstream, &prog, &o.dir.join("upstream"), n, t) {
                        Ok((d, r)) => {
                            ud.push(d);
                            ur.push(r);
                        }
                        Err(e) => note = format!("upstream: {e}"),
                    }
                }
            }
            let f = |v: &mut Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
            let (a, b, c, d) = (f(&mut od), f(&mut ud), f(&mut orr), f(&mut ur));
            println!("| {n} | {t} | {a:.3} | {b:.3} | {:.2} | {c:.3} | {d:.3} | {:.2} |{}", a / b, c / d, if note.is_empty() { String::new() } else { format!(" {note}") });
        }
    }
    if !have_up {
        println!("(no upstream binary at {}: its columns are NaN)", o.upstream.display());
    }
}
