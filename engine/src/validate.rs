//! Consistency checks of an image set that no single image can make on its
//! own, run before anything is created: VMAs must not overlap, and every
//! page run of the pagemap must lie inside VMAs (runs may span adjacent
//! VMAs). Errors name the image file, the entry and the addresses.
#![forbid(unsafe_code)]

use crate::images_io::ImagesError;

fn bad(file: &str, what: String) -> ImagesError {
    ImagesError::Bad { file: file.to_string(), what }
}

/// Check `vmas` ((start, end) of the entries of `mm_file`, in file order)
/// and `runs` ((vaddr, nr_pages) of the entries of `pagemap_file` after its
/// head, in file order).
pub fn mm_layout(mm_file: &str, pagemap_file: &str, vmas: &[(u64, u64)], runs: &[(u64, u64)]) -> Result<(), ImagesError> {
    let mut v: Vec<(u64, u64, usize)> = vmas.iter().enumerate().map(|(i, &(s, e))| (s, e, i)).collect();
    v.sort_unstable();
    for w in v.windows(2) {
        let ((s0, e0, i0), (s1, e1, i1)) = (w[0], w[1]);
        if s1 < e0 {
            return Err(bad(mm_file, format!("vma {i1} ({s1:#x}-{e1:#x}) overlaps vma {i0} ({s0:#x}-{e0:#x})")));
        }
    }
    for (k, &(vaddr, nr_pages)) in runs.iter().enumerate() {
        let (a, b) = (vaddr, vaddr.saturating_add(nr_pages.saturating_mul(4096)));
        let mut at = a;
        let mut i = v.partition_point(|x| x.1 <= a);
        while at < b {
            match v.get(i) {
                Some(&(s, e, _)) if s <= at => {
                    at = e;
                    i += 1;
                }
                _ => {
                    return Err(bad(
                        pagemap_file,
                        format!(
                            "entry {} (vaddr {a:#x}, {} pages): {at:#x} is outside every VMA of {mm_file}",
                            k + 1,
                            nr_pages
                        ),
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64) -> (u64, u64) {
        (start, end)
    }
    fn run(vaddr: u64, nr_pages: u64) -> (u64, u64) {
        (vaddr, nr_pages)
    }

    #[test]
    fn good_layout_with_a_run_spanning_two_vmas() {
        let v = [vma(0x1000, 0x3000), vma(0x3000, 0x5000), vma(0x8000, 0x9000)];
        mm_layout("mm-1.img", "pagemap-1.img", &v, &[run(0x1000, 1), run(0x2000, 2), run(0x8000, 1)]).unwrap();
    }

    #[test]
    fn overlap_is_named() {
        let v = [vma(0x1000, 0x4000), vma(0x3000, 0x5000)];
        let e = mm_layout("mm-7.img", "pagemap-7.img", &v, &[]).unwrap_err().to_string();
        assert_eq!(e, "mm-7.img: vma 1 (0x3000-0x5000) overlaps vma 0 (0x1000-0x4000)");
    }

    #[test]
    fn run_outside_is_named() {
        let v = [vma(0x1000, 0x3000), vma(0x4000, 0x5000)];
        let e = mm_layout("mm-7.img", "pagemap-7.img", &v, &[run(0x1000, 1), run(0x2000, 3)]).unwrap_err().to_string();
        assert_eq!(e, "pagemap-7.img: entry 2 (vaddr 0x2000, 3 pages): 0x3000 is outside every VMA of mm-7.img");
        let e = mm_layout("mm-7.img", "pagemap-7.img", &v, &[run(0x9000, 1)]).unwrap_err().to_string();
        assert!(e.contains("entry 1 (vaddr 0x9000"), "{e}");
    }
}
