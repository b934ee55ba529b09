//! Benchmark: our `crit decode --pretty` against upstream's python crit over
//! every fixture image, one process per image as a user would run it.
//!
//! Usage: crit-bench [--iters N] [--ours PATH] [--python PATH] [FIXTURES_DIR]
//! Defaults: 3 iterations, `crit` next to this binary, /usr/bin/crit,
//! ../shared/fixtures/upstream relative to the workspace (or $CRIT_FIXTURES).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn images_of(set: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(set.join("images"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        n.ends_with(".img") && !n.starts_with("pages-")
    });
    v.sort();
    v
}

/// Run `prog decode --pretty -i img` once per image; total wall time.
fn run_set(prog: &Path, imgs: &[PathBuf]) -> Result<Duration, String> {
    let t = Instant::now();
    for img in imgs {
        let st = Command::new(prog)
            .args(["decode", "--pretty", "-i"])
            .arg(img)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("{}: {e}", prog.display()))?;
        if !st.success() {
            return Err(format!(
                "{} decode --pretty -i {} failed: {st}",
                prog.display(),
                img.display()
            ));
        }
    }
    Ok(t.elapsed())
}

/// Decode every image in this process `reps` times (no process start-up):
/// the cost of the decoder and JSON writer alone.
fn in_process_ours(imgs: &[(PathBuf, Vec<u8>)], reps: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..reps {
        for (p, b) in imgs {
            let out = tools::cli::decode_to_text(b, p, true, false, true).expect("decode");
            std::hint::black_box(out);
        }
    }
    t.elapsed() / reps as u32
}

/// The same inside one python process with pycriu (what /usr/bin/crit runs).
const PY_IN_PROCESS: &str = r#"
import io, json, sys, time
from pycriu import images
paths = sys.argv[2:]
reps = int(sys.argv[1])
data = [open(p, 'rb').read() for p in paths]
t = time.perf_counter()
for _ in range(reps):
    for d in data:
        img = images.load(io.BytesIO(d), True, False)
        s = io.StringIO()
        json.dump(img, s, indent=4)
print((time.perf_counter() - t) / reps)
"#;

fn in_process_python(imgs: &[(PathBuf, Vec<u8>)], reps: usize) -> Option<Duration> {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PY_IN_PROCESS)
        .arg(reps.to_string())
        .args(imgs.iter().map(|(p, _)| p))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut iters = 3usize;
    let mut ours: Option<PathBuf> = None;
    let mut python = PathBuf::from("/usr/bin/crit");
    let mut dir: Option<PathBuf> = std::env::var_os("CRIT_FIXTURES").map(PathBuf::from);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|s| s.parse().ok()).unwrap_or(3).max(1),
            "--ours" => ours = args.next().map(PathBuf::from),
            "--python" => python = args.next().map(PathBuf::from).unwrap_or(python),
            "-h" | "--help" => {
                println!(
                    "usage: crit-bench [--iters N] [--ours PATH] [--python PATH] [FIXTURES_DIR]"
                );
                return;
            }
            d => dir = Some(PathBuf::from(d)),
        }
    }
    let ours = ours.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("crit")))
            .unwrap_or_else(|| "crit".into())
    });
    let dir = dir.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/upstream")
    });
    if !python.exists() {
        eprintln!(
            "SKIP: {} not installed (apt-get install criu); nothing to compare against",
            python.display()
        );
        return;
    }
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            eprintln!("crit-bench: {}: {e}", dir.display());
            std::process::exit(1)
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("images").is_dir())
        .collect();
    sets.sort();

    println!(
        "crit decode --pretty, one process per image, {iters} iteration(s), best of each kept"
    );
    println!("ours:   {}", ours.display());
    println!("python: {}", python.display());
    println!(
        "{:<10} {:>6} {:>12} {:>12} {:>8}",
        "set", "images", "ours ms", "python ms", "ratio"
    );
    let (mut to, mut tp, mut nimg) = (Duration::ZERO, Duration::ZERO, 0usize);
    for set in &sets {
        let imgs = images_of(set);
        let (mut bo, mut bp) = (Duration::MAX, Duration::MAX);
        for _ in 0..iters {
            // Interleave so both see the same machine load.
            match (run_set(&ours, &imgs), run_set(&python, &imgs)) {
                (Ok(o), Ok(p)) => {
                    bo = bo.min(o);
                    bp = bp.min(p);
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("crit-bench: {e}");
                    std::process::exit(1);
                }
            }
        }
        let name = set.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        println!(
            "{:<10} {:>6} {:>12.1} {:>12.1} {:>7.1}x",
            name,
            imgs.len(),
            ms(bo),
            ms(bp),
            bp.as_secs_f64() / bo.as_secs_f64()
        );
        to += bo;
        tp += bp;
        nimg += imgs.len();
    }
    println!(
        "{:<10} {:>6} {:>12.1} {:>12.1} {:>7.1}x",
        "TOTAL",
        nimg,
        ms(to),
        ms(tp),
        tp.as_secs_f64() / to.as_secs_f64()
    );
    println!(
        "per image (process): ours {:.2} ms, python {:.2} ms",
        ms(to) / nimg.max(1) as f64,
        ms(tp) / nimg.max(1) as f64
    );

    // Decoder alone: every image decoded (--pretty) and rendered in one process.
    let all: Vec<(PathBuf, Vec<u8>)> = sets
        .iter()
        .flat_map(|s| images_of(s))
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    let reps = 5 * iters;
    let ours_ip = (0..iters).map(|_| in_process_ours(&all, reps)).min().unwrap_or_default();
    match (0..iters).filter_map(|_| in_process_python(&all, reps)).min() {
        Some(py_ip) => println!(
            "in-process, all {} images once: ours {:.2} ms, python (pycriu) {:.2} ms, ratio {:.1}x",
            all.len(),
            ms(ours_ip),
            ms(py_ip),
            py_ip.as_secs_f64() / ours_ip.as_secs_f64()
        ),
        None => println!("in-process: ours {:.2} ms for all {} images; python in-process run failed", ms(ours_ip), all.len()),
    }
}
