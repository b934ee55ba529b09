//! What the user asked of a dump or a restore: one type for every way the
//! engine is driven. The command line fills it (`cli::opts` parses upstream's
//! options, [`crate::cli`] turns them into an `Options`); the RPC service
//! (`criu swrk`, `cli/swrk.rs`) maps `criu_opts` to those same command-line
//! options, so it is filled the same way. The engine's
//! entry points take it whole ([`crate::dump::collect_tree_opts`],
//! [`crate::restore::restore`]), so an option is added in one place and
//! reaches every caller.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Options {
    // ---- dump ----
    /// `--freeze-cgroup`: seize the tree while its cgroup is frozen.
    pub freeze_cgroup: Option<PathBuf>,
    /// `--timeout`: how long to wait for the cgroup to freeze.
    pub freeze_timeout: Duration,
    /// `--ghost-limit`: the most allocated bytes an unlinked open (or
    /// mapped) file may have for its contents to go into the images.
    pub ghost_limit: u64,
    /// `--file-locks`: dump the file locks processes hold (else refused).
    pub file_locks: bool,
    /// `--link-remap`: link files unlinked-but-linked-elsewhere beside
    /// their path (else refused).
    pub link_remap: bool,
    /// `--ext-unix-sk`: a datagram socket connected to a named socket
    /// outside the tree is dumped (the peer as an external entry).
    pub ext_unix_sk: bool,
    // ---- dump and restore ----
    /// `--tcp-close`: TCP connections are dumped and restored closed.
    pub tcp_close: bool,
    /// `--tcp-established`: established TCP connections dumped and
    /// restored live (TCP_REPAIR).
    pub tcp_established: bool,
    /// `--shell-job`: terminals of the tree are the restoring criu's.
    pub shell_job: bool,
    // ---- restore ----
    /// `-d`: detach from the restored tree (criu does not wait for it).
    pub detached: bool,
    /// `--pidfile`: where the restored root's pid is written.
    pub pidfile: Option<PathBuf>,
    /// `--root`: the image's paths resolve inside this directory.
    pub root: Option<PathBuf>,
    /// `--restore-sibling`: the root is forked with CLONE_PARENT, a child
    /// of the engine's parent (a runtime that runs criu), not of the engine.
    pub sibling: bool,
    // ---- dump, restore and tfork ----
    /// `--manage-cgroups MODE`: cgroup memberships dumped and restored
    /// (soft, the default), or not (ignore).
    pub manage_cgroups: crate::cgroups::Mode,
    /// `--cgroup-root [CTRL:]PATH` (restore): where the tree's cgroups go
    /// instead (`crate::cgroups::Prepared::prepare`).
    pub cgroup_root: Vec<(Option<String>, String)>,
    // ---- mount namespaces (crate::mntns) ----
    /// `--external mnt[A]:B` / `--ext-mount-map A:B` / RPC `ext_mnt`: at
    /// dump (mount point, key), at restore (key, path).
    pub ext_mnt: Vec<(String, String)>,
    /// `--external mnt[]` / `--ext-mount-map auto` / RPC `auto_ext_mnt`:
    /// at dump, each mount a restore would not make anew that criu's own
    /// namespace shows is external, its key the path it shows at; at
    /// restore, such a key (an absolute path) not given is bound from
    /// that path (crate::mntns).
    pub auto_ext_mnt: bool,
    /// `--inherit-fd fd[N]:KEY` / RPC `inherit_fd` (restore): criu's fd N
    /// stands for the resource KEY (crate::inherit).
    pub inherit_fds: Vec<(i32, String)>,
    // ---- terminals (crate::kinds::pty) ----
    /// RPC `orphan_pts_master`: at dump, a pty slave whose master is
    /// outside the tree is dumped (its pair's state); at restore it gets a
    /// new pair, whose master is handed to the client (`orphan-pts-master`).
    pub orphan_pts_master: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            freeze_cgroup: None,
            freeze_timeout: crate::dump::cgroup_freeze::DEFAULT_TIMEOUT,
            ghost_limit: crate::dump::files::GHOST_LIMIT,
            file_locks: false,
            link_remap: false,
            ext_unix_sk: false,
            tcp_close: false,
            tcp_established: false,
            shell_job: false,
            detached: false,
            pidfile: None,
            root: None,
            sibling: false,
            manage_cgroups: crate::cgroups::Mode::Soft,
            cgroup_root: Vec::new(),
            ext_mnt: Vec::new(),
            auto_ext_mnt: false,
            inherit_fds: Vec::new(),
            orphan_pts_master: false,
        }
    }
}

impl Options {
    /// The part of these the fd collection needs.
    pub fn file_opts(&self) -> crate::dump::files::FileOpts {
        crate::dump::files::FileOpts { ghost_limit: self.ghost_limit, file_locks: self.file_locks, link_remap: self.link_remap }
    }
}
