//! Transparent huge pages for the heap.
//!
//! The game state is a million players' worth of small records reached in
//! random order; with 4 KiB pages nearly every access also misses the TLB.
//! Many kernels (this project's machine among them) back memory with huge
//! pages only where a program asks (`transparent_hugepage = madvise`), and
//! glibc's malloc asks for its heaps only when its `glibc.malloc.hugetlb`
//! tunable is 1, a setting read once at process start. So `main` re-executes
//! the binary with it set before doing anything else: the same pid, flags,
//! descriptors and environment. `trove bench apply` runs about 30% faster
//! with it (docs/benchmarks.md).
//!
//! `TROVE_HUGE_PAGES=0` turns this off; a `GLIBC_TUNABLES` that already
//! names the tunable is left as it is. Other C libraries ignore the
//! variable.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

const TUNABLE: &str = "glibc.malloc.hugetlb";

/// What `GLIBC_TUNABLES` should become, or `None` to run as is.
pub fn wanted(tunables: Option<&str>, opt_out: Option<&str>) -> Option<String> {
    if opt_out == Some("0") {
        return None;
    }
    match tunables {
        None | Some("") => Some(format!("{TUNABLE}=1")),
        Some(t) if t.split(':').any(|kv| kv.split('=').next() == Some(TUNABLE)) => None,
        Some(t) => Some(format!("{t}:{TUNABLE}=1")),
    }
}

/// Re-executes the process with the tunable set, if it is not; returns
/// only if it was set already, turned off, or the exec failed (then the
/// process goes on without huge pages).
pub fn reexec_with_huge_pages() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    let opt_out = std::env::var("TROVE_HUGE_PAGES").ok();
    let Some(value) = wanted(tunables.as_deref(), opt_out.as_deref()) else { return };
    let Ok(exe) = std::env::current_exe() else { return };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Only returns on failure.
    let err = std::process::Command::new(exe).args(args).env("GLIBC_TUNABLES", value).exec();
    eprintln!("trove: running without huge pages (re-executing failed: {err})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunable_is_added_once() {
        assert_eq!(wanted(None, None).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(wanted(Some(""), None).as_deref(), Some("glibc.malloc.hugetlb=1"));
        assert_eq!(
            wanted(Some("glibc.malloc.trim_threshold=1"), None).as_deref(),
            Some("glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=1")
        );
        // Set already (by us or by the operator, to any value): no loop.
        assert_eq!(wanted(Some("glibc.malloc.hugetlb=1"), None), None);
        assert_eq!(wanted(Some("a=1:glibc.malloc.hugetlb=0"), None), None);
        assert_eq!(wanted(None, Some("0")), None);
        assert_eq!(wanted(None, Some("1")).as_deref(), Some("glibc.malloc.hugetlb=1"));
    }
}
