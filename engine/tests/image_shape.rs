//! Differential shape test against upstream CRIU 4.2: dump a shared fixture
//! program with our `criu` and check that the set of image files, and per
//! image the set of JSON keys crit shows (nested, arrays folded to `[]`),
//! equal those of upstream's image set of the same program
//! (../shared/fixtures/upstream/NAME/images). Values naturally differ.
//!
//! XSAVE components depend on the CPU: keys of a component that this CPU
//! and the fixtures' CPU don't both have are left out of the comparison.
//! Needs root, gcc, unshare, setsid and the shared fixtures; otherwise skips
//! with the reason, or fails under CI=true.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{only_stdio, require, wait_until, why_not_fixture, why_not_here, CRIU};


fn shared() -> PathBuf {
    test_support::fixtures_dir().unwrap_or_else(|e| panic!("{e}"))
}


/// Every key path of a JSON text: `a.b`, arrays as `a.[].b`. A minimal
/// reader (strings with escapes, objects, arrays, scalars) for crit's output.
fn json_keys(text: &str) -> BTreeSet<String> {
    struct P<'a> {
        b: &'a [u8],
        i: usize,
        out: BTreeSet<String>,
    }
    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }
        fn string(&mut self) -> String {
            let start = self.i + 1;
            self.i += 1;
            while self.b[self.i] != b'"' {
                self.i += if self.b[self.i] == b'\\' { 2 } else { 1 };
            }
            self.i += 1;
            String::from_utf8_lossy(&self.b[start..self.i - 1]).into_owned()
        }
        fn value(&mut self, prefix: &str) {
            self.ws();
            match self.b[self.i] {
                b'{' => {
                    self.i += 1;
                    loop {
                        self.ws();
                        if self.b[self.i] == b'}' {
                            self.i += 1;
                            return;
                        }
                        let k = self.string();
                        let p = format!("{prefix}{k}");
                        self.out.insert(p.clone());
                        self.ws();
                        self.i += 1; // ':'
                        self.value(&format!("{p}."));
                        self.ws();
                        if self.b[self.i] == b',' {
                            self.i += 1;
                        }
                    }
                }
                b'[' => {
                    self.i += 1;
                    loop {
                        self.ws();
                        if self.b[self.i] == b']' {
                            self.i += 1;
                            return;
                        }
                        self.value(&format!("{prefix}[]."));
                        self.ws();
                        if self.b[self.i] == b',' {
                            self.i += 1;
                        }
                    }
                }
                b'"' => {
                    self.string();
                }
                _ => {
                    while self.i < self.b.len() && !matches!(self.b[self.i], b',' | b'}' | b']') && !self.b[self.i].is_ascii_whitespace() {
                        self.i += 1;
                    }
                }
            }
        }
    }
    let mut p = P { b: text.as_bytes(), i: 0, out: BTreeSet::new() };
    p.value("");
    p.out
}

/// XSAVE component names in user_x86_xsave_entry and their component numbers.
const XSAVE_KEYS: [(&str, u32); 7] =
    [("ymmh_space", 2), ("bndreg_state", 3), ("bndcsr_state", 4), ("opmask_reg", 5), ("zmm_upper", 6), ("hi16_zmm", 7), ("pkru", 9)];

/// Drop the keys of XSAVE components present on one CPU and not the other.
fn drop_cpu_keys(up: &mut BTreeSet<String>, ours: &mut BTreeSet<String>) {
    for (name, comp) in XSAVE_KEYS {
        let here = engine::sys::cpu::xsave_component(comp).is_some();
        let there = up.iter().any(|k| k.ends_with(&format!("xsave.{name}")));
        if here != there {
            up.retain(|k| !k.contains(&format!("xsave.{name}")));
            ours.retain(|k| !k.contains(&format!("xsave.{name}")));
        }
    }
}

fn img_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img"))
        .collect()
}

/// Our image set of `name` next to upstream's: (file set diff, per-image key diffs).
fn shape(name: &str) {
    shape_with(name, false)
}

/// The image kind of a file name: `core-5.img` -> `core`, `pages-3.img` ->
/// `pages`, `timens-0.img` -> `timens-0` (a numbered image whose number is
/// not a pid or an id of the run keeps it).
fn kind(file: &str) -> String {
    let stem = file.trim_end_matches(".img");
    match stem.rsplit_once('-') {
        Some((k, n)) if n.parse::<u32>().is_ok() && ["core", "fs", "ids", "mm", "pagemap", "pages", "fdinfo"].contains(&k) => k.to_string(),
        _ => stem.to_string(),
    }
}

/// A tree: its pids (so the per-process images' numbers) depend on the
/// order its processes forked in, so the image files are compared as a
/// count per kind, and the JSON keys as the union over the images of a kind.
fn compare_by_kind(name: &str, up_dir: &Path, dir: &Path) {
    use std::collections::BTreeMap;
    let count = |d: &Path| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for f in img_names(d) {
            *m.entry(kind(&f)).or_default() += 1;
        }
        m
    };
    let mut problems = Vec::new();
    let (up_count, our_count) = (count(up_dir), count(dir));
    if up_count != our_count {
        problems.push(format!("image files per kind: upstream {up_count:?}, ours {our_count:?}"));
    }
    let keys = |d: &Path, k: &str| {
        let mut all = BTreeSet::new();
        for f in img_names(d).into_iter().filter(|f| kind(f) == k) {
            let p = d.join(&f);
            let buf = std::fs::read(&p).unwrap();
            let text = images_proto::image::decode_image(&buf, &p, true).unwrap_or_else(|e| panic!("decoding {}: {e}", p.display())).to_string();
            all.extend(json_keys(&text));
        }
        all
    };
    for k in up_count.keys().filter(|k| our_count.contains_key(*k) && k.as_str() != "pages") {
        let (mut up, mut ours) = (keys(up_dir, k), keys(dir, k));
        drop_cpu_keys(&mut up, &mut ours);
        if up != ours {
            problems.push(format!(
                "{k}-*.img: keys only upstream {:?}, only ours {:?}",
                up.difference(&ours).collect::<Vec<_>>(),
                ours.difference(&up).collect::<Vec<_>>()
            ));
        }
    }
    assert!(problems.is_empty(), "fx-{name}: our images differ in shape from upstream 4.2's:\n{}", problems.join("\n"));
}

fn shape_with(name: &str, by_kind: bool) {
    require!(why_not_here().or_else(|| why_not_fixture(&format!("upstream/{name}/images"))));
    let tmp = std::env::temp_dir().join(format!("criu-rs-shape-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let work = tmp.join("work");
    let dir = tmp.join("img");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let bin = tmp.join(format!("fx-{name}"));
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(shared().join(format!("progs/{name}.c")))
        .args(["-lpthread", "-lrt"])
        .status()
        .expect("gcc");
    assert!(st.success(), "building fx-{name}");
    // as upstream's fixtures were started: pid 1 of a new pid namespace, session leader
    // Upstream's harness left the fixture one inherited pipe write end, at fd 251;
    // give ours the same fd set, whatever this test process inherited
    // (cargo's jobserver pipe, say), so the images can be compared.
    let (pipe_rd, pipe_wr) = {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the 2-element array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
        (fds[0], fds[1])
    };
    let mut cmd = Command::new("unshare");
    only_stdio(&mut cmd).args(["--pid", "--fork", "setsid"]).arg(&bin).current_dir(&work).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs after only_stdio's hook, and
    // the new fd 251 is not close-on-exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(pipe_wr, 251) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut starter = cmd.spawn().expect("start fixture");
    // SAFETY: closing the pipe ends this process owns; the child has its copy.
    unsafe {
        libc::close(pipe_rd);
        libc::close(pipe_wr);
    }
    wait_until("ready", Duration::from_secs(10), || work.join("ready").exists());
    std::thread::sleep(Duration::from_millis(300));
    // the fixture's root: pid 1 of its namespace (a tree has more processes)
    let mut pid = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ns_one = status.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"));
        if ns_one && cmd.split(|b| *b == 0).next() == Some(bin.as_os_str().as_encoded_bytes()) {
            pid = p;
        }
    }
    assert!(pid > 0, "fixture not running");
    let st = Command::new(CRIU).args(["dump", "-t", &pid.to_string(), "-v4", "-o", "dump.log", "-D"]).arg(&dir).status().unwrap();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let _ = starter.wait();
    assert!(st.success(), "dump failed:\n{}", std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default());

    let up_dir = shared().join(format!("upstream/{name}/images"));
    if by_kind {
        compare_by_kind(name, &up_dir, &dir);
        let _ = std::fs::remove_dir_all(&tmp);
        return;
    }
    let (up_files, our_files) = (img_names(&up_dir), img_names(&dir));
    let mut problems = Vec::new();
    if up_files != our_files {
        problems.push(format!(
            "image files: only upstream {:?}, only ours {:?}",
            up_files.difference(&our_files).collect::<Vec<_>>(),
            our_files.difference(&up_files).collect::<Vec<_>>()
        ));
    }
    for f in up_files.intersection(&our_files) {
        if f.starts_with("pages-") {
            continue;
        }
        let dec = |d: &Path| {
            let p = d.join(f);
            let buf = std::fs::read(&p).unwrap();
            images_proto::image::decode_image(&buf, &p, true).unwrap_or_else(|e| panic!("decoding {}: {e}", p.display())).to_string()
        };
        let (mut up, mut ours) = (json_keys(&dec(&up_dir)), json_keys(&dec(&dir)));
        drop_cpu_keys(&mut up, &mut ours);
        if up != ours {
            problems.push(format!(
                "{f}: keys only upstream {:?}, only ours {:?}",
                up.difference(&ours).collect::<Vec<_>>(),
                ours.difference(&up).collect::<Vec<_>>()
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(problems.is_empty(), "fx-{name}: our images differ in shape from upstream 4.2's:\n{}", problems.join("\n"));
}

#[test]
fn json_keys_reader() {
    let k = json_keys(r#"{"a": {"b": [1, {"c": "x\"}"}], "d": []}, "e": "f"}"#);
    let want: BTreeSet<String> = ["a", "a.b", "a.b.[].c", "a.d", "e"].iter().map(|s| s.to_string()).collect();
    assert_eq!(k, want);
}

#[test]
fn shape_counter() {
    shape("counter");
}

#[test]
fn shape_threads() {
    shape("threads");
}

#[test]
fn shape_signals() {
    shape("signals");
}

#[test]
fn shape_tree() {
    shape_with("tree", true);
}
