//! The table of image kinds: magic numbers, header style, entry message,
//! extra payload layout and file name.
//!
//! On disk an image starts with a header of one or two little-endian `u32`:
//!
//! * `inventory.img`: the kind's own magic only;
//! * service images (`stats-*`, `irmap-cache`): `IMG_SERVICE` then the magic;
//! * every other protobuf image: `IMG_COMMON` then the magic;
//! * raw images (`pages-*.img`, tmpfs archives, ...) have no header at all.
//!
//! After the header come entries, each a `u32` length and that many bytes of
//! protobuf, in some kinds followed by a raw payload whose size the entry
//! gives (see [`Payload`]).

/// First word of every non-inventory protobuf image.
pub const IMG_COMMON: u32 = 0x5456_4319;
/// First word of service images.
pub const IMG_SERVICE: u32 = 0x5510_5940;
/// Value of the old `CRTOOLS_IMAGES_V1_1` marker.
pub const CRTOOLS_IMAGES_V1_1: u32 = 2;

/// What the first word(s) of an image look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Only the kind's magic (inventory).
    Bare,
    /// `IMG_COMMON` + magic.
    Common,
    /// `IMG_SERVICE` + magic.
    Service,
}

/// Raw bytes that follow an entry, and how their size is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    None,
    /// `bytes` field of the entry (pipes-data, fifo-data).
    PipeData,
    /// `length` field (sk-queues).
    SkQueue,
    /// `inq_len` then `outq_len` bytes (tcp-stream); JSON `{inq, outq}`.
    TcpStream,
    /// `keys_bytes + values_bytes` (bpfmap-data).
    BpfmapData,
    /// `nsems` u16 values padded to 8 bytes (ipcns-sem); JSON list of ints.
    IpcSem,
    /// `qnum` framed `ipc_msg` entries each followed by `msize` bytes padded
    /// to 8 (ipcns-msg); JSON alternating [msg, base64, ...].
    IpcMsg,
    /// `size` bytes padded to 4 (ipcns-shm), unless `in_pagemaps`.
    IpcShm,
}

/// Image-level structure beyond "every entry is the same message".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every entry is `message`, each followed by `payload`.
    Entries,
    /// First entry `pagemap_head`, then `pagemap_entry`s.
    Pagemap,
    /// One `ghost_file_entry`; then either the file contents to the end of
    /// the image, or (`chunks`) `ghost_chunk_entry`s each followed by `len`
    /// bytes.
    GhostFile,
}

/// One kind of image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageKind {
    /// Name as crit prints it in `"magic"`.
    pub name: &'static str,
    pub magic: u32,
    pub header: Header,
    /// Full protobuf name of the entry message (`core_entry`).
    pub message: &'static str,
    pub layout: Layout,
    pub payload: Payload,
    /// File name, `{}` standing for the id (`core-{}.img`).
    pub file: &'static str,
}

macro_rules! kinds {
    ($( $id:ident = $name:literal, $magic:literal, $hdr:ident, $msg:literal, $layout:ident, $pl:ident, $file:literal; )*) => {
        $(
            pub const $id: ImageKind = ImageKind {
                name: $name,
                magic: $magic,
                header: Header::$hdr,
                message: $msg,
                layout: Layout::$layout,
                payload: Payload::$pl,
                file: $file,
            };
        )*
        /// Every protobuf image kind we know.
        pub const ALL: &[ImageKind] = &[$($id),*];
    };
}

kinds! {
    INVENTORY = "INVENTORY", 0x5831_3116, Bare, "inventory_entry", Entries, None, "inventory.img";
    PSTREE = "PSTREE", 0x5027_3030, Common, "pstree_entry", Entries, None, "pstree.img";
    FDINFO = "FDINFO", 0x5621_3732, Common, "fdinfo_entry", Entries, None, "fdinfo-{}.img";
    PAGEMAP = "PAGEMAP", 0x5608_4025, Common, "pagemap_entry", Pagemap, None, "pagemap-{}.img";
    CORE = "CORE", 0x5505_3847, Common, "core_entry", Entries, None, "core-{}.img";
    IDS = "IDS", 0x5443_2030, Common, "task_kobj_ids_entry", Entries, None, "ids-{}.img";
    VMAS = "VMAS", 0x5412_3737, Common, "vma_entry", Entries, None, "vmas-{}.img";
    PIPES = "PIPES", 0x5651_3555, Common, "pipe_entry", Entries, None, "pipes.img";
    PIPES_DATA = "PIPES_DATA", 0x5645_3709, Common, "pipe_data_entry", Entries, PipeData, "pipes-data.img";
    FIFO = "FIFO", 0x5836_4939, Common, "fifo_entry", Entries, None, "fifo.img";
    FIFO_DATA = "FIFO_DATA", 0x5933_3054, Common, "pipe_data_entry", Entries, PipeData, "fifo-data.img";
    SIGACT = "SIGACT", 0x5534_4201, Common, "sa_entry", Entries, None, "sigacts-{}.img";
    UNIXSK = "UNIXSK", 0x5437_3943, Common, "unix_sk_entry", Entries, None, "unixsk.img";
    INETSK = "INETSK", 0x5644_3851, Common, "inet_sk_entry", Entries, None, "inetsk.img";
    PACKETSK = "PACKETSK", 0x6045_4618, Common, "packet_sock_entry", Entries, None, "packetsk.img";
    ITIMERS = "ITIMERS", 0x5746_4056, Common, "itimer_entry", Entries, None, "itimers-{}.img";
    POSIX_TIMERS = "POSIX_TIMERS", 0x5260_3957, Common, "posix_timer_entry", Entries, None, "posix-timers-{}.img";
    SK_QUEUES = "SK_QUEUES", 0x5626_4026, Common, "sk_packet_entry", Entries, SkQueue, "sk-queues.img";
    UTSNS = "UTSNS", 0x5447_3203, Common, "utsns_entry", Entries, None, "utsns-{}.img";
    CREDS = "CREDS", 0x5402_3547, Common, "creds_entry", Entries, None, "creds-{}.img";
    IPC_VAR = "IPC_VAR", 0x5311_5007, Common, "ipc_var_entry", Entries, None, "ipcns-var-{}.img";
    IPCNS_SHM = "IPCNS_SHM", 0x4628_3044, Common, "ipc_shm_entry", Entries, IpcShm, "ipcns-shm-{}.img";
    IPCNS_MSG = "IPCNS_MSG", 0x5545_3737, Common, "ipc_msg_entry", Entries, IpcMsg, "ipcns-msg-{}.img";
    IPCNS_SEM = "IPCNS_SEM", 0x5957_3019, Common, "ipc_sem_entry", Entries, IpcSem, "ipcns-sem-{}.img";
    REG_FILES = "REG_FILES", 0x5036_3636, Common, "reg_file_entry", Entries, None, "reg-files.img";
    EXT_FILES = "EXT_FILES", 0x5925_5641, Common, "ext_file_entry", Entries, None, "ext-files.img";
    FS = "FS", 0x5140_3912, Common, "fs_entry", Entries, None, "fs-{}.img";
    MM = "MM", 0x5749_2820, Common, "mm_entry", Entries, None, "mm-{}.img";
    REMAP_FPATH = "REMAP_FPATH", 0x5913_3954, Common, "remap_file_path_entry", Entries, None, "remap-fpath.img";
    GHOST_FILE = "GHOST_FILE", 0x5258_3605, Common, "ghost_file_entry", GhostFile, None, "ghost-file-{}.img";
    TCP_STREAM = "TCP_STREAM", 0x5146_5506, Common, "tcp_stream_entry", Entries, TcpStream, "tcp-stream-{}.img";
    EVENTFD_FILE = "EVENTFD_FILE", 0x4452_3722, Common, "eventfd_file_entry", Entries, None, "eventfd.img";
    EVENTPOLL_FILE = "EVENTPOLL_FILE", 0x4502_3858, Common, "eventpoll_file_entry", Entries, None, "eventpoll.img";
    EVENTPOLL_TFD = "EVENTPOLL_TFD", 0x4443_3746, Common, "eventpoll_tfd_entry", Entries, None, "eventpoll-tfd.img";
    SIGNALFD = "SIGNALFD", 0x5732_3820, Common, "signalfd_entry", Entries, None, "signalfd.img";
    INOTIFY_FILE = "INOTIFY_FILE", 0x4842_4431, Common, "inotify_file_entry", Entries, None, "inotify.img";
    INOTIFY_WD = "INOTIFY_WD", 0x5456_2009, Common, "inotify_wd_entry", Entries, None, "inotify-wd.img";
    MNTS = "MNTS", 0x5556_3928, Common, "mnt_entry", Entries, None, "mountpoints-{}.img";
    NETDEV = "NETDEV", 0x5737_3951, Common, "net_device_entry", Entries, None, "netdev-{}.img";
    NETNS = "NETNS", 0x5593_3752, Common, "netns_entry", Entries, None, "netns-{}.img";
    TTY_FILES = "TTY_FILES", 0x5943_3025, Common, "tty_file_entry", Entries, None, "tty.img";
    TTY_INFO = "TTY_INFO", 0x5945_3036, Common, "tty_info_entry", Entries, None, "tty-info.img";
    TTY_DATA = "TTY_DATA", 0x5941_3026, Common, "tty_data_entry", Entries, None, "tty-data.img";
    FILE_LOCKS = "FILE_LOCKS", 0x5432_3616, Common, "file_lock_entry", Entries, None, "filelocks.img";
    RLIMIT = "RLIMIT", 0x5711_3925, Common, "rlimit_entry", Entries, None, "rlimit-{}.img";
    FANOTIFY_FILE = "FANOTIFY_FILE", 0x5509_6122, Common, "fanotify_file_entry", Entries, None, "fanotify.img";
    FANOTIFY_MARK = "FANOTIFY_MARK", 0x5650_6035, Common, "fanotify_mark_entry", Entries, None, "fanotify-mark.img";
    SIGNAL = "SIGNAL", 0x5925_5647, Common, "siginfo_entry", Entries, None, "signal-s-{}.img";
    NETLINK_SK = "NETLINK_SK", 0x5800_5614, Common, "netlink_sk_entry", Entries, None, "netlinksk.img";
    NS_FILES = "NS_FILES", 0x6139_4011, Common, "ns_file_entry", Entries, None, "ns-files.img";
    TUNFILE = "TUNFILE", 0x5714_3751, Common, "tunfile_entry", Entries, None, "tunfile.img";
    CGROUP = "CGROUP", 0x5938_3330, Common, "cgroup_entry", Entries, None, "cgroup.img";
    TIMERFD = "TIMERFD", 0x5049_3712, Common, "timerfd_entry", Entries, None, "timerfd.img";
    CPUINFO = "CPUINFO", 0x6140_4013, Common, "cpuinfo_entry", Entries, None, "cpuinfo.img";
    USERNS = "USERNS", 0x5547_4906, Common, "userns_entry", Entries, None, "userns-{}.img";
    SECCOMP = "SECCOMP", 0x6441_3049, Common, "seccomp_entry", Entries, None, "seccomp.img";
    BINFMT_MISC = "BINFMT_MISC", 0x6734_3323, Common, "binfmt_misc_entry", Entries, None, "binfmt-misc-{}.img";
    AUTOFS = "AUTOFS", 0x4935_3943, Common, "autofs_entry", Entries, None, "autofs-{}.img";
    FILES = "FILES", 0x5630_3138, Common, "file_entry", Entries, None, "files.img";
    MEMFD_INODE = "MEMFD_INODE", 0x4845_3499, Common, "memfd_inode_entry", Entries, None, "memfd.img";
    TIMENS = "TIMENS", 0x4311_4433, Common, "timens_entry", Entries, None, "timens-{}.img";
    PIDNS = "PIDNS", 0x6115_7326, Common, "pidns_entry", Entries, None, "pidns-{}.img";
    BPFMAP_FILE = "BPFMAP_FILE", 0x5750_6142, Common, "bpfmap_file_entry", Entries, None, "bpfmap-file.img";
    BPFMAP_DATA = "BPFMAP_DATA", 0x6432_4033, Common, "bpfmap_data_entry", Entries, BpfmapData, "bpfmap-data.img";
    APPARMOR = "APPARMOR", 0x5942_3047, Common, "apparmor_entry", Entries, None, "apparmor.img";
    STATS = "STATS", 0x5709_3306, Service, "stats_entry", Entries, None, "stats-{}";
    IRMAP_CACHE = "IRMAP_CACHE", 0x5700_4059, Service, "irmap_cache_entry", Entries, None, "irmap-cache";
}

/// Raw (headerless) images. Not decodable by crit; listed so tools can name them.
pub const RAW_FILE_PREFIXES: &[&str] = &["pages-", "tmpfs-", "ifaddr-", "route-", "route6-", "rule-", "iptables-", "ip6tables-", "nftables-", "netns-ct-", "netns-exp-"];

/// Magic values that may appear but that we do not decode (kernel-data caches).
pub const KDAT: u32 = 0x5702_3458;

/// Find a kind by its magic value.
pub fn by_magic(magic: u32) -> Option<&'static ImageKind> {
    ALL.iter().find(|k| k.magic == magic)
}

/// Find a kind by crit's name for it (`"CORE"`).
pub fn by_name(name: &str) -> Option<&'static ImageKind> {
    ALL.iter().find(|k| k.name == name)
}

impl ImageKind {
    /// File name of this image for `id` (ignored by kinds without one).
    pub fn file_name(&self, id: impl std::fmt::Display) -> String {
        self.file.replace("{}", &id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                if a.magic == b.magic {
                    panic!("{} and {} share magic {:#x}", a.name, b.name, a.magic);
                }
            }
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(CORE.file_name(7), "core-7.img");
        assert_eq!(INVENTORY.file_name(""), "inventory.img");
    }
}
