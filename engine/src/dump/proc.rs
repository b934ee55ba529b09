//! Pure parsers of /proc text: maps, smaps VmFlags, status, stat, limits,
//! fdinfo. They take `&str` and never touch the file system.

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub r: bool,
    pub w: bool,
    pub x: bool,
    pub shared: bool,
    pub pgoff: u64,
    pub dev: (u32, u32),
    pub ino: u64,
    /// Path or pseudo name (`[heap]`), empty for anonymous memory.
    pub name: String,
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// Parse one maps line.
pub fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let off = it.next()?;
    let dev = it.next()?;
    let ino = it.next()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (ma, mi) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapsLine {
        start: hex(s)?,
        end: hex(e)?,
        r: perms[0] == b'r',
        w: perms[1] == b'w',
        x: perms[2] == b'x',
        shared: perms[3] == b's',
        pgoff: hex(off)?,
        dev: (u32::try_from(hex(ma)?).ok()?, u32::try_from(hex(mi)?).ok()?),
        ino: ino.parse().ok()?,
        name,
    })
}

/// A VMA from smaps: its maps line and its VmFlags mnemonics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmapsVma {
    pub map: MapsLine,
    pub vm_flags: Vec<String>,
    /// `KernelPageSize:` in kB (2048 for a mapping of 2 MiB hugetlb pages).
    pub kernel_page_kb: u64,
}

/// Parse /proc/PID/smaps.
pub fn parse_smaps(text: &str) -> Vec<SmapsVma> {
    let mut out: Vec<SmapsVma> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            if let Some(v) = out.last_mut() {
                v.vm_flags = rest.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("KernelPageSize:") {
            if let Some(v) = out.last_mut() {
                v.kernel_page_kb = rest.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            }
            continue;
        }
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            if let Some(m) = parse_maps_line(line) {
                out.push(SmapsVma { map: m, vm_flags: Vec::new(), kernel_page_kb: 0 });
            }
        }
    }
    out
}

/// Advice bits (1 << MADV_*) implied by smaps VmFlags.
pub fn madv_from_vmflags(flags: &[String]) -> u64 {
    let mut m = 0u64;
    for f in flags {
        let bit = match f.as_str() {
            "sr" => libc::MADV_SEQUENTIAL,
            "rr" => libc::MADV_RANDOM,
            "dc" => libc::MADV_DONTFORK,
            "dd" => libc::MADV_DONTDUMP,
            "wf" => libc::MADV_WIPEONFORK,
            "mg" => libc::MADV_MERGEABLE,
            "hg" => libc::MADV_HUGEPAGE,
            "nh" => libc::MADV_NOHUGEPAGE,
            _ => continue,
        };
        m |= 1u64 << bit;
    }
    m
}

/// Key/value lines of /proc/PID/status.
pub fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

pub fn status_u64_hex(text: &str, key: &str) -> Option<u64> {
    hex(status_field(text, key)?)
}

pub fn status_nums(text: &str, key: &str) -> Vec<u64> {
    status_field(text, key).map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect()).unwrap_or_default()
}

/// /proc/PID/stat split into (comm, fields after comm); `fields[0]` is the
/// state (field 3 of proc(5)), so field N of proc(5) is `fields[N - 3]`.
pub fn parse_stat(text: &str) -> Option<(String, Vec<&str>)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    Some((comm, text[close + 1..].split_whitespace().collect()))
}

/// Field N (1-based, as numbered in proc(5)) of a parsed stat.
pub fn stat_field(fields: &[&str], n: usize) -> u64 {
    fields.get(n - 3).and_then(|v| v.parse::<i64>().ok()).map(|v| v as u64).unwrap_or(0)
}

/// /proc/PID/limits: (soft, hard) per resource in RLIMIT_* order.
pub fn parse_limits(text: &str) -> Vec<(u64, u64)> {
    // Column positions from the header; names contain spaces.
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let soft_col = header.find("Soft Limit").unwrap_or(26);
    let hard_col = header.find("Hard Limit").unwrap_or(47);
    let units_col = header.find("Units").unwrap_or(68);
    let val = |s: &str| -> u64 {
        let s = s.trim();
        if s == "unlimited" {
            u64::MAX
        } else {
            s.parse().unwrap_or(0)
        }
    };
    lines
        .filter(|l| l.len() > hard_col)
        .map(|l| {
            let soft = l.get(soft_col..hard_col).unwrap_or("");
            let hard = l.get(hard_col..units_col.min(l.len())).unwrap_or("");
            (val(soft), val(hard))
        })
        .collect()
}

/// /proc/PID/fdinfo/N: (pos, flags (octal), mnt_id).
pub fn parse_fdinfo(text: &str) -> (u64, u32, u32) {
    let mut pos = 0;
    let mut flags = 0;
    let mut mnt = 0;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("pos:") {
            pos = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("flags:") {
            flags = u32::from_str_radix(v.trim(), 8).unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("mnt_id:") {
            mnt = v.trim().parse().unwrap_or(0);
        }
    }
    (pos, flags, mnt)
}

/// One `lock:` line of an fdinfo (the locks held through that open file
/// description), as /proc/locks prints it:
/// `1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 10 29` (kind, advisory,
/// access, pid, dev:ino, first byte, last byte or EOF). `Err`: a lock
/// this engine does not dump (a lease, a delegation, a mandatory lock),
/// or a line it cannot read, in words.
pub fn parse_lock_line(l: &str) -> Result<crate::model::FileLock, String> {
    use crate::model::{FileLock, LockKind};
    let w: Vec<&str> = l.split_whitespace().collect();
    if w.len() < 8 {
        return Err(format!("unreadable lock line {l:?}"));
    }
    let kind = match w[1] {
        "POSIX" => LockKind::Posix,
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        k => return Err(format!("a {k} lock ({l:?}): not supported yet")),
    };
    if w[2] != "ADVISORY" {
        return Err(format!("a {} {} lock ({l:?}): not supported yet", w[2], w[1]));
    }
    let write = match w[3] {
        "WRITE" => true,
        "READ" => false,
        a => return Err(format!("a {} lock of access {a} ({l:?}): not supported yet", w[1])),
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| format!("unreadable lock line {l:?}"));
    let start = num(w[6])?;
    let len = match w[7] {
        "EOF" => 0,
        e => num(e)?.checked_sub(start).and_then(|d| d.checked_add(1)).ok_or_else(|| format!("unreadable lock line {l:?}"))?,
    };
    // (the fd is the caller's to fill in)
    Ok(FileLock { kind, write, fd: -1, start, len })
}

/// One entry of /proc/PID/timers.
pub type TimerLine = (i32, i32, String, i32, i32, u64);

/// /proc/PID/timers: (id, signal, notify kind, notify tid, clock, sigval).
pub fn parse_timers(text: &str) -> Vec<TimerLine> {
    let mut out = Vec::new();
    let mut cur: Option<TimerLine> = None;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("ID:") {
            if let Some(c) = cur.take() {
                out.push(c);
            }
            cur = Some((v.trim().parse().unwrap_or(0), 0, String::new(), 0, 0, 0));
        } else if let (Some(c), Some(v)) = (cur.as_mut(), l.strip_prefix("signal:")) {
            let (sig, val) = v.trim().split_once('/').unwrap_or((v.trim(), "0"));
            c.1 = sig.parse().unwrap_or(0);
            c.5 = u64::from_str_radix(val.trim(), 16).unwrap_or(0);
        } else if let (Some(c), Some(v)) = (cur.as_mut(), l.strip_prefix("notify:")) {
            let v = v.trim();
            let (kind, tid) = v.split_once('/').unwrap_or((v, "0"));
            // "signal/tid.N" is SIGEV_SIGNAL | SIGEV_THREAD_ID: kept as "signal/tid"
            c.2 = if tid.starts_with("tid.") { format!("{kind}/tid") } else { kind.to_string() };
            c.3 = tid.trim_start_matches("pid.").trim_start_matches("tid.").parse().unwrap_or(0);
        } else if let (Some(c), Some(v)) = (cur.as_mut(), l.strip_prefix("ClockID:")) {
            c.4 = v.trim().parse().unwrap_or(0);
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_lines() {
        use super::*;
        use crate::model::LockKind;
        let l = parse_lock_line("1: POSIX  ADVISORY  WRITE 27625 fe:00:10618111 10 29").unwrap();
        assert_eq!((l.kind, l.write, l.start, l.len), (LockKind::Posix, true, 10, 20));
        let l = parse_lock_line("2: OFDLCK ADVISORY  READ -1 fe:00:10618163 100 EOF").unwrap();
        assert_eq!((l.kind, l.write, l.start, l.len), (LockKind::Ofd, false, 100, 0));
        let l = parse_lock_line("1: FLOCK  ADVISORY  WRITE 27625 fe:00:10618113 0 EOF").unwrap();
        assert_eq!((l.kind, l.write), (LockKind::Flock, true));
        assert!(parse_lock_line("1: LEASE  ACTIVE    READ 1 fe:00:1 0 EOF").unwrap_err().contains("LEASE"));
        assert!(parse_lock_line("1: POSIX  ADVISORY  WRITE 1 fe:00:1 9 x").is_err());
        assert!(parse_lock_line("garbage").is_err());
    }

    use super::*;

    #[test]
    fn maps_line() {
        let m = parse_maps_line("7f7bf2e8f000-7f7bf2e91000 r-xp 00000000 00:00 0                          [vdso]").unwrap();
        assert_eq!(m.start, 0x7f7bf2e8f000);
        assert!(m.r && !m.w && m.x && !m.shared);
        assert_eq!(m.name, "[vdso]");
        let a = parse_maps_line("7f7bf2e8f000-7f7bf2e91000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(a.name, "");
        let f = parse_maps_line("00400000-00401000 r--p 00000000 fe:00 325843   /srv/a b").unwrap();
        assert_eq!(f.name, "/srv/a b");
        assert_eq!(f.dev, (0xfe, 0));
    }

    #[test]
    fn limits() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max stack size            8388608              unlimited            bytes     \n";
        assert_eq!(parse_limits(t), vec![(u64::MAX, u64::MAX), (8388608, u64::MAX)]);
    }

    #[test]
    fn stat() {
        let (comm, f) = parse_stat("12 (a b) S 1 12 12 0 -1 4194560 0").unwrap();
        assert_eq!(comm, "a b");
        assert_eq!(stat_field(&f, 4), 1);
        assert_eq!(stat_field(&f, 9), 4194560);
    }
}
