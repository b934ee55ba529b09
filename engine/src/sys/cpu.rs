//! CPUID: the XSAVE layout of this CPU (standard, non-compacted format as
//! PTRACE_GETREGSET(NT_X86_XSTATE) uses it).

/// (offset, size) of XSAVE component `i` (2..=9) in the standard format,
/// `None` when the CPU doesn't have it enabled.
pub fn xsave_component(i: u32) -> Option<(usize, usize)> {
    let leaf0 = std::arch::x86_64::__cpuid_count(0xd, 0);
    let mask = u64::from(leaf0.eax) | (u64::from(leaf0.edx) << 32);
    if mask & (1 << i) == 0 {
        return None;
    }
    let l = std::arch::x86_64::__cpuid_count(0xd, i);
    Some((l.ebx as usize, l.eax as usize))
}

/// Size of the XSAVE area for the features enabled in XCR0.
pub fn xsave_size() -> usize {
    std::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize
}
