//! A tmux server, a program nobody here wrote, started as a user would
//! (`tmux -S SOCKET new-session -d CMD`), dumped (its tree: the server and
//! the pane's shell with its background loop, a pty pair, the unix
//! listener) and restored: the pane runs on (its loop appends to a file),
//! and `send-keys` / `capture-pane` through the socket work, the pane's
//! screen from before the dump still there. Needs root and tmux.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{criu_ok, private_criu, require, test_dir, wait_until, why_not_here};

struct Tmux {
    dir: PathBuf,
    sock: PathBuf,
    out: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-S").arg(&self.sock).args(args).env_remove("TMUX").stdin(Stdio::null()).output().expect("tmux")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(o.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn pid(&self, what: &str) -> i32 {
        self.ok(&["display-message", "-p", what]).trim().parse().expect("a pid")
    }

    fn lines(&self) -> usize {
        std::fs::read_to_string(&self.out).map(|s| s.lines().count()).unwrap_or(0)
    }

    fn grows(&self, what: &str) {
        let n = self.lines();
        wait_until(&format!("the pane's loop {what}"), Duration::from_secs(10), || self.lines() >= n + 3);
    }

    fn shows(&self, text: &str) {
        wait_until(&format!("the pane showing {text:?}"), Duration::from_secs(10), || self.ok(&["capture-pane", "-p"]).contains(text));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        let _ = &self.dir;
    }
}

fn why_not_tmux() -> Option<String> {
    why_not_here().or_else(|| test_support::why_not_tool("tmux"))
}

#[test]
fn tmux_server_survives_dump_and_restore() {
    require!(why_not_tmux());
    let dir = test_dir("tmux");
    let t = Tmux { sock: dir.join("sock"), out: dir.join("out.txt"), dir: dir.clone() };
    let _ = std::fs::remove_file(&t.sock);
    let pane = format!("sh -c 'while :; do date +%s.%N >> {}; sleep 0.2; done & while read l; do echo \"got:$l\"; done'", t.out.display());
    let st = Command::new("setsid")
        .args(["tmux", "-S"])
        .arg(&t.sock)
        .args(["new-session", "-d", "-x", "80", "-y", "24", &pane])
        .env_remove("TMUX")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start tmux");
    assert!(st.success(), "tmux new-session");
    t.grows("before the dump");
    t.ok(&["send-keys", "hello", "Enter"]);
    t.shows("got:hello");
    let server = t.pid("#{pid}");
    let pane_pid = t.pid("#{pane_pid}");
    let criu = private_criu(&dir);
    let img = dir.join("img");
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img).unwrap();
    // no tmux client is connected now
    std::thread::sleep(Duration::from_millis(300));
    criu_ok(&criu, &["dump", "-t", &server.to_string()], &img, "dump.log");
    wait_until("the dumped server gone", Duration::from_secs(5), || !Path::new(&format!("/proc/{server}")).exists());
    let n = t.lines();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(t.lines(), n, "the pane's loop must stop with the dump");
    criu_ok(&criu, &["restore", "-d"], &img, "restore.log");
    t.grows("after restore");
    assert_eq!(t.pid("#{pid}"), server, "the same server");
    assert_eq!(t.pid("#{pane_pid}"), pane_pid, "the same pane");
    t.shows("got:hello");
    t.ok(&["send-keys", "again", "Enter"]);
    t.shows("got:again");
    assert!(t.ok(&["list-sessions"]).starts_with("0: 1 windows"), "the session is there");
}
