//! The `criu` command line: upstream's commands, options and exit codes
//! (0 success, 1 failure or bad usage), over this engine.
//!
//! Options are parsed as upstream's getopt_long parses them, from config
//! files and the command line ([`opts`]). Every upstream option this engine
//! does not implement is refused by name ("--evasive-devices is not
//! supported yet"), never ignored; the few that change nothing here are
//! accepted and listed ([`opts::ACCEPTED`]). A refusal or bad usage is
//! written to the `-o` log too when one is given.
//!
//! Paths: the log (`-o`) and a relative `--pidfile` are relative to the
//! work dir (`-W`), which defaults to the images dir (`-D`, default `.`).
//!
//! `restore` without `-d` waits for the restored root task to exit and
//! then exits 0, as upstream's `reap_zombies()` + `return ret != 0` do (the
//! root's own exit status is not passed on by upstream either).
//!
//! Errors are logged as `Error (FILE:LINE): ...` with the place in this
//! file where the failing step was called (a [`Failure`] records it with
//! `#[track_caller]`), or the line of `cli/opts.rs` that found a usage
//! problem; errors the engine logs itself carry their own `file!()`.

mod opts;
pub mod swrk;

use crate::model::{FileDesc, Tree};
use crate::options::Options as EngineOptions;
use crate::{cpuinfo, dump, images_io, log, pr_err, pr_info, pr_msg, pr_warn, restore};
use images_proto::magic as mg;
use images_proto::pb;
use opts::Opts;
use std::ffi::OsString;
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The criu version whose command line and image format we implement.
/// Container engines parse the first line of `criu --version`
/// ("Version: X.Y", the newest minimum among runc, crun and podman being
/// 3.15): it stays upstream's, and the lines after it say what this
/// binary is.
pub const VERSION: &str = "4.2";

/// Our own name and version.
pub const OWN_VERSION: &str = concat!("criu-rs ", env!("CARGO_PKG_VERSION"));

/// Upstream commands we don't implement, with what they are.
const REFUSED_COMMANDS: &[(&str, &str)] = &[
    ("pre-dump", "iterative pre-dump"),
    ("show", "image display (use crit)"),
    ("page-server", "the page server"),
    ("service", "the RPC service"),
    ("dedup", "image deduplication"),
    ("lazy-pages", "lazy page restore"),
    ("exec", "remote syscall execution"),
    ("image-cache", "the image cache"),
    ("image-proxy", "the image proxy"),
];

const DEFAULT_LOGLEVEL: u32 = log::LOG_WARN;

/// An error with the place in this file that reported it.
#[derive(Debug)]
pub struct Failure {
    msg: String,
    loc: &'static Location<'static>,
}

impl Failure {
    #[track_caller]
    fn new(msg: impl Into<String>) -> Failure {
        Failure { msg: msg.into(), loc: Location::caller() }
    }
}

/// `.here()`: turn any error into a [`Failure`] located at the caller.
trait Here<T> {
    fn here(self) -> Result<T, Failure>;
}

impl<T, E: Into<Box<dyn std::error::Error>>> Here<T> for Result<T, E> {
    /// Located where the error arose when it records that (restore's and
    /// tfork's I/O errors), else at the caller: the step that failed.
    #[track_caller]
    fn here(self) -> Result<T, Failure> {
        let step = Location::caller();
        self.map_err(|e| {
            let e: Box<dyn std::error::Error> = e.into();
            let arose = e
                .downcast_ref::<crate::restore::RestoreError>()
                .and_then(|r| r.location())
                .or_else(|| e.downcast_ref::<crate::dump::DumpError>().and_then(|d| d.location()))
                .or_else(|| e.downcast_ref::<crate::tfork::TforkError>().and_then(|t| t.location()));
            Failure { msg: error_chain(&*e), loc: arose.unwrap_or(step) }
        })
    }
}

/// `criu --version`. runc's parser (libcontainer, `-V`) takes any `-` in
/// the output for upstream's git format and then wants a `GitID:` line
/// before it: the text has no `-` at all (our name is written criu_rs).
fn version_text() -> String {
    let own = env!("CARGO_PKG_VERSION").replace('-', "~");
    format!(
        "Version: {VERSION}\n\
         Implementation: criu_rs {own}, an engine in Rust with the command line and image format of criu {VERSION}\n\
         no predump, page server or lazy pages; the RPC service is swrk only\n"
    )
}

fn usage() -> String {
    let accepted: String = opts::ACCEPTED.iter().map(|(o, why)| format!("  {o}\n      {why}\n")).collect();
    format!(
        "\
{OWN_VERSION}: checkpoint/restore of Linux processes in upstream CRIU
{VERSION}'s image format and command line: dump and restore of process trees
(any number of threads per process).

Usage:
  criu dump -t PID [-D DIR] [<options>]
  criu restore [-D DIR] [<options>]
  criu check [--feature NAME] [--extra] [--experimental] [--all]
  criu cpuinfo dump|check [-D DIR] [--cpu-cap[=CAPS]]
  criu tfork -t PID --copies N [--persist=none|sync|async] [-D DIR]
             [--root-snapshot overlay[:DIR]|btrfs[:DIR]] [--tcp-close]
  criu swrk FD
  criu --version | -V
  criu --help | -h

Commands:
  dump           checkpoint the process tree rooted at PID into image files
  restore        restore the process tree of an image set
  check          check that this kernel has what the engine needs
  cpuinfo dump   write this CPU's features into cpuinfo.img
  cpuinfo check  check cpuinfo.img against this CPU
  swrk FD        the RPC service (criu_req in, criu_resp out) on the
                 SOCK_SEQPACKET socket inherited as fd FD, as runc, crun,
                 podman and go-criu run it: VERSION, FEATURE_CHECK, CHECK,
                 DUMP, RESTORE, CPUINFO_DUMP/CHECK and our TFORK (4096)
  tfork          ours: N live clones of a running process or process tree:
                 one process: forks of it, siblings of it; a tree (or a
                 pid-namespace init): each clone tree in a new pid namespace
                 with the source's pids, its root a child of criu; prints
                 the clone (root) pids, one per line

Not implemented (refused by name): pre-dump, show, page-server, service,
dedup, lazy-pages, exec, image-cache, image-proxy.

Options:
  -t|--tree PID          dump: the root of the tree to checkpoint (the
                         process, its threads and all its descendants)
  -R|--leave-running     dump: leave the process running after the dump
  -d|--restore-detached  restore: detach from the restored process
  -S|--restore-sibling   restore: the restored root becomes a child of
                         criu's parent, not of criu (criu then does not
                         wait for it)
                         (--daemon is the same, as upstream)
  -D|--images-dir DIR    directory of the image files (default: .)
  -W|--work-dir DIR      directory for the log and a relative pidfile
                         (default: the images dir)
  -o|--log-file FILE     log file, relative to the work dir (default: stderr)
  -v[v...]|-vNUM|--verbosity[=NUM]
                         log level 0..4 (default 2: errors and warnings)
  --pidfile FILE         restore: write the restored pid here (created new)
  -j|--shell-job         allow a process attached to a terminal
  -x|--ext-unix-sk       dump: allow datagram unix sockets connected to a
                         named socket outside the dump (connected to its
                         name again on restore)
  --tcp-established      dump and restore: established TCP connections
                         carried live (TCP_REPAIR), locked with iptables
                         while dumped
  --manage-cgroups[=MODE]
                         dump and restore: cgroup memberships (soft, the
                         default: missing cgroups made with their
                         properties; full: properties always written;
                         strict: cgroups must not exist; none, props:
                         they must exist; ignore: not dumped or restored)
  --cgroup-root [CTRL:]PATH
                         restore: the tree root's cgroup (of hierarchy CTRL,
                         or of every other one) is PATH, the others below it
  --empty-ns net         dump, restore, tfork: the tree's own network
                         namespace is not dumped; restore makes a new,
                         empty one (for the runtime to set up)
  --inherit-fd fd[N]:KEY restore (repeatable): criu's open fd N stands for
                         the resource KEY of the image: pipe:[INO], a pipe
                         whose other end was outside the tree (each fd of
                         it a new open of fd N's pipe, the dumped end's
                         direction and flags), the name of an external
                         network namespace (joined), or a regular file's
                         path without its leading / (fd N's own open file
                         description), tty[RDEV:DEV] (a terminal dumped
                         with --external tty[RDEV:DEV]: a new open of fd
                         N, a pty slave); sockets refused
  --external net[INO]:KEY
                         dump: the tree's network namespace INO is not
                         dumped, only named KEY (restore joins the one
                         given with --inherit-fd fd[N]:KEY); also
                         mnt[MOUNTPOINT]:KEY (dump), mnt[KEY]:PATH (restore),
                         mnt[] (dump: every mount criu's own namespace
                         shows, keyed by its path there; restore them
                         with --ext-mount-map auto),
                         tty[RDEV:DEV] (dump: a pty slave whose master is
                         outside the tree, st_rdev and st_dev in hex)
  --tcp-close            dump and restore: TCP connections restored closed;
                         tfork: the source's TCP connections to peers
                         outside the tree closed in the clones (without
                         it tfork refuses them: a clone would share them)
  -r|--root DIR          restore: the root directory to restore under
  --freeze-cgroup PATH   dump: freeze this cgroup (v2 or v1 freezer) first
  --timeout N            dump: wait at most N seconds for that (default 10)
  --ghost-limit SIZE     dump: the most bytes (K, M, G suffixes) an open
                         file unlinked from everywhere may hold (default 1M)
  --link-remap           dump: an open file unlinked from its name but
                         linked elsewhere gets a link_remap.N beside it
  -l|--file-locks        dump: dump the flock, POSIX and OFD locks held
                         (restore takes the image's locks again)
  --cpu-cap[=CAPS]       CPU checks, a list of fpu, cpu, ins, all, none
                         (^ inverts): dump writes cpuinfo.img, restore
                         checks it (default without the option: fpu, no
                         cpuinfo.img)
  --display-stats        print dump/restore statistics
  --copies N             tfork: how many clones
  --persist MODE         tfork: image set of the frozen moment in -D: none
                         (default), sync (durable on return) or async
                         (return once the clones run; the outcome in
                         -D/tfork-persist.status)
  --root-snapshot MODE   tfork: each clone its own copy of the source's
                         directory (its cwd, or DIR) in a mount namespace
                         of the clone's own: overlay[:DIR], an overlayfs
                         (upper dir -D/tfork-root/CLONE_PID/upper), or
                         btrfs[:DIR], a snapshot of its subvolume
                         (-D/tfork-root/CLONE_PID/snap, -D on that btrfs)
                         (a source owning its mount namespace: of its
                         root mount; btrfs where that root directory is
                         on btrfs)
  --feature NAME         check: one feature by upstream's name
  --extra, --experimental, --all
                         check: accepted; every probe always runs
  --config FILE          read options from FILE (instead of the default
                         /etc/criu/default.conf and ~/.criu/default.conf)
  --no-default-config    don't read the default config files

Accepted, changing nothing here:
{accepted}
Every other upstream option is refused with a message naming it.
"
    )
}

fn images_dir(o: &Opts) -> PathBuf {
    PathBuf::from(o.images_dir.as_deref().unwrap_or("."))
}

fn work_dir(o: &Opts) -> PathBuf {
    o.work_dir.as_deref().map(PathBuf::from).unwrap_or_else(|| images_dir(o))
}

fn in_work_dir(o: &Opts, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        work_dir(o).join(p)
    }
}

fn setup_log(o: &Opts) -> Result<(), String> {
    let level = o.loglevel.unwrap_or(DEFAULT_LOGLEVEL);
    let out: Box<dyn std::io::Write + Send> = match o.log_file.as_deref() {
        None | Some("-") => Box::new(std::io::stderr()),
        Some(f) => {
            let p = in_work_dir(o, Path::new(f));
            Box::new(std::fs::File::create(&p).map_err(|e| format!("can't create log file {}: {e}", p.display()))?)
        }
    };
    log::init(level, out);
    pr_info!("Version: {VERSION} ({OWN_VERSION})");
    let k = |f: &str| std::fs::read_to_string(format!("/proc/sys/kernel/{f}")).unwrap_or_default().trim().to_string();
    pr_info!("Running on {} Linux {} {} {}", k("hostname"), k("osrelease"), k("version"), std::env::consts::ARCH);
    for f in &o.configs_read {
        pr_info!("Read config file {f}");
    }
    for f in &o.configs_missing {
        pr_info!("No config file {f}, skipped");
    }
    Ok(())
}

use crate::log::error_chain;

/// A terminal among the dumped fds, refused unless `--shell-job`.
#[track_caller]
fn check_ttys(tree: &Tree, shell_job: bool, orphan_pts_master: bool) -> Result<(), Failure> {
    if shell_job {
        return Ok(());
    }
    for t in &tree.tasks {
        for fd in &t.fds {
            if let FileDesc::Kind(crate::kinds::Kind::Tty(crate::kinds::tty::Tty { path, slave, rdev, ext, .. })) = &fd.file {
                // (RPC orphan_pts_master: a pty slave whose master is
                // outside, with its pair's state read)
                if (orphan_pts_master || *ext) && slave.is_some() && crate::kinds::pty::slave_index(*rdev).is_some() {
                    continue;
                }
                return Err(Failure::new(format!(
                    "fd {} of {} is a terminal ({path}). Task attached to shell job? Consider using --shell-job option.",
                    fd.fd, t.pid
                )));
            }
        }
    }
    Ok(())
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// stats-dump / stats-restore into the images dir, as upstream writes
/// them after a successful dump or restore. A failure to write is a
/// warning: the dump or restore itself is done.
fn write_stats(dir: &Path, what: &str, e: &pb::StatsEntry) {
    if let Err(err) = images_proto::image::write_all(dir, &mg::STATS.file_name(what), &mg::STATS, std::slice::from_ref(e)) {
        pr_warn!("writing stats-{what} in {}: {err}", dir.display());
    }
}

/// Link remaps a dump made, removed on drop (a dump that failed, or whose
/// processes run on) unless emptied.
struct LinkRemaps(Vec<String>);

impl Drop for LinkRemaps {
    fn drop(&mut self) {
        dump::files::remove_link_remaps(&self.0);
    }
}

/// The engine's options from the command line's (the one options type;
/// the RPC service's requests come here too, mapped to `Opts` by `swrk`).
fn engine_options(o: &Opts) -> EngineOptions {
    EngineOptions {
        freeze_cgroup: o.freeze_cgroup.as_deref().map(PathBuf::from),
        freeze_timeout: o.timeout.map_or(dump::cgroup_freeze::DEFAULT_TIMEOUT, Duration::from_secs),
        ghost_limit: o.ghost_limit.unwrap_or(dump::files::GHOST_LIMIT),
        file_locks: o.file_locks,
        link_remap: o.link_remap,
        ext_unix_sk: o.ext_unix_sk,
        tcp_close: o.tcp_close,
        tcp_established: o.tcp_established,
        shell_job: o.shell_job,
        detached: o.detached,
        pidfile: o.pidfile.as_deref().map(PathBuf::from),
        root: o.root.as_deref().map(PathBuf::from),
        sibling: o.restore_sibling,
        manage_cgroups: o.manage_cgroups,
        cgroup_root: o.cgroup_root.clone(),
        ext_mnt: o.ext_mnt.clone(),
        auto_ext_mnt: o.auto_ext_mnt,
        inherit_fds: o.inherit_fd.clone(),
        orphan_pts_master: o.orphan_pts_master,
    }
}

/// `--network-lock` for `--tcp-established`: iptables (the default), or
/// skip; nftables is refused.
fn network_lock(o: &Opts) -> Result<(), Failure> {
    // (and `--empty-ns net`, which dump and restore take as well)
    crate::netns::set_empty(o.empty_net);
    crate::netns::set_external(o.ext_net.clone());
    match o.network_lock.as_deref() {
        Some("nftables") if o.tcp_established => Err(Failure::new("--network-lock nftables is not supported yet (the iptables lock, the default, is)")),
        v => {
            crate::kinds::tcp_stream::set_lock_skip(v == Some("skip"));
            Ok(())
        }
    }
}

fn run_dump(o: &Opts) -> Result<(), Failure> {
    network_lock(o)?;
    let pid: i32 = match o.tree.as_deref() {
        None => return Err(Failure::new("pid not specified (-t PID)")),
        Some(t) => t.parse().ok().filter(|&p| p > 0).ok_or_else(|| Failure::new(format!("invalid argument for -t: {t}")))?,
    };
    let dir = images_dir(o);
    if !dir.is_dir() {
        return Err(Failure::new(format!("images directory {} does not exist", dir.display())));
    }
    pr_info!("========================================");
    pr_info!("Dumping processes (pid: {pid})");
    pr_info!("========================================");
    let t0 = Instant::now();
    crate::notify::script("pre-dump", None).map_err(Failure::new)?;
    // a tree is seized, collected and its memory copied by tracer threads
    // (one per CPU), one process by the main thread alone; and a tree with
    // --tcp-established too: the guard of its held connections is forked
    // (fork3) from the engine during the collection, which a fork-like
    // clone allows only while the engine has one thread
    let tree_on_cpus = dump::has_children(pid) && !o.tcp_established;
    let tracers = dump::tracers(if tree_on_cpus { usize::MAX } else { 1 });
    let (mut tree, mut frozen) = dump::collect_tree_on(pid, &engine_options(o), &tracers).here()?;
    // --external tty[RDEV:DEV]: those terminals are outside (EXT_TTY)
    for &(rdev, dev) in &o.ext_tty {
        let mut hit = false;
        for f in tree.tasks.iter_mut().flat_map(|t| t.fds.iter_mut()) {
            if let FileDesc::Kind(crate::kinds::Kind::Tty(t)) = &mut f.file {
                if t.rdev == rdev && t.dev.map(u64::from) == Some(dev) {
                    t.ext = true;
                    hit = true;
                }
            }
        }
        if !hit {
            crate::pr_warn!("--external {}: no fd of the tree is that terminal", crate::inherit::tty_key(rdev, dev));
        }
    }
    // (a refusal from here on releases the tree as it was: `frozen` dropped)
    for stage in ["network-lock", "query-ext-files"] {
        crate::notify::script(stage, None).map_err(Failure::new)?;
    }
    // --link-remap's links stay only for a dump that succeeds and ends the
    // processes (the restore needs them then), as upstream's
    let mut link_remaps = LinkRemaps(
        tree.tasks
            .iter()
            .flat_map(|t| &t.fds)
            .filter_map(|f| match &f.file {
                crate::model::FileDesc::Kind(crate::kinds::Kind::Reg(crate::kinds::reg::Reg { link: Some(l), .. })) => Some(l.clone()),
                _ => None,
            })
            .collect(),
    );
    link_remaps.0.sort();
    link_remaps.0.dedup();
    let t_frozen = Instant::now();
    check_ttys(&tree, o.shell_job, o.orphan_pts_master)?;
    let dump_pages: u64 = tree.tasks.iter().flat_map(|t| &t.mm.pages).map(|r| r.nr_pages).sum();
    // the root's memory through the page pump when it pays off; the other
    // processes' (and the root's otherwise) read from outside
    let root_bytes: u64 = tree.root().mm.pages.iter().map(|r| r.nr_pages * crate::sys::PAGE_SIZE).sum();
    // (with tracer threads the root's is copied by its own, below)
    let pump = if !tracers.is_empty() || std::env::var("CRIU_RS_DUMP_READ").is_ok() || !dump::page_pump::pays_off(root_bytes) {
        None
    } else {
        match dump::page_pump::PagePump::start(&frozen.procs[0]) {
            Ok(p) => Some(p),
            Err(e) => {
                pr_warn!("page pump of {pid} unavailable ({e}); reading its memory instead");
                None
            }
        }
    };
    let t_pump = Instant::now();
    // the others' each through a pump of its own, started for its copy
    // only (one at a time), or read from outside
    let mut plain = Vec::with_capacity(tree.tasks.len());
    for (i, m) in frozen.members.iter().enumerate() {
        if !tracers.is_empty() {
            // (the tracer threads copy every process's memory: below)
            break;
        }
        plain.push(match m.frozen {
            Some(k) if !(i == 0 && pump.is_some()) => {
                Some(dump::page_pump::PumpOnDemand::new(&frozen.procs[k]).map_err(|e| format!("opening memory of {}: {e}", m.pid)).here()?)
            }
            _ => None,
        });
    }
    let mems: Vec<Option<&dyn crate::mem_source::MemSource>> = plain
        .iter()
        .enumerate()
        .map(|(i, p)| match (i, &pump, p) {
            (0, Some(pump), _) => Some(pump as &dyn crate::mem_source::MemSource),
            (_, _, Some(p)) => Some(p as &dyn crate::mem_source::MemSource),
            _ => None,
        })
        .collect();
    let run_id = format!("criu-rs-{}-{}", std::process::id(), t0.elapsed().as_nanos());
    // images become visible only when complete (inventory last)
    // (a tree into a fresh directory: written straight into it, no renames)
    let staging = if tracers.is_empty() { dump::staging::Staging::new(&dir) } else { dump::staging::Staging::new_direct_if_fresh(&dir) }.here()?;
    if o.cpu_cap & cpuinfo::CAP_IMAGE != 0 {
        cpuinfo::write_image(staging.path()).here()?;
    }
    if tracers.is_empty() {
        images_io::write_images(&tree, staging.path(), &mems, &run_id).here()?;
    } else {
        // each process's pages files written by its tracer thread (its
        // page pump is an injection session), all threads at once, the
        // other images meanwhile by this one (each job reads back and checks
        // the pages files it wrote); then the inventory
        let ids = images_io::memory_ids(&tree);
        let dir = staging.path();
        type MemJob<'a> = Box<dyn FnOnce() -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + 'a>;
        let jobs: Vec<crate::sys::tracer::Work<'_, '_, _>> = tree
            .tasks
            .iter()
            .zip(&frozen.members)
            .zip(&ids)
            .filter_map(|((task, m), ids)| {
                let (f, ids) = (&frozen.procs[m.frozen?], ids.as_ref()?);
                let job: MemJob<'_> = Box::new(move || {
                    let mem = dump::page_pump::PumpOnDemand::new(f).map_err(|e| format!("opening memory of {}: {e}", f.pid))?;
                    Ok(images_io::write_memory(dir, task, ids, &mem)?)
                });
                Some((f.tracer.as_ref(), job))
            })
            .collect();
        let mut jobs = jobs;
        jobs.push((
            None,
            Box::new(|| {
                images_io::write_images_but_memory(&tree, dir)?;
                crate::pr_debug!("images but the pages written");
                Ok(())
            }),
        ));
        for r in crate::sys::tracer::run_all(jobs) {
            r.map_err(|e| Failure::new(e.to_string()))?.map_err(|e| e as Box<dyn std::error::Error>).here()?;
        }
        pr_info!("memory of the tree written by {} tracer threads", tracers.len());
        staging.before_inventory().here()?;
        images_io::finish_images(&tree, dir, &run_id).here()?;
    }
    crate::pr_debug!("inventory written");
    let t_written = Instant::now();
    // the pump's pipe closed and its injection session ended before the
    // images are published and the source is released
    drop(mems);
    drop(pump);
    staging.publish().here()?;
    pr_info!("images written");
    crate::notify::script("post-dump", None).map_err(Failure::new)?;
    if !o.leave_running {
        link_remaps.0.clear();
        frozen.kill_on_release = true;
    }
    drop(frozen);
    if o.leave_running {
        crate::notify::script("network-unlock", None).map_err(Failure::new)?;
    }
    let t_end = Instant::now();
    let scanned: u64 = tree.tasks.iter().flat_map(|t| &t.mm.vmas).map(|v| (v.end - v.start) / crate::sys::PAGE_SIZE).sum();
    let stats = pb::DumpStatsEntry {
        freezing_time: micros(t_frozen - t0),
        frozen_time: micros(t_end - t_frozen),
        memdump_time: micros(t_pump - t_frozen),
        memwrite_time: micros(t_written - t_pump),
        pages_scanned: scanned,
        pages_skipped_parent: 0,
        pages_written: dump_pages,
        irmap_resolve: Some(0),
        pages_lazy: 0,
        page_pipes: None,
        page_pipe_bufs: None,
        shpages_scanned: None,
        shpages_skipped_parent: None,
        shpages_written: None,
    };
    if o.display_stats {
        pr_msg!(
            "Displaying dump stats:\nFreezing time: {} us\nFrozen time: {} us\nMemory dump time: {} us\nMemory write time: {} us\n\
             IRMAP resolve time: 0 us\nMemory pages scanned: {scanned} ({scanned:#x})\nMemory pages skipped from parent: 0 (0x0)\n\
             Memory pages written: {dump_pages} ({dump_pages:#x})\nLazy memory pages: 0 (0x0)",
            stats.freezing_time,
            stats.frozen_time,
            stats.memdump_time,
            stats.memwrite_time
        );
    }
    write_stats(&dir, "dump", &pb::StatsEntry { dump: Some(stats), restore: None });
    pr_info!("Dumping finished successfully");
    Ok(())
}

/// `criu tfork -t PID --copies N [--persist=none|sync|async]`: prints each
/// clone's pid on a line of its own (stdout), in the order they were released.
fn run_tfork(o: &Opts) -> Result<(), Failure> {
    for c in tfork_clones(o)? {
        println!("{c}");
    }
    Ok(())
}

/// The tfork of `run_tfork` and of the RPC's TFORK request: the clones'
/// pids, in the order they were released.
fn tfork_clones(o: &Opts) -> Result<Vec<crate::sys::Pid>, Failure> {
    // (each clone of a tree owning its network namespace gets a new empty
    // one with `--empty-ns net`)
    crate::netns::set_empty(o.empty_net);
    let pid: crate::sys::Pid = match o.tree.as_deref() {
        None => return Err(Failure::new("tfork needs -t PID")),
        Some(t) => t.parse().ok().filter(|&p| p > 0).ok_or_else(|| Failure::new(format!("invalid argument for -t: {t}")))?,
    };
    let copies: usize = match o.copies.as_deref() {
        None => return Err(Failure::new("tfork needs --copies N")),
        Some(n) => n.parse().ok().filter(|&n| n > 0).ok_or_else(|| Failure::new(format!("invalid argument for --copies: {n} (want a count, > 0)")))?,
    };
    let persist = match o.persist.as_deref().unwrap_or("none") {
        "none" => crate::tfork::Persist::None,
        "sync" => crate::tfork::Persist::Sync,
        "async" => crate::tfork::Persist::Async,
        m => return Err(Failure::new(format!("unknown --persist mode {m:?} (none, sync, async)"))),
    };
    for (set, name) in [(o.leave_running, "--leave-running"), (o.detached, "--restore-detached"), (o.shell_job, "--shell-job")] {
        if set {
            return Err(Failure::new(format!("{name} does not apply to tfork")));
        }
    }
    if o.root.is_some() || o.freeze_cgroup.is_some() || o.pidfile.is_some() {
        return Err(Failure::new("--root, --freeze-cgroup and --pidfile are not supported by tfork yet"));
    }
    if o.tcp_established {
        // (a connection can't be live in the source and in a clone: the
        // same 4-tuple twice in one network namespace)
        return Err(Failure::new("--tcp-established does not apply to tfork: a clone can't carry the source's live connection (--tcp-close closes it in the clones)"));
    }
    let images_dir = images_dir(o);
    if persist != crate::tfork::Persist::None && !images_dir.is_dir() {
        return Err(Failure::new(format!("images directory {} does not exist", images_dir.display())));
    }
    // measurement knob: processes forking clones at the same time
    let forkers = std::env::var("CRIU_RS_TFORK_FORKERS").ok().and_then(|v| v.parse().ok());
    // io_uring for the image set unless CRIU_RS_IO_URING=off (tests, measurements)
    let plain_writes = std::env::var("CRIU_RS_IO_URING").as_deref() == Ok("off");
    let root_snapshot = o.root_snapshot.as_deref().map(crate::root_snapshot::Mode::parse).transpose().map_err(Failure::new)?;
    let topts = crate::tfork::TforkOpts { copies, persist, forkers, images_dir, plain_writes, root_snapshot, tcp_close: o.tcp_close };
    if persist == crate::tfork::Persist::Async {
        return tfork_async(pid, &topts);
    }
    let rep = crate::tfork::tfork(pid, &topts).here()?;
    pr_info!(
        "tfork of {pid}: source paused {:.3} ms, first clone running after {:.3} ms, all {} after {:.3} ms",
        rep.pause.as_secs_f64() * 1e3,
        rep.first.as_secs_f64() * 1e3,
        rep.clones.len(),
        rep.all.as_secs_f64() * 1e3
    );
    if let Some(t) = rep.persisted {
        pr_info!("tfork of {pid}: image set durable after {:.3} ms", t.as_secs_f64() * 1e3);
    }
    Ok(rep.clones)
}

/// Name of the status file of `--persist=async` in the images dir.
pub const TFORK_STATUS: &str = "tfork-persist.status";

/// Write the async status file atomically (a temporary file renamed).
fn write_status(dir: &Path, text: &str) {
    let tmp = dir.join(format!(".{TFORK_STATUS}.tmp"));
    let ok = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(TFORK_STATUS)));
    if let Err(e) = ok {
        pr_err!("can't write {}: {e}", dir.join(TFORK_STATUS).display());
    }
}

/// `--persist=async`: the engine runs in a forked process that tells this
/// one the clones' pids on a pipe once they run; this one prints them and
/// returns, while the engine writes the image set and then records the
/// outcome in `-D/tfork-persist.status`: `writing PID` (the writer's pid:
/// a status still saying so with PID gone means the writer died), then
/// `done` or `failed: WHY` (and the log says the same).
fn tfork_async(pid: crate::sys::Pid, topts: &crate::tfork::TforkOpts) -> Result<Vec<crate::sys::Pid>, Failure> {
    use crate::sys::process as p;
    use std::io::Read;
    let _ = std::fs::remove_file(topts.images_dir.join(TFORK_STATUS));
    let (rd, wr) = p::pipe().here()?;
    let dir = topts.images_dir.clone();
    let (rd_fd, wr_fd) = (std::os::fd::AsRawFd::as_raw_fd(&rd), std::os::fd::AsRawFd::as_raw_fd(&wr));
    let writer = p::fork3(0, &[], libc::SIGCHLD, || {
        // (the child's copies of the pipe ends, by number: the OwnedFds are the parent's)
        p::close(rd_fd);
        let mut wr = Some(wr_fd);
        let say = |wr: &mut Option<i32>, text: &str| {
            if let Some(fd) = wr.take() {
                p::write_fd(fd, text.as_bytes());
                p::close(fd);
            }
        };
        write_status(&dir, &format!("writing {}\n", std::process::id()));
        let res = crate::tfork::tfork_with(pid, topts, &mut |clones| {
            let line: Vec<String> = clones.iter().map(|c| c.to_string()).collect();
            say(&mut wr, &format!("ok {}\n", line.join(" ")));
        });
        match res {
            Ok(_) => {
                pr_info!("tfork of {pid}: image set written (--persist=async)");
                write_status(&dir, "done\n");
                p::exit_now(0)
            }
            Err(e) => {
                let msg = error_chain(&e);
                pr_err!("tfork of {pid}: {msg}");
                say(&mut wr, &format!("failed {msg}\n"));
                write_status(&dir, &format!("failed: {msg}\n"));
                p::exit_now(1)
            }
        }
    })
    .here()?;
    drop(wr);
    let mut msg = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut msg);
    match msg.lines().next() {
        Some(l) if l.starts_with("ok ") => {
            pr_info!("tfork of {pid}: clones running; image set being written by {writer} (status in {})", topts.images_dir.join(TFORK_STATUS).display());
            l[3..].split_whitespace().map(|c| c.parse().map_err(|_| Failure::new(format!("the tfork engine {writer} sent a bad pid {c:?}")))).collect()
        }
        Some(l) => {
            // a failure before the clones ran: the writer exits at once
            let _ = crate::sys::ptrace::wait_flags(writer, 0);
            Err(Failure::new(l.strip_prefix("failed ").unwrap_or(l).to_string()))
        }
        None => {
            let _ = crate::sys::ptrace::wait_flags(writer, 0);
            Err(Failure::new(format!("the tfork engine {writer} ended without a word")))
        }
    }
}

fn run_restore(o: &Opts) -> Result<i32, Failure> {
    let pid = restore_root(o)?;
    // a sibling is not ours to wait for: its parent is criu's parent
    if o.detached || o.restore_sibling {
        return Ok(0);
    }
    // as upstream: wait for the tree, then exit 0 whatever its status
    match crate::sys::ptrace::wait_flags(pid, 0) {
        Ok(Some(w)) => {
            pr_info!("Restored task {pid} ended: {w:?}");
            Ok(0)
        }
        other => Err(Failure::new(format!("waiting for the restored task {pid}: {other:?}"))),
    }
}

/// The restore of `run_restore` and of the RPC's RESTORE request: the
/// restored root's pid (in criu's pid namespace).
fn restore_root(o: &Opts) -> Result<crate::sys::Pid, Failure> {
    let dir = images_dir(o);
    let t0 = Instant::now();
    crate::notify::script("pre-restore", None).map_err(Failure::new)?;
    // (--tcp-close decides how the images are read)
    crate::kinds::inet::set_tcp_close(o.tcp_close);
    crate::kinds::inet::set_tcp_established(o.tcp_established);
    network_lock(o)?;
    if o.cpu_cap & cpuinfo::CAP_IMAGE != 0 {
        cpuinfo::check_image(&dir, o.cpu_cap).here()?;
    }
    // read (and checked: pstree first) before the per-thread CPU check reads the cores again
    let (mut tree, mut pages) = images_io::read_images(&dir).here()?;
    // RPC orphan_pts_master: pty slaves whose master was outside the tree
    // get new pairs, their masters handed to the client
    // (and --inherit-fd fd[N]:tty[RDEV:DEV] of a slave dumped with
    // --external tty[RDEV:DEV]: restored from fd N)
    let keys: Vec<String> = o.inherit_fd.iter().map(|(_, k)| k.clone()).collect();
    let n = crate::kinds::pty::adopt_orphans(&mut tree, o.orphan_pts_master, &keys);
    if n > 0 {
        pr_info!("{n} pty slave(s) whose master was outside the tree: new pairs (masters to the client: orphan-pts-master) or inherited fds");
    }
    // read once: each process's mappings let go of their page tables once
    // it is filled (not all torn down at the end, after the tree runs)
    pages.iter_mut().for_each(crate::mem_source::PagesImage::release_when_filled);
    cpuinfo::check_threads(&dir, o.cpu_cap).here()?;
    let pidfile = o.pidfile.as_deref().map(|p| in_work_dir(o, Path::new(p)));
    let ropts = EngineOptions { pidfile, ..engine_options(o) };
    let mems: Vec<&dyn crate::mem_source::MemSource> = pages.iter().map(|m| m as &dyn crate::mem_source::MemSource).collect();
    let pid = restore::restore(&tree, &mems, &ropts).here()?;
    // the dump's link remaps have served (upstream removes them after its
    // restore too); inside --root when given
    for t in &tree.tasks {
        for f in &t.fds {
            if let crate::model::FileDesc::Kind(crate::kinds::Kind::Reg(crate::kinds::reg::Reg { link: Some(l), .. })) = &f.file {
                let r = match &ropts.root {
                    Some(root) => crate::sys::ns::open_root_dir(root, 0).and_then(|d| crate::sys::ns::unlink_in_root(std::os::fd::AsFd::as_fd(&d), std::ffi::OsStr::new(l))),
                    None => std::fs::remove_file(l),
                };
                match r {
                    Ok(()) => crate::pr_debug!("removed link remap {l}"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => pr_warn!("removing link remap {l}: {e}"),
                }
            }
        }
    }
    let restored: u64 = tree.tasks.iter().flat_map(|t| &t.mm.pages).map(|r| r.nr_pages).sum();
    // forking is not a separate stage here (one process): 0, as upstream
    // reports for a single process too
    let stats = pb::RestoreStatsEntry {
        pages_compared: 0,
        pages_skipped_cow: 0,
        forking_time: 0,
        restore_time: micros(t0.elapsed()),
        pages_restored: Some(restored),
    };
    if o.display_stats {
        pr_msg!(
            "Displaying restore stats:\nPages compared: 0 (0x0)\nPages skipped COW: 0 (0x0)\nPages restored: {restored} ({restored:#x})\n\
             Restore time: {} us\nForking time: 0 us",
            stats.restore_time
        );
    }
    write_stats(&dir, "restore", &pb::StatsEntry { dump: None, restore: Some(stats) });
    Ok(pid)
}

fn run_cpuinfo(o: &Opts) -> Result<(), Failure> {
    let dir = images_dir(o);
    match o.args.first().map(String::as_str) {
        Some("dump") => cpuinfo::write_image(&dir).here(),
        Some("check") => {
            // as upstream: with every check off, `cpuinfo check` does them all
            let cap = if o.cpu_cap & cpuinfo::CAP_ALL == 0 { o.cpu_cap | cpuinfo::CAP_ALL } else { o.cpu_cap };
            cpuinfo::check_image(&dir, cap).here()?;
            pr_info!("cpuinfo.img is compatible with this CPU");
            Ok(())
        }
        Some(a) => Err(Failure::new(format!("unknown cpuinfo action {a} (dump or check)"))),
        None => Err(Failure::new("cpuinfo requires an action: dump or check")),
    }
}

/// One feature probe: Ok, or what is missing.
type Probe = (&'static str, bool, fn() -> Result<(), String>);

fn probe_ptrace_and_set_tid() -> Result<(), String> {
    use crate::sys::process as p;
    use crate::sys::ptrace;
    // PTRACE_SEIZE of a child
    let child = p::fork3(0, &[], libc::SIGCHLD, || p::pause_forever()).map_err(|e| format!("clone3: {e}"))?;
    let seized = ptrace::seize(child, 0).map_err(|e| format!("PTRACE_SEIZE: {e}"));
    let _ = p::kill(child, libc::SIGKILL);
    let _ = ptrace::wait_flags(child, 0);
    seized?;
    // clone3 with set_tid: a pid well above the last one handed out
    let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1000);
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
    let mut err = String::new();
    for i in 0..20 {
        // in 300..pid_max (a pid at or past pid_max is EINVAL, not EEXIST)
        let want = 300 + (last + 5000 + i * 97) % (max.max(1301) - 300);
        if Path::new(&format!("/proc/{want}")).exists() {
            continue;
        }
        match p::fork3(0, &[want], libc::SIGCHLD, || p::exit_now(0)) {
            Ok(c) => {
                let _ = ptrace::wait_flags(c, 0);
                return if c == want { Ok(()) } else { Err(format!("clone3 set_tid={want} gave pid {c}")) };
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => err = format!("clone3 with set_tid: {e}"),
        }
        break;
    }
    Err(if err.is_empty() { "clone3 with set_tid: no free pid found to try".into() } else { err })
}

fn probe_mm_map() -> Result<(), String> {
    let size = crate::sys::process::mm_map_size().map_err(|e| format!("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): {e}"))?;
    if size == 0 {
        return Err("PR_SET_MM_MAP_SIZE returned 0".into());
    }
    Ok(())
}

static PROBE_WORD: u64 = 0x5a5a_1234_abcd_0042;

fn probe_proc_mem() -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem").map_err(|e| format!("open /proc/self/mem: {e}"))?;
    let mut b = [0u8; 8];
    f.read_at(&mut b, &PROBE_WORD as *const u64 as u64).map_err(|e| format!("reading /proc/self/mem: {e}"))?;
    if u64::from_ne_bytes(b) != PROBE_WORD {
        return Err("/proc/self/mem returned the wrong bytes".into());
    }
    Ok(())
}

fn probe_pagemap_scan() -> Result<(), String> {
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
    crate::sys::pagemap::probe_scan(&f).map_err(|e| format!("PAGEMAP_SCAN ioctl: {e} (kernel older than 6.7?)"))
}

fn probe_pidfd() -> Result<(), String> {
    crate::sys::process::pidfd_open(std::process::id() as i32).map(drop).map_err(|e| format!("pidfd_open: {e}"))
}

fn probe_userfaultfd() -> Result<(), String> {
    crate::sys::process::probe_userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(|e| format!("userfaultfd: {e}"))
}

fn probe_vdso() -> Result<(), String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    if !maps.lines().any(|l| l.ends_with("[vdso]")) {
        return Err("no [vdso] mapping".into());
    }
    if !maps.lines().any(|l| l.ends_with("[vvar]")) {
        return Err("no [vvar] mapping next to the vdso".into());
    }
    Ok(())
}

fn probe_zero_pfn() -> Result<(), String> {
    match crate::sys::mmap::zero_page_pfn() {
        Ok(pfn) if pfn != 0 => Ok(()),
        _ => Err("pagemap PFNs are hidden (need CAP_SYS_ADMIN)".into()),
    }
}

fn probe_kcmp() -> Result<(), String> {
    let me = std::process::id() as i32;
    crate::sys::process::kcmp_file(me, 0, me, 0).map(drop).map_err(|e| format!("kcmp(KCMP_FILE): {e}"))
}

/// (name, needed, probe): a missing needed feature fails the check; a
/// missing optional one is reported as upstream reports missing extras.
const PROBES: &[Probe] = &[
    ("ptrace + clone3 set_tid", true, probe_ptrace_and_set_tid),
    ("PR_SET_MM_MAP", true, probe_mm_map),
    ("/proc/PID/mem", true, probe_proc_mem),
    ("pidfd", true, probe_pidfd),
    ("vdso layout", true, probe_vdso),
    ("pagemap PFNs", true, probe_zero_pfn),
    ("PAGEMAP_SCAN", false, probe_pagemap_scan),
    ("userfaultfd", false, probe_userfaultfd),
    ("kcmp", false, probe_kcmp),
    ("io_uring", false, probe_io_uring),
];

fn probe_io_uring() -> Result<(), String> {
    // tfork writes its image set through it, plainly where refused
    crate::sys::uring::open_ring(2).map(drop).map_err(|e| format!("{e} (tfork's image set is written with plain writes)"))
}

fn probe_stopped_child(what: &str, f: fn(i32) -> std::io::Result<()>) -> Result<(), String> {
    use crate::sys::process as p;
    use crate::sys::ptrace;
    let child = p::fork3(0, &[], libc::SIGCHLD, || p::pause_forever()).map_err(|e| format!("clone3: {e}"))?;
    let r = ptrace::seize(child, 0)
        .and_then(|()| ptrace::interrupt(child))
        .and_then(|()| ptrace::wait(child).map(drop))
        .map_err(|e| format!("stopping a child: {e}"))
        .and_then(|()| f(child).map_err(|e| format!("{what}: {e}")));
    let _ = p::kill(child, libc::SIGKILL);
    let _ = ptrace::wait_flags(child, 0);
    r
}

fn probe_rseq_conf() -> Result<(), String> {
    probe_stopped_child("PTRACE_GET_RSEQ_CONFIGURATION", |c| crate::sys::ptrace::rseq_config(c).map(drop))
}

fn probe_seccomp_filters() -> Result<(), String> {
    // the child has no filter: a kernel with PTRACE_SECCOMP_GET_FILTER
    // says EINVAL (not in filter mode), one without it EIO
    probe_stopped_child("PTRACE_SECCOMP_GET_FILTER", |c| match crate::sys::ptrace::seccomp_filter(c, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        r => r.map(drop),
    })
}

fn probe_seccomp_suspend() -> Result<(), String> {
    use crate::sys::process as p;
    use crate::sys::ptrace;
    // the dump seizes with PTRACE_O_SUSPEND_SECCOMP (dump/freeze.rs)
    let child = p::fork3(0, &[], libc::SIGCHLD, || p::pause_forever()).map_err(|e| format!("clone3: {e}"))?;
    let r = ptrace::seize(child, ptrace::O_SUSPEND_SECCOMP).map_err(|e| format!("PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP: {e}"));
    let _ = p::kill(child, libc::SIGKILL);
    let _ = ptrace::wait_flags(child, 0);
    r
}

fn probe_timens() -> Result<(), String> {
    // a task's own time namespace is made again on restore (restore/child.rs)
    let p = "/proc/self/timens_offsets";
    std::fs::metadata(p).map(drop).map_err(|e| format!("{p}: {e} (kernel without time namespaces)"))
}

fn probe_external_net_ns() -> Result<(), String> {
    // --external net[INO]:KEY / --inherit-fd fd[N]:KEY: the restore setns's
    // into an inherited network namespace (crate::inherit)
    let p = "/proc/self/ns/net";
    std::fs::metadata(p).map(drop).map_err(|e| format!("{p}: {e} (kernel without network namespaces)"))
}

fn probe_openat2() -> Result<(), String> {
    // --root resolves every path with openat2(RESOLVE_IN_ROOT) (sys/ns.rs)
    let root = crate::sys::ns::open_root_dir(Path::new("/"), 3).map_err(|e| format!("opening /: {e}"))?;
    let f = crate::sys::ns::open_in_root(std::os::fd::AsFd::as_fd(&root), std::ffi::OsStr::new("proc"), libc::O_PATH | libc::O_CLOEXEC, 0);
    f.map(drop).map_err(|e| format!("openat2(RESOLVE_IN_ROOT): {e}"))
}

fn probe_loginuid() -> Result<(), String> {
    // restore writes it through /proc (restore/creds.rs); writing our own
    // value back is a no-op where the kernel allows the write at all
    let p = "/proc/self/loginuid";
    let v = std::fs::read_to_string(p).map_err(|e| format!("reading {p}: {e}"))?;
    std::fs::write(p, v.trim()).map_err(|e| format!("writing {p}: {e}"))
}

fn probe_map_vdso() -> Result<(), String> {
    probe_vdso()?;
    // ARCH_MAP_VDSO_64 needs a process to map into; the kernel has it
    // since 4.9, and restore fails naming it if not
    Ok(())
}

fn probe_always() -> Result<(), String> {
    // what the engine does with calls every kernel it runs on has
    // (aio_remap: io_setup and an mremap of the ring, restore/aio.rs)
    Ok(())
}

fn probe_timerfd() -> Result<(), String> {
    // timerfds are restored with their pending expiries (TFD_IOC_SET_TICKS)
    use crate::sys::event as ev;
    let t = ev::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC).map_err(|e| format!("timerfd_create: {e}"))?;
    ev::timerfd_set_ticks(std::os::fd::AsFd::as_fd(&t), 1).map_err(|e| format!("TFD_IOC_SET_TICKS: {e}"))
}

fn probe_kcmp_epoll() -> Result<(), String> {
    // epoll targets are matched to fds with KCMP_EPOLL_TFD (kinds/epoll.rs)
    use crate::sys::event as ev;
    use std::os::fd::{AsFd, AsRawFd};
    let ep = ev::epoll_create(libc::EPOLL_CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    let t = ev::eventfd(0, libc::EFD_CLOEXEC).map_err(|e| format!("eventfd: {e}"))?;
    ev::epoll_add(ep.as_fd(), t.as_raw_fd(), libc::EPOLLIN as u32, 0).map_err(|e| format!("epoll_ctl: {e}"))?;
    match ev::kcmp_epoll_tfd(std::process::id() as i32, t.as_raw_fd(), ep.as_raw_fd(), t.as_raw_fd(), 0) {
        Ok(true) => Ok(()),
        Ok(false) => Err("KCMP_EPOLL_TFD does not match a target with its own fd".into()),
        Err(e) => Err(format!("kcmp(KCMP_EPOLL_TFD): {e}")),
    }
}

fn probe_sockopt_buf_lock() -> Result<(), String> {
    // inet and netlink sockets keep SO_BUF_LOCK (kinds/inet.rs, netlink.rs)
    let s = crate::sys::inet::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).map_err(|e| format!("socket: {e}"))?;
    crate::sys::inet::get_int(std::os::fd::AsFd::as_fd(&s), libc::SOL_SOCKET, libc::SO_BUF_LOCK).map(drop).map_err(|e| format!("SO_BUF_LOCK: {e}"))
}

fn probe_ipv6_freebind() -> Result<(), String> {
    // IPV6_FREEBIND is carried for IPv6 sockets (kinds/inet.rs)
    let s = crate::sys::inet::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).map_err(|e| format!("socket(AF_INET6): {e}"))?;
    crate::sys::inet::get_int(std::os::fd::AsFd::as_fd(&s), libc::IPPROTO_IPV6, 78).map(drop).map_err(|e| format!("IPV6_FREEBIND: {e}"))
}

fn probe_memfd_hugetlb() -> Result<(), String> {
    // MFD_HUGETLB memfds are dumped and restored (huge pages must be free
    // at restore: not checked here)
    crate::sys::process::memfd_create(c"criu-rs-check", libc::MFD_HUGETLB | libc::MFD_CLOEXEC).map(drop).map_err(|e| format!("memfd_create(MFD_HUGETLB): {e}"))
}

fn probe_fdinfo_lock() -> Result<(), String> {
    // --file-locks reads the `lock:` lines of /proc/PID/fdinfo/FD
    let f = std::fs::File::open("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).map(drop).map_err(|e| format!("/proc/self/fdinfo/{fd}: {e}"))
}

/// How criu-rs answers one of upstream's `check --feature` names.
enum Answer {
    /// The engine uses it; supported when the probe passes.
    Probe(fn() -> Result<(), String>),
    /// What the engine lacks for it.
    No(&'static str),
}

/// Upstream 4.2's feature names.
const FEATURES: &[(&str, Answer)] = &[
    ("clone3_set_tid", Answer::Probe(probe_ptrace_and_set_tid)),
    ("seccomp_filters", Answer::Probe(probe_seccomp_filters)),
    ("get_rseq_conf", Answer::Probe(probe_rseq_conf)),
    ("can_map_vdso", Answer::Probe(probe_map_vdso)),
    ("mem_dirty_track", Answer::No("no pre-dump or memory tracking")),
    ("uffd", Answer::No("no lazy-pages")),
    ("uffd-noncoop", Answer::No("no lazy-pages")),
    ("pidfd_store", Answer::No("no pidfd store (the RPC service has no pre-dump for it to serve)")),
    ("mnt_id", Answer::No("no mount namespaces")),
    ("aio_remap", Answer::Probe(probe_always)),
    ("timerfd", Answer::Probe(probe_timerfd)),
    ("tun", Answer::No("tun devices are not dumped")),
    ("tun_ns", Answer::No("tun devices are not dumped")),
    ("userns", Answer::No("user namespaces are not dumped")),
    ("fdinfo_lock", Answer::Probe(probe_fdinfo_lock)),
    ("seccomp_suspend", Answer::Probe(probe_seccomp_suspend)),
    ("loginuid", Answer::Probe(probe_loginuid)),
    ("cgroupns", Answer::No("cgroup namespaces are not dumped")),
    ("autofs", Answer::No("autofs mounts are not dumped")),
    ("tcp_half_closed", Answer::No("TCP connections in a state other than ESTABLISHED are refused by name")),
    ("compat_cr", Answer::No("32-bit processes are not handled")),
    ("sk_ns", Answer::No("sockets of another network namespace are refused (no network namespace is dumped)")),
    ("sk_unix_file", Answer::No("a unix socket's bound file is not opened through SIOCUNIXFILE")),
    ("net_diag_raw", Answer::No("raw inet sockets are refused")),
    ("nsid", Answer::No("network namespaces are not dumped")),
    ("link_nsid", Answer::No("network namespaces are not dumped")),
    ("kcmp_epoll", Answer::Probe(probe_kcmp_epoll)),
    ("timens", Answer::Probe(probe_timens)),
    ("external_net_ns", Answer::Probe(probe_external_net_ns)),
    ("newifindex", Answer::No("network namespaces are not dumped")),
    ("nftables", Answer::No("the network lock is iptables' (--network-lock nftables is refused)")),
    ("has_ipt_legacy", Answer::No("the network lock runs iptables-restore, whichever backend it has")),
    ("network_lock_nftables", Answer::No("the network lock is iptables' (--network-lock nftables is refused)")),
    ("ns_pid", Answer::No("nested pid namespaces are not dumped")),
    ("apparmor_stacking", Answer::No("LSM profiles are not restored")),
    ("sockopt_buf_lock", Answer::Probe(probe_sockopt_buf_lock)),
    ("memfd_hugetlb", Answer::Probe(probe_memfd_hugetlb)),
    ("move_mount_set_group", Answer::No("no mount namespaces")),
    ("openat2", Answer::Probe(probe_openat2)),
    ("ipv6_freebind", Answer::Probe(probe_ipv6_freebind)),
    ("overlayfs_maps", Answer::No("no mount namespaces")),
];

fn run_check_feature(name: &str) -> Result<(), Failure> {
    match FEATURES.iter().find(|(n, _)| *n == name) {
        None => Err(Failure::new(format!(
            "Unknown feature {name} (upstream's names: {})",
            FEATURES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
        Some((_, Answer::Probe(p))) => match p() {
            Ok(()) => {
                pr_msg!("{name} is supported");
                Ok(())
            }
            Err(e) => Err(Failure::new(format!("{name} is not supported: {e}"))),
        },
        Some((_, Answer::No(why))) => Err(Failure::new(format!("{name} is not supported by {OWN_VERSION}: {why}"))),
    }
}

fn run_check(o: &Opts) -> Result<(), Failure> {
    if let Some(f) = &o.feature {
        return run_check_feature(f);
    }
    let mut failed = Vec::new();
    let mut missing_extra = false;
    for (name, needed, probe) in PROBES {
        match probe() {
            Ok(()) => pr_info!("{name} is supported"),
            Err(e) if *needed => {
                pr_err!("{name}: {e}");
                failed.push(*name);
            }
            Err(e) => {
                pr_warn!("{name}: {e}");
                missing_extra = true;
            }
        }
    }
    if !failed.is_empty() {
        return Err(Failure::new(format!("missing: {}", failed.join(", "))));
    }
    if missing_extra {
        pr_msg!("Looks good but some kernel features are missing\nwhich, depending on your process tree, may cause\ndump or restore failure.");
    } else {
        pr_msg!("Looks good.");
    }
    Ok(())
}

/// Report a failure in the log (and on the terminal when the log is a file).
fn report(o: &Opts, e: &Failure, failed: &str) {
    log::write(log::LOG_ERROR, e.loc.file(), e.loc.line(), format_args!("{}", e.msg));
    if !failed.is_empty() {
        pr_err!("{failed}");
    }
    // with a log file, say it on the terminal too
    if o.log_file.as_deref().is_some_and(|f| f != "-") {
        eprintln!("Error: {}", e.msg);
    }
}

/// Run the CLI; returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == crate::tfork::NS_INIT_ARG) {
        crate::tfork::ns_init_main();
    }
    if args.get(1).is_some_and(|a| a == crate::kinds::tcp_stream::GUARD_ARG) {
        let a: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        crate::kinds::tcp_stream::guard_main(&a);
    }
    let args: Vec<String> = args.into_iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let (o, problems) = opts::resolve(&args);
    if o.command.as_deref() == Some("swrk") && problems.is_empty() && !o.help && !o.version {
        return swrk::main(&o);
    }
    if o.help && problems.is_empty() {
        print!("{}", usage());
        return 0;
    }
    if o.version && problems.is_empty() {
        print!("{}", version_text());
        return 0;
    }
    let mut usage: Vec<Failure> = problems.into_iter().map(|p| Failure { msg: p.msg, loc: p.loc }).collect();
    if usage.is_empty() {
        let e = match o.command.as_deref() {
            None => Some(Failure::new("no command given (dump, restore, check, cpuinfo, tfork, swrk)")),
            Some(c) => match REFUSED_COMMANDS.iter().find(|(n, _)| *n == c) {
                Some((n, what)) => Some(Failure::new(format!("the {n} command ({what}) is not supported"))),
                None if matches!(c, "dump" | "restore" | "check" | "cpuinfo" | "tfork" | "swrk") => {
                    let max = if c == "cpuinfo" || c == "swrk" { 1 } else { 0 };
                    o.args.get(max).map(|a| Failure::new(format!("unexpected argument '{a}' for {c}")))
                }
                None => Some(Failure::new(format!("unknown command: {c}"))),
            },
        };
        usage.extend(e);
    }
    if !usage.is_empty() {
        // into the -o log as well, if it can be set up
        let in_log = o.log_file.as_deref().is_some_and(|f| f != "-") && setup_log(&o).is_ok();
        for e in &usage {
            if in_log {
                report(&o, e, "");
            } else {
                eprintln!("Error: {}", e.msg);
            }
        }
        eprintln!("\nTry -h|--help for more info");
        return 1;
    }
    if let Err(e) = setup_log(&o) {
        eprintln!("Error: {e}");
        return 1;
    }
    let res = match o.command.as_deref() {
        Some("dump") => run_dump(&o).map(|()| 0).map_err(|e| (e, "Dumping FAILED.")),
        Some("restore") => run_restore(&o).map_err(|e| (e, "Restoring FAILED.")),
        Some("cpuinfo") => run_cpuinfo(&o).map(|()| 0).map_err(|e| (e, "")),
        Some("tfork") => run_tfork(&o).map(|()| 0).map_err(|e| (e, "tfork FAILED.")),
        _ => run_check(&o).map(|()| 0).map_err(|e| (e, "")),
    };
    match res {
        Ok(c) => c,
        Err((e, failed)) => {
            report(&o, &e, failed);
            1
        }
    }
}
