//! Leaf types: what every other layer speaks, importing nothing else of the crate.

pub mod error;
pub mod format;
pub mod human;
pub mod money;
pub mod printer;
pub mod record;
pub mod secret;
pub mod usage;
