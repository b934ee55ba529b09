//! `criu swrk`'s request handling short of running it: decode one
//! `criu_req` (`engine::cli::swrk::decode_request`: size limit, schema check
//! naming the field, typed decode) and map its `criu_opts` to the engine's
//! options for its request type (`map_request`), with a stand-in for the
//! client's directory fds (no fd is opened). The same bytes as a
//! `--inherit-fd` value (`engine::inherit::parse_arg`: `fd[N]:KEY`, the
//! key checked as an RPC `inherit_fd` key is). Must never panic; every
//! refusal is a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = engine::inherit::parse_arg(s);
    }
    let Ok(req) = engine::cli::swrk::decode_request(data) else { return };
    let Ok(kind) = images_proto::rpc::CriuReqType::try_from(req.r#type) else { return };
    let opts = req.opts.clone().unwrap_or(images_proto::rpc::CriuOpts { images_dir_fd: -1, ..Default::default() });
    let mut open_dir = |_field: &str, n: i32| -> Result<String, String> {
        if n % 2 == 0 { Ok(format!("/fuzz/dir{n}")) } else { Err(format!("fd {n}: not a directory")) }
    };
    let _ = engine::cli::swrk::map_request(kind, &opts, 4242, &mut open_dir);
});
