//! timerfd: clock, status flags, settime flags, interval, time left, and
//! the expirations not yet read.
//!
//! Dump: fdinfo's `clockid:`, `ticks:`, `settime flags:` (octal),
//! `it_value: (s, ns)` (time left, relative) and `it_interval: (s, ns)`.
//! Image: a `TIMERFD` files.img entry (`timerfd_entry`) as upstream 4.2
//! writes it: `vsec`/`vnsec` the time left, `ticks` the pending count.
//!
//! Restore: timerfd_create on the clock; armed again with the time left
//! (made absolute on the same clock, now, when it was set
//! TFD_TIMER_ABSTIME: the deadline moves by the time between dump and
//! restore, as upstream's does), then the pending expirations put back
//! with TFD_IOC_SET_TICKS (readable at once, and ready to epoll). A
//! periodic timer that had expired and was not read shows no time left
//! (the kernel re-arms it only on read): upstream arms it with that zero,
//! which disarms it, and the program's next wait for it never ends. Here
//! it is armed for its next period, one interval from now, so it goes on
//! firing, and its pending count makes it readable meanwhile. A timer with
//! no time left and none pending is disarmed (its interval kept, as
//! timerfd_settime keeps it).

use super::{Collect, FileKind, ImageAcc, Read, Restore};
use crate::dump::files::FilesError;
use crate::images_io::ImagesError;
use crate::sys::event;
use images_proto::pb;
use std::os::fd::{AsFd, OwnedFd};

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

/// Clocks a timerfd can use: REALTIME, MONOTONIC, BOOTTIME,
/// REALTIME_ALARM, BOOTTIME_ALARM.
const CLOCKS: [u32; 5] = [0, 1, 7, 8, 9];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timerfd {
    /// File status flags (O_RDWR, O_NONBLOCK; no O_CLOEXEC).
    pub flags: u32,
    pub clock: u32,
    /// Expirations not yet read.
    pub ticks: u64,
    /// TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET.
    pub settime_flags: u32,
    /// Time left (relative), (seconds, nanoseconds).
    pub value: (u64, u64),
    pub interval: (u64, u64),
}

/// `(s, ns)` of fdinfo's `it_value: (1, 2)`.
fn pair(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (b < 1_000_000_000).then_some((a, b))
}

/// A timerfd from its fdinfo text (`flags`: its status flags).
fn parse(fdinfo: &str, flags: u32) -> Result<Timerfd, String> {
    let field = |key: &str| super::fdinfo_field(fdinfo, key).ok_or_else(|| format!("no `{key}:` line in its fdinfo"));
    let num = |key: &str, radix: u32| -> Result<u64, String> {
        let v = field(key)?;
        u64::from_str_radix(v, radix).map_err(|_| format!("fdinfo {key} {v:?} is not a number"))
    };
    let clock = num("clockid", 10)?;
    let clock = u32::try_from(clock).ok().filter(|c| CLOCKS.contains(c)).ok_or_else(|| format!("clock {clock} is not one this engine knows"))?;
    let ticks = num("ticks", 10)?;
    let settime_flags = num("settime flags", 8)? as u32;
    let value = field("it_value")?;
    let value = pair(value).ok_or_else(|| format!("fdinfo it_value {value:?} is not (s, ns)"))?;
    let interval = field("it_interval")?;
    let interval = pair(interval).ok_or_else(|| format!("fdinfo it_interval {interval:?} is not (s, ns)"))?;
    Ok(Timerfd { flags, clock, ticks, settime_flags, value, interval })
}

fn zero(t: (u64, u64)) -> bool {
    t == (0, 0)
}

impl FileKind for Timerfd {
    const TYPE: pb::FdTypes = pb::FdTypes::Timerfd;
    const NAME: &'static str = "timerfd";

    fn claims(link: &str, _meta: &std::fs::Metadata) -> bool {
        link == "anon_inode:[timerfd]"
    }

    fn collect(cx: &mut Collect<'_>) -> Result<Self, FilesError> {
        let mut t = parse(cx.fdinfo, cx.flags).map_err(|why| cx.refuse(Self::NAME, why))?;
        // No time left and nothing pending, with an interval: disarmed (its
        // interval kept), or a periodic timer whose expiry the kernel has
        // not handled yet (its callback pending: fdinfo then shows neither
        // time left nor a tick). Which one shows a moment later.
        let mut waited = 0;
        while zero(t.value) && !zero(t.interval) && t.ticks == 0 && waited < 5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            waited += 1;
            let again = std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", cx.pid, cx.fd)).map_err(|e| FilesError::Io { pid: cx.pid, fd: cx.fd, source: e })?;
            t = parse(&again, cx.flags).map_err(|why| cx.refuse(Self::NAME, why))?;
        }
        if waited > 0 {
            crate::pr_debug!("timerfd fd {} of {}: after {waited} ms: ticks {}, time left {:?}", cx.fd, cx.pid, t.ticks, t.value);
        }
        Ok(t)
    }

    fn write(&self, id: u32, _acc: &mut ImageAcc) -> Result<pb::FileEntry, ImagesError> {
        Ok(pb::FileEntry {
            r#type: Self::TYPE as i32,
            id,
            tfd: Some(pb::TimerfdEntry {
                id,
                flags: self.flags,
                fown: super::fown(),
                clockid: self.clock,
                ticks: self.ticks,
                settime_flags: self.settime_flags,
                vsec: self.value.0,
                vnsec: self.value.1,
                isec: self.interval.0,
                insec: self.interval.1,
            }),
            ..Default::default()
        })
    }

    fn read(e: &pb::FileEntry, cx: &mut Read<'_>) -> Result<Self, ImagesError> {
        let m = cx.member(e, "tfd", &e.tfd)?;
        if !CLOCKS.contains(&m.clockid) {
            return Err(cx.bad(e, "tfd.clockid", format!("{} is not a clock a timerfd can use ({CLOCKS:?})", m.clockid)));
        }
        for (field, v) in [("tfd.vnsec", m.vnsec), ("tfd.insec", m.insec)] {
            if v >= 1_000_000_000 {
                return Err(cx.bad(e, field, format!("{v} nanoseconds is not below one second")));
            }
        }
        for (field, v) in [("tfd.vsec", m.vsec), ("tfd.isec", m.isec)] {
            if i64::try_from(v).is_err() {
                return Err(cx.bad(e, field, format!("{v} seconds is out of range")));
            }
        }
        if m.settime_flags & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0 {
            return Err(cx.bad(e, "tfd.settime_flags", format!("{:#x} has unknown bits", m.settime_flags)));
        }
        Ok(Timerfd {
            flags: m.flags,
            clock: m.clockid,
            ticks: m.ticks,
            settime_flags: m.settime_flags,
            value: (m.vsec, m.vnsec),
            interval: (m.isec, m.insec),
        })
    }

    fn restore(&self, _cx: &mut Restore<'_>) -> Result<OwnedFd, String> {
        let fd = event::timerfd_create(self.clock as i32, libc::TFD_NONBLOCK).map_err(|e| format!("timerfd_create(clock {}): {e}", self.clock))?;
        // what is left: the dumped time left, or for an expired periodic
        // timer (no time left, expirations pending) its next period
        let left = if zero(self.value) && !zero(self.interval) && self.ticks > 0 { self.interval } else { self.value };
        if !zero(left) || !zero(self.interval) {
            let (flags, value) = if !zero(left) && self.settime_flags & TFD_TIMER_ABSTIME != 0 {
                let now = crate::sys::process::clock_gettime(self.clock as i32).map_err(|e| format!("clock_gettime({}): {e}", self.clock))?;
                let ns = now.1 + left.1;
                let sec = now.0.checked_add(left.0).and_then(|s| s.checked_add(ns / 1_000_000_000)).ok_or("the deadline overflows")?;
                (self.settime_flags, (sec, ns % 1_000_000_000))
            } else {
                (self.settime_flags & !TFD_TIMER_ABSTIME & !TFD_TIMER_CANCEL_ON_SET, left)
            };
            event::timerfd_settime(fd.as_fd(), flags as i32, value, self.interval)
                .map_err(|e| format!("timerfd_settime(flags {flags:#x}, value {value:?}, interval {:?}): {e}", self.interval))?;
        }
        if self.ticks > 0 {
            event::timerfd_set_ticks(fd.as_fd(), self.ticks).map_err(|e| format!("TFD_IOC_SET_TICKS {}: {e}", self.ticks))?;
        }
        super::set_status_flags(&fd, self.flags)?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_pairs() {
        assert_eq!(pair("(3598, 490209124)"), Some((3598, 490209124)));
        assert_eq!(pair("(0, 0)"), Some((0, 0)));
        assert_eq!(pair("(0, 1000000000)"), None);
        assert_eq!(pair("0, 0"), None);
    }

    #[test]
    fn fdinfo_text() {
        let t = "pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t17\nclockid: 0\nticks: 2\nsettime flags: 01\nit_value: (3598, 490209124)\nit_interval: (0, 0)\n";
        let want = Timerfd { flags: 2, clock: 0, ticks: 2, settime_flags: 1, value: (3598, 490_209_124), interval: (0, 0) };
        assert_eq!(parse(t, 2), Ok(want));
        assert!(parse(&t.replace("clockid: 0", "clockid: 3"), 2).unwrap_err().contains("clock 3"));
    }
}
