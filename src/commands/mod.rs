//! One module per subcommand, the only layer that knows [`cli`].

pub mod batch;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod config;
pub mod embed;
pub mod export;
pub mod mock;
pub mod run;
pub mod status;
pub mod watch;

use clap::CommandFactory;

use crate::base::error::{Error, ExitStatus};
use cli::Command;

/// Runs one subcommand to its exit status.
pub fn dispatch(command: Command) -> Result<ExitStatus, Error> {
    // Copies of stdin (or of a pipe) are removed however the command ends.
    let _spools = crate::engine::stdio::SpoolGuard;
    match command {
        Command::Completions { shell } => {
            let mut cmd = cli::Cli::command();
            clap_complete::generate(shell, &mut cmd, "batch", &mut std::io::stdout());
            Ok(ExitStatus::Success)
        }
        Command::Run(args) => block_on(run::run(*args)),
        Command::Submit(args) => block_on(batch::submit(*args)),
        Command::Status(args) => block_on(status::run(args)),
        Command::Export(args) => export::run(args),
        Command::Collect(args) => block_on(batch::collect(*args)),
        Command::Cancel(args) => block_on(batch::cancel(args)),
        Command::Cache { action, cache_dir } => cache::run(action, cache_dir),
        Command::Mock(args) => block_on(mock::run(args)),
        Command::Bench(args) => block_on(bench::run(*args)),
        Command::Watch(args) => block_on(watch::run(*args)),
        Command::Embed(args) => block_on(embed::run(*args)),
    }
}

fn block_on<F: std::future::Future<Output = Result<ExitStatus, Error>>>(
    fut: F,
) -> Result<ExitStatus, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?
        .block_on(fut)
}
