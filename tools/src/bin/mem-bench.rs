//! Memory-shape benchmark: our `criu` against upstream CRIU 4.2, measured in
//! the same run, interleaved (the order of the two alternates per run).
//!
//! Each case runs `engine/tests/progs/memcases.c` as pid 1 of a new pid
//! namespace (its own session, as upstream wants it): `frag2` and `frag16`
//! write every 2nd / 16th page of a MIB mapping (MIB*128 / MIB*16 page
//! runs), `thp` fills a MADV_HUGEPAGE mapping of MIB. Per run and engine:
//! time `dump` (the source is killed), read the pages files once so that
//! they are in the page cache (restore "from a cached image"), time
//! `restore -d`, check the restored program ticks `ok`, and record how
//! much of its memory is in huge pages (`AnonHugePages`). Prints one
//! markdown row per run and engine pair, with the ratios ours/upstream.
//!
//! `mem-bench [--criu PATH] [--upstream PATH] [--cases frag2:1024,frag16:1024,thp:1024] [--runs N] [--dir DIR]`

use tools::bench::{alive, each_option};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    criu: PathBuf,
    upstream: PathBuf,
    cases: Vec<(String, usize)>,
    runs: usize,
    dir: PathBuf,
}

fn opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        criu: root.join("target/release/criu"),
        upstream: PathBuf::from("/work/shared/upstream-criu/criu-4.2"),
        cases: vec![("frag2".into(), 1024), ("frag16".into(), 1024), ("thp".into(), 1024)],
        runs: 2,
        dir: PathBuf::from("/tmp/mem-bench"),
    };
    each_option(&[], |name, value| {
        match name {
            "--criu" => o.criu = PathBuf::from(value),
            "--upstream" => o.upstream = PathBuf::from(value),
            "--runs" => o.runs = value.parse().unwrap_or(1),
            "--dir" => o.dir = PathBuf::from(value),
            "--cases" => {
                o.cases = value
                    .split(',')
                    .filter_map(|c| {
                        let (n, m) = c.split_once(':')?;
                        Some((n.to_string(), m.parse().ok()?))
                    })
                    .collect()
            }
            _ => return false,
        }
        true
    });
    o
}

fn build(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/progs/memcases.c");
    let bin = dir.join("memcases");
    let st = Command::new("gcc").args(["-O2", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "building memcases");
    bin
}

fn ticks(log: &Path) -> usize {
    let s = fs::read_to_string(log).unwrap_or_default();
    assert!(!s.contains("FAIL"), "memcases failed:\n{}", s.lines().filter(|l| l.contains("FAIL")).take(5).collect::<Vec<_>>().join("\n"));
    s.lines().filter(|l| l.ends_with(" ok")).count()
}

fn wait_for(what: &str, t: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < t, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start the case in `work`; the host pid of the program (pid 1 inside),
/// and its `unshare` parent, to reap.
fn start(bin: &Path, work: &Path, args: &[String]) -> (i32, std::process::Child) {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).unwrap();
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "setsid"])
        .arg(bin)
        .args(args)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memcases");
    wait_for("ready", Duration::from_secs(120), || work.join("ready").exists());
    wait_for("first tick", Duration::from_secs(60), || ticks(&work.join("progress.log")) >= 1);
    let mut pid = 0;
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if fs::read_link(format!("/proc/{p}/exe")).ok().as_deref() == Some(bin) && fs::read_link(format!("/proc/{p}/cwd")).ok().as_deref() == Some(work) {
            pid = pid.max(p);
        }
    }
    assert!(pid > 0, "memcases not found");
    (pid, child)
}

fn anon_huge_kib(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("AnonHugePages:")?.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

struct One {
    dump: f64,
    restore: f64,
    huge_mib: u64,
}

/// One dump + cached restore of a fresh workload with `engine`.
fn one(engine: &Path, bin: &Path, base: &Path, args: &[String]) -> One {
    let work = base.join("work");
    let img = base.join("img");
    let _ = fs::remove_dir_all(&img);
    fs::create_dir_all(&img).unwrap();
    let (pid, mut parent) = start(bin, &work, args);
    let t = Instant::now();
    let st = Command::new(engine).args(["dump", "-t", &pid.to_string(), "-v2", "-o", "dump.log", "-D"]).arg(&img).status().unwrap();
    let dump = t.elapsed().as_secs_f64();
    if !st.success() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("{} dump failed:\n{}", engine.display(), fs::read_to_string(img.join("dump.log")).unwrap_or_default());
    }
    wait_for("the source to be gone", Duration::from_secs(10), || !alive(pid));
    let _ = parent.wait();
    // restore from a cached image: every pages file read once
    for e in fs::read_dir(&img).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("pages-") {
            let _ = Command::new("cat").arg(e.path()).stdout(Stdio::null()).status();
        }
    }
    let log = work.join("progress.log");
    let before = ticks(&log);
    let pidfile = base.join("restored.pid");
    let _ = fs::remove_file(&pidfile);
    let t = Instant::now();
    let st = Command::new(engine)
        .args(["restore", "-d", "-v2", "-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .arg("-D")
        .arg(&img)
        .current_dir(&work)
        .status()
        .unwrap();
    let restore = t.elapsed().as_secs_f64();
    assert!(st.success(), "{} restore failed:\n{}", engine.display(), fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    let rpid: i32 = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_for("ticks after restore", Duration::from_secs(60), || ticks(&log) > before + 1);
    let huge_mib = anon_huge_kib(rpid) / 1024;
    let _ = Command::new("kill").args(["-9", &rpid.to_string()]).status();
    wait_for("the restored process to be gone", Duration::from_secs(10), || !alive(rpid));
    One { dump, restore, huge_mib }
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).unwrap();
    let bin = build(&o.dir);
    println!("| case | MiB | run | ours dump s | upstream dump s | ours/upstream dump | ours restore s | upstream restore s | ours/upstream restore | huge pages after restore, ours / upstream (MiB) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (case, mib) in &o.cases {
        let args: Vec<String> = match case.as_str() {
            "frag2" => vec!["frag".into(), mib.to_string(), "2".into()],
            "frag16" => vec!["frag".into(), mib.to_string(), "16".into()],
            "thp" => vec!["thp".into(), mib.to_string()],
            other => panic!("unknown case {other}"),
        };
        for run in 0..o.runs {
            // alternate which engine goes first
            let order: [bool; 2] = if run % 2 == 0 { [true, false] } else { [false, true] };
            let (mut ours, mut up) = (None, None);
            for is_ours in order {
                let engine = if is_ours { &o.criu } else { &o.upstream };
                let r = one(engine, &bin, &o.dir.join(if is_ours { "ours" } else { "upstream" }), &args);
                if is_ours {
                    ours = Some(r);
                } else {
                    up = Some(r);
                }
            }
            let (a, b) = (ours.unwrap(), up.unwrap());
            println!(
                "| {case} | {mib} | {} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.2} | {} / {} |",
                run + 1,
                a.dump,
                b.dump,
                a.dump / b.dump,
                a.restore,
                b.restore,
                a.restore / b.restore,
                a.huge_mib,
                b.huge_mib
            );
        }
    }
}
