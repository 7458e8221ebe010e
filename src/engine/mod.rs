//! The parts a run is built from. Each imports [`crate::base`] and other engine modules, never
//! the run or the commands.

pub mod attach;
pub mod audit;
pub mod cache;
pub mod concurrency;
pub mod dedup;
pub mod derived;
pub mod expect;
pub mod input;
pub mod limiter;
pub mod lock;
pub mod mock;
pub mod output;
pub mod pricing;
pub mod provider;
pub mod render_guard;
pub mod retry;
pub mod row_settings;
pub mod schema;
pub mod spend;
pub mod stdio;
pub mod store;
pub mod template;
pub mod tokens;
