//! `crit x DIR ps|fds|mems|rss`: the explorers of upstream crit, walking
//! pstree/core/ids/fdinfo/files/fs/mm/pagemap images of a dump directory.
//! Output text is the same as upstream's (python `%` formats reproduced).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use images_proto::image::decode_image;
use serde_json::Value;

/// An explorer failure: the image and what was wrong with it.
#[derive(Debug)]
pub struct ExploreError(pub String);

impl std::fmt::Display for ExploreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<images_proto::ImageError> for ExploreError {
    fn from(e: images_proto::ImageError) -> Self {
        ExploreError(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ExploreError>;

/// Which explorer to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Ps,
    Fds,
    Mems,
    Rss,
}

impl std::str::FromStr for What {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "ps" => What::Ps,
            "fds" => What::Fds,
            "mems" => What::Mems,
            "rss" => What::Rss,
            _ => {
                return Err(format!(
                    "invalid choice: '{s}' (choose from 'ps', 'fds', 'mems', 'rss')"
                ))
            }
        })
    }
}

/// Run explorer `what` on `dir`, appending its output to `out`. On an error
/// `out` holds what upstream would have printed before failing.
///
/// Tasks that are dead (zombies) have no ids/fs/mm/pagemap images; upstream
/// fails on them, we leave them out.
pub fn explore(dir: &Path, what: What, out: &mut String) -> Result<()> {
    let mut x = Explorer {
        dir: dir.to_path_buf(),
        files: None,
        images: HashMap::new(),
        cache: HashMap::new(),
    };
    match what {
        What::Ps => x.ps(out),
        What::Fds => x.fds(out),
        What::Mems => x.mems(out),
        What::Rss => x.rss(out),
    }
}

struct Explorer {
    dir: PathBuf,
    /// Entries of files.img (empty if it cannot be read, as upstream).
    files: Option<Vec<Value>>,
    /// Entries of reg-files.img / pipes.img / unixsk.img once loaded.
    images: HashMap<&'static str, Vec<Value>>,
    /// (type, id) -> description.
    cache: HashMap<(String, u64), String>,
}

fn err(what: impl Into<String>) -> ExploreError {
    ExploreError(what.into())
}

/// `obj[key]` as an unsigned integer, or an error naming image/entry/field.
fn uint(obj: &Value, key: &str, at: &str) -> Result<u64> {
    match obj.get(key) {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| err(format!("{at}, field {key}: not an unsigned integer: {v}"))),
        None => Err(err(format!("{at}, field {key}: missing"))),
    }
}

/// Upstream's `get_task_id`: `p[val]` or else `p['ns_' + val][0]`.
fn task_id(p: &Value, key: &str, at: &str) -> Result<u64> {
    if p.get(key).is_some() {
        return uint(p, key, at);
    }
    let ns = format!("ns_{key}");
    p.get(&ns)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_u64)
        .ok_or_else(|| err(format!("{at}, field {key}: missing")))
}

impl Explorer {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Entries of image `name` (decoded as upstream does: not pretty).
    fn load(&self, name: &str) -> Result<Vec<Value>> {
        let path = self.path(name);
        let buf = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let img = decode_image(&buf, &path, false)?;
        match img {
            Value::Object(mut m) => match m.remove("entries") {
                Some(Value::Array(a)) => Ok(a),
                _ => Err(err(format!("{}: no entries", path.display()))),
            },
            _ => Err(err(format!("{}: not an image", path.display()))),
        }
    }

    /// The first entry of image `name`.
    fn first(&self, name: &str) -> Result<Value> {
        self.load(name)?.into_iter().next().ok_or_else(|| {
            err(format!(
                "{}: entry 0: missing (image has no entries)",
                self.path(name).display()
            ))
        })
    }

    /// True if task `pid` has no per-task image `name` because it is dead.
    fn dead_without(&self, pid: u64, name: &str) -> bool {
        if self.path(name).exists() {
            return false;
        }
        let alive = self.first(&format!("core-{pid}.img")).ok().and_then(|c| {
            c.get("tc")
                .and_then(|tc| tc.get("task_state"))
                .and_then(Value::as_u64)
        });
        matches!(alive, Some(s) if s != 1)
    }

    fn pstree(&self) -> Result<Vec<(u64, Value)>> {
        let entries = self.load("pstree.img")?;
        let at = |i: usize| format!("{}: entry {i}", self.path("pstree.img").display());
        entries
            .into_iter()
            .enumerate()
            .map(|(i, p)| Ok((task_id(&p, "pid", &at(i))?, p)))
            .collect()
    }

    fn ps(&mut self, out: &mut String) -> Result<()> {
        struct Item {
            pid: u64,
            pgid: u64,
            sid: u64,
            comm: String,
            kids: Vec<usize>,
        }
        let tree = self.pstree()?;
        let mut items: Vec<Item> = Vec::new();
        // pid -> index into items, in insertion order like a python dict.
        let mut by_pid: HashMap<u64, usize> = HashMap::new();
        let mut order: Vec<(u64, u64)> = Vec::new(); // (pid, ppid)
        for (i, (pid, p)) in tree.iter().enumerate() {
            let at = format!("{}: entry {i}", self.path("pstree.img").display());
            let core_name = format!("core-{pid}.img");
            let core = self.first(&core_name)?;
            let comm = core
                .get("tc")
                .and_then(|tc| tc.get("comm"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    err(format!(
                        "{}: entry 0, field tc.comm: missing",
                        self.path(&core_name).display()
                    ))
                })?
                .to_string();
            let item = Item {
                pid: *pid,
                pgid: task_id(p, "pgid", &at)?,
                sid: task_id(p, "sid", &at)?,
                comm,
                kids: Vec::new(),
            };
            let ppid = uint(p, "ppid", &at)?;
            match by_pid.get(pid) {
                // A repeated pid replaces the earlier item in place (dict semantics).
                Some(&idx) => {
                    items[idx] = item;
                    if let Some(o) = order.iter_mut().find(|o| o.0 == *pid) {
                        o.1 = ppid;
                    }
                }
                None => {
                    by_pid.insert(*pid, items.len());
                    items.push(item);
                    order.push((*pid, ppid));
                }
            }
        }
        let mut root = None;
        for &(pid, ppid) in &order {
            let idx = by_pid[&pid];
            if ppid == 0 {
                root = Some(idx);
                continue;
            }
            let parent = *by_pid.get(&ppid).ok_or_else(|| {
                err(format!(
                    "{}: task {pid} has parent {ppid}, which is not in the tree",
                    self.path("pstree.img").display()
                ))
            })?;
            items[parent].kids.push(idx);
        }
        let root = root.ok_or_else(|| {
            err(format!(
                "{}: no task with ppid 0",
                self.path("pstree.img").display()
            ))
        })?;
        let _ = writeln!(out, "{:>7}{:>7}{:>7}   COMM", "PID", "PGID", "SID");
        // Iterative depth-first walk (a cycle cannot occur: each item has one parent
        // and the root has none, but guard against deep or looping input anyway).
        let mut stack = vec![(root, 0usize)];
        let mut printed = 0usize;
        while let Some((idx, depth)) = stack.pop() {
            printed += 1;
            if printed > items.len() * 2 + 1 {
                return Err(err(format!(
                    "{}: the process tree has a cycle",
                    self.path("pstree.img").display()
                )));
            }
            let it = &items[idx];
            let _ = writeln!(
                out,
                "{:7}{:7}{:7}   {}{}",
                it.pid,
                it.pgid,
                it.sid,
                " ".repeat(4 * depth),
                it.comm
            );
            for &k in it.kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
        Ok(())
    }

    fn files_entries(&mut self) -> &[Value] {
        if self.files.is_none() {
            // Upstream: any failure to load files.img means "no files.img".
            self.files = Some(self.load("files.img").unwrap_or_default());
        }
        self.files.as_deref().unwrap_or_default()
    }

    /// Upstream's `ftype_find_in_image`: look in files.img (sub-message
    /// `field`), else in the per-type image `img`.
    fn find(&mut self, fid: u64, field: &str, img: &'static str) -> Result<Option<Value>> {
        let files = self.files_entries();
        if !files.is_empty() {
            if let Some(f) = files
                .iter()
                .find(|f| f.get("id").and_then(Value::as_u64) == Some(fid))
            {
                // A found entry is a non-empty dict, hence truthy.
                return Ok(f.get(field).cloned());
            }
        }
        if !self.images.contains_key(img) {
            let entries = self.load(img)?;
            self.images.insert(img, entries);
        }
        Ok(self.images[img]
            .iter()
            .find(|f| f.get("id").and_then(Value::as_u64) == Some(fid))
            .cloned())
    }

    fn file_str(&mut self, ftype: &str, fid: u64) -> Result<String> {
        let key = (ftype.to_string(), fid);
        if let Some(s) = self.cache.get(&key) {
            if !s.is_empty() {
                return Ok(s.clone());
            }
        }
        let s = match ftype {
            "REG" => {
                let rf = self.find(fid, "reg", "reg-files.img")?;
                match rf
                    .as_ref()
                    .filter(|v| truthy(v))
                    .and_then(|r| r.get("name"))
                {
                    Some(n) if truthy(n) => py_str(n),
                    _ => "unknown path".to_string(),
                }
            }
            "PIPE" => match self.find(fid, "pipe", "pipes.img")?.filter(truthy) {
                Some(p) => format!("pipe[{}]", uint(&p, "pipe_id", "pipe entry")?),
                None => "pipe[?]".to_string(),
            },
            "UNIXSK" => match self.find(fid, "usk", "unixsk.img")?.filter(truthy) {
                None => "unix[?]".to_string(),
                Some(ux) => {
                    let name = match ux.get("name") {
                        Some(n) if truthy(n) => format!(" {}", py_bytes_repr(&py_str(n))),
                        _ => String::new(),
                    };
                    format!(
                        "unix[{} ({}){}]",
                        uint(&ux, "ino", "unix socket entry")?,
                        uint(&ux, "peer", "unix socket entry")?,
                        name
                    )
                }
            },
            other => format!("{other}.{fid}"),
        };
        self.cache.insert(key, s.clone());
        Ok(s)
    }

    fn fds(&mut self, out: &mut String) -> Result<()> {
        for (pid, _) in self.pstree()? {
            let ids_name = format!("ids-{pid}.img");
            if self.dead_without(pid, &ids_name) {
                continue;
            }
            let ids = self.first(&ids_name)?;
            let fdt = uint(
                &ids,
                "files_id",
                &format!("{}: entry 0", self.path(&ids_name).display()),
            )?;
            let fdi_name = format!("fdinfo-{fdt}.img");
            let fdi = self.load(&fdi_name)?;
            let _ = writeln!(out, "{pid}");
            for (i, fd) in fdi.iter().enumerate() {
                let at = format!("{}: entry {i}", self.path(&fdi_name).display());
                let ty = fd
                    .get("type")
                    .map(py_str)
                    .ok_or_else(|| err(format!("{at}, field type: missing")))?;
                let id = uint(fd, "id", &at)?;
                let num = fd
                    .get("fd")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| err(format!("{at}, field fd: missing")))?;
                let s = self.file_str(&ty, id)?;
                let _ = writeln!(out, "\t{num:7}: {s}");
            }
            let fs_name = format!("fs-{pid}.img");
            let fs = self.first(&fs_name)?;
            let at = format!("{}: entry 0", self.path(&fs_name).display());
            let cwd = self.file_str("REG", uint(&fs, "cwd_id", &at)?)?;
            let _ = writeln!(out, "\t{:>7}: {cwd}", "cwd");
            let root = self.file_str("REG", uint(&fs, "root_id", &at)?)?;
            let _ = writeln!(out, "\t{:>7}: {root}", "root");
        }
        Ok(())
    }

    fn mems(&mut self, out: &mut String) -> Result<()> {
        let mut vids: HashMap<u64, u64> = HashMap::new();
        let mut vid = |id: u64| -> u64 {
            let n = vids.len() as u64 + 1;
            *vids.entry(id).or_insert(n)
        };
        for (pid, _) in self.pstree()? {
            let mm_name = format!("mm-{pid}.img");
            if self.dead_without(pid, &mm_name) {
                continue;
            }
            let mm = self.first(&mm_name)?;
            let at = format!("{}: entry 0", self.path(&mm_name).display());
            let _ = writeln!(out, "{pid}");
            let exe = self.file_str("REG", uint(&mm, "exe_file_id", &at)?)?;
            let _ = writeln!(out, "\t{:<36}    {exe}", "exe");
            let vmas = mm
                .get("vmas")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, vma) in vmas.iter().enumerate() {
                let at = format!("{at}, field vmas.{i}");
                let st = uint(vma, "status", &at)?;
                let shmid = || uint(vma, "shmid", &at);
                let mut fname = if st & (1 << 10) != 0 {
                    format!(" ips[{:x}]", vid(shmid()?))
                } else if st & (1 << 8) != 0 {
                    format!(" shmem[{:x}]", vid(shmid()?))
                } else if st & (1 << 11) != 0 {
                    format!(" packet[{:x}]", vid(shmid()?))
                } else if st & ((1 << 6) | (1 << 7)) != 0 {
                    let mut s = format!(" {}", self.file_str("REG", shmid()?)?);
                    let pgoff = uint(vma, "pgoff", &at)?;
                    if pgoff != 0 {
                        let _ = write!(s, " + {pgoff:#x}");
                    }
                    if st & (1 << 7) != 0 {
                        s.push_str(" (s)");
                    }
                    s
                } else if st & (1 << 1) != 0 {
                    " [stack]".to_string()
                } else if st & (1 << 2) != 0 {
                    " [vsyscall]".to_string()
                } else if st & (1 << 3) != 0 {
                    " [vdso]".to_string()
                } else if uint(vma, "flags", &at)? & 0x0100 != 0 {
                    " [stack?]".to_string()
                } else {
                    String::new()
                };
                if st & 1 == 0 {
                    fname.push_str(" *");
                }
                let prot_v = uint(vma, "prot", &at)?;
                let prot: String = [(1, 'r'), (2, 'w'), (4, 'x')]
                    .iter()
                    .map(|&(b, c)| if prot_v & b != 0 { c } else { '-' })
                    .collect();
                let astr = format!(
                    "{:08x}-{:08x}",
                    uint(vma, "start", &at)?,
                    uint(vma, "end", &at)?
                );
                let _ = writeln!(out, "\t{astr:<36}{prot}{fname}");
            }
        }
        Ok(())
    }

    fn rss(&mut self, out: &mut String) -> Result<()> {
        for (pid, _) in self.pstree()? {
            let mm_name = format!("mm-{pid}.img");
            if self.dead_without(pid, &mm_name) {
                continue;
            }
            let mm = self.first(&mm_name)?;
            let mm_at = format!("{}: entry 0", self.path(&mm_name).display());
            let vmas = mm
                .get("vmas")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut vv = Vec::with_capacity(vmas.len());
            for (i, v) in vmas.iter().enumerate() {
                let at = format!("{mm_at}, field vmas.{i}");
                vv.push((
                    uint(v, "start", &at)?,
                    uint(v, "end", &at)?,
                    uint(v, "status", &at)?,
                    v.get("shmid").and_then(Value::as_u64),
                ));
            }
            let pm_name = format!("pagemap-{pid}.img");
            let pms = self.load(&pm_name)?;
            let _ = writeln!(out, "{pid}");
            let n = vv.len() as i64;
            // Python list indexing: negative indices count from the end.
            let at_idx = |i: i64| -> Option<usize> {
                let j = if i < 0 { i + n } else { i };
                (0..n).contains(&j).then_some(j as usize)
            };
            let mut vmi: i64 = 0;
            let mut pvmi: i64 = -1;
            for (k, pm) in pms.iter().enumerate().skip(1) {
                let at = format!("{}: entry {k}", self.path(&pm_name).display());
                let vaddr = uint(pm, "vaddr", &at)?;
                let nr = uint(pm, "nr_pages", &at)?;
                let pstr = format!("\t{vaddr:x} / {nr:<8}");
                while vmi < n {
                    let Some(j) = at_idx(vmi) else { break };
                    if vv[j].1 > vaddr {
                        break;
                    }
                    vmi += 1;
                }
                let pme = vaddr.wrapping_add(nr << 12);
                let mut vstr = String::new();
                while vmi < n {
                    let Some(j) = at_idx(vmi) else { break };
                    let (start, end, status, shmid) = vv[j];
                    if start >= pme {
                        break;
                    }
                    if vmi == pvmi {
                        vstr.push_str(" ~");
                    } else {
                        let _ = write!(vstr, " {start:08x} / {:<8}", end.wrapping_sub(start) >> 12);
                        if status & ((1 << 6) | (1 << 7)) != 0 {
                            let id = shmid.ok_or_else(|| {
                                err(format!("{mm_at}, field vmas.{j}.shmid: missing"))
                            })?;
                            let s = self.file_str("REG", id)?;
                            vstr.push(' ');
                            vstr.push_str(&s);
                        }
                        pvmi = vmi;
                    }
                    let _ = write!(vstr, "\n\t{:23}", "");
                    vmi += 1;
                }
                vmi -= 1;
                let _ = writeln!(out, "{pstr:<24}{vstr}");
            }
        }
        Ok(())
    }
}

/// Python truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// `'%s' % v` for a JSON value as python holds it.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// `'%s' % b` for the bytes upstream holds a unix socket name in (its
/// quoted-printable form): python's `repr` of a bytes object.
fn py_bytes_repr(s: &str) -> String {
    let b = s.as_bytes();
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from("b");
    out.push(quote);
    for &c in b {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            c if c as char == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(c as char),
            _ => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_repr() {
        assert_eq!(py_bytes_repr("/tmp/x"), "b'/tmp/x'");
        assert_eq!(py_bytes_repr("a'b"), "b\"a'b\"");
        assert_eq!(py_bytes_repr("=00ab\n"), "b'=00ab\\n'");
    }
}
