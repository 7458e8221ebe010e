//! The integration tests, in one test binary (as ripgrep does): one link of the crate instead of
//! one per file, and one pool of test threads for all of them. Each module drives the real
//! `batch` binary (`CARGO_BIN_EXE_batch`) against mock servers it starts itself; `util` holds
//! the helpers they share.
//!
//! The tests share one process, so none may change process-wide state (environment variables,
//! the current directory): settings go to the child process through `util::cmd`.

mod util;

mod anthropic_version;
mod batchapi;
mod bench;
mod cache;
mod checkpoints;
mod durability;
mod e2e;
mod embed;
mod embed_batch;
mod embed_fixes;
mod embed_parquet;
mod expect;
mod failfast;
mod firsthour;
mod formats;
mod hardening;
mod images;
mod inspect;
mod layers;
mod parquet;
mod providers;
mod ratelimit;
mod readme;
mod schema;
mod spend;
mod stall;
mod watch;
