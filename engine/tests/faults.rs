//! Fault safety with real processes: the engine SIGKILLs itself at named
//! points (`CRIU_RS_FAULT_AT`, see engine/src/fault.rs) and we check what
//! it left behind.
//!
//! Dump: the source keeps ticking `ok` (it checks its own memory, stack,
//! TLS, locks and signal state), its threads and their signal masks are
//! as before, /proc/PID/maps is unchanged except for at most one leftover
//! scratch mapping after a death mid-injection, and the images directory
//! holds no `inventory.img` (or still the complete earlier set). After all
//! that the source is still dumped and restored fine.
//!
//! Restore: nothing of a half-restored tree is left running.
//!
//! Needs root, gcc, unshare; otherwise SKIP.

mod common;

use common::*;
use std::path::Path;

/// Size of the scratch mapping a dead engine may leave (code page + data).
const SCRATCH_MAPPING: u64 = 17 * 4096;

fn range_len(line: &str) -> u64 {
    let r = line.split_whitespace().next().unwrap_or("");
    let (a, b) = r.split_once('-').unwrap_or(("0", "0"));
    u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0)
}

fn is_scratch_like(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.len() == 5 && f[1] == "rwxp" && f[2] == "00000000" && f[4] == "0"
}

/// Maps after vs before: identical, or (when `may_leave`) grown by one
/// anonymous rwx mapping of the scratch size (which the kernel may have
/// merged with an earlier leftover). Returns the number left (0 or 1).
fn check_maps(before: &[String], after: &[String], point: &str, may_leave: bool) -> usize {
    let added: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    let removed: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let other: Vec<&&String> = added.iter().chain(removed.iter()).filter(|l| !is_scratch_like(l)).collect();
    assert!(other.is_empty(), "{point}: mappings changed: {other:?} (added {added:?}, removed {removed:?})");
    let grown = added.iter().map(|l| range_len(l)).sum::<u64>() - removed.iter().map(|l| range_len(l)).sum::<u64>();
    match grown {
        0 => 0,
        SCRATCH_MAPPING if may_leave => 1,
        _ => panic!("{point}: unexpected new mappings: added {added:?}, removed {removed:?}"),
    }
}

fn no_inventory(dir: &Path, point: &str) {
    let inv: Vec<_> = files_under(dir).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "inventory.img")).collect();
    assert!(inv.is_empty(), "{point}: a killed dump left {inv:?}");
}

fn dump_faults(name: &str, points: &[&str]) {
    if let Some(r) = skip_reason() {
        eprintln!("SKIP dump faults ({name}): {r}");
        return;
    }
    let tmp = test_dir(&format!("faults-dump-{name}"));
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start(name, &tmp, Ns::OwnPidNs);
    // a complete earlier image set: a killed dump must leave it alone
    let kept = tmp.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    let p = fx.pid.to_string();
    criu_ok(&criu, &["dump", "-t", &p, "--leave-running"], &kept, "dump.log");
    std::fs::remove_file(kept.join("dump.log")).unwrap();
    let kept_files: Vec<(std::path::PathBuf, Vec<u8>)> = files_under(&kept).into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect();
    assert!(kept_files.iter().any(|(f, _)| f.ends_with("inventory.img")));
    fx.ticks_on(2, "after the --leave-running dump");
    let mut leftovers = 0;
    for (i, point) in points.iter().enumerate() {
        let dir = tmp.join(format!("img{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let maps0 = maps(fx.pid);
        let masks0 = sigmasks(fx.pid);
        // without --leave-running: only a finished dump may kill the source
        let (st, log) = criu_env(&criu, &["dump", "-t", &p], &dir, "dump.log", &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        fx.ticks_on(3, &format!("after the engine died at {point}"));
        assert!(alive(fx.pid), "{point}: source is gone");
        assert_eq!(sigmasks(fx.pid), masks0, "{point}: threads or signal masks changed");
        let mid_inject = point.starts_with("mid-inject");
        leftovers += check_maps(&maps0, &maps(fx.pid), point, mid_inject);
        no_inventory(&dir, point);
        // the same point against the directory with the complete set
        let maps1 = maps(fx.pid);
        let (st, log) = criu_env(&criu, &["dump", "-t", &p], &kept, "dump.log", &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        std::fs::remove_file(kept.join("dump.log")).unwrap();
        for (f, data) in &kept_files {
            assert!(std::fs::read(f).ok().as_ref() == Some(data), "{point}: earlier complete image {} was touched", f.display());
        }
        leftovers += check_maps(&maps1, &maps(fx.pid), point, mid_inject);
        fx.ticks_on(2, &format!("after the second death at {point}"));
        eprintln!("{name}: engine killed at {point}: source runs on unchanged");
    }
    eprintln!("{name}: {leftovers} scratch mapping(s) left behind by deaths mid-injection");
    // still dumpable and restorable after all that
    let last = tmp.join("last");
    std::fs::create_dir_all(&last).unwrap();
    criu_ok(&criu, &["dump", "-t", &p], &last, "dump.log");
    wait_until("source gone after the dump", std::time::Duration::from_secs(5), || !alive(fx.pid));
    let t = fx.tick();
    let mut cmd = std::process::Command::new(&criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&last).current_dir(&fx.work);
    assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(last.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", std::time::Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

const DUMP_POINTS: &[&str] =
    &["after-freeze", "mid-inject", "mid-inject@40", "after-parasite", "mid-memory", "before-inventory"];

#[test]
fn dump_faults_counter() {
    dump_faults("counter", DUMP_POINTS);
}

#[test]
fn dump_faults_threads() {
    let mut p = DUMP_POINTS.to_vec();
    p.insert(3, "mid-inject-thread");
    p.insert(4, "mid-inject-thread@3");
    dump_faults("threads", &p);
}

#[test]
fn dump_faults_signals() {
    dump_faults("signals", &["mid-inject", "mid-inject@70", "after-parasite"]);
}

/// Kill the engine at each restore point; nothing may be left running.
fn restore_faults(name: &str, ns: Ns, points: &[&str]) {
    if let Some(r) = skip_reason() {
        eprintln!("SKIP restore faults ({name}): {r}");
        return;
    }
    let tmp = test_dir(&format!("faults-restore-{name}-{ns:?}"));
    let criu = private_criu(&tmp);
    let mut fx = Fixture::start(name, &tmp, ns);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let dumped = fx.pid;
    let p = fx.pid.to_string();
    criu_ok(&criu, &["dump", "-t", &p], &img, "dump.log");
    // reaped, not just dead: its pid must be free for set_tid
    wait_until("source reaped after the dump", std::time::Duration::from_secs(5), || !Path::new(&format!("/proc/{dumped}")).exists());
    for point in points {
        let t = fx.tick();
        let (st, log) = criu_env(&criu, &["restore", "-d"], &img, "restore.log", &[("CRIU_RS_FAULT_AT", point)]);
        assert_killed(st, point, &log);
        wait_until(&format!("nothing left after the engine died at {point}"), std::time::Duration::from_secs(5), || {
            live_with_exe(&fx.bin).is_empty() && live_with_exe(&criu).is_empty()
        });
        if ns == Ns::Host {
            // dead at once; the pid itself is free once init has reaped it
            assert!(!alive(dumped), "{point}: pid {dumped} is still alive");
            wait_until(&format!("pid {dumped} reaped"), std::time::Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{dumped}")).exists()
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(fx.tick(), t, "{point}: a half-restored process ran");
        eprintln!("{name} ({ns:?}): engine killed at {point}: nothing left");
    }
    // and the images still restore
    let t = fx.tick();
    let mut cmd = std::process::Command::new(&criu);
    cmd.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&fx.work);
    assert!(cmd.status().unwrap().success(), "restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    wait_until("ticks after restore", std::time::Duration::from_secs(15), || fx.tick() > t + 3);
    fx.refind();
    if ns == Ns::Host {
        assert_eq!(fx.pid, dumped, "restored with another pid");
    }
    drop(fx);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn restore_faults_counter_own_pidns() {
    restore_faults("counter", Ns::OwnPidNs, &["after-clone", "mid-mm", "before-detach"]);
}

#[test]
fn restore_faults_threads_host_pidns() {
    restore_faults("threads", Ns::Host, &["after-clone", "mid-mm", "mid-threads", "mid-threads@3", "before-detach"]);
}
