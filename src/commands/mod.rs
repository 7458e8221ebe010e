//! One module per subcommand, the only layer that knows [`cli`].

pub mod cli;
