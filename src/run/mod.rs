//! A run: the settings it was resolved into and the loops that carry its rows through the engine.

pub mod batchapi;
pub mod bench;
pub mod connection;
pub mod embed;
pub mod inspect;
pub mod paths;
pub mod progress;
pub mod runner;
pub mod settings;
pub mod summary;
pub mod watch;
