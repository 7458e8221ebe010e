//! The `batch` binary: everything lives in the library; this only turns its status into an exit code.

/// Every row allocates a handful of short-lived buffers (body, response, result) across threads;
/// mimalloc serves that pattern with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_huge_pages();
    purge_at_once();
    batch::main_entry().into()
}

/// Transparent huge pages let the kernel back mimalloc's arenas with 2 MiB pages, so a few live
/// blocks keep whole huge pages resident: a 200,000-row run peaked at 75 MB with them and 52 MB
/// without, at the same speed (what `MIMALLOC_ALLOW_THP=0` does, for every run by default).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory we hold;
    // on failure (an old kernel) huge pages simply stay allowed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// mimalloc keeps freed memory for a while (mimalloc 3: a second) before it gives it back, for
/// the next allocation's sake; with rows freeing their buffers all the time, that kept 10 MB
/// more resident at a 1,000,000-row run's peak (58-64 MB against 49-51 MB with no delay) at no
/// measurable cost in speed. A user's `MIMALLOC_PURGE_DELAY` still wins.
fn purge_at_once() {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_t` (between `eager_commit_delay`, 14, and
    /// `use_numa_nodes`, 16, which `libmimalloc-sys` names; the same in its v2 and v3). Check it
    /// when `mimalloc` is upgraded: the option has no constant of its own there.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // (mimalloc reads its options from the environment as the process loads, so setting only
    // a default here would change nothing.)
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mimalloc is linked in as the global allocator; setting an option is thread-safe
    // and takes plain integers.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}
