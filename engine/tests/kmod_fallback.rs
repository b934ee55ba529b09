//! The kmod wrapper on a real stopped process: `take_anon_vma` gives this
//! process a VMA of another one at the same address, copy-on-write through
//! `/dev/vma_cherrypick` when the module is loaded, else by copying with
//! process_vm_readv. On this machine kind (no loadable modules) it must fall
//! back cleanly and still deliver the exact contents. The module's own
//! behaviour is tested in the VM by kmod/test.sh.

use engine::sys::kmod::{self, Taken};

const ADDR: u64 = 0x5a5a_0000_0000;
const LEN: usize = 64 << 12;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 12)) as u8
}

#[test]
fn take_anon_vma_falls_back_and_copies_exactly() {
    test_support::require!(test_support::why_not_root());
    // SAFETY: the child only makes async-signal-safe calls (mmap, raise,
    // _exit) and plain memory writes before stopping itself.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: the forked child maps a fixed range it owns, writes it and
        // stops itself; nothing else runs in it.
        unsafe {
            let p = libc::mmap(
                ADDR as *mut libc::c_void,
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            if p as u64 != ADDR {
                libc::_exit(3);
            }
            let s = std::slice::from_raw_parts_mut(p as *mut u8, LEN);
            for (i, b) in s.iter_mut().enumerate() {
                *b = pattern(i);
            }
            libc::raise(libc::SIGSTOP);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    assert_eq!(r, pid);
    assert!(libc::WIFSTOPPED(status), "child did not stop (status {status:#x})");
    // SAFETY: pidfd_open on our child; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(pidfd >= 0, "pidfd_open");

    let taken = kmod::take_anon_vma(pid, pidfd, ADDR, LEN as u64, libc::PROT_READ | libc::PROT_WRITE, 0)
        .expect("take_anon_vma");
    if kmod::is_available() {
        assert_eq!(taken, Taken::CherryPicked);
    } else {
        assert_eq!(taken, Taken::Copied, "no device: must fall back to copying");
    }
    // SAFETY: take_anon_vma mapped LEN readable bytes at ADDR in this process.
    let got = unsafe { std::slice::from_raw_parts(ADDR as *const u8, LEN) };
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, pattern(i), "byte {i} differs");
    }
    // The range is now taken: a second take must refuse, not overwrite.
    assert!(kmod::take_anon_vma(pid, pidfd, ADDR, LEN as u64, libc::PROT_READ, 0).is_err());
    // SAFETY: unmapping the range this test mapped, killing and reaping its child.
    unsafe {
        libc::munmap(ADDR as *mut libc::c_void, LEN);
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
        libc::close(pidfd);
    }
}
