//! The end of a dump that kills its source: every thread's exit is
//! collected (the leader's last: the kernel reports a leader only after the
//! rest of its group) and the dump returns at once, without waiting out a
//! timeout. A multi-threaded source used to take over 6 s here (3 s waiting
//! for the leader first, 3 s more for a parent that could not reap it).
//! Needs root, gcc, unshare and setsid; otherwise SKIP.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn threaded_source_dump_returns_at_once() {
    test_support::require!(test_support::why_not_root());
    test_support::require!(test_support::why_not_tools(&["gcc", "unshare", "setsid"]));
    let tmp = test_dir("dump-end");
    let criu = private_criu(&tmp);
    let fx = Fixture::start("threads", &tmp, Ns::OwnPidNs);
    let img = tmp.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let t = Instant::now();
    let log = criu_ok(&criu, &["dump", "-t", &fx.pid.to_string()], &img, "dump.log");
    let took = t.elapsed();
    assert!(!log.contains("has not exited yet") && !log.contains("has not reaped"), "dump waited for the killed source:\n{log}");
    assert!(took < Duration::from_secs(2), "dump of a 5-thread process took {took:?}:\n{log}");
    wait_until("the source's pids", Duration::from_secs(2), || live_with_exe(&fx.bin).is_empty());
    let _ = std::fs::remove_dir_all(&tmp);
}
