//! The `batch` binary: everything lives in the library; this only turns its status into an exit code.

/// Every row allocates a handful of short-lived buffers (body, response, result) across threads;
/// mimalloc serves that pattern with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    batch::main_entry().into()
}
