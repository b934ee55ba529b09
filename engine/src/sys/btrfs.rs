//! btrfs subvolume snapshots (`--root-snapshot btrfs`), by ioctl.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `BTRFS_SUPER_MAGIC`: statfs f_type of a btrfs file system.
pub const SUPER_MAGIC: i64 = 0x9123_683E;
/// Inode number of a subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
pub const SUBVOL_ROOT_INO: u64 = 256;

/// `struct btrfs_ioctl_vol_args_v2` (linux/btrfs.h): 4096 bytes.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `BTRFS_IOC_SNAP_CREATE_V2`: _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2).
const IOC_SNAP_CREATE_V2: libc::c_ulong = (1 << 30) | ((std::mem::size_of::<VolArgsV2>() as libc::c_ulong) << 16) | (0x94 << 8) | 23;

/// statfs(2) f_type of `path`.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    super::process::fs_type_of_path(path)
}

/// A writable snapshot of the subvolume whose root is `subvol`, made as
/// `dst_dir/name` (`dst_dir` on the same btrfs file system).
pub fn snapshot(subvol: &Path, dst_dir: &Path, name: &OsStr) -> io::Result<()> {
    let src = File::open(subvol)?;
    let dst = File::open(dst_dir)?;
    let n = name.as_bytes();
    if n.is_empty() || n.len() >= 4040 || n.contains(&b'/') || n.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad snapshot name {name:?}")));
    }
    let mut args = VolArgsV2 { fd: i64::from(src.as_raw_fd()), transid: 0, flags: 0, unused: [0; 4], name: [0; 4040] };
    args.name[..n.len()].copy_from_slice(n);
    // SAFETY: the ioctl reads one VolArgsV2 (its size is in the request
    // number) from `args`, alive for the call; both fds are open.
    if unsafe { libc::ioctl(dst.as_raw_fd(), IOC_SNAP_CREATE_V2, &args) } < 0 {
        return Err(super::last_err());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_number_and_size() {
        assert_eq!(std::mem::size_of::<super::VolArgsV2>(), 4096);
        assert_eq!(super::IOC_SNAP_CREATE_V2, 0x5000_9417);
    }
}
