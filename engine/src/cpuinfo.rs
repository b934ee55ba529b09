//! CPU compatibility of an image with this CPU: upstream's `--cpu-cap`
//! and its `cpuinfo.img` (x86_64).
//!
//! `--cpu-cap[=LIST]` takes upstream's syntax: a list of `fpu`, `cpu`,
//! `ins`, `all` and `none`, `,`-separated, `^` inverting what follows; each
//! name adds its check to the default `fpu` (or removes it after `^`); bare
//! `--cpu-cap` means `all`. Giving the option at all (with any value but
//! `none`) makes `dump` write `cpuinfo.img` and `restore` read and check
//! it; without it, as upstream, no cpuinfo.img is written or read.
//!
//! The checks against a `cpuinfo.img`, each naming what is missing:
//! * `fpu`: the FPU features (fpu, fxsr, osxsave, xsaves) and the XSAVE
//!   components (`xfeatures_mask`) of the dumping CPU must all be here;
//!   a different XSAVE area size is only a warning.
//! * `ins`: every instruction-set extension of [`INS_FEATURES`] the dumping
//!   CPU had must be here (this CPU may have more).
//! * `cpu`: the CPUID feature words must be equal (words 3, 7 and 8 are
//!   kernel-defined and word 13 carries speculation-control bits that
//!   upstream's compel adds on its own: those are not compared).
//!
//! Independently of cpuinfo.img, every thread's XSAVE state is checked
//! ([`check_threads`]): a component that the thread had in use (its bit in
//! `xstate_bv` set) and that this CPU lacks would be lost on restore, so
//! the restore is refused naming the component. Components an image only
//! carries (bit clear: the thread's registers were in their initial state)
//! are dropped silently, as upstream does. Upstream drops the in-use ones
//! too; we refuse unless the `fpu` check was turned off (`--cpu-cap=none`
//! or `^fpu`), in which case a warning names what is dropped.

use crate::{pr_info, pr_warn};
use images_proto::image::{read_all, read_one, write_all};
use images_proto::magic as mg;
use images_proto::pb;
use std::path::Path;

/// The FPU/XSAVE check (upstream's default).
pub const CAP_FPU: u32 = 1 << 0;
/// Strict: all CPUID feature words equal.
pub const CAP_CPU: u32 = 1 << 1;
/// The instruction-set extensions of the image present here.
pub const CAP_INS: u32 = 1 << 2;
/// `cpuinfo.img` written on dump, read and checked on restore.
pub const CAP_IMAGE: u32 = 1 << 3;
pub const CAP_ALL: u32 = CAP_FPU | CAP_CPU | CAP_INS;
/// Without `--cpu-cap`.
pub const CAP_DEFAULT: u32 = CAP_FPU;

/// Apply one `--cpu-cap[=LIST]` to `cap` (upstream's syntax).
pub fn parse_cap(cap: u32, arg: Option<&str>) -> Result<u32, String> {
    let Some(list) = arg else { return Ok(cap | CAP_ALL | CAP_IMAGE) };
    let mut cap = cap | CAP_IMAGE;
    let mut rest = list;
    let mut inverse = false;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('^') {
            inverse = !inverse;
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix(',') {
            inverse = false;
            rest = r;
            continue;
        }
        let (bits, len) = if rest.starts_with("none") {
            // none: no check and no image; ^none: every check
            cap = if inverse { CAP_ALL | CAP_IMAGE } else { 0 };
            rest = &rest[4..];
            continue;
        } else if rest.starts_with("fpu") {
            (CAP_FPU, 3)
        } else if rest.starts_with("cpu") {
            (CAP_CPU, 3)
        } else if rest.starts_with("ins") {
            (CAP_INS, 3)
        } else if rest.starts_with("all") {
            (CAP_ALL, 3)
        } else {
            return Err(format!("invalid argument for --cpu-cap: {list} (want a list of fpu, cpu, ins, all, none; ^ inverts)"));
        };
        if inverse {
            cap &= !bits;
        } else {
            cap |= bits;
        }
        rest = &rest[len..];
    }
    Ok(cap)
}

fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = std::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Number of feature words (upstream's NCAPINTS for capability_ver 2).
pub const NCAPINTS: usize = 19;
const CAPABILITY_VER: u32 = 2;

/// (word, leaf, subleaf, register index eax=0 ebx=1 ecx=2 edx=3) of the
/// feature words read straight from CPUID, in upstream's word layout.
const WORDS: [(usize, u32, u32, usize); 14] = [
    (0, 1, 0, 3),
    (1, 0x8000_0001, 0, 3),
    (4, 1, 0, 2),
    (6, 0x8000_0001, 0, 2),
    (9, 7, 0, 1),
    (10, 0xd, 1, 0),
    (11, 7, 0, 2),
    (12, 0xf, 1, 3),
    (13, 0x8000_0008, 0, 1),
    (14, 6, 0, 0),
    (15, 0x8000_000a, 0, 3),
    (16, 0xf, 0, 3),
    (17, 0x8000_0007, 0, 1),
    (18, 7, 0, 3),
];

/// Words not compared by the strict check (see the module doc).
const NOT_STRICT: [usize; 4] = [3, 7, 8, 13];

/// The XSAVE components of XCR0 that cpuinfo.img reports: those the image
/// format has fields for (x87, AVX, MPX, AVX-512, PKRU in
/// `user_x86_xsave_entry`), as upstream's compel reports them; SSE (bit 1)
/// is left out as compel leaves it out.
const XFEATURES_WRITTEN: u64 = 1 | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 9);

/// The instruction-set extensions the `ins` check compares:
/// (word, bit, name as in /proc/cpuinfo).
pub const INS_FEATURES: &[(usize, u32, &str)] = &[
    (0, 0, "fpu"), (0, 4, "tsc"), (0, 8, "cx8"), (0, 15, "cmov"), (0, 19, "clflush"), (0, 23, "mmx"),
    (0, 24, "fxsr"), (0, 25, "sse"), (0, 26, "sse2"),
    (1, 11, "syscall"), (1, 22, "mmxext"), (1, 27, "rdtscp"), (1, 29, "lm"), (1, 30, "3dnowext"), (1, 31, "3dnow"),
    (4, 0, "pni"), (4, 1, "pclmulqdq"), (4, 9, "ssse3"), (4, 12, "fma"), (4, 13, "cx16"), (4, 19, "sse4_1"),
    (4, 20, "sse4_2"), (4, 22, "movbe"), (4, 23, "popcnt"), (4, 25, "aes"), (4, 26, "xsave"), (4, 28, "avx"),
    (4, 29, "f16c"), (4, 30, "rdrand"),
    (6, 0, "lahf_lm"), (6, 5, "abm"), (6, 6, "sse4a"), (6, 8, "3dnowprefetch"), (6, 11, "xop"), (6, 16, "fma4"),
    (6, 21, "tbm"),
    (9, 0, "fsgsbase"), (9, 3, "bmi1"), (9, 4, "hle"), (9, 5, "avx2"), (9, 8, "bmi2"), (9, 9, "erms"), (9, 11, "rtm"),
    (9, 16, "avx512f"), (9, 17, "avx512dq"), (9, 18, "rdseed"), (9, 19, "adx"), (9, 21, "avx512ifma"),
    (9, 23, "clflushopt"), (9, 24, "clwb"), (9, 26, "avx512pf"), (9, 27, "avx512er"), (9, 28, "avx512cd"),
    (9, 29, "sha_ni"), (9, 30, "avx512bw"), (9, 31, "avx512vl"),
    (10, 0, "xsaveopt"), (10, 1, "xsavec"), (10, 2, "xgetbv1"), (10, 3, "xsaves"),
    (11, 1, "avx512vbmi"), (11, 5, "waitpkg"), (11, 6, "avx512_vbmi2"), (11, 8, "gfni"), (11, 9, "vaes"),
    (11, 10, "vpclmulqdq"), (11, 11, "avx512_vnni"), (11, 12, "avx512_bitalg"), (11, 14, "avx512_vpopcntdq"),
    (11, 22, "rdpid"), (11, 25, "cldemote"), (11, 27, "movdiri"), (11, 28, "movdir64b"),
    (13, 0, "clzero"), (13, 4, "rdpru"), (13, 9, "wbnoinvd"),
    (18, 2, "avx512_4vnniw"), (18, 3, "avx512_4fmaps"), (18, 8, "avx512_vp2intersect"), (18, 14, "serialize"),
    (18, 22, "amx_bf16"), (18, 23, "avx512_fp16"), (18, 24, "amx_tile"), (18, 25, "amx_int8"),
];

/// The FPU features the `fpu` check compares: (word, bit, name).
const FPU_FEATURES: [(usize, u32, &str); 4] = [(0, 0, "fpu"), (0, 24, "fxsr"), (4, 27, "osxsave"), (10, 3, "xsaves")];

/// Name of XSAVE component `bit`.
pub fn xfeature_name(bit: u32) -> String {
    let n = match bit {
        0 => "x87",
        1 => "SSE",
        2 => "AVX",
        3 => "MPX bounds registers",
        4 => "MPX CSR",
        5 => "AVX-512 opmask",
        6 => "AVX-512 ZMM_Hi256",
        7 => "AVX-512 Hi16_ZMM",
        8 => "Processor Trace",
        9 => "PKRU",
        10 => "PASID",
        11 => "CET user",
        12 => "CET supervisor",
        14 => "UINTR",
        15 => "LBR",
        17 => "AMX TILECFG",
        18 => "AMX TILEDATA",
        19 => "APX",
        _ => return format!("XSAVE component {bit}"),
    };
    format!("{n} (XSAVE component {bit})")
}

fn xfeature_list(mask: u64) -> String {
    (0..64).filter(|b| mask & (1 << b) != 0).map(xfeature_name).collect::<Vec<_>>().join(", ")
}

fn feature_name(word: usize, bit: u32) -> String {
    INS_FEATURES
        .iter()
        .chain(FPU_FEATURES.iter())
        .find(|(w, b, _)| *w == word && *b == bit)
        .map(|(_, _, n)| n.to_string())
        .unwrap_or_else(|| format!("word {word} bit {bit}"))
}

/// This CPU as upstream's cpuinfo.img describes one.
pub fn host() -> pb::CpuinfoX86Entry {
    let v = cpuid(0, 0);
    let mut vendor = Vec::with_capacity(12);
    for r in [v[1], v[3], v[2]] {
        vendor.extend_from_slice(&r.to_le_bytes());
    }
    let vendor_id = match &vendor[..] {
        b"GenuineIntel" => pb::cpuinfo_x86_entry::Vendor::Intel,
        b"AuthenticAMD" => pb::cpuinfo_x86_entry::Vendor::Amd,
        _ => pb::cpuinfo_x86_entry::Vendor::Unknown,
    };
    let max_leaf = v[0];
    let max_ext = cpuid(0x8000_0000, 0)[0];
    let sig = cpuid(1, 0)[0];
    let base_family = (sig >> 8) & 0xf;
    let family = if base_family == 0xf { base_family + ((sig >> 20) & 0xff) } else { base_family };
    let mut model = (sig >> 4) & 0xf;
    if family >= 6 {
        model += ((sig >> 16) & 0xf) << 4;
    }
    let mut capability = vec![0u32; NCAPINTS];
    for (word, leaf, sub, reg) in WORDS {
        let have = if leaf >= 0x8000_0000 { leaf <= max_ext } else { leaf <= max_leaf };
        if have {
            capability[word] = cpuid(leaf, sub)[reg];
        }
    }
    // word 3 is kernel-defined (not CPUID): upstream's compel sets CPUID
    // (bit 25) and NOPL (bit 20) on every x86_64 CPU and REP_GOOD (bit 16)
    // on AMD family 0x10 on and Intel families 6 and 15; the same here, so
    // that upstream's strict check accepts our image on the same CPU
    let rep_good = match vendor_id {
        pb::cpuinfo_x86_entry::Vendor::Amd => family >= 0x10,
        pb::cpuinfo_x86_entry::Vendor::Intel => family == 6 || family == 0xf,
        pb::cpuinfo_x86_entry::Vendor::Unknown => false,
    };
    capability[3] = (1 << 25) | (1 << 20) | if rep_good { 1 << 16 } else { 0 };
    let mut brand = Vec::with_capacity(48);
    if max_ext >= 0x8000_0004 {
        for leaf in 0x8000_0002..=0x8000_0004u32 {
            for r in cpuid(leaf, 0) {
                brand.extend_from_slice(&r.to_le_bytes());
            }
        }
    }
    let model_id = String::from_utf8_lossy(&brand).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
    let x = if max_leaf >= 0xd { cpuid(0xd, 0) } else { [0; 4] };
    let xcr0 = u64::from(x[0]) | (u64::from(x[3]) << 32);
    pb::CpuinfoX86Entry {
        vendor_id: vendor_id as i32,
        cpu_family: family,
        model,
        stepping: sig & 0xf,
        capability_ver: CAPABILITY_VER,
        capability,
        model_id: Some(model_id),
        xfeatures_mask: Some(xcr0 & XFEATURES_WRITTEN),
        xsave_size: Some(x[1]),
        xsave_size_max: Some(x[2]),
    }
}

fn bit(words: &[u32], word: usize, bit: u32) -> bool {
    words.get(word).is_some_and(|w| w & (1 << bit) != 0)
}

/// Check an image's CPU (`img`) against `host` for the checks in `cap`.
/// Ok carries warnings; Err says what is missing, by name.
pub fn check(img: &pb::CpuinfoX86Entry, host: &pb::CpuinfoX86Entry, cap: u32) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    if img.capability_ver != CAPABILITY_VER {
        return Err(format!("capability_ver {} is not supported (want {CAPABILITY_VER})", img.capability_ver));
    }
    if img.capability.len() > NCAPINTS {
        return Err(format!("{} capability words, more than the {NCAPINTS} of capability_ver {CAPABILITY_VER}", img.capability.len()));
    }
    let (iw, hw) = (&img.capability, &host.capability);
    if cap & CAP_FPU != 0 {
        let missing: Vec<&str> = FPU_FEATURES.iter().filter(|(w, b, _)| bit(iw, *w, *b) && !bit(hw, *w, *b)).map(|f| f.2).collect();
        if !missing.is_empty() {
            return Err(format!("the image needs FPU features this CPU lacks: {}", missing.join(", ")));
        }
        // x87 and SSE are always there on x86_64 (and upstream leaves SSE out)
        let m = img.xfeatures_mask.unwrap_or(0) & !host.xfeatures_mask.unwrap_or(0) & !0b11;
        if m != 0 {
            return Err(format!("the image needs XSAVE features this CPU lacks: {} (xfeatures {m:#x})", xfeature_list(m)));
        }
        if img.xsave_size != host.xsave_size {
            warnings.push(format!(
                "XSAVE area size differs: {} in the image, {} here",
                img.xsave_size.unwrap_or(0),
                host.xsave_size.unwrap_or(0)
            ));
        }
    }
    if cap & CAP_INS != 0 {
        let missing: Vec<&str> = INS_FEATURES.iter().filter(|(w, b, _)| bit(iw, *w, *b) && !bit(hw, *w, *b)).map(|f| f.2).collect();
        if !missing.is_empty() {
            return Err(format!("the image needs instructions this CPU lacks: {}", missing.join(", ")));
        }
    }
    if cap & CAP_CPU != 0 {
        let mut diff = Vec::new();
        for w in (0..NCAPINTS).filter(|w| !NOT_STRICT.contains(w)) {
            let (a, b) = (iw.get(w).copied().unwrap_or(0), hw.get(w).copied().unwrap_or(0));
            for bt in (0..32).filter(|bt| (a ^ b) & (1 << bt) != 0) {
                let (side, n) = (if a & (1 << bt) != 0 { "-" } else { "+" }, feature_name(w, bt));
                diff.push(format!("{side}{n}"));
            }
        }
        if !diff.is_empty() {
            return Err(format!(
                "CPU capabilities differ from the image's (strict --cpu-cap=cpu; - missing here, + only here): {}",
                diff.join(" ")
            ));
        }
    }
    Ok(warnings)
}

const CPUINFO: &str = "cpuinfo.img";

/// Write this CPU's `cpuinfo.img` into `dir`.
pub fn write_image(dir: &Path) -> Result<(), String> {
    let e = pb::CpuinfoEntry { x86_entry: vec![host()], ..Default::default() };
    write_all(dir, &mg::CPUINFO.file_name(""), &mg::CPUINFO, &[e]).map_err(|e| format!("writing {CPUINFO}: {e}"))
}

/// Read `dir`'s `cpuinfo.img` and check it against this CPU.
pub fn check_image(dir: &Path, cap: u32) -> Result<(), String> {
    if !dir.join(CPUINFO).exists() {
        return Err(format!("no {CPUINFO} in {} (dump with --cpu-cap to write one)", dir.display()));
    }
    let e: pb::CpuinfoEntry = read_one(dir, &mg::CPUINFO.file_name(""), &mg::CPUINFO).map_err(|e| crate::log::error_chain(&e))?;
    let img = match e.x86_entry.as_slice() {
        [x] => x,
        [] => return Err(format!("{CPUINFO}: no x86 entry (the image is of another architecture)")),
        v => return Err(format!("{CPUINFO}: {} x86 entries, want 1", v.len())),
    };
    let h = host();
    pr_info!(
        "cpu: image from {} family {} model {} (xfeatures {:#x}), here {} family {} model {} (xfeatures {:#x})",
        img.model_id.as_deref().unwrap_or("?"),
        img.cpu_family,
        img.model,
        img.xfeatures_mask.unwrap_or(0),
        h.model_id.as_deref().unwrap_or("?"),
        h.cpu_family,
        h.model,
        h.xfeatures_mask.unwrap_or(0)
    );
    for w in check(img, &h, cap).map_err(|e| format!("{CPUINFO}: {e}"))? {
        pr_warn!("{CPUINFO}: {w}");
    }
    Ok(())
}

/// XSAVE components enabled on this CPU (XCR0).
fn host_xcr0() -> u64 {
    let x = cpuid(0xd, 0);
    u64::from(x[0]) | (u64::from(x[3]) << 32)
}

/// Check every thread's XSAVE state (core-TID.img of each task in
/// pstree.img) against this CPU: a component in use in the image
/// (`xstate_bv` bit set) that this CPU lacks is refused by name when `cap`
/// has the fpu check, else dropped with a warning.
pub fn check_threads(dir: &Path, cap: u32) -> Result<(), String> {
    let ps: Vec<pb::PstreeEntry> = read_all(dir, &mg::PSTREE.file_name(""), &mg::PSTREE).map_err(|e| crate::log::error_chain(&e))?;
    let have = host_xcr0() | 0b11;
    let read = |tid: u32| -> Result<pb::CoreEntry, String> { read_one(dir, &mg::CORE.file_name(tid), &mg::CORE).map_err(|e| crate::log::error_chain(&e)) };
    for p in &ps {
        // a zombie (core-PID says TASK_DEAD) has no registers, whatever its
        // one thread id is (0, or no set value in upstream's images)
        let own = read(p.pid)?;
        if own.tc.as_ref().is_some_and(|tc| tc.task_state == crate::images_io::TASK_DEAD) {
            continue;
        }
        for &tid in &p.threads {
            let name = mg::CORE.file_name(tid);
            let core = if tid == p.pid { own.clone() } else { read(tid)? };
            let Some(bv) = core.thread_info.as_ref().and_then(|t| t.fpregs.xsave.as_ref()).map(|x| x.xstate_bv) else {
                continue;
            };
            let lost = bv & !have;
            if lost == 0 {
                continue;
            }
            let what = format!(
                "{name}: thread {tid} has state in {} (xstate_bv {bv:#x}), which this CPU lacks",
                xfeature_list(lost)
            );
            if cap & CAP_FPU != 0 {
                return Err(format!("{what}; its registers would be lost (--cpu-cap=none restores without them)"));
            }
            pr_warn!("{what}; restoring without those registers (fpu check off)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_syntax() {
        assert_eq!(parse_cap(CAP_DEFAULT, None).unwrap(), CAP_ALL | CAP_IMAGE);
        assert_eq!(parse_cap(CAP_DEFAULT, Some("fpu")).unwrap(), CAP_FPU | CAP_IMAGE);
        assert_eq!(parse_cap(CAP_DEFAULT, Some("ins")).unwrap(), CAP_FPU | CAP_INS | CAP_IMAGE);
        assert_eq!(parse_cap(CAP_DEFAULT, Some("^fpu")).unwrap(), CAP_IMAGE);
        assert_eq!(parse_cap(CAP_DEFAULT, Some("^fpu,ins")).unwrap(), CAP_INS | CAP_IMAGE);
        assert_eq!(parse_cap(CAP_DEFAULT, Some("none")).unwrap(), 0);
        assert_eq!(parse_cap(CAP_DEFAULT, Some("all")).unwrap(), CAP_ALL | CAP_IMAGE);
        assert!(parse_cap(CAP_DEFAULT, Some("fpux")).is_err());
    }

    #[test]
    fn missing_features_are_named() {
        let h = host();
        let mut img = h.clone();
        assert!(check(&img, &h, CAP_ALL).unwrap().is_empty());
        img.xfeatures_mask = Some(h.xfeatures_mask.unwrap_or(0) | (1 << 17) | (1 << 18));
        let e = check(&img, &h, CAP_FPU).unwrap_err();
        assert!(e.contains("AMX TILECFG") && e.contains("AMX TILEDATA"), "{e}");
        assert!(check(&img, &h, CAP_INS).is_ok());
        // an instruction-set extension this CPU lacks, named
        if let Some(&(w, b, name)) = INS_FEATURES.iter().find(|(w, b, _)| h.capability[*w] & (1 << b) == 0) {
            let mut img = h.clone();
            img.capability[w] |= 1 << b;
            let e = check(&img, &h, CAP_INS).unwrap_err();
            assert!(e.contains(name), "{e}");
            assert!(check(&img, &h, CAP_FPU).is_ok());
            let e = check(&img, &h, CAP_CPU).unwrap_err();
            assert!(e.contains(&format!("-{name}")), "{e}");
        }
    }
}
