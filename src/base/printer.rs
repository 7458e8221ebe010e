//! What the user sees, decided in one place (as uv's `Printer`).
//!
//! Three kinds of text, three rules:
//! - a **report** is what the command was asked for (a dry-run plan, `batch status`): stdout,
//!   always, even with `-q`;
//! - a **note** tells how the work goes (the summary, "submitted 3 batches", "waiting: ..."):
//!   stderr, hidden by `-q`;
//! - a **warning** is something the user must know (why the run stopped, a row setting that was
//!   ignored, a cache that could not be opened): stderr, always; so is what the run does about
//!   an interrupt (`say`).
//!
//! Live progress is drawn only on a terminal and never with `-q`. Every write ignores errors: a
//! closed pipe (`batch status ... | head`) must end the output, not panic the process.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Printer {
    quiet: bool,
}

impl Printer {
    pub fn new(quiet: bool) -> Self {
        Printer { quiet }
    }

    pub fn is_quiet(self) -> bool {
        self.quiet
    }

    /// Whether a live progress line may be drawn: stderr is a terminal and `-q` is not given.
    pub fn live(self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    /// What the command was asked for, to stdout.
    pub fn report(self, text: impl Display) {
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }

    /// How the work goes, to stderr unless `-q`.
    pub fn note(self, text: impl Display) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }

    /// Something the user must know, to stderr even with `-q`, prefixed `warning: `.
    pub fn warn(self, text: impl Display) {
        self.say(format_args!("warning: {text}"));
    }

    /// What the run does about something the user did or must act on (an interrupt, why it
    /// stops), to stderr even with `-q`.
    pub fn say(self, text: impl Display) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// A block of lines written by `write` (the summary, a status table), to stderr unless
    /// `-q`.
    pub fn note_with(self, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
        if !self.quiet {
            let _ = write(&mut std::io::stderr().lock());
        }
    }

    /// A block of lines that must be seen (why a run stopped or failed), to stderr even with
    /// `-q`.
    pub fn say_with(self, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
        let _ = write(&mut std::io::stderr().lock());
    }

    /// A block of lines written by `write`, to stdout, always.
    pub fn report_with(self, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
        let _ = write(&mut std::io::stdout().lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hides_progress_but_keeps_its_flag() {
        assert!(Printer::new(true).is_quiet());
        assert!(!Printer::new(true).live(), "-q never draws a progress line");
        assert!(!Printer::new(false).is_quiet());
    }
}
