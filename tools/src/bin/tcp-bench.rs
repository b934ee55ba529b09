//! Established-connection benchmark: dump and restore (`--tcp-established`)
//! of a server holding N established TCP connections (IPv4, loopback),
//! their clients outside the tree keeping their ends, with our `criu` and
//! with upstream CRIU 4.2 in the same run, interleaved per round. The
//! workload is `engine/tests/progs/tcppair.c`: `many N PORT` (the server,
//! pid 1 of a new pid namespace, a byte queued on each connection) and
//! `manyc N PORT` (the clients). The restore is checked: N established
//! sockets on the port again and none of the network lock's rules left.
//! Prints a markdown table (seconds, ours/upstream ratios) for
//! docs/PERFORMANCE.md.
//!
//! `tcp-bench [--criu PATH] [--upstream PATH] [--counts 1000] [--runs N] [--dir DIR]`

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tools::bench::{each_option, kill, median, ns_init_pid, wait_for};

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
        counts: vec![1000],
        runs: 3,
        dir: PathBuf::from("/tmp/tcp-bench"),
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

/// Established sockets whose local port is `port`.
fn established_on(port: u16) -> usize {
    let out = Command::new("ss").args(["-Htn", "state", "established", &format!("sport = :{port}")]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).lines().count()).unwrap_or(0)
}

/// The network lock's rules naming `port`.
fn lock_rules(port: u16) -> usize {
    let out = Command::new("iptables").args(["-w", "-S"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("0xc114") && l.contains(&format!("port {port} "))).count()).unwrap_or(0)
}

/// One dump + restore of the N-connection server with `criu`: (dump, restore).
fn one(criu: &Path, bin: &Path, dir: &Path, n: usize, port: u16) -> Result<(Duration, Duration), String> {
    let work = dir.join("work");
    let imgs = dir.join("img");
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    fs::create_dir_all(&imgs).map_err(|e| e.to_string())?;
    let spawn = |args: &[&str], ns: bool| {
        let mut c = if ns {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "setsid"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        c.args(args).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())
    };
    let (ns, ps) = (n.to_string(), port.to_string());
    let mut server = spawn(&["many", &ns, &ps], true)?;
    let pid = ns_init_pid(server.id());
    std::thread::sleep(Duration::from_millis(100));
    let mut clients = spawn(&["manyc", &ns, &ps], false)?;
    let r = (|| {
        let pid = pid.ok_or("the server not found")?;
        wait_for("the connections", Duration::from_secs(60), || work.join("ready").exists() && work.join("ready-c").exists())?;
        let t = Instant::now();
        let st = Command::new(criu).args(["dump", "--tcp-established", "-t", &pid.to_string(), "-D"]).arg(&imgs).args(["-o", "dump.log"]).status();
        let dump = t.elapsed();
        if !st.is_ok_and(|s| s.success()) {
            return Err(format!("{} dump failed (see {})", criu.display(), imgs.join("dump.log").display()));
        }
        let _ = server.wait();
        let t = Instant::now();
        let st = Command::new(criu).args(["restore", "--tcp-established", "-d", "-D"]).arg(&imgs).args(["-o", "restore.log"]).current_dir(&work).status();
        let restore = t.elapsed();
        if !st.is_ok_and(|s| s.success()) {
            return Err(format!("{} restore failed (see {})", criu.display(), imgs.join("restore.log").display()));
        }
        let est = established_on(port);
        if est != n {
            return Err(format!("{est} established connections on port {port} after the restore, want {n}"));
        }
        if lock_rules(port) != 0 {
            return Err(format!("{} lock rules left on port {port}", lock_rules(port)));
        }
        Ok((dump, restore))
    })();
    // the restored server: the first process whose cwd is the work dir
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() {
            if fs::read_link(format!("/proc/{p}/cwd")).ok().as_deref() == Some(work.as_path()) {
                kill(p);
            }
        }
    }
    let _ = clients.kill();
    let _ = clients.wait();
    let _ = server.kill();
    let _ = server.wait();
    // a failed round leaves its rules: lifted here so the next round starts clean
    if lock_rules(port) != 0 {
        let out = Command::new("iptables").args(["-w", "-S"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for l in out.lines().filter(|l| l.contains("0xc114") && l.contains(&format!("port {port} "))) {
            let del = l.replacen("-A ", "-D ", 1);
            let _ = Command::new("iptables").arg("-w").args(del.split_whitespace()).status();
        }
    }
    if r.is_ok() {
        let _ = fs::remove_dir_all(dir);
    }
    r
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).expect("bench dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/progs/tcppair.c");
    let bin = o.dir.join("tcppair");
    let st = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "building {}", src.display());
    println!("# tcp-bench: ours = {}, upstream = {}, {} runs each (medians), interleaved", o.criu.display(), o.upstream.display(), o.runs);
    println!();
    println!("| connections | dump s, ours | dump s, upstream | dump ours/upstream | restore s, ours | restore s, upstream | restore ours/upstream |");
    println!("|---|---|---|---|---|---|---|");
    let mut port = 30000 + (std::process::id() % 1000) as u16 * 10;
    for &n in &o.counts {
        let (mut od, mut orr, mut ud, mut ur) = (vec![], vec![], vec![], vec![]);
        let mut note = String::new();
        for _ in 0..o.runs {
            for (criu, d, r, tag) in [(&o.criu, &mut od, &mut orr, "ours"), (&o.upstream, &mut ud, &mut ur, "upstream")] {
                // a fresh port each round: the last round's clients may linger in TIME_WAIT
                port += 1;
                match one(criu, &bin, &o.dir.join(format!("{tag}-{n}")), n, port) {
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
