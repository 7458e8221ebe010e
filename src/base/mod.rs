//! Leaf types: what every other layer speaks, importing nothing else of the crate.

pub mod error;
pub mod format;
