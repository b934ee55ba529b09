//! Runs engine/src/sys/kmod.rs against /dev/vma_cherrypick in the test guest.
//! `kmod-rust-smoke --no-module`: checks the clean fallback when absent.
//! Prints `ok   - ...` / `FAIL - ...` lines; exit 0 when all pass.

#[path = "../../../../engine/src/sys/kmod.rs"]
#[allow(dead_code)]
mod kmod;

use std::process::exit;

const ADDR: u64 = 0x2400_0000_0000;
const PAGES: usize = 16;
const PAGE: usize = 4096;

static mut FAILED: u32 = 0;

fn check(ok: bool, what: &str) {
    if ok {
        println!("ok   - rust: {what}");
    } else {
        println!("FAIL - rust: {what}");
        // SAFETY: single-threaded test program.
        unsafe { FAILED += 1 };
    }
}

fn pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

/// Fork a child that maps PAGES pages at ADDR, fills them and stops itself.
fn start_source() -> (libc::pid_t, i32) {
    // SAFETY: plain fork in a single-threaded program; the child only calls
    // async-signal-safe functions (mmap, raise, _exit) and writes its memory.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: fixed, unused address range; we own the mapping.
        unsafe {
            let p = libc::mmap(
                ADDR as *mut libc::c_void,
                PAGES * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            if p as u64 != ADDR {
                libc::_exit(3);
            }
            for i in 0..PAGES {
                *(p as *mut u8).add(i * PAGE) = pattern(i);
            }
            libc::raise(libc::SIGSTOP);
            libc::_exit(0);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
    // SAFETY: pidfd_open(pid, 0) on our child; returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    (pid, pidfd)
}

/// take_anon_vma from a fresh stopped source: `want` says how it must go.
fn take_and_check(want: kmod::Taken) {
    let (pid, pidfd) = start_source();
    let len = (PAGES * PAGE) as u64;
    let r = kmod::take_anon_vma(pid, pidfd, ADDR, len, libc::PROT_READ, 0);
    // SAFETY: killing and reaping our own child, closing our pidfd.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(pidfd);
    }
    let ok = matches!(r, Ok(t) if t == want)
        // SAFETY: take_anon_vma mapped PAGES readable pages at ADDR.
        && (0..PAGES).all(|i| unsafe { *((ADDR as usize + i * PAGE) as *const u8) } == pattern(i));
    check(
        ok,
        &format!("take_anon_vma -> {r:?} (want {want:?}), contents match"),
    );
    // SAFETY: unmapping what take_anon_vma mapped.
    unsafe { libc::munmap(ADDR as *mut libc::c_void, PAGES * PAGE) };
}

fn main() {
    let no_module = std::env::args().any(|a| a == "--no-module");
    if no_module {
        check(
            !kmod::is_available(),
            "is_available() is false without the module",
        );
        let e = kmod::cherry_pick(-1, ADDR, 0).unwrap_err();
        check(
            matches!(e, kmod::Error::Unavailable) && e.should_fall_back(),
            &format!("cherry_pick without the module -> Unavailable ({e})"),
        );
        take_and_check(kmod::Taken::Copied);
        // SAFETY: reading a global in a single-threaded program.
        exit(if unsafe { FAILED } == 0 { 0 } else { 1 });
    }

    check(
        kmod::is_available(),
        "is_available() with the module loaded",
    );
    let (pid, pidfd) = start_source();
    check(pidfd >= 0, "source started and stopped");
    let r = kmod::cherry_pick(pidfd, ADDR, 0);
    check(r.is_ok(), &format!("cherry_pick -> {r:?}"));
    if r.is_ok() {
        // SAFETY: the module just mapped PAGES pages at ADDR in this process.
        let ok =
            (0..PAGES).all(|i| unsafe { *((ADDR as usize + i * PAGE) as *const u8) } == pattern(i));
        check(ok, "picked contents match the source");
    }
    let e = kmod::cherry_pick(pidfd, ADDR, 0).unwrap_err();
    check(
        matches!(e, kmod::Error::DestinationBusy),
        &format!("second pick -> DestinationBusy ({e})"),
    );
    let e = kmod::cherry_pick(pidfd, ADDR + PAGE as u64, 0).unwrap_err();
    check(
        matches!(e, kmod::Error::NotVmaStart),
        &format!("mid-VMA -> {e}"),
    );
    let dev = kmod::device().expect("device");
    // SAFETY: ADDR..+PAGES*PAGE is the mapping the module created above.
    unsafe { libc::munmap(ADDR as *mut libc::c_void, PAGES * PAGE) };
    let p = dev.cherry_pick(pidfd, ADDR, 0);
    check(
        matches!(p, Ok(kmod::Picked { len, pages_copied: 0 }) if len == (PAGES * PAGE) as u64),
        &format!("Device::cherry_pick reports the length ({p:?})"),
    );
    check(dev.abi_version() == kmod::ABI_VERSION, "ABI version");
    let e = kmod::cherry_pick(-1, ADDR, 0).unwrap_err();
    check(
        matches!(e, kmod::Error::BadFd),
        &format!("pidfd -1 -> BadFd ({e})"),
    );
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    // SAFETY: the mapping Device::cherry_pick created above.
    unsafe { libc::munmap(ADDR as *mut libc::c_void, PAGES * PAGE) };
    take_and_check(kmod::Taken::CherryPicked);
    let e = kmod::cherry_pick(pidfd, ADDR + 0x1000_0000, 0).unwrap_err();
    check(
        matches!(e, kmod::Error::NoSuchProcess),
        &format!("reaped source -> NoSuchProcess ({e})"),
    );
    // SAFETY: reading a global in a single-threaded program.
    exit(if unsafe { FAILED } == 0 { 0 } else { 1 });
}
