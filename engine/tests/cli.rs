//! The `criu` command line: version, check, refused options and commands,
//! exit codes, log format and placement, restore without -d. Tests that
//! start processes need root (`require!` skips with the reason, or fails
//! under CI=true); the rest don't.

mod fdsupport;

use fdsupport::{last_tick, require, wait_until, why_not_here, why_not_root, Scene, CRIU};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn criu(args: &[&str]) -> Output {
    Command::new(CRIU).args(args).output().expect("run criu")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("criu-rs-clitest-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `(SS.uuuuuu) ` at the start of a line.
fn timestamped(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() >= 12
        && b[0] == b'('
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'.'
        && b[4..10].iter().all(u8::is_ascii_digit)
        && b[10] == b')'
        && b[11] == b' '
}

#[test]
fn version() {
    for flag in ["--version", "-V"] {
        let out = criu(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        let s = String::from_utf8(out.stdout).unwrap();
        assert_eq!(s, "Version: 4.2\n", "{flag}");
        // container engines need >= 3.15
        let v: Vec<u32> = s.trim().strip_prefix("Version: ").unwrap().split('.').map(|x| x.parse().unwrap()).collect();
        assert!(v[0] * 10000 + v[1] * 100 >= 31500);
    }
}

#[test]
fn refused_options_name_themselves() {
    let cases: &[(&[&str], &str)] = &[
        (&["dump", "-t", "1", "--tcp-established"], "--tcp-established is not supported yet"),
        (&["restore", "--ext-unix-sk"], "--ext-unix-sk is not supported yet"),
        (&["dump", "--ghost-limit=10M", "-t", "1"], "--ghost-limit is not supported yet"),
        (&["dump", "--page-server", "-t", "1"], "--page-server is not supported yet"),
        (&["restore", "--lazy-pages"], "--lazy-pages is not supported yet"),
        (&["dump", "-t", "1", "-s"], "-s/--leave-stopped is not supported yet"),
        (&["restore", "-x"], "-x/--ext-unix-sk is not supported yet"),
        (&["check", "--feature", "mem_dirty_track"], "--feature is not supported yet"),
        (&["pre-dump", "-t", "1"], "the pre-dump command is not supported yet"),
        (&["page-server"], "the page-server command is not supported yet"),
    ];
    for (args, msg) in cases {
        let out = criu(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: stderr {err:?} lacks {msg:?}");
    }
}

#[test]
fn bad_usage_exits_1() {
    let cases: &[&[&str]] = &[&[], &["frobnicate"], &["dump", "--no-such-option"], &["dump", "-t", "0", "-D", "/tmp"], &["dump", "-D", "/tmp"]];
    for args in cases {
        let out = criu(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // --no-X of upstream booleans asks for the default and is fine
    let out = criu(&["--no-tcp-established", "--version"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn log_format_and_placement() {
    let d = scratch("log");
    let imgs = d.join("imgs");
    let wd = d.join("wd");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&wd).unwrap();
    let imgs_s = imgs.to_str().unwrap();
    // -v4: every line timestamped; -o relative to the images dir by default
    let out = criu(&["restore", "-D", imgs_s, "-v4", "-o", "r.log"]);
    assert_eq!(out.status.code(), Some(1), "restore from an empty dir fails");
    let log = std::fs::read_to_string(imgs.join("r.log")).expect("log in the images dir");
    assert!(!log.is_empty());
    for l in log.lines() {
        assert!(timestamped(l), "line without timestamp: {l:?}");
    }
    assert!(log.lines().any(|l| l[12..].starts_with("Error (")), "{log}");
    assert!(log.contains("Restoring FAILED."), "{log}");
    assert!(log.lines().next().unwrap()[12..].starts_with("Version: 4.2"), "{log}");
    // -W moves the log; -v (bare) is level 3: still timestamps
    let out = criu(&["restore", "-D", imgs_s, "-W", wd.to_str().unwrap(), "-v", "--log-file", "w.log"]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(wd.join("w.log")).expect("log in the work dir");
    assert!(log.lines().all(timestamped), "{log}");
    // default level 2: no timestamps, errors only, on stderr without -o
    let out = criu(&["restore", "-D", imgs_s]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().next().is_some_and(|l| l.starts_with("Error (")), "{err}");
    assert!(!err.lines().any(timestamped), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn check_looks_good() {
    require!(why_not_root());
    let out = criu(&["check"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout {so} stderr {}", String::from_utf8_lossy(&out.stderr));
    assert!(so.starts_with("Looks good"), "{so}");
    let out = criu(&["check", "--all", "-v4"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ptrace + clone3 set_tid is supported"), "{err}");
}

#[test]
fn dump_of_missing_pid_fails() {
    let d = scratch("nopid");
    let out = criu(&["dump", "-t", "999999", "-D", d.to_str().unwrap(), "-o", "d.log", "-v4"]);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(d.join("d.log")).unwrap();
    assert!(log.contains("Dumping FAILED."), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Without -d, restore waits for the restored task, then exits 0 as
/// upstream does (the task's own status, 3 here, is not passed on).
#[test]
fn restore_without_detach_waits() {
    require!(why_not_here());
    let s = Scene::start("exiter", "wait");
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    let t = last_tick(&s.log());
    let pidfile = "restored.pid";
    let mut child = Command::new(CRIU)
        .args(["restore", "-D"])
        .arg(&dir)
        .args(["-v4", "-o", "restore.log", "--pidfile", pidfile])
        .current_dir(&s.work)
        .spawn()
        .unwrap();
    wait_until("ticks after restore", Duration::from_secs(10), || last_tick(&s.log()) > t + 3);
    assert!(child.try_wait().unwrap().is_none(), "restore must wait for the tree");
    // --pidfile is relative to the work dir (= images dir)
    let pid: i32 = std::fs::read_to_string(dir.join(pidfile)).unwrap().trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    std::fs::write(s.work.join("stop"), "").unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default());
}

/// As upstream: `--pidfile` is created with O_EXCL (mode 0600). An existing
/// file makes the restore fail naming it, with nothing left running and the
/// file untouched; without it the restore writes the pid.
#[test]
fn pidfile_is_never_overwritten() {
    require!(why_not_here());
    let mut s = Scene::start("exiter", "pidfile");
    let dir = s.images(0);
    s.criu_ok(&["dump", "-t", &s.pid.to_string()], &dir, "dump.log");
    let pf = s.tmp.join("taken.pid");
    std::fs::write(&pf, "keep me").unwrap();
    let t = last_tick(&s.log());
    let out = s.criu(&["restore", "-d", "--pidfile", pf.to_str().unwrap()], &dir, "restore.log");
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "restore over an existing pidfile must fail:\n{log}");
    assert!(log.contains("Can't open pidfile") && log.contains("taken.pid"), "the error must name the pidfile:\n{log}");
    assert_eq!(std::fs::read_to_string(&pf).unwrap(), "keep me");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(last_tick(&s.log()), t, "a failed restore must leave nothing running");
    assert!(fdsupport::pid_of(&s.bin).is_none(), "a failed restore left the program running");
    std::fs::remove_file(&pf).unwrap();
    s.restore(&dir, &["--pidfile", pf.to_str().unwrap()]);
    let pid: i32 = std::fs::read_to_string(&pf).unwrap().trim().parse().unwrap();
    assert_eq!(pid, s.pid);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&pf).unwrap().permissions().mode() & 0o777, 0o600);
}
