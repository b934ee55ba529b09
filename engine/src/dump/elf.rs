//! The GNU build-id of an ELF file, as upstream records it in
//! `reg_file_entry.build_id` (the note's bytes as little-endian u32 words)
//! so that restore can tell a rebuilt binary from the dumped one. A pure
//! reader over the file: no mapping, bounded reads, never a panic on a
//! malformed file (it just has no build-id).

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;
/// Go's build-id note (owner "Go").
const NT_GO_BUILD_ID: u32 = 4;
/// Notes larger than this are not build-ids worth reading.
const MAX_NOTE_SEGMENT: u64 = 1 << 16;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Build-id words of the 64-bit little-endian ELF file `f`, if it has one.
pub fn build_id(f: &File) -> Option<Vec<u32>> {
    find_note(f, NT_GNU_BUILD_ID, b"GNU\0").filter(|d| !d.is_empty()).map(|desc| {
        desc.chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect()
    })
}

/// Whether the ELF file `f` is a program built by Go's toolchain (its
/// "Go" build-id note, NT_GO_BUILD_ID 4, which the linker writes into
/// every Go executable, stripped or not).
pub fn is_go_program(f: &File) -> bool {
    find_note(f, NT_GO_BUILD_ID, b"Go\0\0").is_some()
}

/// The description of the first note of type `ty` and owner `name` (with
/// its NUL) in the PT_NOTE segments of the 64-bit little-endian ELF `f`.
fn find_note(f: &File, ty: u32, name: &[u8]) -> Option<Vec<u8>> {
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 32)?;
    let phentsize = u64::from(u16_at(&eh, 54)?);
    let phnum = u64::from(u16_at(&eh, 56)?);
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut ph = vec![0u8; usize::try_from(phentsize * phnum).ok()?];
    f.read_exact_at(&mut ph, phoff).ok()?;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        if u32_at(p, 0)? != PT_NOTE {
            continue;
        }
        let (off, size) = (u64_at(p, 8)?, u64_at(p, 32)?);
        if size > MAX_NOTE_SEGMENT {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.read_exact_at(&mut notes, off).ok()?;
        if let Some(d) = note_in(&notes, ty, name) {
            return Some(d);
        }
    }
    None
}

/// Walk the notes of one PT_NOTE segment for owner `name`, type `ty`.
fn note_in(notes: &[u8], ty: u32, name: &[u8]) -> Option<Vec<u8>> {
    let align4 = |x: usize| x.checked_add(3).map(|v| v & !3);
    let mut o = 0usize;
    while o + 12 <= notes.len() {
        let namesz = u32_at(notes, o)? as usize;
        let descsz = u32_at(notes, o + 4)? as usize;
        let t = u32_at(notes, o + 8)?;
        let name_at = o + 12;
        let desc_at = name_at.checked_add(align4(namesz)?)?;
        let next = desc_at.checked_add(align4(descsz)?)?;
        if next > notes.len() {
            return None;
        }
        if t == ty && notes.get(name_at..name_at.checked_add(namesz)?)? == name {
            return Some(notes[desc_at..desc_at + descsz].to_vec());
        }
        o = next;
    }
    None
}

/// Build-id of the regular file at `path` (none if it is not an ELF file
/// with one, or cannot be read).
pub fn build_id_of(path: &Path) -> Option<Vec<u32>> {
    // O_NONBLOCK: a path that is now a FIFO must not block the open
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    build_id(&f)
}

/// What names one version of a file: device, inode, size, mtime, ctime
/// (any write changes the ctime).
type FileKey = (u64, u64, u64, (i64, i64), (i64, i64));

fn file_key(m: &std::fs::Metadata) -> FileKey {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.size(), (m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec()))
}

/// [`build_id_of`] for a file whose metadata `meta` the caller has just
/// read: the build-id of a file already read in this dump (same device,
/// inode, size, mtime and ctime) is not read again. A tree of 100
/// processes maps the same few binaries and libraries 1,500 times.
pub fn build_id_known(path: &Path, meta: Option<&std::fs::Metadata>) -> Option<Vec<u32>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashMap<FileKey, Option<Vec<u32>>>>> = Mutex::new(None);
    let key = meta.filter(|m| m.is_file()).map(file_key);
    if let Some(k) = key {
        if let Some(b) = SEEN.lock().ok().and_then(|g| g.as_ref().and_then(|m| m.get(&k).cloned())) {
            return b;
        }
    }
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() {
        return None;
    }
    let b = build_id(&f);
    if let Ok(mut g) = SEEN.lock() {
        // (the key of the file read, which may be a newer one than `meta`'s)
        g.get_or_insert_with(HashMap::new).insert(file_key(&m), b.clone());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_fixture_binary_has_the_recorded_build_id() {
        // crit 4.2's files.json of the counter set records these words.
        test_support::require!(test_support::why_not_fixture("upstream/counter/fx-counter"));
        let p = test_support::fixture("upstream/counter/fx-counter");
        assert_eq!(build_id_of(&p), Some(vec![1541857710, 862450628, 3177806065, 3137925598, 3318226877]));
    }

    #[test]
    fn a_known_file_is_read_once_and_a_changed_one_again() {
        let p = std::env::temp_dir().join(format!("elf-test-known-{}", std::process::id()));
        std::fs::copy("/proc/self/exe", &p).unwrap();
        let want = build_id_of(&p);
        assert!(want.is_some(), "the test binary has a build-id");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(build_id_known(&p, Some(&m)), want);
        assert_eq!(build_id_known(&p, Some(&m)), want);
        // rewritten in place: another size and ctime, read again
        std::fs::write(&p, b"\x7fELF\x02\x01garbage").unwrap();
        let m2 = std::fs::metadata(&p).unwrap();
        assert_eq!(build_id_known(&p, Some(&m2)), None);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn non_elf_and_garbage_have_none() {
        assert_eq!(note_in(&[0xff; 40], NT_GNU_BUILD_ID, b"GNU\0"), None);
        assert_eq!(note_in(&[], NT_GNU_BUILD_ID, b"GNU\0"), None);
        let p = std::env::temp_dir().join(format!("elf-test-{}", std::process::id()));
        std::fs::write(&p, b"\x7fELF\x02\x01garbage").unwrap();
        assert_eq!(build_id_of(&p), None);
        std::fs::remove_file(&p).unwrap();
    }

    /// A minimal ELF: the header, one PT_NOTE program header, one note.
    fn elf_with_note(owner: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&(owner.len() as u32).to_le_bytes());
        note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        note.extend_from_slice(&ty.to_le_bytes());
        note.extend_from_slice(owner);
        note.resize(note.len().div_ceil(4) * 4, 0);
        note.extend_from_slice(desc);
        note.resize(note.len().div_ceil(4) * 4, 0);
        let mut f = vec![0u8; 64 + 56];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        f[64..68].copy_from_slice(&PT_NOTE.to_le_bytes());
        f[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        f[64 + 32..64 + 40].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_filesz
        f.extend_from_slice(&note);
        f
    }

    #[test]
    fn a_go_program_is_told_by_its_go_build_id_note() {
        let p = std::env::temp_dir().join(format!("elf-test-go-{}", std::process::id()));
        std::fs::write(&p, elf_with_note(b"Go\0\0", NT_GO_BUILD_ID, b"abc/def")).unwrap();
        assert!(is_go_program(&File::open(&p).unwrap()));
        assert_eq!(build_id_of(&p), None);
        std::fs::write(&p, elf_with_note(b"GNU\0", NT_GNU_BUILD_ID, &[1, 0, 0, 0, 2, 0, 0, 0])).unwrap();
        assert!(!is_go_program(&File::open(&p).unwrap()));
        assert_eq!(build_id_of(&p), Some(vec![1, 2]));
        // the Rust test binary is no Go program
        assert!(!is_go_program(&File::open("/proc/self/exe").unwrap()));
        std::fs::remove_file(&p).unwrap();
    }
}
