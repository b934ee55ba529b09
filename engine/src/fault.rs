//! Fault points for tests: the engine SIGKILLs itself at a named point of
//! a dump or restore, so that tests can check what a crashed engine leaves
//! behind (the source must run on unchanged; a half-restored tree must be
//! gone; no image set may look complete).
//!
//! Hidden knob, read in this one place: `CRIU_RS_FAULT_AT=<point>` fires the
//! first time `<point>` is reached, `CRIU_RS_FAULT_AT=<point>@N` the N-th
//! time. `CRIU_RS_FAULT_AT=<point>:fail` makes the point fail with an error
//! instead (where the code asks [`fails`]), to test the cleanup paths of a
//! restore that fails on its own. Unset (the normal case) costs one cached
//! lookup per point.
//!
//! Points: dump `after-freeze`, `mid-inject` (a thread is inside an injected
//! syscall, between its entry and exit stops), `mid-inject-thread` (the
//! same, in a thread other than the main one), `after-parasite`,
//! `mid-memory` (after the first page run is written), `mid-pump` (inside
//! an injected vmsplice of the page pump, pipe fds open in the source),
//! `before-inventory`;
//! restore `after-clone`, `mid-mm` (half the VMAs mapped), `mid-fill`
//! (after the first chunk of memory is copied in), `mid-threads` (after the
//! first extra thread is created), `before-detach`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every point name the engine knows (tests iterate over these).
pub const POINTS: &[&str] = &[
    "after-freeze",
    "mid-inject",
    "mid-inject-thread",
    "after-parasite",
    "mid-memory",
    "mid-pump",
    "before-inventory",
    "after-clone",
    "mid-mm",
    "mid-fill",
    "mid-threads",
    "before-detach",
];

/// Environment variable naming the point to die at.
pub const ENV: &str = "CRIU_RS_FAULT_AT";

/// (point, n-th hit, fail instead of dying)
fn target() -> Option<&'static (String, u64, bool)> {
    static T: OnceLock<Option<(String, u64, bool)>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (v, fail) = match v.strip_suffix(":fail") {
            Some(p) => (p.to_string(), true),
            None => (v, false),
        };
        let (name, n) = match v.split_once('@') {
            Some((a, b)) => (a.to_string(), b.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, n.max(1), fail))
    })
    .as_ref()
}

/// Whether point `name` was asked to fail with an error (`<point>:fail`).
pub fn fails(name: &str) -> bool {
    matches!(target(), Some((want, _, true)) if want == name)
}

/// Reached point `name`: die here with SIGKILL if the tests asked for it.
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown fault point {name}");
    let Some((want, nth, fail)) = target() else { return };
    if want != name || *fail {
        return;
    }
    static HITS: AtomicU64 = AtomicU64::new(0);
    if HITS.fetch_add(1, Ordering::Relaxed) + 1 != *nth {
        return;
    }
    crate::pr_warn!("fault point {name}: killing the engine ({ENV})");
    let _ = crate::sys::process::kill(std::process::id() as i32, libc::SIGKILL);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
