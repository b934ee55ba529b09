//! Injection and release with real processes (tests/progs/busy.c and
//! stackpat.c, built here with gcc):
//! - a program that only computes (`for (;;) x++`, no syscall in flight,
//!   the first executable mapping without a `syscall` instruction), built
//!   static, static-pie, dynamic PIE and dynamic non-PIE, with 1 and 16
//!   spinning threads, dumps at once with and without `--leave-running`
//!   and runs on (every thread's utime grows, none is stopped); a variant
//!   that also logs progress ticks on;
//! - a stopped task (SIGSTOP'ed) stays stopped through `--leave-running`,
//!   is dumped as TASK_STOPPED with its stop signal, restored stopped, and
//!   runs on after SIGCONT;
//! - a SIGSTOP sent while the engine injects (`<point>:sigstop`) does not
//!   abort the dump: the source ends stopped, as `kill -STOP` asked;
//! - nothing is written on a thread's own stack: a thread whose stack is
//!   mapped memory with a pattern right below its sp keeps it intact, in
//!   the source and in the restored process;
//! - a restore that fails before its last detach lets no thread run.
//!
//! Needs root, gcc, setsid; otherwise SKIP.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn progs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs")
}

/// gcc -O2 `flags` -o `out` tests/progs/`src` -lpthread
fn build_prog(src: &str, flags: &[&str], out: &Path) -> PathBuf {
    let st = Command::new("gcc").arg("-O2").args(flags).arg("-o").arg(out).arg(progs().join(src)).arg("-lpthread").status().expect("gcc");
    assert!(st.success(), "building {} {flags:?}", out.display());
    out.to_path_buf()
}

/// A program started in `work` (its own session, our child: reaped by a
/// thread when it dies); killed on drop, whatever its pid is by then.
struct Prog {
    bin: PathBuf,
    work: PathBuf,
    pid: i32,
}

impl Prog {
    fn start(bin: &Path, args: &[&str], work: &Path) -> Prog {
        std::fs::create_dir_all(work).unwrap();
        let _ = std::fs::remove_file(work.join("ready"));
        let _ = std::fs::remove_file(work.join("progress.log"));
        let mut child = only_stdio(&mut Command::new("setsid"))
            .arg(bin)
            .args(args)
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start");
        // setsid forks when it is a process group leader; reap whatever exits
        std::thread::spawn(move || child.wait());
        wait_until("ready", Duration::from_secs(20), || work.join("ready").exists());
        let pids = live_with_exe(bin);
        assert_eq!(pids.len(), 1, "one {} expected, found {pids:?}", bin.display());
        Prog { bin: bin.to_path_buf(), work: work.to_path_buf(), pid: pids[0] }
    }

    fn log(&self) -> PathBuf {
        self.work.join("progress.log")
    }

    fn refind(&mut self) {
        let pids = live_with_exe(&self.bin);
        assert_eq!(pids.len(), 1, "one {} expected, found {pids:?}", self.bin.display());
        self.pid = pids[0];
    }

    /// Wait until the pid is free again (the dumped source reaped).
    fn wait_gone(&self) {
        wait_until("the dumped source to be reaped", Duration::from_secs(10), || !Path::new(&format!("/proc/{}", self.pid)).exists());
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        for p in live_with_exe(&self.bin) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

/// Run `criu args -D dir -v4 -o log` with `env`, killing it (and failing)
/// if it has not finished within `limit`: a dump must never hang.
fn criu_limited(criu: &Path, args: &[&str], dir: &Path, log: &str, env: &[(&str, &str)], limit: Duration) -> (bool, String) {
    let mut cmd = Command::new(criu);
    cmd.args(args).arg("-D").arg(dir).args(["-v4", "-o", log]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run criu");
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
            panic!("criu {args:?} still running after {limit:?}: killed\n{}", tail(&log));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (st.success(), std::fs::read_to_string(dir.join(log)).unwrap_or_default())
}

fn tail(log: &str) -> String {
    let l: Vec<&str> = log.lines().collect();
    l[l.len().saturating_sub(30)..].join("\n")
}

fn criu_must(criu: &Path, args: &[&str], dir: &Path, log: &str, env: &[(&str, &str)]) -> String {
    let (ok, text) = criu_limited(criu, args, dir, log, env, Duration::from_secs(60));
    assert!(ok, "criu {args:?} failed:\n{}", tail(&text));
    text
}

/// (state letter, utime) of every thread of `pid`, by tid.
fn thread_stats(pid: i32) -> Vec<(i32, char, u64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else { continue };
        let st = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some((_, rest)) = st.rsplit_once(") ") else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // fields from 3 on: state is 3, utime is 14
        v.push((tid, f[0].chars().next().unwrap_or('?'), f[11].parse().unwrap_or(0)));
    }
    v.sort();
    v
}

/// Every one of `threads` threads of `pid` runs: none is stopped or
/// sleeping, and each one's utime grows.
fn assert_spinning(pid: i32, threads: usize, what: &str) {
    assert_spinning_but(pid, threads, 0, what)
}

/// [`assert_spinning`] of all threads but `sleepers` that sleep.
fn assert_spinning_but(pid: i32, threads: usize, sleepers: usize, what: &str) {
    let all = thread_stats(pid);
    assert_eq!(all.len(), threads + sleepers, "{what}: threads of {pid}: {all:?}");
    let t0: Vec<_> = all.iter().filter(|t| t.1 != 'S').copied().collect();
    assert_eq!(t0.len(), threads, "{what}: threads of {pid}: {all:?}");
    for (tid, s, _) in &t0 {
        assert_eq!(*s, 'R', "{what}: thread {tid} of {pid} is not running: {t0:?}");
    }
    let start = Instant::now();
    loop {
        let t1 = thread_stats(pid);
        let grown = t0.iter().all(|a| t1.iter().any(|b| a.0 == b.0 && b.2 > a.2));
        if grown {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: utime of {pid} does not grow in every thread: {t0:?} -> {t1:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every thread of `pid` is stopped and stays so (utime unchanged).
fn assert_stopped(pid: i32, what: &str) {
    // a thread just let go shows R until it is scheduled and enters the stop
    let start = Instant::now();
    while !thread_stats(pid).iter().all(|t| t.1 == 'T') && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = thread_stats(pid);
    assert!(!t0.is_empty(), "{what}: {pid} is gone");
    for (tid, s, _) in &t0 {
        assert_eq!(*s, 'T', "{what}: thread {tid} of {pid} is not stopped: {t0:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let t1 = thread_stats(pid);
    assert_eq!(t0, t1, "{what}: {pid} ran while stopped");
}

fn restore(criu: &Path, dir: &Path, work: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(dir).current_dir(work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let st = cmd.status().expect("run criu restore");
    (st.success(), std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default())
}

fn restore_ok(criu: &Path, dir: &Path, work: &Path) {
    let (ok, log) = restore(criu, dir, work, &[]);
    assert!(ok, "restore from {} failed:\n{}", dir.display(), tail(&log));
}

fn no_fail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!s.contains("FAIL"), "the program reported a failure:\n{s}");
    s
}

fn ticks(log: &Path) -> u64 {
    last_tick(log)
}

fn ticks_on(log: &Path, n: u64, what: &str) {
    let t = ticks(log);
    wait_until(&format!("{n} ticks {what}"), Duration::from_secs(20), || ticks(log) >= t + n);
    no_fail(log);
}

fn setup(name: &str) -> Option<(PathBuf, PathBuf)> {
    if let Some(r) = skip_reason() {
        eprintln!("SKIP injection {name}: {r}");
        return None;
    }
    let tmp = test_dir(&format!("inject-{name}"));
    let criu = private_criu(&tmp);
    Some((tmp, criu))
}

const LINKAGES: [(&str, &[&str]); 4] = [("static", &["-static"]), ("static-pie", &["-static-pie"]), ("pie", &["-pie", "-fPIE"]), ("nopie", &["-no-pie"])];

#[test]
fn busy_loops_dump_and_restore_and_keep_running() {
    let Some((tmp, criu)) = setup("busy") else { return };
    for (link, flags) in LINKAGES {
        let bin = build_prog("busy.c", flags, &tmp.join(format!("busy-{link}")));
        for threads in [1usize, 16] {
            let what = format!("busy {link} {threads} thread(s)");
            let work = tmp.join(format!("work-{link}-{threads}"));
            let mut p = Prog::start(&bin, &[&threads.to_string()], &work);
            let pid = p.pid.to_string();
            let lr = tmp.join(format!("lr-{link}-{threads}"));
            std::fs::create_dir_all(&lr).unwrap();
            criu_must(&criu, &["dump", "-t", &pid, "--leave-running"], &lr, "dump.log", &[]);
            assert_spinning(p.pid, threads, &format!("{what}, source after --leave-running"));
            let img = tmp.join(format!("img-{link}-{threads}"));
            std::fs::create_dir_all(&img).unwrap();
            criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[]);
            p.wait_gone();
            restore_ok(&criu, &img, &work);
            p.refind();
            assert_eq!(p.pid.to_string(), pid, "{what}: restored with another pid");
            assert_spinning(p.pid, threads, &format!("{what}, restored"));
            // the restored process dumps again
            let again = tmp.join(format!("again-{link}-{threads}"));
            std::fs::create_dir_all(&again).unwrap();
            criu_must(&criu, &["dump", "-t", &pid, "--leave-running"], &again, "dump.log", &[]);
            assert_spinning(p.pid, threads, &format!("{what}, restored, after a second --leave-running dump"));
            eprintln!("{what}: dumped (plain and --leave-running), restored, spinning");
        }
    }
}

#[test]
fn busy_loop_with_progress_ticks_on() {
    let Some((tmp, criu)) = setup("busy-progress") else { return };
    let bin = build_prog("busy.c", &[], &tmp.join("busy"));
    let mut p = Prog::start(&bin, &["16", "progress"], &tmp.join("work"));
    ticks_on(&p.log(), 3, "before the dump");
    let pid = p.pid.to_string();
    let lr = tmp.join("lr");
    std::fs::create_dir_all(&lr).unwrap();
    criu_must(&criu, &["dump", "-t", &pid, "--leave-running"], &lr, "dump.log", &[]);
    ticks_on(&p.log(), 3, "after --leave-running");
    assert_spinning_but(p.pid, 16, 1, "busy 16 progress, after --leave-running");
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[]);
    p.wait_gone();
    restore_ok(&criu, &img, &p.work);
    p.refind();
    ticks_on(&p.log(), 12, "after restore");
    assert_spinning_but(p.pid, 16, 1, "busy 16 progress, restored");
}

/// (task_state, stop_signo) of core-PID.img.
fn core_state(dir: &Path, pid: i32) -> (u32, Option<u32>) {
    let core: images_proto::pb::CoreEntry = images_proto::image::read_one(dir, &format!("core-{pid}.img"), &images_proto::magic::CORE).unwrap();
    let tc = core.tc.unwrap();
    (tc.task_state, tc.stop_signo)
}

#[test]
fn stopped_task_stays_stopped() {
    let Some((tmp, criu)) = setup("stopped") else { return };
    let bin = build_prog("busy.c", &[], &tmp.join("busy"));
    let mut p = Prog::start(&bin, &["4"], &tmp.join("work"));
    let pid = p.pid.to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    wait_until("the group-stop", Duration::from_secs(5), || thread_stats(p.pid).iter().all(|t| t.1 == 'T'));
    let lr = tmp.join("lr");
    std::fs::create_dir_all(&lr).unwrap();
    criu_must(&criu, &["dump", "-t", &pid, "--leave-running"], &lr, "dump.log", &[]);
    assert_stopped(p.pid, "source after --leave-running");
    assert_eq!(core_state(&lr, p.pid), (3, Some(libc::SIGSTOP as u32)), "TASK_STOPPED and its signal, as upstream writes them");
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert_spinning(p.pid, 4, "source continued after --leave-running");
    // and through a restore (SIGSTOP: a SIGTSTP would be dropped by the
    // kernel, the program's process group being orphaned)
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    wait_until("the group-stop", Duration::from_secs(5), || thread_stats(p.pid).iter().all(|t| t.1 == 'T'));
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[]);
    assert_eq!(core_state(&img, p.pid), (3, Some(libc::SIGSTOP as u32)));
    p.wait_gone();
    restore_ok(&criu, &img, &p.work);
    p.refind();
    assert_stopped(p.pid, "restored");
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert_spinning(p.pid, 4, "restored, after SIGCONT");
}

#[test]
fn sigstop_during_injection_does_not_abort_the_dump() {
    let Some((tmp, criu)) = setup("sigstop") else { return };
    let bin = build_prog("busy.c", &[], &tmp.join("busy"));
    let mut p = Prog::start(&bin, &["4", "progress"], &tmp.join("work"));
    let pid = p.pid.to_string();
    ticks_on(&p.log(), 2, "before the dumps");
    // the main thread, another thread, and the page pump
    for (i, point) in ["mid-inject@3", "mid-inject-thread@2", "mid-pump"].into_iter().enumerate() {
        let dir = tmp.join(format!("lr{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let at = format!("{point}:sigstop");
        let log = criu_must(&criu, &["dump", "-t", &pid, "--leave-running"], &dir, "dump.log", &[("CRIU_RS_FAULT_AT", &at)]);
        assert!(log.contains("sending SIGSTOP"), "{point}: no SIGSTOP was sent:\n{}", tail(&log));
        assert_stopped(p.pid, &format!("source after a SIGSTOP at {point}"));
        Command::new("kill").args(["-CONT", &pid]).status().unwrap();
        ticks_on(&p.log(), 3, &format!("after SIGCONT (SIGSTOP at {point})"));
    }
    // without --leave-running: the image is of the running process (the
    // stop came after the freeze) and restores running
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[("CRIU_RS_FAULT_AT", "mid-inject@2:sigstop")]);
    p.wait_gone();
    restore_ok(&criu, &img, &p.work);
    p.refind();
    ticks_on(&p.log(), 5, "after restore");
}

#[test]
fn nothing_is_written_on_a_threads_stack() {
    let Some((tmp, criu)) = setup("stackpat") else { return };
    let bin = build_prog("stackpat.c", &[], &tmp.join("stackpat"));
    let mut p = Prog::start(&bin, &[], &tmp.join("work"));
    let pid = p.pid.to_string();
    ticks_on(&p.log(), 2, "before the dump");
    for i in 0..3 {
        let lr = tmp.join(format!("lr{i}"));
        std::fs::create_dir_all(&lr).unwrap();
        criu_must(&criu, &["dump", "-t", &pid, "--leave-running"], &lr, "dump.log", &[]);
        ticks_on(&p.log(), 3, "after --leave-running (pattern checked in the source)");
    }
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[]);
    p.wait_gone();
    restore_ok(&criu, &img, &p.work);
    p.refind();
    ticks_on(&p.log(), 5, "after restore (pattern checked in the restored process)");
}

#[test]
fn failed_release_lets_no_thread_run() {
    let Some((tmp, criu)) = setup("release") else { return };
    let bin = build_prog("busy.c", &[], &tmp.join("busy"));
    let p = Prog::start(&bin, &["4", "progress"], &tmp.join("work"));
    let pid = p.pid.to_string();
    ticks_on(&p.log(), 2, "before the dump");
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[]);
    p.wait_gone();
    let before = std::fs::read_to_string(p.log()).unwrap();
    // every thread but the main one detached, then a failure: the progress
    // thread (released by then) would tick at once if it ran
    let (ok, log) = restore(&criu, &img, &p.work, &[("CRIU_RS_FAULT_AT", "mid-detach:fail")]);
    assert!(!ok, "restore did not fail at mid-detach:\n{}", tail(&log));
    wait_until("the half-released process to go", Duration::from_secs(10), || live_with_exe(&bin).is_empty());
    std::thread::sleep(Duration::from_millis(200));
    let after = std::fs::read_to_string(p.log()).unwrap();
    assert_eq!(before, after, "a thread of the failed restore ran (progress.log grew)");
    // and the image restores fine afterwards
    restore_ok(&criu, &img, &p.work);
    let mut p = p;
    p.refind();
    ticks_on(&p.log(), 3, "after the real restore");
}

#[test]
fn release_sends_nothing_the_program_can_see() {
    let Some((tmp, criu)) = setup("release-unseen") else { return };
    let bin = build_prog("busy.c", &[], &tmp.join("busy"));
    // a SIGCONT handler, SIGCONT blocked (it would stay queued), neither
    for mode in ["cont-handler", "cont-blocked", "plain"] {
        let mut p = Prog::start(&bin, &["2", "progress", mode], &tmp.join(format!("work-{mode}")));
        let pid = p.pid.to_string();
        ticks_on(&p.log(), 2, &format!("{mode}: before the dump"));
        let img = tmp.join(format!("img-{mode}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[]);
        p.wait_gone();
        restore_ok(&criu, &img, &p.work);
        p.refind();
        // the program says FAIL on a handled or pending SIGCONT
        ticks_on(&p.log(), 5, &format!("{mode}: after restore"));
        let rlog = std::fs::read_to_string(img.join("restore.log")).unwrap();
        let one_by_one = rlog.contains("released thread by thread");
        assert_eq!(one_by_one, mode != "plain", "{mode}: release path:\n{}", tail(&rlog));
    }
}

#[test]
fn a_thread_that_cannot_stop_fails_the_freeze_in_time() {
    let Some((tmp, criu)) = setup("nostop") else { return };
    let bin = build_prog("vforkwait.c", &[], &tmp.join("vforkwait"));
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = only_stdio(&mut Command::new(&bin)).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start");
    let pid = child.id() as i32;
    wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let t = Instant::now();
    let (ok, log) = criu_limited(&criu, &["dump", "-t", &pid.to_string()], &img, "dump.log", &[], Duration::from_secs(40));
    let took = t.elapsed();
    assert!(!ok, "dump of a process stuck in vfork succeeded:\n{}", tail(&log));
    assert!(log.contains(&format!("thread {pid} did not stop within")), "the error does not name the thread:\n{}", tail(&log));
    assert!(took < Duration::from_secs(20), "the freeze gave up only after {took:?}");
    assert!(alive(pid), "the source is gone");
    let _ = child.kill();
    let _ = child.wait();
    // the vfork child sleeps on; it is ours to end
    for p in live_with_exe(&bin) {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
}

/// The injected queries of a process run as one batch for one stop when a
/// signal fits its end (one the process neither catches, blocks nor has
/// pending), and one by one when none does; either way no handler of the
/// program runs and its pending signals stay as they were, through
/// `--leave-running` and through a dump and restore.
#[test]
fn injected_queries_batch_with_a_signal_the_program_never_sees() {
    let Some((tmp, criu)) = setup("batchsig") else { return };
    let bin = build_prog("batchsig.c", &[], &tmp.join("batchsig"));
    for (mode, sig) in [("plain", Some(libc::SIGURG)), ("caught", Some(libc::SIGCHLD)), ("none", None)] {
        let mut p = Prog::start(&bin, &[mode], &tmp.join(format!("work-{mode}")));
        let pid = p.pid.to_string();
        ticks_on(&p.log(), 2, &format!("{mode}: before the dumps"));
        let lr = tmp.join(format!("lr-{mode}"));
        std::fs::create_dir_all(&lr).unwrap();
        let log = criu_must(&criu, &["dump", "-t", &pid, "--leave-running"], &lr, "dump.log", &[]);
        let batch = format!("thread {pid}: ");
        let batches: Vec<&str> = log.lines().filter(|l| l.contains(&batch) && l.contains("in one batch")).collect();
        match sig {
            Some(s) => {
                // the process's queries and the thread's (and the page
                // pump's cleanup)
                assert!(batches.len() >= 2, "{mode}: {batches:?}\n{}", tail(&log));
                assert!(batches.iter().all(|l| l.ends_with(&format!("(stopped by signal {s})"))), "{mode}: {batches:?}");
            }
            None => assert!(batches.is_empty(), "{mode}: no signal fits, yet {batches:?}"),
        }
        ticks_on(&p.log(), 3, &format!("{mode}: after the --leave-running dump"));
        let img = tmp.join(format!("img-{mode}"));
        std::fs::create_dir_all(&img).unwrap();
        criu_must(&criu, &["dump", "-t", &pid], &img, "dump.log", &[]);
        p.wait_gone();
        restore_ok(&criu, &img, &p.work);
        p.refind();
        ticks_on(&p.log(), 3, &format!("{mode}: after restore"));
    }
}
