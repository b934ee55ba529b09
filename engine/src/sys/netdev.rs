//! Network devices of the calling thread's network namespace, through the
//! classic socket ioctls (netdevice(7)) on an AF_INET datagram socket made
//! in that namespace: the list (if_nameindex(3)), flags, MTU, the hardware
//! address family (ARPHRD_*), the driver's name (SIOCETHTOOL
//! ETHTOOL_GDRVINFO, ethtool(8)'s `-i`), and setting flags and MTU.

use super::last_err;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// ARPHRD_LOOPBACK (linux/if_arp.h).
pub const ARPHRD_LOOPBACK: u16 = 772;
/// IFF_LOWER_UP (linux/if.h): beyond the 16 bits SIOCGIFFLAGS returns.
pub const IFF_LOWER_UP: u32 = 0x1_0000;

/// A datagram socket of the calling thread's network namespace, for the
/// ioctls below.
pub fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall; the fd returned is new and ours.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Every device of the namespace: (ifindex, name), from if_nameindex(3).
pub fn list() -> io::Result<Vec<(u32, Vec<u8>)>> {
    // SAFETY: no arguments; the array returned is freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(last_err());
    }
    let mut out = Vec::new();
    let mut p = head;
    // SAFETY: the array ends with an entry of index 0 and a null name;
    // every name before it is a NUL-terminated string of the array; the
    // array is freed once, after the last read.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push(((*p).if_index, std::ffi::CStr::from_ptr((*p).if_name).to_bytes().to_vec()));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    Ok(out)
}

fn ifreq(name: &[u8]) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{:?} is not a device name", String::from_utf8_lossy(name))));
    }
    // SAFETY: ifreq is plain data (a name and a union of plain data); all
    // zeroes is a valid value of it.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok(r)
}

fn ioctl(s: BorrowedFd<'_>, req: libc::c_ulong, r: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `r` is a valid, writable ifreq for the whole call; every
    // request used here reads or writes only within it.
    if unsafe { libc::ioctl(s.as_raw_fd(), req as _, r as *mut libc::ifreq) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// SIOCGIFFLAGS: the device's flags (16 bits).
pub fn flags(s: BorrowedFd<'_>, name: &[u8]) -> io::Result<u16> {
    let mut r = ifreq(name)?;
    ioctl(s, libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags member.
    Ok(unsafe { r.ifr_ifru.ifru_flags } as u16)
}

/// SIOCSIFFLAGS: set the device's flags (16 bits; IFF_UP brings it up).
pub fn set_flags(s: BorrowedFd<'_>, name: &[u8], flags: u16) -> io::Result<()> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_flags = flags as libc::c_short;
    ioctl(s, libc::SIOCSIFFLAGS, &mut r)
}

/// SIOCGIFMTU.
pub fn mtu(s: BorrowedFd<'_>, name: &[u8]) -> io::Result<u32> {
    let mut r = ifreq(name)?;
    ioctl(s, libc::SIOCGIFMTU, &mut r)?;
    // SAFETY: SIOCGIFMTU filled the union's mtu member.
    Ok(unsafe { r.ifr_ifru.ifru_mtu } as u32)
}

/// SIOCSIFMTU.
pub fn set_mtu(s: BorrowedFd<'_>, name: &[u8], mtu: u32) -> io::Result<()> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    ioctl(s, libc::SIOCSIFMTU, &mut r)
}

/// SIOCGIFHWADDR: the hardware address's family (ARPHRD_*).
pub fn hw_type(s: BorrowedFd<'_>, name: &[u8]) -> io::Result<u16> {
    let mut r = ifreq(name)?;
    ioctl(s, libc::SIOCGIFHWADDR, &mut r)?;
    // SAFETY: SIOCGIFHWADDR filled the union's hwaddr member.
    Ok(unsafe { r.ifr_ifru.ifru_hwaddr.sa_family })
}

/// ETHTOOL_GDRVINFO (linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// `struct ethtool_drvinfo` (linux/ethtool.h): 196 bytes.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 160],
}

/// The device's driver name (`veth`, `tun`, `macvlan`, `bridge`...), by
/// SIOCETHTOOL ETHTOOL_GDRVINFO; an error for a device without ethtool
/// operations.
pub fn driver(s: BorrowedFd<'_>, name: &[u8]) -> io::Result<String> {
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: `r` points at `info`, a writable ethtool_drvinfo that lives
    // through the call; ETHTOOL_GDRVINFO writes only within it.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCETHTOOL as _, &mut r as *mut libc::ifreq) } < 0 {
        return Err(last_err());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
