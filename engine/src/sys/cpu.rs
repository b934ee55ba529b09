//! CPUID: the XSAVE layout of this CPU (standard, non-compacted format as
//! PTRACE_GETREGSET(NT_X86_XSTATE) uses it), read once: in a VM every
//! CPUID is a trap to the hypervisor (tens of microseconds here), and
//! decoding a thread's XSAVE area asks about every component.

use std::sync::OnceLock;

struct Layout {
    /// XCR0's features (CPUID 0xd.0 edx:eax).
    mask: u64,
    /// Size of the standard-format area for them.
    size: usize,
    /// (offset, size) of components 0..64, where enabled.
    comps: [Option<(usize, usize)>; 64],
}

fn layout() -> &'static Layout {
    static L: OnceLock<Layout> = OnceLock::new();
    L.get_or_init(|| {
        let leaf0 = std::arch::x86_64::__cpuid_count(0xd, 0);
        let mask = u64::from(leaf0.eax) | (u64::from(leaf0.edx) << 32);
        let mut comps = [None; 64];
        for (i, c) in comps.iter_mut().enumerate().skip(2) {
            if mask & (1 << i) != 0 {
                let l = std::arch::x86_64::__cpuid_count(0xd, i as u32);
                *c = Some((l.ebx as usize, l.eax as usize));
            }
        }
        Layout { mask, size: leaf0.ebx as usize, comps }
    })
}

/// (offset, size) of XSAVE component `i` (2..=9) in the standard format,
/// `None` when the CPU doesn't have it enabled.
pub fn xsave_component(i: u32) -> Option<(usize, usize)> {
    let l = layout();
    if !(2..64).contains(&i) || l.mask & (1 << i) == 0 {
        return None;
    }
    l.comps[i as usize]
}

/// Size of the XSAVE area for the features enabled in XCR0.
pub fn xsave_size() -> usize {
    layout().size
}
