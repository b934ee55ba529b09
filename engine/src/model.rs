//! The in-memory model of a dumped process tree.
//!
//! `dump` fills it from the kernel, `images_io` writes it to and reads it
//! from CRIU image files, `restore` recreates processes from it. Memory
//! contents are not held here: the model lists which pages exist
//! ([`PageRun`]) and a [`crate::mem_source::MemSource`] supplies their bytes
//! (a pages image, a live process, ...).

use crate::sys::process::KSigaction;
use crate::sys::ptrace::{Regs, UserDesc};

/// A dumped tree of processes.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// The root was pid 1 of its own pid namespace: restore into a new one.
    pub root_owns_pid_ns: bool,
    /// Tasks, root first. Pids are as seen in the tree's own pid namespace.
    pub tasks: Vec<Task>,
    /// Ids of the dumping engine itself (inventory's root_ids).
    pub root_ids: KobjIds,
    pub timens: Option<TimeNs>,
    /// Every memfd inode the tree's fds and mappings refer to (memfd.img),
    /// each once however many fds, mappings and processes share it.
    pub memfds: Vec<Memfd>,
    /// The root's own uts namespace (utsns-ID.img), when it is not the
    /// dumping engine's; every process of the tree is in it.
    pub uts: Option<UtsNs>,
    /// The root's own ipc namespace (ipcns-*-ID.img), when it is not the
    /// dumping engine's; every process of the tree is in it.
    pub ipc: Option<IpcNs>,
    /// The root's own network namespace (netdev-ID.img, netns-ID.img and
    /// the ip/iptables/nft dumps), when it is not the dumping engine's;
    /// every process of the tree is in it.
    pub net: Option<crate::netns::NetNs>,
    /// The cgroups of its processes (cgroup.img), when some process is
    /// in other cgroups than the dumping criu's.
    pub cgroups: Option<crate::cgroups::Cgroups>,
    /// The root's own mount namespace (mountpoints-ID.img and its tmpfs
    /// archives), when it is not the dumping engine's (`crate::mntns`).
    pub mnt: Option<crate::mntns::MntNs>,
}

/// A uts namespace: what uname(2) shows of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UtsNs {
    pub nodename: String,
    pub domainname: String,
}

/// An ipc namespace: its sysctls and its SysV objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpcNs {
    pub var: IpcVar,
    pub shms: Vec<IpcShm>,
    pub sems: Vec<IpcSem>,
    pub msgs: Vec<IpcMsgQueue>,
}

/// The ipc namespace's sysctls (upstream's `ipc_var_entry`):
/// /proc/sys/kernel/{sem,msg*,shm*} and /proc/sys/fs/mqueue/*.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpcVar {
    /// SEMMSL, SEMMNS, SEMOPM, SEMMNI.
    pub sem_ctls: [u32; 4],
    pub msg_ctlmax: u32,
    pub msg_ctlmnb: u32,
    pub msg_ctlmni: u32,
    pub auto_msgmni: u32,
    pub shm_ctlmax: u64,
    pub shm_ctlall: u64,
    pub shm_ctlmni: u32,
    pub shm_rmid_forced: u32,
    pub mq_queues_max: u32,
    pub mq_msg_max: u32,
    pub mq_msgsize_max: u32,
    pub mq_msg_default: Option<u32>,
    pub mq_msgsize_default: Option<u32>,
}

/// `struct ipc64_perm` of a SysV object (upstream's `ipc_desc_entry`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpcDesc {
    pub key: u32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits (0777).
    pub mode: u32,
    /// The object's id (index and sequence), made again with *_next_id.
    pub id: u32,
}

/// A SysV shared memory segment and its contents (`size` bytes; zeros
/// where `data` is shorter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpcShm {
    pub desc: IpcDesc,
    pub size: u64,
    pub data: Vec<u8>,
}

/// A SysV semaphore set: one value per semaphore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpcSem {
    pub desc: IpcDesc,
    pub values: Vec<u16>,
}

/// A SysV message queue: its byte limit and queued messages (type, text),
/// oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpcMsgQueue {
    pub desc: IpcDesc,
    pub qbytes: u32,
    pub msgs: Vec<(u64, Vec<u8>)>,
}

/// A memfd's inode (upstream's `memfd_inode_entry` and the contents in its
/// shmem pagemap): what `memfd_create` + writes + seals make again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memfd {
    /// Inode number at dump (upstream's `shmid`): the key fds and mappings
    /// name it by.
    pub ino: u64,
    /// The name given to memfd_create (what /proc shows after `/memfd:`).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (st_mode & 07777).
    pub mode: u32,
    pub size: u64,
    /// F_SEAL_* bits (F_GET_SEALS).
    pub seals: u32,
    /// Data runs (offset, length): page-aligned offsets, in order, not
    /// overlapping, within `size`; the rest reads as zeros (holes).
    pub runs: Vec<(u64, u64)>,
    /// Where the runs' bytes are (copied file to file, never held here).
    pub data: MemfdData,
    /// A memfd on hugetlbfs: MFD_HUGETLB with the page size
    /// (log2 << MFD_HUGE_SHIFT), upstream's `hugetlb_flag`; 0 otherwise.
    pub hugetlb: u32,
}

/// Where a memfd's data is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MemfdData {
    /// Nowhere (no data runs).
    #[default]
    None,
    /// In the memfd itself, read through this path of a frozen process at
    /// dump (`/proc/PID/fd/N` or `/proc/PID/map_files/...`): each run at
    /// its own offset.
    Live(String),
    /// In an image's pages file: run i at byte `offsets[i]` of it.
    Image { pages: std::path::PathBuf, offsets: Vec<u64> },
}

/// Credentials of one thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub secbits: u32,
    pub no_new_privs: bool,
}

/// rseq registration of a thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rseq {
    pub ptr: u64,
    pub len: u32,
    pub sig: u32,
}

/// sigaltstack of a thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AltStack {
    pub sp: u64,
    pub size: u64,
    pub flags: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Thread {
    /// Thread id in the tree's pid namespace.
    pub tid: i32,
    /// General registers, with an interrupted syscall already turned into
    /// what the kernel would do on return (restart or -EINTR).
    pub regs: Regs,
    /// XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) returned it.
    pub xsave: Vec<u8>,
    pub tls: Vec<UserDesc>,
    pub rseq: Option<Rseq>,
    pub altstack: AltStack,
    pub robust_list: (u64, u64),
    pub clear_tid: u64,
    pub blocked: u64,
    /// Queued per-thread siginfos.
    pub pending: Vec<[u8; 128]>,
    pub comm: String,
    pub creds: Creds,
    pub sched_nice: i32,
    pub sched_policy: u32,
    /// Real-time priority (SCHED_FIFO/RR), 0 otherwise.
    pub sched_prio: u32,
    /// CPU affinity when pinned to part of the CPUs online at dump (64-bit
    /// words, CPU 0 in bit 0 of the first); empty: every CPU.
    pub cpus: Vec<u64>,
    /// I/O priority (ioprio_get: class << 13 | level); 0: the default.
    pub ioprio: u32,
    pub pdeath_sig: u32,
    /// SECCOMP_MODE_* of the thread.
    pub seccomp_mode: u32,
    /// The thread's seccomp filters, oldest (first installed) first.
    pub seccomp: Vec<SeccompFilter>,
}

/// One installed seccomp filter program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeccompFilter {
    /// `struct sock_filter` array, 8 bytes per instruction.
    pub prog: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* it was installed with (as the kernel reports them).
    pub flags: u64,
}

/// Kernel-object ids of a task, numbered as upstream numbers them: equal
/// ids mean a shared object (mm, fd table, fs, sighand, namespaces).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KobjIds {
    pub vm: u32,
    pub files: u32,
    pub fs: u32,
    pub sighand: u32,
    pub pid_ns: u32,
    pub net_ns: u32,
    pub ipc_ns: u32,
    pub uts_ns: u32,
    pub mnt_ns: u32,
    pub user_ns: u32,
    pub cgroup_ns: u32,
    pub time_ns: u32,
}

/// Clocks of the tree's time namespace at dump (timens-0.img): CLOCK_MONOTONIC
/// and CLOCK_BOOTTIME as (sec, nsec), as upstream records them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeNs {
    pub monotonic: (u64, u64),
    pub boottime: (u64, u64),
}

/// One interval timer (ITIMER_REAL/VIRTUAL/PROF): interval and value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Itimer {
    pub isec: u64,
    pub iusec: u64,
    pub vsec: u64,
    pub vusec: u64,
}

/// A POSIX timer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    pub signo: i32,
    pub notify: i32,
    pub notify_tid: i32,
    pub sigval: u64,
    pub overrun: i32,
    pub interval: (u64, u64),
    pub value: (u64, u64),
}

#[derive(Debug, Clone, Default)]
pub struct Task {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Main thread first.
    pub threads: Vec<Thread>,
    pub mm: Mm,
    pub fds: Vec<Fd>,
    pub fs: Fs,
    /// Index = signal number - 1, 64 entries (SIGKILL/SIGSTOP default).
    pub sigactions: Vec<KSigaction>,
    pub comm: String,
    pub personality: u32,
    /// `flags` of /proc/PID/stat (PF_*), kept as upstream does.
    pub flags: u32,
    /// (cur, max) per RLIMIT_*, RLIM_NLIMITS entries.
    pub rlimits: Vec<(u64, u64)>,
    pub itimers: [Itimer; 3],
    pub posix_timers: Vec<PosixTimer>,
    /// Process-wide queued siginfos.
    pub shared_pending: Vec<[u8; 128]>,
    pub child_subreaper: bool,
    /// Its cgroup set in `Tree::cgroups` (0 or 1: criu's own cgroups).
    pub cg_set: u32,
    pub loginuid: u32,
    pub oom_score_adj: i32,
    /// membarrier(2) registrations of the mm: the MEMBARRIER_CMD_REGISTER_*
    /// bits MEMBARRIER_CMD_GET_REGISTRATIONS returns (core's
    /// `membarrier_registration_mask`).
    pub membarrier: u32,
    pub seccomp_mode: u32,
    pub ids: KobjIds,
    /// File locks this process holds (`--file-locks`), each on one of its
    /// fds: taken again by the restore child once its fds are in place.
    pub locks: Vec<FileLock>,
    /// In group-stop, by this signal (upstream's TASK_STOPPED + stop_signo):
    /// restored stopped.
    pub stop_signo: Option<u32>,
    /// A zombie (upstream's TASK_DEAD): exited with this wait status and
    /// not yet reaped by its parent. It has no threads, memory or files.
    pub zombie_exit: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Fs {
    pub cwd: String,
    pub root: String,
    pub umask: u32,
    /// st_mode of the cwd and root directories (0: not known, written as
    /// 040755): upstream's restore checks a path's mode against its image.
    pub cwd_mode: u32,
    pub root_mode: u32,
}

/// What a dumped fd refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDesc {
    /// A file of one of the resource kinds of `crate::kinds` (files opened
    /// by path, pipes, eventfd, ...):
    /// each kind's collect, image and restore halves live in its module.
    Kind(crate::kinds::Kind),
}

/// An unlinked-but-open regular file: its inode identity and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ghost {
    /// st_dev (glibc encoding) and inode at dump: fds of one inode share one ghost.
    pub dev: u64,
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// (seconds, microseconds).
    pub atime: (u64, u64),
    pub mtime: (u64, u64),
    /// Apparent size (st_size).
    pub size: u64,
    /// The data extents (offset, bytes), in order, not overlapping; the
    /// rest up to `size` are holes, kept as holes on restore.
    pub extents: Vec<(u64, Vec<u8>)>,
    /// A deleted device node's device number (glibc encoding); 0 otherwise.
    pub rdev: u64,
    /// A deleted symlink's target.
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    /// Open file description: fds with the same `desc` share one (dup'ed:
    /// one offset, one set of status flags).
    pub desc: u32,
    pub file: FileDesc,
}

/// The kinds of file lock (upstream's FL_* numbers in file-lock.img).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// fcntl F_SETLK: owned by the process (its fd table).
    Posix,
    /// flock(2): owned by the open file description.
    Flock,
    /// fcntl F_OFD_SETLK: owned by the open file description.
    Ofd,
}

/// A held file lock: taken through `fd` (a read lock unless `write`), on
/// bytes `start..start + len` (`len` 0: to the end of the file, and
/// always 0 for flock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLock {
    pub kind: LockKind,
    pub write: bool,
    pub fd: i32,
    pub start: i64,
    pub len: i64,
}

/// Bytes queued in a pipe at dump (pipes-data.img).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipeData {
    pub pipe_id: u32,
    /// A named pipe's (fifo-data.img), not an anonymous pipe's (pipes-data.img).
    pub fifo: bool,
    /// F_GETPIPE_SZ.
    pub size: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaKind {
    Anon,
    File,
    Heap,
    Stack,
    Vdso,
    /// `[vvar]` (with `[vvar_vclock]` folded in, as upstream 4.2 records it).
    Vvar,
    Vsyscall,
    /// An AIO ring (io_setup): `/[aio] (deleted)`, a shared mapping the
    /// kernel made; its address is the context id. Its pages (header,
    /// events) are in the memory source; restore makes a new context of
    /// the same size and moves it here (`restore::aio`).
    Aio,
    /// An attachment (shmat) of SysV shm segment N of the tree's own ipc
    /// namespace (`/SYSV<key> (deleted)`): no pages of its own (the
    /// segment's contents are in the namespace's images, `crate::utsipc`);
    /// restore attaches the segment here again.
    SysvShm(u32),
}

/// A file backing a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFile {
    pub path: String,
    /// Open flags needed to map it (O_RDONLY or O_RDWR).
    pub flags: u32,
    pub size: Option<u64>,
    pub mode: u32,
    /// GNU build-id of an ELF file (upstream's `reg.build_id` words), empty
    /// when the file has none; restore refuses a file whose id changed.
    pub build_id: Vec<u32>,
    /// The file was unlinked while mapped (`path (deleted)`): its contents
    /// travel with the image (one per inode, shared by its mappings).
    pub ghost: Option<std::sync::Arc<Ghost>>,
    /// A memfd's mapping: its inode number, in [`Tree::memfds`] (`path` is
    /// then only what /proc showed, `/memfd:NAME (deleted)`).
    pub memfd: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    /// PROT_*.
    pub prot: u32,
    /// MAP_* (PRIVATE/SHARED/ANONYMOUS/GROWSDOWN).
    pub flags: u32,
    pub kind: VmaKind,
    /// Bit per MADV_* advice that is in effect.
    pub madv: u64,
    pub file: Option<MapFile>,
    /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS): the id of its
    /// shmem object (the inode number, as upstream uses it); 0 otherwise.
    /// Its pages are in [`Mm::pages`] at this mapping's addresses.
    pub shmid: u64,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    pub fn shared(&self) -> bool {
        self.flags & libc::MAP_SHARED as u32 != 0
    }
}

/// Pages present in the dumped address space at `vaddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// May be loaded lazily (private anonymous memory), as upstream marks it.
    pub lazy: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Mm {
    pub vmas: Vec<Vma>,
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_stack: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
    pub exe: Option<MapFile>,
    pub dumpable: u32,
    pub thp_disabled: bool,
    /// Pages whose contents are in the memory source, sorted by address.
    pub pages: Vec<PageRun>,
    /// Guard regions (MADV_GUARD_INSTALL), (start, end), sorted, inside
    /// VMAs and outside `pages`.
    pub guards: Vec<(u64, u64)>,
}

impl Tree {
    pub fn root(&self) -> &Task {
        &self.tasks[0]
    }
}
