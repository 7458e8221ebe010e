//! One process per job: a run, or a batch job's `submit`/`collect`/`cancel`, holds an exclusive
//! lock on `<state>-lock` for as long as it works on the state. Two processes on one job would
//! each send (and pay for) the rows the other is sending, and interleave their state writes; the
//! second one is refused instead, with the first one's pid.
//!
//! The lock is the operating system's (`flock`), so a process that dies by any means, `kill -9`
//! included, releases it. The file is removed on a clean exit; a process that locked a file which
//! was removed in the meantime checks the path still names what it locked, and tries again.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::base::error::Error;

/// Held while the job's state is in use; unlocks (and removes the file) when dropped.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

/// The lock file of a state file.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push("-lock");
    state.with_file_name(name)
}

/// Whether a process holds the lock of `state`, and its pid as it wrote it (`None`: nobody).
/// Looks with a shared lock taken and dropped at once: a run starting in that instant is
/// refused as if another held the job, and can be started again.
pub fn holder(state: &Path) -> Option<String> {
    let path = lock_path(state);
    let mut file = OpenOptions::new().read(true).open(path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Some(pid.trim().to_string())
        }
        Err(TryLockError::Error(_)) => None,
    }
}

impl StateLock {
    /// `None` when the state's folder does not exist: nothing can be running there, and the
    /// caller's own check of that folder gives the clearer error.
    pub fn acquire(state: &Path) -> Result<Option<Self>, Error> {
        match state.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => return Ok(None),
            _ => {}
        }
        let path = lock_path(state);
        let cannot = |e: std::io::Error| Error::io(format!("cannot lock {}", path.display()), e);
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(cannot)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    let pid = pid.trim();
                    let by = if pid.is_empty() {
                        "another batch process".to_string()
                    } else {
                        format!("another batch process (pid {pid})")
                    };
                    return Err(Error::Usage(format!(
                        "{} is in use by {by}: two processes on one job would send, and pay for, \
                         the same rows twice. Wait for it to finish or stop it (Ctrl-C), then \
                         run again (with --resume to carry on from where it stopped)",
                        state.display()
                    )));
                }
                Err(TryLockError::Error(e)) => return Err(cannot(e)),
            }
            if !same_file(&file, &path) {
                // Removed (and perhaps created again) by a process that just finished.
                continue;
            }
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| writeln!(file, "{}", std::process::id()))
                .map_err(cannot)?;
            return Ok(Some(StateLock { file, path }));
        }
    }

    /// Whether this is the lock of `state`.
    pub fn is_for(&self, state: &Path) -> bool {
        self.path == lock_path(state)
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other process can hold a lock on this file.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_seen_while_it_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("out.sqlite");
        assert_eq!(holder(&state), None);
        let lock = StateLock::acquire(&state).unwrap();
        assert_eq!(holder(&state), Some(std::process::id().to_string()));
        drop(lock);
        assert_eq!(holder(&state), None);
        // Looking did not take the lock.
        assert!(StateLock::acquire(&state).unwrap().is_some());
    }

    #[test]
    fn a_second_lock_is_refused_with_the_pid_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("out.sqlite");
        let first = StateLock::acquire(&state).unwrap();
        assert_eq!(lock_path(&state), dir.path().join("out.sqlite-lock"));
        let err = StateLock::acquire(&state).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("pay for"), "{err}");
        drop(first);
        assert!(!lock_path(&state).exists(), "removed on release");
        let _again = StateLock::acquire(&state).unwrap();
        assert!(
            StateLock::acquire(&dir.path().join("no/such/dir/s.sqlite"))
                .unwrap()
                .is_none()
        );
    }
}
