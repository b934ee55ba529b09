//! The command line's form of a terminal outside the tree, as upstream
//! 4.2 has it: a session leader (`setsid -c busybox sh`) whose
//! controlling terminal and stdio are a pty slave whose master the test
//! holds. `criu dump --external tty[RDEV:DEV]` (hex st_rdev and st_dev of
//! the slave) dumps it as an `EXT_TTY`; `criu restore --inherit-fd
//! fd[N]:tty[RDEV:DEV]` gives the tree a new open of fd N, a slave of a
//! new pair the test made: the ticks go on on the new master, a typed
//! line reaches the shell, the slave is its controlling terminal. Ours
//! both ways, ours restored by upstream 4.2 and upstream's by ours; the
//! refusals by name.

mod common;

use common::*;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn why_not() -> Option<String> {
    why_not_root().or_else(|| why_not_tools(&["busybox", "setsid"]))
}

/// A new pty pair: (master, slave), the slave unlocked and opened.
fn pair() -> (OwnedFd, OwnedFd) {
    let m = engine::sys::tty::open(c"/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
    engine::sys::tty::set_locked(m.as_fd(), false).unwrap();
    let s = engine::sys::tty::open_peer(m.as_fd(), libc::O_RDWR | libc::O_NOCTTY).unwrap();
    (m, s)
}

/// What a master reads, as it comes.
#[derive(Clone)]
struct Out(Arc<Mutex<String>>, Arc<Mutex<std::fs::File>>);

impl Out {
    fn read(m: OwnedFd) -> Out {
        let t = Arc::new(Mutex::new(String::new()));
        let mut f = std::fs::File::from(m);
        let w = Arc::new(Mutex::new(f.try_clone().unwrap()));
        let t2 = t.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = f.read(&mut b) {
                if n == 0 {
                    break;
                }
                t2.lock().unwrap().push_str(&String::from_utf8_lossy(&b[..n]));
            }
        });
        Out(t, w)
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().split('\n').map(|l| l.trim_end_matches('\r').to_string()).collect()
    }

    fn ticks(&self) -> Vec<u64> {
        self.lines().iter().filter_map(|l| l.strip_prefix("t ")?.trim().parse().ok()).collect()
    }

    fn type_line(&self, line: &str) {
        self.1.lock().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
        let want = format!("got {line}");
        wait_until(&format!("{want:?} on the master"), Duration::from_secs(10), || self.lines().contains(&want));
    }
}

/// st_rdev and st_dev of `pid`'s fd 0, as upstream's key has them.
fn key_of(pid: i32) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/fd/0")).unwrap();
    format!("tty[{:x}:{:x}]", m.rdev(), m.dev())
}

/// `pid` leads its session; its controlling terminal is its fd 0.
fn check_ctty(pid: i32, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(format!("/proc/{pid}/fd/0")).unwrap().rdev();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let (sid, tty): (i32, u64) = (f[3].parse().unwrap(), f[4].parse().unwrap());
    assert_eq!((sid, tty), (pid, rdev), "{what}: {pid} leads its session with its fd 0 ({rdev:#x}) as controlling terminal");
}

/// criu `args` with `slave` as its fd 7 (stdin /dev/null): status and log.
fn criu_with_fd7(criu: &Path, args: &[&str], slave: &OwnedFd, dir: &Path) -> (bool, String) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("exec 7<&0 </dev/null; exec \"$@\"").arg("sh").arg(criu).args(args);
    let st = cmd.stdin(Stdio::from(slave.try_clone().unwrap())).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    (st.success(), std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default())
}

fn kill(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
}

/// Start the shell on a new pair; dump it with `dumper`, restore it onto
/// another new pair with `restorer`; check and end it.
fn round(tag: &str, dumper: &Path, restorer: &Path) {
    let tmp = test_dir(tag);
    let (m, s) = pair();
    let out = Out::read(m);
    let lp = "i=0; while :; do i=$((i+1)); echo \"t $i\"; if read -t 0.2 l; then echo \"got $l\"; fi; done";
    let child = Command::new("setsid")
        .args(["-c", "busybox", "sh", "-c", lp])
        .stdin(Stdio::from(s.try_clone().unwrap()))
        .stdout(Stdio::from(s.try_clone().unwrap()))
        .stderr(Stdio::from(s.try_clone().unwrap()))
        .spawn()
        .unwrap();
    drop(s);
    let pid = child.id() as i32;
    wait_until("ticks on the master", Duration::from_secs(10), || out.ticks().len() >= 3);
    out.type_line("before");
    check_ctty(pid, "before the dump");
    let key = key_of(pid);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let img_s = img.to_str().unwrap();
    let pid_s = pid.to_string();
    let ours = |c: &Path| c.file_name() == Some(std::ffi::OsStr::new("criu"));
    // refused without it, the shell left running
    if ours(dumper) {
        let (st, log) = criu_env(dumper, &["dump", "-t", &pid_s, "-D", img_s, "-v4", "-o", "dump.log"], &img, "dump.log", &[]);
        assert!(!st.success() && log.contains("shell-job"), "a terminal outside the tree is refused without --external:\n{log}");
    }
    let ext = format!("--external={key}");
    let (st, log) = criu_env(dumper, &["dump", "-t", &pid_s, "-D", img_s, "-v4", "-o", "dump.log", &ext], &img, "dump.log", &[]);
    assert!(st.success(), "dump {ext} ({}):\n{log}", dumper.display());
    let mut child = child;
    let _ = child.wait();
    let before = *out.ticks().last().unwrap();
    let (m2, s2) = pair();
    let out2 = Out::read(m2);
    let inh = format!("fd[7]:{key}");
    // refused without the inherited fd, naming the key
    if ours(restorer) {
        let (ok, log) = criu_with_fd7(restorer, &["restore", "-d", "-D", img_s, "-v4", "-o", "restore.log"], &s2, &img);
        assert!(!ok && log.contains(&format!("--inherit-fd fd[N]:{key}")), "the restore without --inherit-fd names the key:\n{log}");
    }
    let (ok, log) = criu_with_fd7(restorer, &["restore", "-d", "-D", img_s, "-v4", "-o", "restore.log", "--inherit-fd", &inh], &s2, &img);
    assert!(ok, "restore --inherit-fd {inh} ({}):\n{log}", restorer.display());
    drop(s2);
    wait_until("ticks on the new master", Duration::from_secs(10), || out2.ticks().len() >= 3);
    let t = out2.ticks();
    assert!(t[0] > before && t.windows(2).all(|w| w[1] == w[0] + 1), "the ticks go on from {before} on the new master: {t:?}");
    out2.type_line("after");
    check_ctty(pid, "after the restore");
    kill(pid);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn external_tty_with_our_criu() {
    require!(why_not());
    let tmp = test_dir("ext-tty-bin");
    let criu = private_criu(&tmp);
    round("ext-tty", &criu, &criu);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn external_tty_across_engines() {
    require!(why_not().or_else(why_not_upstream));
    let tmp = test_dir("ext-tty-x-bin");
    let criu = private_criu(&tmp);
    round("ext-tty-ours-up", &criu, &upstream());
    round("ext-tty-up-ours", &upstream(), &criu);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn malformed_tty_keys_are_refused() {
    require!(why_not_root());
    let tmp = test_dir("ext-tty-bad");
    for (args, want) in [
        (vec!["dump", "-t", "1", "--external", "tty[zz:1]"], "want tty[RDEV:DEV]"),
        (vec!["dump", "-t", "1", "--external", "tty[8800]"], "want tty[RDEV:DEV]"),
        (vec!["restore", "--inherit-fd", "fd[0]:tty[8800:]"], "want tty[RDEV:DEV]"),
    ] {
        let out = Command::new(CRIU).args(&args).arg("-D").arg(&tmp).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains(want), "{args:?}: {text}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
