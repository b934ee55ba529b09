//! File descriptors: regular files, directories, character devices
//! (/dev/null, /dev/zero), pipes.

use super::proc;
use crate::model::{Fd, FileDesc};
use crate::sys::Pid;
use std::io;
use std::os::unix::fs::MetadataExt;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading fd {fd} of {pid}")]
    Io { pid: Pid, fd: i32, #[source] source: io::Error },
    #[error("fd {fd} of {pid} is {what:?}: this kind of file is not supported yet")]
    Unsupported { pid: Pid, fd: i32, what: String },
}

pub fn collect_fds(pid: Pid) -> Result<Vec<Fd>, FilesError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| FilesError::Io { pid, fd: -1, source: e })?;
    let mut fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    fds.sort_unstable();
    let mut out = Vec::new();
    for fd in fds {
        let io_err = |e| FilesError::Io { pid, fd, source: e };
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(io_err)?;
        let link = link.to_string_lossy().to_string();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(io_err)?;
        let (pos, flags, _mnt) = proc::parse_fdinfo(&info);
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        let flags = flags & !(libc::O_CLOEXEC as u32);
        let file = if let Some(ino) = link.strip_prefix("pipe:[").and_then(|s| s.strip_suffix(']')) {
            FileDesc::Pipe { pipe_id: ino.parse().unwrap_or(0), flags }
        } else if link.starts_with('/') && !link.ends_with(" (deleted)") {
            let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(io_err)?;
            let is_reg = meta.file_type().is_file();
            FileDesc::Reg { path: link, flags, pos, mode: meta.mode(), size: is_reg.then(|| meta.size()) }
        } else {
            return Err(FilesError::Unsupported { pid, fd, what: link });
        };
        out.push(Fd { fd, cloexec, file });
    }
    Ok(out)
}
