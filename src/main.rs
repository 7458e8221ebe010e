//! The `batch` binary: everything lives in the library; this only turns its status into an exit code.

fn main() -> std::process::ExitCode {
    batch::main_entry().into()
}
