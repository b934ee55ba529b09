//! Dump/restore benchmark: our `criu` against limits measured in the same run.
//!
//! For each size (MiB of patterned anonymous memory) and thread count it
//! starts `tools/bench/memhog.c` as pid 1 of a new pid namespace, times
//! `criu dump`, drops the page cache, times `criu restore -d`, then checks
//! the restored program ticks `ok`. Limits measured in the same run, for
//! each row: memcpy of the same size; the disk's write rate (the same bytes
//! written with O_DIRECT from a hot buffer into the image directory's file
//! system: what a dump can at best do once its pages are on the way out);
//! and its cold read rate (the dump's own pages files read back, page
//! cache dropped, buffered and sequential: what a restore must at least
//! wait for). Prints a markdown table for docs/PERFORMANCE.md.
//!
//! With `--compare-fill` each row also restores the same images a second
//! time with the /proc/PID/mem fill (`CRIU_RS_FILL=mem`) instead of the
//! target's own preadv, for a same-run comparison.
//!
//! With `--compare-dump` each row also dumps a second, fresh workload with
//! the two-copy read path (`CRIU_RS_DUMP_READ=vm`) instead of the vmsplice
//! page pump.
//!
//! `cr-bench [--criu PATH] [--sizes 64,256,1024,4096] [--threads 1,16] [--dir DIR] [--runs N] [--compare-fill] [--compare-dump]`

use tools::bench::{each_option, ns_init_pid, parse_list};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    criu: PathBuf,
    sizes: Vec<usize>,
    threads: Vec<usize>,
    dir: PathBuf,
    runs: usize,
    /// Also restore a second time with the /proc/PID/mem fill (CRIU_RS_FILL=mem).
    compare_fill: bool,
    /// Also dump a second, fresh workload with the two-copy read path
    /// (CRIU_RS_DUMP_READ=vm) instead of the vmsplice page pump.
    compare_dump: bool,
}

fn opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        criu: root.join("target/release/criu"),
        sizes: vec![64, 256, 1024, 4096],
        threads: vec![1, 16],
        dir: PathBuf::from("/tmp/cr-bench"),
        runs: 1,
        compare_fill: false,
        compare_dump: false,
    };
    each_option(&["--compare-fill", "--compare-dump"], |name, value| {
        match name {
            "--criu" => o.criu = PathBuf::from(value),
            "--sizes" => o.sizes = parse_list(value),
            "--threads" => o.threads = parse_list(value),
            "--dir" => o.dir = PathBuf::from(value),
            "--runs" => o.runs = value.parse().unwrap_or(1),
            "--compare-fill" => o.compare_fill = true,
            "--compare-dump" => o.compare_dump = true,
            _ => return false,
        }
        true
    });
    o
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn memcpy_baseline(bytes: usize) -> Duration {
    let src = vec![0x5au8; bytes];
    let mut dst = vec![0u8; bytes];
    // Touch the destination first so the copy is not measuring page faults.
    dst.iter_mut().step_by(4096).for_each(|b| *b = 1);
    let t = Instant::now();
    dst.copy_from_slice(&src);
    let d = t.elapsed();
    std::hint::black_box(&dst);
    d
}

/// `bytes` written with O_DIRECT in 8 MiB writes from a hot page-aligned
/// buffer into a new file in `dir`: the disk's write rate, no page cache.
fn direct_write_baseline(dir: &Path, bytes: usize) -> Option<Duration> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const CHUNK: usize = 8 << 20;
    let path = dir.join("write-baseline");
    let mut buf = memmap2::MmapMut::map_anon(CHUNK).ok()?;
    buf.fill(0xa5);
    let f = fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&path).ok()?;
    let t = Instant::now();
    let mut off = 0;
    while off < bytes {
        let n = CHUNK.min(bytes - off);
        f.write_all_at(&buf[..n], off as u64).ok()?;
        off += n;
    }
    let d = t.elapsed();
    drop(f);
    let _ = fs::remove_file(&path);
    Some(d)
}

/// Every `pages-*.img` in `imgs` read front to back with the page cache
/// dropped first (buffered, 8 MiB reads, sequential advice): the least a
/// restore of them waits for on this disk.
fn cold_read_baseline(imgs: &Path) -> Option<Duration> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut files: Vec<PathBuf> = fs::read_dir(imgs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img")))
        .collect();
    files.sort();
    drop_caches();
    let mut buf = vec![0u8; 8 << 20];
    let t = Instant::now();
    for p in files {
        let mut f = fs::File::open(&p).ok()?;
        // SAFETY: advice on an fd we own; no memory is passed.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        while f.read(&mut buf).ok()? > 0 {}
    }
    let d = t.elapsed();
    drop_caches();
    Some(d)
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn build_memhog(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/memhog.c");
    let out = dir.join("memhog");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-lpthread")
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed on {}", src.display());
    out
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Host pid of the namespace's init started by `unshare --pid --fork`.
fn ok_ticks(log: &Path) -> (usize, bool) {
    let s = fs::read_to_string(log).unwrap_or_default();
    (
        s.lines().filter(|l| l.ends_with(" ok")).count(),
        s.contains("FAIL"),
    )
}

struct Row {
    mib: usize,
    threads: usize,
    dump: Option<Duration>,
    restore: Option<Duration>,
    restore_mem: Option<Duration>,
    dump_read: Option<Duration>,
    /// The dump's pages files read cold, right after the restore.
    cold_read: Option<Duration>,
    note: String,
}

fn kill_tree(pid: i32) {
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
}

/// Start memhog (MIB, THREADS) as pid 1 of a new pid namespace in `work`;
/// the launcher and the workload's pid once it is ready.
fn start_memhog(memhog: &Path, work: &Path, mib: usize, threads: usize) -> Result<(std::process::Child, i32), &'static str> {
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "setsid"])
        .arg(memhog)
        .arg(mib.to_string())
        .arg(threads.to_string())
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|_| "cannot start memhog")?;
    let why = if !wait_for(&work.join("ready"), Duration::from_secs(120)) {
        "workload never got ready"
    } else if let Some(pid) = ns_init_pid(child.id()) {
        return Ok((child, pid));
    } else {
        "no namespace init"
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(why)
}

fn one(o: &Opts, memhog: &Path, mib: usize, threads: usize) -> Row {
    let mut row = Row {
        mib,
        threads,
        dump: None,
        restore: None,
        restore_mem: None,
        dump_read: None,
        cold_read: None,
        note: String::new(),
    };
    let work = o.dir.join(format!("w-{mib}-{threads}"));
    let imgs = o.dir.join(format!("img-{mib}-{threads}"));
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(&imgs);
    fs::create_dir_all(&work).expect("work dir");
    fs::create_dir_all(&imgs).expect("image dir");
    let (mut child, pid) = match start_memhog(memhog, &work, mib, threads) {
        Ok(v) => v,
        Err(why) => {
            row.note = why.into();
            return row;
        }
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let st = Command::new(&o.criu)
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&imgs)
        .args(["-o", "dump.log"])
        .status();
    let dump_time = t.elapsed();
    let _ = child.wait();
    match st {
        Ok(s) if s.success() => row.dump = Some(dump_time),
        Ok(s) => {
            row.note = format!("dump failed ({s}), see {}", imgs.join("dump.log").display());
            kill_tree(pid);
            return row;
        }
        Err(e) => {
            row.note = format!("cannot run {}: {e}", o.criu.display());
            kill_tree(pid);
            return row;
        }
    }
    let (before, _) = ok_ticks(&work.join("progress.log"));
    drop_caches();
    let pidfile = o.dir.join(format!("restored-{mib}-{threads}.pid"));
    let _ = fs::remove_file(&pidfile);
    let t = Instant::now();
    let st = Command::new(&o.criu)
        .args(["restore", "-d", "-D"])
        .arg(&imgs)
        .args(["-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .status();
    let restore_time = t.elapsed();
    match st {
        Ok(s) if s.success() => row.restore = Some(restore_time),
        Ok(s) => {
            row.note = format!(
                "restore failed ({s}), see {}",
                imgs.join("restore.log").display()
            );
            return row;
        }
        Err(e) => {
            row.note = format!("cannot run criu: {e}");
            return row;
        }
    }
    // The restored program must go on ticking.
    let t = Instant::now();
    let mut verdict = "restored program did not tick".to_string();
    while t.elapsed() < Duration::from_secs(10) {
        let (n, fail) = ok_ticks(&work.join("progress.log"));
        if fail {
            verdict = "restored program wrote FAIL".into();
            break;
        }
        if n > before + 2 {
            verdict = String::new();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    row.note = verdict;
    if let Some(p) = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        kill_tree(p);
    }
    // the restore's floor on this disk, now: the same pages files, cold
    std::thread::sleep(Duration::from_millis(300));
    row.cold_read = cold_read_baseline(&imgs);
    if o.compare_fill && row.note.is_empty() {
        // same images, filled through /proc/PID/mem instead of the target's preadv
        std::thread::sleep(Duration::from_millis(300));
        drop_caches();
        let _ = fs::remove_file(&pidfile);
        let t = Instant::now();
        let st = Command::new(&o.criu)
            .env("CRIU_RS_FILL", "mem")
            .args(["restore", "-d", "-D"])
            .arg(&imgs)
            .args(["-o", "restore-mem.log", "--pidfile"])
            .arg(&pidfile)
            .status();
        if st.is_ok_and(|s| s.success()) {
            row.restore_mem = Some(t.elapsed());
        }
        if let Some(p) = fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            kill_tree(p);
        }
    }
    let _ = fs::remove_dir_all(&imgs);
    if o.compare_dump {
        row.dump_read = dump_only(o, memhog, mib, threads, &[("CRIU_RS_DUMP_READ", "vm")]);
    }
    row
}

/// Start a fresh workload and time one dump of it with `env`; no restore.
fn dump_only(o: &Opts, memhog: &Path, mib: usize, threads: usize, env: &[(&str, &str)]) -> Option<Duration> {
    let work = o.dir.join(format!("w2-{mib}-{threads}"));
    let imgs = o.dir.join(format!("img2-{mib}-{threads}"));
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(&imgs);
    fs::create_dir_all(&work).ok()?;
    fs::create_dir_all(&imgs).ok()?;
    let (mut child, pid) = start_memhog(memhog, &work, mib, threads).ok()?;
    std::thread::sleep(Duration::from_millis(200));
    let mut cmd = Command::new(&o.criu);
    cmd.args(["dump", "-t", &pid.to_string(), "-D"]).arg(&imgs).args(["-o", "dump.log"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let ok = cmd.status().is_ok_and(|s| s.success());
    let d = t.elapsed();
    let _ = child.wait();
    if !ok {
        kill_tree(pid);
    }
    let _ = fs::remove_dir_all(&imgs);
    let _ = fs::remove_dir_all(&work);
    ok.then_some(d)
}

fn main() {
    let o = opts();
    fs::create_dir_all(&o.dir).expect("bench dir");
    let memhog = build_memhog(&o.dir);
    println!("# cr-bench: criu = {}", o.criu.display());
    println!();
    println!("| MiB | threads | memcpy GB/s | disk write GB/s | cold read GB/s | dump s | dump GB/s | dump/disk write | dump s, two-copy read | restore s | restore GB/s | restore/cold read | restore s, /proc/PID/mem fill | upstream/ours, dump (1 s/GiB) | upstream/ours, restore (0.5 s/GiB) | note |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &mib in &o.sizes {
        let bytes = mib << 20;
        for &threads in &o.threads {
            for _ in 0..o.runs {
                // the limits, measured beside each row (this VM's rates move by 2-4x within minutes)
                let mc = memcpy_baseline(bytes);
                let wr = direct_write_baseline(&o.dir, bytes);
                let r = one(&o, &memhog, mib, threads);
                let gib = mib as f64 / 1024.0;
                let f = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.3}", d.as_secs_f64()));
                let rate = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}", gbps(bytes, d)));
                // limit time over our time: 1.00 is as fast as the limit allows
                let vs = |limit: Option<Duration>, ours: Option<Duration>| match (limit, ours) {
                    (Some(l), Some(d)) => format!("{:.2}", l.as_secs_f64() / d.as_secs_f64()),
                    _ => "-".into(),
                };
                let up_dump = r.dump.map_or("-".into(), |d| format!("{:.2}x", gib * 1.0 / d.as_secs_f64()));
                let up_rest = r.restore.map_or("-".into(), |d| format!("{:.2}x", gib * 0.5 / d.as_secs_f64()));
                println!(
                    "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.mib,
                    r.threads,
                    gbps(bytes, mc),
                    rate(wr),
                    rate(r.cold_read),
                    f(r.dump),
                    rate(r.dump),
                    vs(wr, r.dump),
                    f(r.dump_read),
                    f(r.restore),
                    rate(r.restore),
                    vs(r.cold_read, r.restore),
                    f(r.restore_mem),
                    up_dump,
                    up_rest,
                    if r.note.is_empty() { "ok" } else { &r.note }
                );
            }
        }
    }
}
