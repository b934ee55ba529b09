//! Fault points for tests: the engine SIGKILLs itself at a named point of
//! a dump or restore, so that tests can check what a crashed engine leaves
//! behind (the source must run on unchanged; a half-restored tree must be
//! gone; no image set may look complete).
//!
//! Hidden knob, read in this one place: `CRIU_RS_FAULT_AT=<point>` fires the
//! first time `<point>` is reached, `CRIU_RS_FAULT_AT=<point>@N` the N-th
//! time. `CRIU_RS_FAULT_AT=<point>:fail` makes the point fail with an error
//! instead (where the code asks [`fails`]), to test the cleanup paths of a
//! restore that fails on its own. `CRIU_RS_FAULT_AT=<point>:sigstop` sends
//! SIGSTOP to the process being dumped there instead (where the code asks
//! [`stop_point`]: the injection points), as an outsider's `kill -STOP`
//! would, and the engine goes on. Unset (the normal case) costs one cached
//! lookup per point.
//!
//! Points: dump `mid-freeze` (each time a process of the tree has been
//! stopped, before the next is seized), `after-freeze`, `mid-inject` (a thread is inside an injected
//! syscall, between its entry and exit stops), `mid-inject-thread` (the
//! same, in a thread other than the main one), `after-parasite`,
//! `mid-memory` (after the first page run is written), `mid-tracers` (a
//! tree dumped by tracer threads: the second process collected, by
//! whichever thread, while the others still inject; `:fail` fails that
//! thread's job), `mid-pump` (inside
//! an injected vmsplice of the page pump, pipe fds open in the source),
//! `before-inventory`, `tcp-repaired` (`--tcp-established`: every
//! established connection locked and in repair mode);
//! tfork `tfork-fork` (the source's main thread at the entry of the
//! injected clone3), `tfork-forked` (its fork event: the first clone S
//! exists, not yet PTRACE_O_EXITKILL), `tfork-source-released`,
//! `tfork-prepared` (S has its gadget), `tfork-clone-forked` (a further
//! clone forked from S), `tfork-mid-clone` (a clone's first thread made),
//! `tfork-before-release`, `tfork-mid-persist` (the image set staged, not
//! yet written: `--persist=sync|async`); tfork by restore (trees,
//! namespace inits) `tforktree-snapshot` (the frozen tree copied into a
//! tmpfs image set, the source not yet released), `tforktree-mid-park` (a
//! page run of the clones' memory parked, by a snapshot or a fill thread,
//! the engine's userfaultfd still registered; `:fail`, every snapshot
//! stops copying after its first), `tforktree-ns-made` (in the restoring helper: the
//! clone tree's pid namespace and stand-in init made), `tforktree-clone-made`
//! (a clone tree restored, its init not told to go on), `tforktree-before-go`,
//! `mntns-made` (in a restored root that owns its mount namespace, a
//! clone's or not: the namespace made, not yet pivot_root'ed into; only
//! `:fail`, the restore failing there);
//! restore `after-clone`, `after-reports` (every process of the tree
//! forked and set up, none seized yet), `mid-mm` (half the VMAs mapped), `mid-fill`
//! (after the first chunk of memory is copied in), `mid-threads` (after the
//! first extra thread is created), `report-pipe-held` (only `:fail`:
//! the restore children keep their end of the report pipe after their
//! report, for the pipelined restore to close it), `before-detach`, `mid-detach` (every
//! thread but the main one detached; `:fail` waits 300 ms first, so that
//! whatever was released would show).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{RwLock, RwLockReadGuard};

/// The windows of an injection session in which an engine that dies
/// leaves a thread changed (the scratch mapping's mmap, run from the
/// target's own text, and its final munmap: `dump/parasite.rs`, "Fault
/// safety"). A point that kills the engine first waits until no engine
/// thread is in one: with a tree dumped by several tracer threads, the
/// others are then at a point the design makes safe too, and a test sees
/// what the point it names leaves, not the chance of another thread's
/// window. (An engine killed from outside can still hit one, as with one
/// thread.)
static WINDOWS: RwLock<()> = RwLock::new(());

/// Held across such a window; `None` (no cost) unless a point is armed
/// to kill the engine.
pub fn window() -> Option<RwLockReadGuard<'static, ()>> {
    matches!(target(), Some((_, _, Action::Die))).then(|| WINDOWS.read().unwrap_or_else(|e| e.into_inner()))
}

/// Every point name the engine knows (tests iterate over these).
pub const POINTS: &[&str] = &[
    "mid-freeze",
    "after-freeze",
    "mid-inject",
    "mid-inject-thread",
    "after-parasite",
    "mid-memory",
    // a tree dumped by tracer threads: its second process collected
    "mid-tracers",
    "mid-pump",
    "before-inventory",
    "tcp-repaired",
    "after-clone",
    "after-reports",
    "mid-mm",
    "mid-fill",
    "mid-threads",
    // a tree restored by several engine threads: its second process restored
    "mid-workers",
    // (only `:fail`) every restore child keeps its end of the report pipe
    // after its report, as one seized before it closed it does
    "report-pipe-held",
    "before-detach",
    "mid-detach",
    "tfork-fork",
    "tfork-forked",
    "tfork-source-released",
    "tfork-prepared",
    "tfork-clone-forked",
    "tfork-mid-clone",
    "tfork-before-release",
    "tfork-mid-persist",
    // tfork of a tree (or a namespace init), by restore: the frozen tree
    // copied into its tmpfs set, the source not yet released; in the restoring
    // helper, the clone tree's pid namespace and stand-in init made, nothing
    // restored yet; in the engine, a clone tree restored and running (its
    // init not yet told to go on), and every clone tree made, none told
    "tforktree-snapshot",
    // the parking fill: a page run of the clones' memory parked, by a
    // snapshot's injected UFFDIO_COPY or on a fill thread
    "tforktree-mid-park",
    "tforktree-ns-made",
    "tforktree-clone-made",
    "tforktree-before-go",
    // in a clone's restore (its root process, crate::mntns::enter): its new
    // mount namespace made, the source's mounts copied in, before pivot_root
    "mntns-made",
    // tfork --root-snapshot: a clone's overlay mounted, its files not yet reopened
    "snapshot-mounted",
    // tfork --tcp-close: a fork-made clone's connections closed, the clone not yet released
    "tforktcp-closed",
];

/// Environment variable naming the point to die at.
pub const ENV: &str = "CRIU_RS_FAULT_AT";

/// What a point does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Die,
    Fail,
    SigStop,
}

/// (point, n-th hit, action)
fn target() -> Option<&'static (String, u64, Action)> {
    static T: OnceLock<Option<(String, u64, Action)>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (v, action) = if let Some(p) = v.strip_suffix(":fail") {
            (p.to_string(), Action::Fail)
        } else if let Some(p) = v.strip_suffix(":sigstop") {
            (p.to_string(), Action::SigStop)
        } else {
            (v, Action::Die)
        };
        let (name, n) = match v.split_once('@') {
            Some((a, b)) => (a.to_string(), b.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, n.max(1), action))
    })
    .as_ref()
}

/// Whether point `name` was asked to fail with an error (`<point>:fail`).
pub fn fails(name: &str) -> bool {
    matches!(target(), Some((want, _, Action::Fail)) if want == name)
}

/// Reached point `name` in an injection into thread `tid`: send SIGSTOP to
/// its process if the tests asked for it (`<point>:sigstop`, the N-th time).
pub fn stop_point(name: &str, tid: i32) {
    let Some((want, nth, Action::SigStop)) = target() else { return };
    if want != name {
        return;
    }
    static HITS: AtomicU64 = AtomicU64::new(0);
    if HITS.fetch_add(1, Ordering::Relaxed) + 1 != *nth {
        return;
    }
    crate::pr_warn!("fault point {name}: sending SIGSTOP to {tid} ({ENV})");
    let _ = crate::sys::process::kill(tid, libc::SIGSTOP);
}

/// Reached point `name`: die here with SIGKILL if the tests asked for it.
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown fault point {name}");
    let Some((want, nth, action)) = target() else { return };
    if want != name || *action != Action::Die {
        return;
    }
    static HITS: AtomicU64 = AtomicU64::new(0);
    if HITS.fetch_add(1, Ordering::Relaxed) + 1 != *nth {
        return;
    }
    crate::pr_warn!("fault point {name}: killing the engine ({ENV})");
    // (never released: the engine dies holding it)
    let _all = WINDOWS.write().unwrap_or_else(|e| e.into_inner());
    let _ = crate::sys::process::kill(std::process::id() as i32, libc::SIGKILL);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
