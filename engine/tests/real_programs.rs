//! Trees of programs nobody here wrote, started as a user would, dumped
//! in the middle of their work, restored by our `criu`, and checked to
//! finish it correctly:
//!
//! - `make -j3` running three recipes at once (its jobserver is a pipe
//!   shared by make and every recipe shell; each recipe is `sh -c` with a
//!   loop that appends numbered lines and sleeps);
//! - `xargs -P 3` running three `sh -c` loops at once;
//! - a bash loop forking `sleep` every tick.
//!
//! Each writes numbered lines; after the restore every file must be
//! complete, in order, with no line lost or repeated. Needs root, make,
//! xargs, bash, sh, unshare.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// pid 1 of the namespace among the processes named `comm`.
fn init_named(comm_name: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(|&p| {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        comm(p) == comm_name && st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
    })
}

/// The tree under `root`.
fn members(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        out.push(p);
        let c = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        stack.extend(c.split_whitespace().filter_map(|v| v.parse::<i32>().ok()));
    }
    out
}

/// The lines of `f` must be `PREFIX 1` .. `PREFIX n`, in order.
fn complete(f: &Path, prefix: &str, n: usize) -> bool {
    let s = std::fs::read_to_string(f).unwrap_or_default();
    let want: Vec<String> = (1..=n).map(|i| format!("{prefix} {i}")).collect();
    let got: Vec<&str> = s.lines().collect();
    assert!(want.iter().zip(&got).all(|(w, g)| w == g), "{}: lines out of order, lost or repeated:\n{s}", f.display());
    got.len() == n
}

/// Start `argv` as `unshare --pid --fork setsid argv` in `work`; wait for
/// `ready` (some progress), dump the tree rooted at the namespace's init
/// (`comm_name`), restore it with ours, and wait until `done`.
fn dump_mid_work(name: &str, argv: &[&str], comm_name: &str, ready: impl Fn(&Path) -> bool, done: impl Fn(&Path) -> bool) {
    let tmp = test_dir(&format!("real-{name}"));
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let setup = work.clone();
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid"]).args(argv).current_dir(&setup);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || starter.wait());
    wait_until(&format!("{name} under way"), Duration::from_secs(20), || ready(&work));
    let root = init_named(comm_name).unwrap_or_else(|| panic!("{name}: no {comm_name} as pid 1 of its namespace"));
    let n = members(root).len();
    assert!(n >= 2, "{name}: a tree of {n} process only");
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &img, "dump.log");
    wait_until(&format!("{name}: the dumped tree gone"), Duration::from_secs(5), || !Path::new(&format!("/proc/{root}")).exists());
    assert!(!done(&work), "{name}: finished before the dump");
    let st = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&work).status().unwrap();
    assert!(st.success(), "{name}: restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    let restored = init_named(comm_name);
    assert!(restored.is_some_and(|r| members(r).len() == n), "{name}: {n} processes dumped, the restored tree differs");
    wait_until(&format!("{name} finished after the restore"), Duration::from_secs(60), || done(&work));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn make_j3_finishes_after_restore() {
    require!(why_not_here().or_else(|| why_not_tools(&["make", "sh"])));
    let lines = 25;
    let recipe = format!("sh -c 'for i in $$(seq 1 {lines}); do echo $@ $$i >> out-$@; sleep 0.1; done'");
    let tmp = test_dir("real-make-setup");
    let mk = tmp.join("Makefile");
    std::fs::write(&mk, format!("all: a b c\n\t@echo done > all-done\na b c:\n\t{recipe}\n")).unwrap();
    let mkf = mk.to_str().unwrap().to_string();
    dump_mid_work(
        "make",
        &["make", "-j3", "-f", &mkf],
        "make",
        |w| ["a", "b", "c"].iter().all(|t| std::fs::read_to_string(w.join(format!("out-{t}"))).unwrap_or_default().lines().count() >= 5),
        |w| w.join("all-done").exists() && ["a", "b", "c"].iter().all(|t| complete(&w.join(format!("out-{t}")), t, lines)),
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn xargs_p3_finishes_after_restore() {
    require!(why_not_here().or_else(|| why_not_tools(&["xargs", "sh"])));
    let lines = 25;
    let cmd = format!("for i in $(seq 1 {lines}); do echo $0 $i >> out-$0; sleep 0.1; done; echo ok > done-$0");
    dump_mid_work(
        "xargs",
        &["sh", "-c", &format!("printf 'a\\nb\\nc\\n' | xargs -P 3 -n 1 sh -c '{cmd}'")],
        "sh",
        |w| ["a", "b", "c"].iter().all(|t| std::fs::read_to_string(w.join(format!("out-{t}"))).unwrap_or_default().lines().count() >= 5),
        |w| ["a", "b", "c"].iter().all(|t| w.join(format!("done-{t}")).exists() && complete(&w.join(format!("out-{t}")), t, lines)),
    );
}

#[test]
fn bash_loop_forking_sleep_goes_on() {
    require!(why_not_here().or_else(|| why_not_tools(&["bash", "sleep"])));
    let lines = 40;
    dump_mid_work(
        "bash",
        &["bash", "-c", &format!("for i in $(seq 1 {lines}); do echo n $i >> out; sleep 0.1; done; echo ok > done")],
        "bash",
        |w| std::fs::read_to_string(w.join("out")).unwrap_or_default().lines().count() >= 5,
        |w| w.join("done").exists() && complete(&w.join("out"), "n", lines),
    );
}
