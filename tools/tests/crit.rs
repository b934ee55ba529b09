//! Differential tests of our `crit` binary against upstream crit 4.2's output
//! (the fixtures' json/), against Debian's python crit (3.17) where it is
//! installed, and against hostile input.
//!
//! Fixtures: `$CRIT_FIXTURES` or the shared fixtures' `upstream/` (see
//! test_support::fixtures_dir). Missing fixtures or a missing /usr/bin/crit
//! skip with the reason outside CI and fail under CI=true.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const CRIT: &str = env!("CARGO_BIN_EXE_crit");
const PY_CRIT: &str = "/usr/bin/crit";
const PY: &str = "/usr/bin/python3";

fn fixtures() -> Option<PathBuf> {
    let d = match std::env::var_os("CRIT_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => {
            test_support::require!(test_support::why_not_fixture("upstream"));
            test_support::fixture("upstream")
        }
    };
    if !d.is_dir() {
        test_support::skip(format!("CRIT_FIXTURES={} is not a directory", d.display()));
        return None;
    }
    Some(d)
}

/// Image sets (directories with images/ and json/), sorted.
fn sets(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("images").is_dir())
        .collect();
    v.sort();
    v
}

/// Protobuf images of a set (pages-*.img are raw, dump.log is no image).
fn images(set: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(set.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.ends_with(".img") && !n.starts_with("pages-")
        })
        .collect();
    v.sort();
    v
}

fn all_images(root: &Path) -> Vec<PathBuf> {
    sets(root).iter().flat_map(|s| images(s)).collect()
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_str().unwrap().to_string()
}

fn run(prog: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut c = Command::new(prog);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let data = data.to_vec();
        // Write from a thread so a large output cannot deadlock us.
        let t = std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        t.join().unwrap();
        return out;
    }
    child.wait_with_output().unwrap()
}

fn ok(prog: &str, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let o = run(prog, args, stdin);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn json(b: &[u8], what: &str) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A failure must be an orderly one: exit 1, no panic message.
fn assert_orderly_failure(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    assert_ne!(
        o.status.code(),
        Some(101),
        "{what}: exit 101 (panic): {err}"
    );
    assert!(
        o.status.code().is_some(),
        "{what}: killed by a signal: {}",
        o.status
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: want exit 1, got {}: {err}",
        o.status
    );
    err
}

#[test]
fn decode_pretty_equals_upstream_json() {
    let Some(root) = fixtures() else { return };
    let mut n = 0;
    for set in sets(&root) {
        for img in images(&set) {
            let want_path = set.join("json").join(format!("{}.json", stem(&img)));
            let want = std::fs::read(&want_path).unwrap();
            let got = ok(CRIT, &["decode", "--pretty", "-i", s(&img)], None);
            let what = img.display().to_string();
            assert_eq!(
                json(&got, &what),
                json(&want, &want_path.display().to_string()),
                "{what}: JSON differs"
            );
            // Python's json.dump(indent=4) plus the newline crit adds: byte for byte.
            assert!(got == want, "{what}: same JSON value but different text");
            // show == decode --pretty; stdin input == -i input.
            assert_eq!(
                ok(CRIT, &["show", s(&img)], None),
                got,
                "{what}: show differs"
            );
            let raw = std::fs::read(&img).unwrap();
            assert_eq!(
                ok(CRIT, &["decode", "--pretty"], Some(&raw)),
                got,
                "{what}: stdin differs"
            );
            n += 1;
        }
    }
    assert!(n > 100, "only {n} images");
    println!("{n} images decode to upstream 4.2's JSON byte for byte");
}

#[test]
fn decode_encode_is_byte_identical() {
    let Some(root) = fixtures() else { return };
    let tmp = tempdir("roundtrip");
    let mut n = 0;
    for img in all_images(&root) {
        let orig = std::fs::read(&img).unwrap();
        for pretty in [false, true] {
            let mut args = vec!["decode", "-i", s(&img)];
            if pretty {
                args.push("--pretty");
            }
            let j = ok(CRIT, &args, None);
            // encode from stdin to stdout, and from a file to a file.
            let bytes = ok(CRIT, &["encode"], Some(&j));
            assert!(
                bytes == orig,
                "{}: decode{} | encode is not the original",
                img.display(),
                if pretty { " --pretty" } else { "" }
            );
            let jf = tmp.join("in.json");
            let of = tmp.join("out.img");
            std::fs::write(&jf, &j).unwrap();
            ok(CRIT, &["encode", "-i", s(&jf), "-o", s(&of)], None);
            assert!(
                std::fs::read(&of).unwrap() == orig,
                "{}: encode -i -o differs",
                img.display()
            );
        }
        // decode -o writes no trailing newline (as upstream).
        let of = tmp.join("out.json");
        ok(CRIT, &["decode", "-i", s(&img), "-o", s(&of)], None);
        let mut stdout = ok(CRIT, &["decode", "-i", s(&img)], None);
        assert_eq!(stdout.pop(), Some(b'\n'));
        assert!(
            std::fs::read(&of).unwrap() == stdout,
            "{}: decode -o differs",
            img.display()
        );
        n += 1;
    }
    println!("{n} images: decode | encode gives the original bytes (plain and --pretty)");
}

#[test]
fn info_counts_entries() {
    let Some(root) = fixtures() else { return };
    // Debian's 3.17 `crit info` fails on python 3 (compares bytes with ''),
    // so the expected count comes from upstream 4.2's JSON: entries, less the
    // pagemap head.
    for set in sets(&root) {
        for img in images(&set) {
            let want = json(
                &std::fs::read(set.join("json").join(format!("{}.json", stem(&img)))).unwrap(),
                "fixture",
            );
            let magic = want["magic"].as_str().unwrap();
            let mut count = want["entries"].as_array().unwrap().len();
            if magic == "PAGEMAP" {
                count -= 1;
            }
            let got = ok(CRIT, &["info", s(&img)], None);
            let expect = format!("{{\n    \"magic\": \"{magic}\",\n    \"count\": {count}\n}}\n");
            assert_eq!(String::from_utf8(got).unwrap(), expect, "{}", img.display());
        }
    }
}

#[test]
fn explorers_match_expected_text() {
    let Some(root) = fixtures() else { return };
    // tools/tests/expected/SET-WHAT.txt is Debian's crit 3.17.1 output
    // (`crit x DIR WHAT`, see expected/regen.sh), so this check runs even
    // where that crit is not installed. `rss` has no golden file: 3.17 reads
    // 4.2's pagemap nr_pages as 0, so rss is compared live against
    // upstream's explorer code in explorers_match_python_crit.
    let exp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected");
    for set in sets(&root) {
        let name = set.file_name().unwrap().to_str().unwrap();
        for what in ["ps", "fds", "mems"] {
            let got = ok(CRIT, &["x", s(&set.join("images")), what], None);
            let want = std::fs::read(exp.join(format!("{name}-{what}.txt"))).unwrap();
            assert!(
                got == want,
                "x {name} {what} differs:\n--- got\n{}\n--- want\n{}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }
}

fn have_python_crit() -> bool {
    if Path::new(PY_CRIT).exists() && Path::new(PY).exists() {
        return true;
    }
    test_support::skip(format!(
        "{PY_CRIT} or {PY} not installed (apt-get install criu): no comparison with python crit"
    ));
    false
}

#[test]
fn explorers_match_python_crit() {
    let Some(root) = fixtures() else { return };
    if !have_python_crit() {
        return;
    }
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py_explore.py");
    let mut notes = Vec::new();
    for set in sets(&root) {
        let dir = set.join("images");
        let name = set.file_name().unwrap().to_str().unwrap().to_string();
        for what in ["ps", "fds", "mems", "rss"] {
            let ours = run(CRIT, &["x", s(&dir), what], None);
            assert!(
                ours.status.success(),
                "x {name} {what}: {}",
                String::from_utf8_lossy(&ours.stderr)
            );
            // 1. Upstream's explorer code over our decoder: same text. Where
            //    upstream fails (it stops at a dead task's missing ids/mm
            //    image), ours prints the same up to there and skips the task.
            let py = run(PY, &[s(&harness), CRIT, s(&dir), what], None);
            if py.status.success() {
                assert!(
                    ours.stdout == py.stdout,
                    "x {name} {what}: differs from upstream's explorer code"
                );
            } else {
                let why = same_until_dead_task(&ours, &py, &dir, &format!("x {name} {what} (upstream's explorer code)"));
                notes.push(format!("{name} {what}: python stops at {why}"));
            }
            // 2. Debian's crit all by itself. Its 3.17 pagemap.proto reads 4.2's
            //    nr_pages as 0 (4.2 moved it to field 5), so `rss` is checked
            //    by (1) only.
            if what != "rss" {
                let deb = run(PY_CRIT, &["x", s(&dir), what], None);
                if deb.status.success() {
                    assert!(
                        ours.stdout == deb.stdout,
                        "x {name} {what}: differs from {PY_CRIT}"
                    );
                } else {
                    let why = same_until_dead_task(&ours, &deb, &dir, &format!("x {name} {what} ({PY_CRIT})"));
                    notes.push(format!("{name} {what}: {PY_CRIT} stops at {why}"));
                }
            }
        }
    }
    for n in notes {
        println!("note: {n}");
    }
}

/// Where the reference (python) explorer fails, it must be for the one
/// reason we know of: a dead task (zombie) has no ids/mm image, python
/// raises FileNotFoundError on it, and ours prints the same text up to
/// there and leaves that task out. The reference output must not be empty
/// (an empty prefix would accept anything), the missing image must belong
/// to a task whose core image (decoded by Debian's crit) says dead, and
/// ours must not print a section for that task. Returns what it found.
fn same_until_dead_task(ours: &Output, reference: &Output, dir: &Path, what: &str) -> String {
    let err = String::from_utf8_lossy(&reference.stderr);
    let missing = err
        .lines()
        .rev()
        .find_map(|l| l.split("FileNotFoundError: [Errno 2] No such file or directory: '").nth(1))
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("{what}: failed, and not on a missing image: {err}"));
    let file = Path::new(missing).file_name().unwrap().to_str().unwrap().to_string();
    let pid = file
        .strip_suffix(".img")
        .and_then(|f| f.rsplit_once('-'))
        .filter(|(kind, _)| ["ids", "mm"].contains(kind))
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("{what}: missing {missing} is no task's ids/mm image: {err}"));
    let core = json(
        &ok(PY_CRIT, &["decode", "-i", s(&dir.join(format!("core-{pid}.img")))], None),
        "core",
    );
    // TASK_DEAD in core.proto's task_state (1 alive, 2 dead, 3 stopped).
    assert_eq!(
        core["entries"][0]["tc"]["task_state"].as_u64(),
        Some(2),
        "{what}: {file} is missing but task {pid} is not dead"
    );
    assert!(!reference.stdout.is_empty(), "{what}: the reference printed nothing before failing: {err}");
    assert!(
        ours.stdout.starts_with(&reference.stdout),
        "{what}: differs before the reference's failure on {file}\n--- ours\n{}\n--- reference\n{}",
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&reference.stdout)
    );
    let rest = String::from_utf8_lossy(&ours.stdout[reference.stdout.len()..]).into_owned();
    assert!(
        !rest.lines().any(|l| l.trim() == pid.to_string()),
        "{what}: ours prints a section for dead task {pid}:\n{rest}"
    );
    format!("dead task {pid} (no {file})")
}

/// Python's view of the same image: 3.17's protos lack some of 4.2's fields,
/// so compare only where Debian's crit decodes the image as we do.
#[test]
fn python_crit_accepts_our_json_and_we_accept_its() {
    let Some(root) = fixtures() else { return };
    if !have_python_crit() {
        return;
    }
    let imgs = all_images(&root);
    let tmp = tempdir("pycross");
    // Two workers: each image costs a few python start-ups.
    let results: Vec<(String, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = imgs
            .chunks(imgs.len().div_ceil(2))
            .enumerate()
            .map(|(w, chunk)| {
                let tmp = tmp.join(format!("w{w}"));
                std::fs::create_dir_all(&tmp).unwrap();
                sc.spawn(move || {
                    chunk
                        .iter()
                        .map(|img| cross_check(img, &tmp))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut same = 0;
    for (img, verdict) in &results {
        if verdict == "same" {
            same += 1;
        } else {
            println!("version gap (3.17 vs 4.2): {img}: {verdict}");
        }
    }
    println!("{same}/{} images: python crit 3.17 reads them as we do, encodes our JSON to what we read back, and prints the same text", results.len());
    assert!(same >= 70, "only {same} images comparable with python crit");
}

/// Returns "same" or why the image is outside what 3.17 can compare.
fn cross_check(img: &Path, tmp: &Path) -> (String, String) {
    let what = img.display().to_string();
    let orig = std::fs::read(img).unwrap();
    // (a) python's JSON -> our encode -> python decodes it back the same.
    //     Our encoder may only refuse python's JSON for a field that 4.2
    //     requires and 3.17 does not know.
    let py_raw = ok(PY_CRIT, &["decode", "-i", s(img)], None);
    let enc = run(CRIT, &["encode"], Some(&py_raw));
    if enc.status.success() {
        let f = tmp.join("a.img");
        std::fs::write(&f, &enc.stdout).unwrap();
        let back = ok(PY_CRIT, &["decode", "-i", s(&f)], None);
        assert_eq!(
            json(&back, &what),
            json(&py_raw, &what),
            "{what}: python JSON -> our encode -> python decode differs"
        );
    } else {
        let err = String::from_utf8_lossy(&enc.stderr);
        assert!(
            err.contains("required field missing"),
            "{what}: our encode refused python's JSON: {err}"
        );
    }
    // (b) Where python reads the image as we do, python's encode of our JSON
    //     reads back (by us) as the same JSON, and python's text is ours.
    let ours_raw = ok(CRIT, &["decode", "-i", s(img)], None);
    if json(&ours_raw, &what) != json(&py_raw, &what) {
        return (
            what,
            "python 3.17 decodes it differently (fields it does not know)".into(),
        );
    }
    assert!(
        ours_raw == py_raw,
        "{what}: same JSON as python but different text (compact form)"
    );
    let f = tmp.join("b.json");
    std::fs::write(&f, &ours_raw).unwrap();
    let py_enc = ok(PY_CRIT, &["encode", "-i", s(&f)], None);
    assert!(
        py_enc == orig,
        "{what}: python's encode of our JSON is not the original image"
    );
    let back = ok(CRIT, &["decode", "-i", "/dev/stdin"], Some(&py_enc));
    assert!(
        back == ours_raw,
        "{what}: python-encoded image decodes differently"
    );
    let ours_pretty = ok(CRIT, &["decode", "--pretty", "-i", s(img)], None);
    let py_pretty = ok(PY_CRIT, &["decode", "--pretty", "-i", s(img)], None);
    if json(&ours_pretty, &what) != json(&py_pretty, &what) {
        // 3.17's flag tables lack newer names (VMA_AREA_MEMFD prints as 0x4000).
        return (
            what,
            "python 3.17 renders --pretty differently (older flag/value tables)".into(),
        );
    }
    assert!(
        ours_pretty == py_pretty,
        "{what}: --pretty text differs from python's"
    );
    // --nopl (show) where the image has payloads.
    let py_nopl = run(PY_CRIT, &["show", "--nopl", s(img)], None);
    if py_nopl.status.success() {
        assert!(
            ok(CRIT, &["show", "--nopl", s(img)], None) == py_nopl.stdout,
            "{what}: show --nopl differs"
        );
    }
    (what, "same".into())
}

/// A scratch directory of one test, removed when the test ends (passed or
/// failed: on drop, which a panic's unwinding runs too).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("crit-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Deterministic PRNG (xorshift) for mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn truncated_images_fail_naming_file_and_entry() {
    let Some(root) = fixtures() else { return };
    let tmp = tempdir("trunc");
    let mut n = 0;
    for img in all_images(&root) {
        let orig = std::fs::read(&img).unwrap();
        let f = tmp.join(img.file_name().unwrap());
        // Cut points: inside the header, inside the first size word, and
        // spread over the rest (all of them for small images).
        let mut cuts: Vec<usize> = (1..orig.len().min(12)).collect();
        let step = (orig.len() / 24).max(1);
        cuts.extend((12..orig.len()).step_by(step));
        for cut in cuts {
            std::fs::write(&f, &orig[..cut]).unwrap();
            let o = run(CRIT, &["decode", "-i", s(&f)], None);
            let what = format!("{} cut at {cut}", img.display());
            if o.status.success() {
                // A cut at an entry boundary is a valid, shorter image, as
                // long as no entry is required to continue.
                continue;
            }
            let err = assert_orderly_failure(&o, &what);
            assert!(
                err.contains(s(&f)),
                "{what}: message does not name the file: {err}"
            );
            assert!(
                err.contains("entry ") || err.contains("header"),
                "{what}: message names no entry: {err}"
            );
            n += 1;
        }
    }
    assert!(n > 500, "only {n} truncations failed");
    println!("{n} truncated images fail with file and entry named, no panic");
}

#[test]
fn wrong_magic_and_garbage_fail_cleanly() {
    let Some(root) = fixtures() else { return };
    let tmp = tempdir("garbage");
    let f = tmp.join("bad.img");
    // Raw pages: upstream's message, exit 1.
    let pages = root.join("counter/images/pages-1.img");
    let o = run(CRIT, &["decode", "-i", s(&pages)], None);
    let err = assert_orderly_failure(&o, "pages-1.img");
    assert!(err.starts_with("Unknown magic 0x"), "{err}");
    assert!(
        err.contains("Maybe you are feeding me an image with raw data(i.e. pages.img)?"),
        "{err}"
    );
    // A known header word with an unknown magic; a negative magic prints as python's %#x.
    std::fs::write(&f, [0x19, 0x43, 0x56, 0x54, 0xef, 0xbe, 0xad, 0xde]).unwrap();
    let err = assert_orderly_failure(&run(CRIT, &["show", s(&f)], None), "bad magic");
    assert!(err.starts_with("Unknown magic -0x21524111.\n"), "{err}");
    // Header too short.
    std::fs::write(&f, [0x19, 0x43]).unwrap();
    let err = assert_orderly_failure(&run(CRIT, &["decode", "-i", s(&f)], None), "short header");
    assert!(err.contains(s(&f)) && err.contains("header"), "{err}");
    // info/x on garbage: orderly failures too.
    let err = assert_orderly_failure(&run(CRIT, &["info", s(&pages)], None), "info pages");
    assert!(err.contains(s(&pages)), "{err}");
    for what in ["ps", "fds", "mems", "rss"] {
        assert_orderly_failure(&run(CRIT, &["x", s(&tmp), what], None), "x on an empty dir");
    }
    // Mutated images: any outcome but a panic; failures name file and entry.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let imgs = all_images(&root);
    let mut failed = 0;
    for round in 0..400 {
        let img = &imgs[rng.below(imgs.len())];
        let mut b = std::fs::read(img).unwrap();
        for _ in 0..1 + rng.below(4) {
            let i = 8 + rng.below(b.len().saturating_sub(8));
            if i < b.len() {
                b[i] = rng.next() as u8;
            }
        }
        std::fs::write(&f, &b).unwrap();
        let pretty = if round % 2 == 0 { "--pretty" } else { "--nopl" };
        let o = run(CRIT, &["decode", pretty, "-i", s(&f)], None);
        let what = format!("{} mutated (round {round})", img.display());
        if !o.status.success() {
            let err = assert_orderly_failure(&o, &what);
            assert!(
                err.contains(s(&f)) && (err.contains("entry ") || err.contains("header")),
                "{what}: {err}"
            );
            failed += 1;
        } else if round % 2 == 0 {
            // What decodes must encode back (it came from a valid schema).
            let back = run(CRIT, &["encode"], Some(&o.stdout));
            if !back.status.success() {
                assert_orderly_failure(&back, &what);
            }
        }
    }
    println!("400 mutated images: {failed} failed cleanly, the rest decoded");
    // Random garbage after a valid header, and pure garbage.
    for round in 0..200 {
        let mut b: Vec<u8> = if round % 2 == 0 {
            vec![0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55]
        } else {
            Vec::new()
        };
        for _ in 0..rng.below(300) {
            b.push(rng.next() as u8);
        }
        std::fs::write(&f, &b).unwrap();
        let o = run(CRIT, &["decode", "--pretty", "-i", s(&f)], None);
        if !o.status.success() {
            assert_orderly_failure(&o, &format!("garbage round {round}"));
        }
    }
}

#[test]
fn bad_json_fails_naming_file_entry_and_field() {
    let Some(root) = fixtures() else { return };
    let tmp = tempdir("badjson");
    let f = tmp.join("bad.json");
    let core = root.join("tree/images/core-1.img");
    let j = json(&ok(CRIT, &["decode", "-i", s(&core)], None), "core");
    let cases: Vec<(Value, &str)> = vec![
        (serde_json::json!({"magic": "NOPE", "entries": []}), "NOPE"),
        (serde_json::json!({"entries": []}), "magic"),
        (serde_json::json!({"magic": "CORE"}), "entries"),
        (serde_json::json!([1, 2]), "object"),
        (
            {
                let mut v = j.clone();
                v["entries"][0]["tc"]["comm"] = Value::from(5);
                v
            },
            "tc.comm",
        ),
        (
            {
                let mut v = j.clone();
                v["entries"][0]["no_such_field"] = Value::from(5);
                v
            },
            "no_such_field",
        ),
        (
            {
                let mut v = j.clone();
                v["entries"][0]["tc"]["task_state"] = Value::from(-1);
                v
            },
            "tc.task_state",
        ),
        (
            {
                let mut v = j.clone();
                v["entries"][0]["mtype"] = Value::from("NOT_AN_ARCH");
                v
            },
            "mtype",
        ),
    ];
    for (v, needle) in cases {
        std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
        let o = run(CRIT, &["encode", "-i", s(&f)], None);
        let err = assert_orderly_failure(&o, needle);
        assert!(err.contains(s(&f)), "{needle}: no file in {err}");
        assert!(err.contains(needle), "{needle}: not named in {err}");
        if needle.contains('.') || needle == "mtype" || needle == "no_such_field" {
            assert!(err.contains("entry 0"), "{needle}: no entry in {err}");
        }
    }
    // Not JSON, not UTF-8: upstream's message.
    std::fs::write(&f, b"{\"magic\": ").unwrap();
    let err = assert_orderly_failure(&run(CRIT, &["encode", "-i", s(&f)], None), "truncated JSON");
    assert!(err.contains(s(&f)), "{err}");
    let err = assert_orderly_failure(
        &run(CRIT, &["encode", "-i", s(&core)], None),
        "image as JSON",
    );
    assert!(err.contains("Cannot read JSON.\nMaybe you are feeding me an image with protobuf data? Encode expects JSON input."), "{err}");
    // Missing input file.
    let err = assert_orderly_failure(
        &run(CRIT, &["decode", "-i", "/nonexistent/x.img"], None),
        "missing",
    );
    assert!(err.contains("/nonexistent/x.img"), "{err}");
}

#[test]
fn command_line_is_upstreams() {
    // Usage errors exit 2 like argparse; no arguments is an error.
    let o = run(CRIT, &[], None);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(
        run(CRIT, &["x", "/tmp", "nope"], None).status.code(),
        Some(2)
    );
    assert_eq!(
        run(CRIT, &["decode", "--bogus"], None).status.code(),
        Some(2)
    );
    let help = String::from_utf8(ok(CRIT, &["--help"], None)).unwrap();
    for cmd in ["decode", "encode", "info", "x", "show"] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    let dh = String::from_utf8(ok(CRIT, &["decode", "--help"], None)).unwrap();
    for opt in ["--pretty", "-i, --in", "-o, --out", "--nopl"] {
        assert!(dh.contains(opt), "{opt} missing from decode --help");
    }
}
