//! Process and thread state through dump + restore, with a program that
//! sets each piece of state and checks it every tick (tests/progs/pstate.c,
//! built here with gcc): `creds` mode (uids/gids/groups with kept caps,
//! eff/prm/inh/ambient/bounding sets, securebits, no_new_privs, a seccomp
//! errno filter and a kill filter, umask, personality, lowered rlimits,
//! pdeath signal, child subreaper, SCHED_BATCH + nice) and `timers` mode
//! (ITIMER_REAL/VIRTUAL/PROF, POSIX timers incl. SIGEV_THREAD_ID, per-thread
//! sigaltstack, glibc's rseq in every thread, a thread spinning in an rseq
//! critical section). The program writes `tick N ok` / `FAIL ...` to
//! progress.log. Needs root, gcc, unshare, setsid; otherwise skips with the reason, or
//! fails under CI=true.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{last_tick, only_stdio, require, wait_until, why_not_here, CRIU};


fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}



fn find_pid(bin: &Path) -> i32 {
    let mut found = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) && !st.contains(") Z") {
            found = found.max(pid);
        }
    }
    found
}

fn criu(args: &[&str], dir: &Path, logname: &str) {
    let st = Command::new(CRIU).args(args).arg("-D").arg(dir).args(["-v4", "-o", logname]).status().expect("run criu");
    assert!(st.success(), "criu {args:?} failed:\n{}", std::fs::read_to_string(dir.join(logname)).unwrap_or_default());
}

struct Run {
    tmp: PathBuf,
    work: PathBuf,
    bin: PathBuf,
    pid: i32,
}

impl Drop for Run {
    fn drop(&mut self) {
        let p = find_pid(&self.bin);
        if p > 0 {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Build, start in `mode`, dump, restore; returns the run and the image dir.
fn dump_restore(mode: &str) -> Option<(Run, PathBuf)> {
    require!(why_not_here());
    let tmp = std::env::temp_dir().join(format!("criu-rs-pstate-{mode}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    // the program drops to uid 2000: it must still create files here
    Command::new("chmod").args(["777"]).arg(&work).status().unwrap();
    Command::new("chmod").args(["755"]).arg(&tmp).status().unwrap();
    let bin = tmp.join("pstate");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/pstate.c");
    let st = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&bin).arg(&src).args(["-lpthread", "-lrt"]).status().expect("gcc");
    assert!(st.success(), "building pstate");
    let mut launcher = only_stdio(&mut Command::new("setsid"))
        .args(["unshare", "--pid", "--fork"])
        .arg(&bin)
        .arg(mode)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pstate");
    // reap the launcher whenever it exits
    std::thread::spawn(move || launcher.wait());
    let mut run = Run { tmp: tmp.clone(), work: work.clone(), bin: bin.clone(), pid: 0 };
    let log = work.join("progress.log");
    wait_until("ready", Duration::from_secs(10), || work.join("ready").exists() || log_text(&log).contains("FAIL"));
    wait_until("two ticks", Duration::from_secs(10), || last_tick(&log) >= 2);
    run.pid = find_pid(&bin);
    assert!(run.pid > 0, "pstate not running");
    let dir = tmp.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    criu(&["dump", "-t", &run.pid.to_string()], &dir, "dump.log");
    wait_until("the dumped process to go", Duration::from_secs(5), || find_pid(&bin) == 0);
    let t = last_tick(&log);
    let st = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&dir).current_dir(&work).status().unwrap();
    assert!(st.success(), "restore failed:\n{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", Duration::from_secs(10), || last_tick(&log) > t + 5);
    run.pid = find_pid(&bin);
    Some((run, dir))
}

/// `rs_cpu_affinity` of every thread of the image set's core-*.img.
fn affinities(dir: &Path) -> Vec<Vec<u64>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("core-") {
            let core: images_proto::pb::CoreEntry = images_proto::image::read_one(dir, &name, &images_proto::magic::CORE).unwrap();
            v.push(core.thread_core.map(|t| t.rs_cpu_affinity).unwrap_or_default());
        }
    }
    v
}

#[test]
fn creds_seccomp_and_prctl_state() {
    let Some((run, dir)) = dump_restore("creds") else { return };
    // pinned to the last CPU (the program's setup, with two or more): that
    // mask, not the one the dump pins a thread to for its injected calls
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        let want = vec![1u64 << ((cpus - 1) % 64)];
        assert_eq!(affinities(&dir), vec![want], "the pinned thread's affinity in its image");
    }
    let log = run.work.join("progress.log");
    // the kill filter is in force after restore: the program dies on its syscall
    std::fs::write(run.work.join("trigger-kill"), b"").unwrap();
    wait_until("the seccomp kill filter to kill the program", Duration::from_secs(5), || find_pid(&run.bin) == 0);
    let s = log_text(&log);
    assert!(s.contains("calling the killed syscall") && !s.contains("FAIL"), "{s}");
    let rlog = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert!(!rlog.contains("Error"), "{rlog}");
}

#[test]
fn timers_altstack_rseq_state() {
    let Some((run, dir)) = dump_restore("timers") else { return };
    // no thread of it is pinned: none records an affinity (the dump's own
    // pin of the main thread for its injected calls is not the program's)
    let a = affinities(&dir);
    assert!(a.len() >= 3 && a.iter().all(Vec::is_empty), "affinities in the image of unpinned threads: {a:?}");
    let log = run.work.join("progress.log");
    last_tick(&log);
    // no thread was dumped inside the rseq critical section: the spinner
    // sits at the abort handler, as the kernel would have moved it
    let cs = std::fs::read_to_string(run.work.join("rseq-cs")).unwrap();
    let v: Vec<u64> = cs.split_whitespace().map(|x| u64::from_str_radix(x, 16).unwrap()).collect();
    let (start, post, abort) = (v[0], v[1], v[2]);
    let mut at_abort = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("core-") {
            continue;
        }
        let core: images_proto::pb::CoreEntry =
            images_proto::image::read_one(&dir, &name, &images_proto::magic::CORE).unwrap();
        let ip = core.thread_info.unwrap().gpregs.ip;
        assert!(!(start..post).contains(&ip), "{name}: dumped inside the rseq critical section at {ip:#x}");
        at_abort += usize::from(ip == abort);
    }
    let dlog = std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
    assert!(at_abort == 1 || !dlog.contains("rseq critical section"), "a thread was moved to the abort handler, but no core shows it");
    eprintln!("rseq spinner dumped at the abort handler: {}", at_abort == 1);
    // the SIGEV_THREAD_ID timer names a thread of the task's own pid namespace
    let core: images_proto::pb::CoreEntry = images_proto::image::read_one(&dir, "core-1.img", &images_proto::magic::CORE).unwrap();
    let posix = core.tc.unwrap().timers.unwrap().posix;
    assert_eq!(posix.len(), 2);
    assert_eq!(posix.iter().filter(|p| p.notify_thread_id.is_none()).count(), 1, "{posix:?}");
    let t = posix.iter().find_map(|p| p.notify_thread_id).expect("thread-directed timer has notify_thread_id");
    assert!(t > 1 && t < 10, "notify_thread_id {t} is not a tid of the task's pid namespace");
}
