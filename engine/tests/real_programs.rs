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

/// pid 1 of its namespace among the processes named `comm_name` working in
/// `work` (this test's, not another's or a stray one's).
fn init_named(comm_name: &str, work: &Path) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(|&p| {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        comm(p) == comm_name
            && st.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
            && std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c == work)
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
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid"]).args(argv).current_dir(&work);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || starter.wait());
    wait_until(&format!("{name} under way"), Duration::from_secs(20), || ready(&work));
    let root = init_named(comm_name, &work).unwrap_or_else(|| panic!("{name}: no {comm_name} as pid 1 of its namespace"));
    let n = members(root).len();
    assert!(n >= 2, "{name}: a tree of {n} process only");
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &img, "dump.log");
    wait_until(&format!("{name}: the dumped tree gone"), Duration::from_secs(5), || !Path::new(&format!("/proc/{root}")).exists());
    assert!(!done(&work), "{name}: finished before the dump");
    let st = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&work).status().unwrap();
    assert!(st.success(), "{name}: restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    let restored = init_named(comm_name, &work);
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

/// Python's multiprocessing: a Pool of 3 workers and a Lock, whose
/// semaphores are files in /dev/shm unlinked right after they are mapped
/// (`/dev/shm/sem.X (deleted)`, MAP_SHARED by every process of the tree).
/// Dumped (their contents go with the image, as ghost files), restored by
/// ours: the pool goes on computing with no FAIL, every process maps the
/// same recreated inode under the same name, and the restored tree dumps
/// again.
#[test]
fn python_multiprocessing_pool_goes_on() {
    require!(why_not_here().or_else(|| why_not_tools(&["python3"])));
    let tmp = test_dir("real-python-mp");
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("mp.py");
    std::fs::write(
        &script,
        "import multiprocessing as mp, time\n\
         def work(x):\n    time.sleep(0.02)\n    return x * x\n\
         if __name__ == '__main__':\n\
         \x20   lock = mp.Lock()\n\
         \x20   with mp.Pool(3) as pool:\n\
         \x20       i = 0\n\
         \x20       while True:\n\
         \x20           i += 1\n\
         \x20           with lock:\n\
         \x20               r = pool.map(work, range(6))\n\
         \x20           ok = r == [x * x for x in range(6)]\n\
         \x20           with open('progress.log', 'a') as f:\n\
         \x20               f.write('tick %d %s\\n' % (i, 'ok' if ok else 'FAIL'))\n\
         \x20           time.sleep(0.05)\n",
    )
    .unwrap();
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid", "python3"]).arg(&script).current_dir(&work);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || starter.wait());
    let log = work.join("progress.log");
    wait_until("the pool working", Duration::from_secs(20), || last_tick(&log) >= 3);
    let root = init_named("python3", &work).expect("python3 as pid 1 of its namespace");
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-9", &self.0.to_string()]).status();
        }
    }
    // (a failure before the dump must not leave the pool running)
    let first = Kill(root);
    let n = members(root).len();
    assert!(n >= 4, "the root and its 3 workers: {n}");
    let sem_maps = |pid: i32| -> Vec<String> { maps(pid).into_iter().filter(|l| l.contains("/dev/shm/sem.") && l.ends_with("(deleted)")).collect() };
    assert!(!sem_maps(root).is_empty(), "no unlinked semaphore mapping: {:?}", maps(root));
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], &img, "dump.log");
    wait_until("the dumped tree gone", Duration::from_secs(5), || !Path::new(&format!("/proc/{root}")).exists());
    std::mem::forget(first); // gone with the dump; its pid may be another's now
    let t = last_tick(&log);
    let st = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(&img).current_dir(&work).status().unwrap();
    assert!(st.success(), "restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    let root = init_named("python3", &work).expect("the restored python3");
    let _kill = Kill(root);
    wait_until("the pool working after the restore", Duration::from_secs(20), || last_tick(&log) > t + 5);
    assert_eq!(members(root).len(), n, "the restored tree's processes");
    // one inode per semaphore, shared by every process, under its old name
    let inode_of = |pid: i32, line: &str| -> u64 {
        let range = line.split_whitespace().next().unwrap();
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(format!("/proc/{pid}/map_files/{range}")).unwrap())
    };
    let root_sems = sem_maps(root);
    assert!(!root_sems.is_empty(), "the semaphores' mappings after the restore: {:?}", maps(root));
    let want = inode_of(root, &root_sems[0]);
    let path = root_sems[0].split_whitespace().nth(5).unwrap().to_string();
    let mut seen = 0;
    for p in members(root) {
        if let Some(l) = sem_maps(p).iter().find(|l| l.split_whitespace().nth(5) == Some(path.as_str())) {
            assert_eq!(inode_of(p, l), want, "process {p} maps another inode for {l}");
            seen += 1;
        }
    }
    assert_eq!(seen, n, "every process maps {path}");
    let img2 = tmp.join("img2");
    std::fs::create_dir_all(&img2).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string(), "--leave-running"], &img2, "dump.log");
    let t = last_tick(&log);
    wait_until("ticks after the second dump", Duration::from_secs(20), || last_tick(&log) > t + 3);
    let _ = std::fs::remove_dir_all(&tmp);
}
