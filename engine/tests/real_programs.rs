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
//! complete, in order, with no line lost or repeated. Also: `make -j2` of
//! a small C project dumped while a compiler runs (the build completes and
//! its program prints what it must), and python3 multiprocessing (a Pool
//! with a Lock; a Pool passing results through an mp.Queue and a
//! Manager().Queue, two rounds). apache2 is in tests/apache.rs. Needs
//! root, make, gcc, xargs, bash, sh, python3, unshare.

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

/// Kill -9 on drop (a failure must not leave a tree running).
struct Kill(i32);

impl Drop for Kill {
    fn drop(&mut self) {
        for p in members(self.0) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// Dump the tree of `root` (killed), wait until it is gone, restore it with
/// ours in `work`; the restored root, named `comm_name`.
fn round(root: i32, comm_name: &str, work: &Path, img: &Path) -> i32 {
    std::fs::create_dir_all(img).unwrap();
    criu_ok(Path::new(CRIU), &["dump", "-t", &root.to_string()], img, "dump.log");
    wait_until("the dumped tree gone", Duration::from_secs(5), || !Path::new(&format!("/proc/{root}")).exists());
    let st = Command::new(CRIU).args(["restore", "-d", "-v4", "-o", "restore.log", "-D"]).arg(img).current_dir(work).status().unwrap();
    assert!(st.success(), "restore failed:\n{}", std::fs::read_to_string(img.join("restore.log")).unwrap_or_default());
    init_named(comm_name, work).unwrap_or_else(|| panic!("the restored {comm_name}"))
}

/// Python's multiprocessing: a Pool of 3 workers passing every result
/// through an mp.Queue (pipe, feeder threads, semaphores in /dev/shm) or a
/// Manager().Queue (a server process, unix sockets); see
/// tests/progs/mp_queue.py. Dumped mid-work and restored by ours, two
/// rounds: the tree has the same processes, and every item arrives once
/// and whole (the program checks each against what it must be, and
/// writes FAIL otherwise), batches going on after each restore.
#[test]
fn python_multiprocessing_pool_with_queues() {
    require!(why_not_here().or_else(|| why_not_tools(&["python3"])));
    let tmp = test_dir("real-python-mpq");
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/mp_queue.py");
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid", "python3"]).arg(&script).current_dir(&work);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || starter.wait());
    let log = work.join("progress.log");
    wait_until("the pool passing items", Duration::from_secs(30), || last_tick(&log) >= 5);
    let mut root = init_named("python3", &work).expect("python3 as pid 1 of its namespace");
    let mut guard = Kill(root);
    // the root, the manager's server and 3 workers
    let n = members(root).len();
    assert_eq!(n, 5, "the tree: {:?}", members(root));
    for r in ["img1", "img2"] {
        let t = last_tick(&log);
        root = round(root, "python3", &work, &tmp.join(r));
        std::mem::forget(std::mem::replace(&mut guard, Kill(root)));
        assert_eq!(members(root).len(), n, "{r}: the restored tree's processes");
        wait_until(&format!("{r}: batches after the restore"), Duration::from_secs(30), || last_tick(&log) > t + 10);
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `make -j2` of a small C project (six objects, each compiled by cc1 in
/// a gcc driver tree under make, two at a time, a link and a check
/// running the program), dumped part-way through (some objects built,
/// not all) and restored by ours: the build completes, and the program
/// it linked runs and prints the sum every object contributes.
#[test]
fn make_j2_builds_a_c_project_after_restore() {
    require!(why_not_here().or_else(|| why_not_tools(&["make", "gcc", "cc"])));
    let tmp = test_dir("real-make-c");
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let n = 6;
    let mut main = String::from("#include <stdio.h>\n");
    for i in 0..n {
        main.push_str(&format!("long part{i}(void);\n"));
        // enough code that each compile takes a moment: the dump lands mid-build
        let mut f = format!("static volatile long v{i} = {};\n", i + 1);
        for k in 0..400 {
            f.push_str(&format!("static long f{i}_{k}(long x) {{ return x * {k} + (x >> 3) + v{i}; }}\n"));
        }
        f.push_str(&format!("long part{i}(void) {{ long s = 0;\n"));
        for k in 0..400 {
            f.push_str(&format!("  s += f{i}_{k}({k}) - f{i}_{k}({k}) ;\n"));
        }
        f.push_str(&format!("  return s + {};\n}}\n", (i + 1) * 1000));
        std::fs::write(work.join(format!("part{i}.c")), f).unwrap();
    }
    main.push_str("int main(void) {\n  long s = 0;\n");
    for i in 0..n {
        main.push_str(&format!("  s += part{i}();\n"));
    }
    main.push_str("  printf(\"sum %ld\\n\", s);\n  return 0;\n}\n");
    std::fs::write(work.join("main.c"), main).unwrap();
    let objs: Vec<String> = (0..n).map(|i| format!("part{i}.o")).collect();
    std::fs::write(
        work.join("Makefile"),
        format!(
            "OBJS = main.o {objs}\nall: result.txt\nresult.txt: prog\n\t./prog > result.txt.tmp && mv result.txt.tmp result.txt\nprog: $(OBJS)\n\tcc -o prog $(OBJS)\n%.o: %.c\n\tcc -O2 -c -o $@ $<\n",
            objs = objs.join(" ")
        ),
    )
    .unwrap();
    let want = format!("sum {}\n", (1..=n).map(|i| i * 1000).sum::<usize>());
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid", "make", "-j2"]).current_dir(&work);
    let mut starter = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::spawn(move || starter.wait());
    // part-way: an object built, a compiler running, not all objects there
    let built = |w: &Path| objs.iter().filter(|o| w.join(o).exists()).count();
    let compiling = |m: i32| members(m).into_iter().any(|p| comm(p) == "cc1");
    wait_until("make part-way", Duration::from_secs(60), || built(&work) >= 1 && init_named("make", &work).is_some_and(compiling));
    let root = init_named("make", &work).expect("make as pid 1 of its namespace");
    let guard = Kill(root);
    let n_procs = members(root).len();
    let before = built(&work);
    let img = tmp.join("img");
    let root = round(root, "make", &work, &img);
    std::mem::forget(guard);
    let _guard = Kill(root);
    assert!(before < objs.len(), "the build was done before the dump ({before} objects)");
    // (the restored tree's size is not compared: a compiler may finish at once)
    assert!(n_procs >= 3, "make and a compiler's tree dumped: {n_procs} processes");
    wait_until("the build finished after the restore", Duration::from_secs(120), || work.join("result.txt").exists());
    assert_eq!(std::fs::read_to_string(work.join("result.txt")).unwrap(), want, "what the built program prints");
    let out = Command::new(work.join("prog")).output().expect("run the built program");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want, "the built program run again");
    let _ = std::fs::remove_dir_all(&tmp);
}
