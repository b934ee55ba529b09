//! How crit renders special fields as text, and reads them back: flag sets,
//! value tables, device numbers, IP addresses, MIME base64 and the
//! quoted-printable form of unix socket names.

use base64::Engine as _;

type Table = &'static [(&'static str, u64)];

const MMAP_PROT: Table = &[("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)];

const MMAP_FLAGS: Table = &[
    ("MAP_SHARED", 0x1),
    ("MAP_PRIVATE", 0x2),
    ("MAP_DROPPABLE", 0x08),
    ("MAP_ANON", 0x20),
    ("MAP_GROWSDOWN", 0x0100),
];

const MMAP_STATUS: Table = &[
    ("VMA_AREA_NONE", 0),
    ("VMA_AREA_REGULAR", 1 << 0),
    ("VMA_AREA_STACK", 1 << 1),
    ("VMA_AREA_VSYSCALL", 1 << 2),
    ("VMA_AREA_VDSO", 1 << 3),
    ("VMA_AREA_HEAP", 1 << 5),
    ("VMA_FILE_PRIVATE", 1 << 6),
    ("VMA_FILE_SHARED", 1 << 7),
    ("VMA_ANON_SHARED", 1 << 8),
    ("VMA_ANON_PRIVATE", 1 << 9),
    ("VMA_AREA_SYSVIPC", 1 << 10),
    ("VMA_AREA_SOCKET", 1 << 11),
    ("VMA_AREA_VVAR", 1 << 12),
    ("VMA_AREA_AIORING", 1 << 13),
    ("VMA_AREA_MEMFD", 1 << 14),
    ("VMA_AREA_SHSTK", 1 << 15),
    ("VMA_AREA_UPROBES", 1 << 17),
    ("VMA_UNSUPP", 1 << 31),
];

const RFILE_FLAGS: Table = &[
    ("O_WRONLY", 0o1),
    ("O_RDWR", 0o2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("FASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
];

const SEALS_FLAGS: Table = &[
    ("F_SEAL_SEAL", 0x1),
    ("F_SEAL_SHRINK", 0x2),
    ("F_SEAL_GROW", 0x4),
    ("F_SEAL_WRITE", 0x8),
    ("F_SEAL_FUTURE_WRITE", 0x10),
];

const PMAP_FLAGS: Table = &[("PE_PARENT", 1), ("PE_LAZY", 2), ("PE_PRESENT", 4)];

/// The flag table a `(criu).flags` name refers to.
pub fn flags_table(name: &str) -> Option<Table> {
    Some(match name {
        "mmap.prot" => MMAP_PROT,
        "mmap.flags" => MMAP_FLAGS,
        "mmap.status" => MMAP_STATUS,
        "rfile.flags" => RFILE_FLAGS,
        "pmap.flags" => PMAP_FLAGS,
        "seals.flags" => SEALS_FLAGS,
        _ => return None,
    })
}

/// `PROT_READ | PROT_WRITE | 0x100`: names of set bits in table order, then
/// the leftover bits in hex; empty string for 0.
pub fn flags_to_string(value: u64, table: Table) -> String {
    let mut out = String::new();
    let mut known = 0u64;
    for (name, bit) in table {
        known |= bit;
        if value & bit != 0 {
            if !out.is_empty() {
                out.push_str(" | ");
            }
            out.push_str(name);
        }
    }
    let rest = value & !known;
    if rest != 0 {
        if !out.is_empty() {
            out.push_str(" | ");
        }
        out.push_str(&format!("{rest:#x}"));
    }
    out
}

/// Inverse of [`flags_to_string`]; each part is a name or an integer literal.
pub fn flags_from_string(s: &str, table: Table) -> Option<u64> {
    if s.is_empty() {
        return Some(0);
    }
    let mut v = 0u64;
    for part in s.split('|').map(str::trim) {
        let bits = match table.iter().find(|(n, _)| *n == part) {
            Some((_, b)) => *b,
            None => parse_int_literal(part)? as u64,
        };
        // crit sums the parts.
        v = v.wrapping_add(bits);
    }
    Some(v)
}

/// Value tables of `(criu).dict`, keyed by table and field name.
pub fn dict_table(dict: &str, field: &str) -> Option<Table> {
    // crit 4.2's table, kept as 4.2 prints it (upstream swapped Zombie and
    // Stopped after 4.2; TASK_DEAD = 2 has no name there).
    const TASK_STATE: Table = &[("Alive", 1), ("Zombie", 3), ("Stopped", 6)];
    const FAMILY: Table = &[("UNIX", 1), ("INET", 2), ("INET6", 10), ("NETLINK", 16), ("PACKET", 17)];
    const TYPE: Table = &[("STREAM", 1), ("DGRAM", 2), ("RAW", 3), ("SEQPACKET", 5), ("PACKET", 10)];
    const STATE: Table = &[
        ("ESTABLISHED", 1),
        ("SYN_SENT", 2),
        ("SYN_RECV", 3),
        ("FIN_WAIT1", 4),
        ("FIN_WAIT2", 5),
        ("TIME_WAIT", 6),
        ("CLOSE", 7),
        ("CLOSE_WAIT", 8),
        ("LAST_ACK", 9),
        ("LISTEN", 10),
    ];
    const PROTO: Table = &[("IP", 0), ("TCP", 6), ("UDP", 17), ("UDPLITE", 136)];
    Some(match (dict, field) {
        ("gen", "task_state") => TASK_STATE,
        ("sk", "family") => FAMILY,
        ("sk", "type") => TYPE,
        ("sk", "state") => STATE,
        ("sk", "proto") => PROTO,
        _ => return None,
    })
}

/// Python's `int(s, 0)`: decimal, 0x/0o/0b prefixes, optional sign, `_`.
pub fn parse_int_literal(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let body = body.replace('_', "");
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string())
    } else {
        // int("010", 0) is an error in python; accept only "0" or no leading 0.
        if lower.len() > 1 && lower.starts_with('0') && lower.bytes().any(|b| b != b'0') {
            return None;
        }
        (10, lower)
    };
    if digits.is_empty() {
        return None;
    }
    let v = i128::from_str_radix(&digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

const MINORBITS: u32 = 20;

/// Device number as `major:minor`; `odev` selects glibc's dev_t layout
/// (as python's os.major/os.minor), otherwise the kernel's internal one.
pub fn dev_to_string(v: u64, odev: bool) -> String {
    if odev {
        let major = ((v >> 32) & 0xffff_f000) | ((v >> 8) & 0xfff);
        let minor = ((v >> 12) & 0xffff_ff00) | (v & 0xff);
        format!("{major}:{minor}")
    } else {
        format!("{}:{}", v >> MINORBITS, v & ((1 << MINORBITS) - 1))
    }
}

pub fn dev_from_string(s: &str, odev: bool) -> Option<u64> {
    let (a, b) = s.split_once(':')?;
    let major: u64 = a.trim().parse().ok()?;
    let minor: u64 = b.trim().parse().ok()?;
    Some(if odev {
        ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12)
    } else {
        (major << MINORBITS) | minor
    })
}

/// Words of a `(criu).ipadd` field (network order in each u32 as stored) to
/// text: one word is IPv4, otherwise the first four make IPv6.
pub fn ip_to_string(words: &[u32]) -> Option<String> {
    match words.len() {
        0 => None,
        1 => Some(std::net::Ipv4Addr::from(u32::from_be(words[0])).to_string()),
        2 | 3 => None,
        _ => {
            let mut v: u128 = 0;
            for w in &words[..4] {
                v = (v << 32) | u128::from(u32::from_be(*w));
            }
            Some(std::net::Ipv6Addr::from(v).to_string())
        }
    }
}

pub fn ip_from_string(s: &str) -> Option<Vec<u32>> {
    match s.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) => Some(vec![u32::from(a).to_be()]),
        std::net::IpAddr::V6(a) => {
            let v = u128::from(a);
            Some((0..4).rev().map(|i| ((v >> (32 * i)) as u32).to_be()).collect())
        }
    }
}

/// Python's `base64.encodebytes`: lines of 76 characters, each ending in
/// a newline; empty input gives an empty string.
pub fn base64_mime(data: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for chunk in flat.as_bytes().chunks(76) {
        // chunks of an ASCII string are ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Python's `base64.decodebytes`: whitespace ignored.
pub fn base64_mime_decode(s: &str) -> Option<Vec<u8>> {
    let flat: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(flat).ok()
}

const QP_MAXLINE: usize = 76;

/// Python's `quopri.encodestring` (binascii.b2a_qp, text mode, tabs not
/// quoted) as crit uses it for unix socket names.
pub fn quopri_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 3);
    let mut linelen = 0usize;
    let hex = b"0123456789ABCDEF";
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        let at_line_end = i + 1 == data.len() || data[i + 1] == b'\n';
        let needs = c > 126
            || c == b'='
            || (c == b'.' && linelen == 0 && at_line_end)
            || ((c == b' ' || c == b'\t') && at_line_end)
            || (c < 32 && c != b'\n' && c != b'\r' && c != b'\t');
        if c == b'\n' {
            out.push(b'\n');
            linelen = 0;
            i += 1;
            continue;
        }
        let width = if needs { 3 } else { 1 };
        // Soft line break when the line would exceed the limit.
        let tail = if i + 1 < data.len() && data[i + 1] != b'\n' { 1 } else { 0 };
        if linelen + width + tail > QP_MAXLINE {
            out.extend_from_slice(b"=\n");
            linelen = 0;
        }
        if needs {
            out.push(b'=');
            out.push(hex[usize::from(c >> 4)]);
            out.push(hex[usize::from(c & 15)]);
        } else {
            out.push(c);
        }
        linelen += width;
        i += 1;
    }
    out
}

/// Python's `quopri.decodestring`.
pub fn quopri_decode(data: &[u8]) -> Vec<u8> {
    fn hexval(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'=' {
            if i + 1 < data.len() && data[i + 1] == b'\n' {
                i += 2;
                continue;
            }
            if let (Some(a), Some(b)) = (
                data.get(i + 1).copied().and_then(hexval),
                data.get(i + 2).copied().and_then(hexval),
            ) {
                out.push(a << 4 | b);
                i += 3;
                continue;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_roundtrip() {
        let t = flags_table("mmap.prot").unwrap();
        assert_eq!(flags_to_string(0x3, t), "PROT_READ | PROT_WRITE");
        assert_eq!(flags_to_string(0, t), "");
        assert_eq!(flags_to_string(0x11, t), "PROT_READ | 0x10");
        assert_eq!(flags_from_string("PROT_READ | 0x10", t), Some(0x11));
        assert_eq!(flags_from_string("", t), Some(0));
    }

    #[test]
    fn dev_forms() {
        assert_eq!(dev_to_string((254 << 20) | 1, false), "254:1");
        assert_eq!(dev_from_string("254:1", false), Some((254 << 20) | 1));
        // glibc makedev(8, 1) = 0x801
        assert_eq!(dev_to_string(0x801, true), "8:1");
        assert_eq!(dev_from_string("8:1", true), Some(0x801));
        assert_eq!(dev_from_string("300:70000", true).map(|v| dev_to_string(v, true)), Some("300:70000".into()));
    }

    #[test]
    fn ip_forms() {
        let w = ip_from_string("127.0.0.1").unwrap();
        assert_eq!(ip_to_string(&w).unwrap(), "127.0.0.1");
        let w = ip_from_string("::1").unwrap();
        assert_eq!(w.len(), 4);
        assert_eq!(ip_to_string(&w).unwrap(), "::1");
    }

    #[test]
    fn base64_lines() {
        assert_eq!(base64_mime(b""), "");
        assert_eq!(base64_mime(b"a"), "YQ==\n");
        let long = vec![0u8; 100];
        let s = base64_mime(&long);
        assert_eq!(s.lines().next().unwrap().len(), 76);
        assert_eq!(base64_mime_decode(&s).unwrap(), long);
    }

    #[test]
    fn quopri_names() {
        assert_eq!(quopri_encode(b"\0abc=d"), b"=00abc=3Dd");
        assert_eq!(quopri_decode(b"=00abc=3Dd"), b"\0abc=d");
        assert_eq!(quopri_encode(b"/tmp/sock"), b"/tmp/sock");
    }

    #[test]
    fn int_literals() {
        assert_eq!(parse_int_literal("0x10"), Some(16));
        assert_eq!(parse_int_literal("-5"), Some(-5));
        assert_eq!(parse_int_literal("010"), None);
        assert_eq!(parse_int_literal("0"), Some(0));
    }
}
