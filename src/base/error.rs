//! Errors that end a command before or outside the per-row path, and the exit codes they map to.
//!
//! A failure on one row is not an [`Error`]: it is recorded in that row's result and the run goes
//! on (see [`crate::run::runner`]). An `Error` means the command itself could not do its job: bad
//! flags, bad input, an unwritable output. Every message names the file, line or flag involved
//! and says what to do, because the user reads it at the start of an overnight job.

use std::path::Path;

/// How the process ends. The numbers are part of the interface: scripts test them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every row is `ok`.
    Success = 0,
    /// The run finished and wrote its results, but some rows failed or were skipped: a row's own
    /// error, or a stop (out of quota, a 401 or 403, the spend cap, `--max-stall`, a state file
    /// that cannot be written) that left rows `skipped` for `--resume`. Requests may have been
    /// sent, so a storage error after the first request ends here, never in [`Self::Error`].
    RowsFailed = 1,
    /// Usage, configuration or input error: nothing was sent and no results file was written.
    /// Also a run stopped by an error no request could get past (nothing listening, no such
    /// endpoint or model) before any row was answered: its rows are `skipped`, to resume.
    Error = 2,
    /// Stopped by Ctrl-C or SIGTERM after writing what was finished.
    Interrupted = 130,
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s as u8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or configuration value is wrong or missing.
    #[error("{0}")]
    Usage(String),
    /// The input file (or a prompt file) cannot be used as it is.
    #[error("{0}")]
    Input(String),
    /// An I/O failure with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A failure after requests were sent (the results or the state file could not be
    /// written): exit 1, since exit 2 would say that nothing was sent.
    #[error(transparent)]
    AfterSending(Box<Error>),
}

impl Error {
    /// The same error, met after requests were sent.
    pub fn after_sending(self) -> Self {
        match self {
            Error::AfterSending(_) => self,
            e => Error::AfterSending(Box::new(e)),
        }
    }

    /// How the process ends on this error.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::AfterSending(_) => ExitStatus::RowsFailed,
            _ => ExitStatus::Error,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Reading `path` failed; says which file.
    pub fn read(path: &Path, source: &std::io::Error) -> Self {
        Error::Input(format!(
            "cannot read {}: {}",
            path.display(),
            describe_io(source)
        ))
    }
}

/// The short form of an I/O error for a message that already names the file.
pub fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory".into(),
        _ => e.to_string(),
    }
}

/// Problems found in the input, collected so that all of them can be fixed in one go: the first
/// few are listed, the rest counted.
#[derive(Debug, Default)]
pub struct Problems {
    listed: Vec<String>,
    more: usize,
}

impl Problems {
    /// Problems listed before "... and N more".
    const LISTED: usize = 10;

    pub fn push(&mut self, problem: impl Into<String>) {
        if self.listed.len() < Self::LISTED {
            self.listed.push(problem.into());
        } else {
            self.more += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// `Ok` if there were none; otherwise one input error that lists them and says nothing was
    /// sent.
    pub fn check(self) -> Result<(), Error> {
        if self.listed.is_empty() {
            return Ok(());
        }
        let mut msg = self.listed.join("\n");
        if self.more > 0 {
            msg.push_str(&format!("\n... and {} more problems", self.more));
        }
        msg.push_str("\nNothing was sent; fix the input and run again.");
        Err(Error::Input(msg))
    }
}

#[cfg(test)]
mod problems_tests {
    use super::*;

    #[test]
    fn an_error_after_sending_exits_1_with_the_same_message() {
        let e = Error::Usage("cannot write the run state s.sqlite: disk full".into());
        assert_eq!(e.exit_status(), ExitStatus::Error);
        let msg = e.to_string();
        let e = e.after_sending().after_sending();
        assert_eq!(e.exit_status(), ExitStatus::RowsFailed);
        assert_eq!(e.to_string(), msg);
        assert!(
            matches!(e, Error::AfterSending(inner) if !matches!(*inner, Error::AfterSending(_)))
        );
    }

    #[test]
    fn ten_problems_are_listed_and_the_rest_counted() {
        assert!(Problems::default().check().is_ok());
        let mut p = Problems::default();
        for i in 0..12 {
            p.push(format!("line {i}: bad"));
        }
        let msg = p.check().unwrap_err().to_string();
        assert!(
            msg.contains("line 9: bad") && !msg.contains("line 10: bad"),
            "{msg}"
        );
        assert!(msg.contains("... and 2 more problems"), "{msg}");
        assert!(
            msg.ends_with("Nothing was sent; fix the input and run again."),
            "{msg}"
        );
    }
}
