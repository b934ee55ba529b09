//! Socket-level options (`sk_opts_entry`), the part the socket kinds
//! share: read from a dumped socket, written to and read back from an
//! image, and set again on a restored socket. Inet and unix sockets use
//! all of it; what differs between them is the buffer-size policy of the
//! restore ([`Sizes`]) and when SO_BINDTODEVICE is set (before an inet
//! socket's bind: [`SkOpts::bind_to_device`]).

use crate::sys::sock;
use images_proto::pb;
use std::os::fd::BorrowedFd;

/// SO_BUF_LOCK (asm-generic/socket.h): SOCK_SNDBUF_LOCK 1, SOCK_RCVBUF_LOCK 2.
pub const SO_BUF_LOCK: i32 = 72;

/// The socket-level options of one socket, as upstream records them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkOpts {
    /// As getsockopt reports them (twice what the program asked for).
    pub sndbuf: u32,
    pub rcvbuf: u32,
    /// (seconds, microseconds).
    pub snd_tmo: (u64, u64),
    pub rcv_tmo: (u64, u64),
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub priority: u32,
    pub rcvlowat: u32,
    pub mark: u32,
    pub passcred: bool,
    pub passsec: bool,
    pub dontroute: bool,
    pub no_check: bool,
    pub broadcast: bool,
    pub keepalive: bool,
    pub oobinline: bool,
    /// SO_LINGER on, with its seconds.
    pub linger: Option<u32>,
    /// SOCK_SNDBUF_LOCK | SOCK_RCVBUF_LOCK: the sizes the program set.
    pub buf_lock: u32,
    /// SO_BINDTODEVICE.
    pub bound_dev: Option<String>,
}

/// Which buffer sizes a restore sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    /// Only those the program set (its SO_BUF_LOCK bits), forced past the
    /// sysctl limits its own call may have been under where the restore
    /// may (SO_*BUFFORCE), else set plainly; the kernel's choice is left
    /// to the kernel.
    Locked,
    /// Both, forced (a restored receive queue needs the room the dumped
    /// one had); the dumped locks put back afterwards.
    Forced,
}

impl SkOpts {
    /// The options of socket `s`.
    pub fn read(s: BorrowedFd<'_>) -> std::io::Result<SkOpts> {
        let sol = libc::SOL_SOCKET;
        let int = |n| sock::get_int(s, sol, n);
        let u = |n| int(n).map(|v| v as u32);
        let flag = |n| int(n).map(|v| v != 0);
        // SO_PASSCRED and SO_PASSSEC are refused (EOPNOTSUPP) for the
        // families that pass no credentials (inet, since 6.16): off there
        let pass = |n| match flag(n) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
            r => r,
        };
        let dev = {
            let mut b = [0u8; libc::IFNAMSIZ];
            let n = sock::get_bytes(s, sol, libc::SO_BINDTODEVICE, &mut b)?;
            let name = b[..n].split(|&c| c == 0).next().unwrap_or(&[]);
            (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
        };
        Ok(SkOpts {
            sndbuf: u(libc::SO_SNDBUF)?,
            rcvbuf: u(libc::SO_RCVBUF)?,
            snd_tmo: sock::get_timeval(s, sol, libc::SO_SNDTIMEO)?,
            rcv_tmo: sock::get_timeval(s, sol, libc::SO_RCVTIMEO)?,
            reuseaddr: flag(libc::SO_REUSEADDR)?,
            reuseport: flag(libc::SO_REUSEPORT)?,
            priority: u(libc::SO_PRIORITY)?,
            rcvlowat: u(libc::SO_RCVLOWAT)?,
            mark: u(libc::SO_MARK)?,
            passcred: pass(libc::SO_PASSCRED)?,
            passsec: pass(libc::SO_PASSSEC)?,
            dontroute: flag(libc::SO_DONTROUTE)?,
            no_check: flag(libc::SO_NO_CHECK)?,
            broadcast: flag(libc::SO_BROADCAST)?,
            keepalive: flag(libc::SO_KEEPALIVE)?,
            oobinline: flag(libc::SO_OOBINLINE)?,
            linger: sock::get_linger(s)?,
            // (a kernel before 5.14 has no SO_BUF_LOCK: nothing locked)
            buf_lock: u(SO_BUF_LOCK).unwrap_or(0),
            bound_dev: dev,
        })
    }

    /// The image's `sk_opts_entry`.
    pub fn to_image(&self) -> pb::SkOptsEntry {
        pb::SkOptsEntry {
            so_sndbuf: self.sndbuf,
            so_rcvbuf: self.rcvbuf,
            so_snd_tmo_sec: self.snd_tmo.0,
            so_snd_tmo_usec: self.snd_tmo.1,
            so_rcv_tmo_sec: self.rcv_tmo.0,
            so_rcv_tmo_usec: self.rcv_tmo.1,
            reuseaddr: Some(self.reuseaddr),
            so_priority: Some(self.priority),
            so_rcvlowat: Some(self.rcvlowat),
            so_mark: (self.mark != 0).then_some(self.mark),
            so_passcred: Some(self.passcred),
            so_passsec: Some(self.passsec),
            so_dontroute: Some(self.dontroute),
            so_no_check: Some(self.no_check),
            so_bound_dev: self.bound_dev.clone().filter(|d| !d.is_empty()),
            so_reuseport: Some(self.reuseport),
            so_broadcast: Some(self.broadcast),
            so_keepalive: Some(self.keepalive),
            so_oobinline: Some(u32::from(self.oobinline)),
            so_linger: self.linger,
            so_buf_lock: Some(self.buf_lock),
            ..Default::default()
        }
    }

    /// The options of an image's `sk_opts_entry` (fields it lacks: the
    /// kernel's defaults), or the field (under `opts.`) that is out of
    /// range, with why.
    pub fn from_image(o: &pb::SkOptsEntry) -> Result<SkOpts, (&'static str, String)> {
        for (f, usec) in [("opts.so_snd_tmo_usec", o.so_snd_tmo_usec), ("opts.so_rcv_tmo_usec", o.so_rcv_tmo_usec)] {
            if usec >= 1_000_000 {
                return Err((f, format!("{usec} is a second or more")));
            }
        }
        if let Some(b) = o.so_buf_lock.filter(|b| *b > 3) {
            return Err(("opts.so_buf_lock", format!("{b:#x} has bits other than SOCK_SNDBUF_LOCK|SOCK_RCVBUF_LOCK")));
        }
        Ok(SkOpts {
            sndbuf: o.so_sndbuf,
            rcvbuf: o.so_rcvbuf,
            snd_tmo: (o.so_snd_tmo_sec, o.so_snd_tmo_usec),
            rcv_tmo: (o.so_rcv_tmo_sec, o.so_rcv_tmo_usec),
            reuseaddr: o.reuseaddr.unwrap_or(false),
            reuseport: o.so_reuseport.unwrap_or(false),
            priority: o.so_priority.unwrap_or(0),
            rcvlowat: o.so_rcvlowat.unwrap_or(1),
            mark: o.so_mark.unwrap_or(0),
            passcred: o.so_passcred.unwrap_or(false),
            passsec: o.so_passsec.unwrap_or(false),
            dontroute: o.so_dontroute.unwrap_or(false),
            no_check: o.so_no_check.unwrap_or(false),
            broadcast: o.so_broadcast.unwrap_or(false),
            keepalive: o.so_keepalive.unwrap_or(false),
            oobinline: o.so_oobinline.unwrap_or(0) != 0,
            linger: o.so_linger,
            buf_lock: o.so_buf_lock.unwrap_or(0),
            bound_dev: o.so_bound_dev.clone().filter(|d| !d.is_empty()),
        })
    }

    /// SO_BINDTODEVICE as dumped, if it was set.
    pub fn bind_to_device(&self, s: BorrowedFd<'_>) -> Result<(), String> {
        match &self.bound_dev {
            Some(dev) => sock::set_bytes(s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes()).map_err(|e| format!("setsockopt SO_BINDTODEVICE {dev:?}: {e}")),
            None => Ok(()),
        }
    }

    /// Set the options on restored socket `s`, all but SO_BINDTODEVICE
    /// ([`Self::bind_to_device`]): SO_REUSEADDR as dumped (a restore may
    /// have turned it on for its bind), the buffer sizes by `sizes`,
    /// timeouts, flags, priority, low-water mark, mark, linger, and the
    /// buffer locks last. What a fresh socket has already is not set.
    pub fn apply(&self, s: BorrowedFd<'_>, sizes: Sizes) -> Result<(), String> {
        let sol = libc::SOL_SOCKET;
        let set = |n, v: i32, what: &str| sock::set_int(s, sol, n, v).map_err(|e| format!("setsockopt {what} {v}: {e}"));
        set(libc::SO_REUSEADDR, self.reuseaddr as i32, "SO_REUSEADDR")?;
        // setsockopt doubles a size: given back halved
        for (bit, force, plain, v, what) in [(1, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, self.sndbuf, "SO_SNDBUF"), (2, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, self.rcvbuf, "SO_RCVBUF")] {
            let half = i32::try_from(v / 2).unwrap_or(i32::MAX);
            match sizes {
                Sizes::Locked if self.buf_lock & bit != 0 => {
                    if sock::set_int(s, sol, force, half).is_err() {
                        set(plain, half, what)?;
                    }
                }
                Sizes::Locked => {}
                Sizes::Forced => set(force, half, if bit == 1 { "SO_SNDBUFFORCE" } else { "SO_RCVBUFFORCE" })?,
            }
        }
        for (n, what, tmo) in [(libc::SO_SNDTIMEO, "SO_SNDTIMEO", self.snd_tmo), (libc::SO_RCVTIMEO, "SO_RCVTIMEO", self.rcv_tmo)] {
            if tmo != (0, 0) {
                sock::set_timeval(s, sol, n, tmo.0, tmo.1).map_err(|e| format!("setsockopt {what} {}.{:06}: {e}", tmo.0, tmo.1))?;
            }
        }
        for (on, n, what) in [
            (self.reuseport, libc::SO_REUSEPORT, "SO_REUSEPORT"),
            (self.passcred, libc::SO_PASSCRED, "SO_PASSCRED"),
            (self.passsec, libc::SO_PASSSEC, "SO_PASSSEC"),
            (self.dontroute, libc::SO_DONTROUTE, "SO_DONTROUTE"),
            (self.no_check, libc::SO_NO_CHECK, "SO_NO_CHECK"),
            (self.broadcast, libc::SO_BROADCAST, "SO_BROADCAST"),
            (self.keepalive, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
            (self.oobinline, libc::SO_OOBINLINE, "SO_OOBINLINE"),
        ] {
            if on {
                set(n, 1, what)?;
            }
        }
        if self.priority != 0 {
            set(libc::SO_PRIORITY, i32::try_from(self.priority).unwrap_or(i32::MAX), "SO_PRIORITY")?;
        }
        if self.rcvlowat > 1 {
            set(libc::SO_RCVLOWAT, i32::try_from(self.rcvlowat).unwrap_or(i32::MAX), "SO_RCVLOWAT")?;
        }
        if self.mark != 0 {
            set(libc::SO_MARK, self.mark as i32, "SO_MARK")?;
        }
        if let Some(secs) = self.linger {
            sock::set_linger(s, secs).map_err(|e| format!("setsockopt SO_LINGER {secs}: {e}"))?;
        }
        // forcing the sizes locked both: the dumped locks back
        if self.buf_lock != 0 || sizes == Sizes::Forced {
            set(SO_BUF_LOCK, (self.buf_lock & 3) as i32, "SO_BUF_LOCK")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trip_and_range_checks() {
        let o = SkOpts {
            sndbuf: 8192,
            rcvbuf: 16384,
            snd_tmo: (3, 500),
            rcv_tmo: (0, 999_999),
            reuseaddr: true,
            reuseport: true,
            priority: 6,
            rcvlowat: 7,
            mark: 9,
            passcred: true,
            passsec: false,
            dontroute: true,
            no_check: true,
            broadcast: true,
            keepalive: true,
            oobinline: true,
            linger: Some(4),
            buf_lock: 3,
            bound_dev: Some("lo".into()),
        };
        assert_eq!(SkOpts::from_image(&o.to_image()), Ok(o.clone()));
        // an entry with nothing optional: the kernel's defaults
        let bare = SkOpts::from_image(&pb::SkOptsEntry::default()).unwrap();
        assert_eq!(bare.rcvlowat, 1);
        assert_eq!(bare.bound_dev, None);
        let mut e = o.to_image();
        e.so_rcv_tmo_usec = 1_000_000;
        assert_eq!(SkOpts::from_image(&e).unwrap_err().0, "opts.so_rcv_tmo_usec");
        let mut e = o.to_image();
        e.so_buf_lock = Some(4);
        assert_eq!(SkOpts::from_image(&e).unwrap_err().0, "opts.so_buf_lock");
    }

    #[test]
    fn applied_options_read_back_as_dumped() {
        // a real socket: set, read, apply on a fresh one, read again
        let (a, _b) = sock::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        let mut want = SkOpts::read(std::os::fd::AsFd::as_fd(&a)).unwrap();
        // (a timeout is kept in jiffies: half a second is whole at any HZ)
        want.snd_tmo = (2, 500_000);
        want.passcred = true;
        want.keepalive = true;
        want.priority = 3;
        want.linger = Some(5);
        want.apply(std::os::fd::AsFd::as_fd(&a), Sizes::Locked).unwrap();
        let got = SkOpts::read(std::os::fd::AsFd::as_fd(&a)).unwrap();
        assert_eq!(got, want);
        let (c, _d) = sock::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        got.apply(std::os::fd::AsFd::as_fd(&c), Sizes::Locked).unwrap();
        assert_eq!(SkOpts::read(std::os::fd::AsFd::as_fd(&c)).unwrap(), want);
    }
}
