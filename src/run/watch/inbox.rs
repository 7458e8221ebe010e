//! The watched folder's inbox: which names are CSVs to run, and when a file has stopped growing.
//!
//! A file is only taken once its size and modification time have stayed the same for the settle
//! period, measured between our own observations (a scan on every filesystem event, on a timer
//! while files are settling, and periodically as a safety net). Watching for "close after
//! write" would be quicker but is Linux-only and misses writers that close and reopen, so the
//! settle period is the one rule on every platform; a writer that wants its file taken at once
//! writes it under a hidden or temporary name and renames it into place.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Whether `name` (a file name in the watched folder) is a CSV to run: it ends in `.csv` (any
/// case) and is neither hidden (`.x.csv`, the usual name while a file is being written) nor an
/// editor's lock or backup file (`~$x.csv`, `~x.csv`). Temporary names such as `x.csv.partial`,
/// `x.csv.tmp` or `x.csv.crdownload` do not end in `.csv`, so they wait until renamed.
pub fn is_candidate(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.len() > ".csv".len()
        && lower.ends_with(".csv")
        && !name.starts_with('.')
        && !name.starts_with('~')
}

/// What we saw of a file last time, and since when it has looked like that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl Look {
    pub fn of(meta: &std::fs::Metadata) -> Look {
        Look {
            size: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

#[derive(Debug)]
struct Sighting {
    look: Look,
    since: Instant,
}

/// A change the scan noticed, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Noticed {
    Arrived(PathBuf, u64),
    Changed(PathBuf, u64),
}

/// Files in the folder that are waiting to settle.
pub struct Inbox {
    dir: PathBuf,
    settle: Duration,
    waiting: HashMap<PathBuf, Sighting>,
    /// Files not to take again while they look the same (they could not be read).
    passed_over: HashMap<PathBuf, Look>,
}

impl Inbox {
    pub fn new(dir: &Path, settle: Duration) -> Inbox {
        Inbox {
            dir: dir.to_path_buf(),
            settle,
            waiting: HashMap::new(),
            passed_over: HashMap::new(),
        }
    }

    /// Lists the folder and updates what is waiting; `busy` files (being run) are left out.
    pub fn scan(&mut self, busy: &HashSet<PathBuf>, now: Instant) -> Vec<Noticed> {
        let mut present = HashSet::new();
        let mut noticed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return noticed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_candidate(name) {
                continue;
            }
            let path = entry.path();
            // Follows a symlink: a link to a CSV is run like the file.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() || busy.contains(&path) {
                continue;
            }
            let look = Look::of(&meta);
            if self.passed_over.get(&path) == Some(&look) {
                present.insert(path);
                continue;
            }
            self.passed_over.remove(&path);
            match self.waiting.get_mut(&path) {
                Some(s) if s.look == look => {}
                Some(s) => {
                    *s = Sighting { look, since: now };
                    noticed.push(Noticed::Changed(path.clone(), look.size));
                }
                None => {
                    self.waiting
                        .insert(path.clone(), Sighting { look, since: now });
                    noticed.push(Noticed::Arrived(path.clone(), look.size));
                }
            }
            present.insert(path);
        }
        self.waiting.retain(|p, _| present.contains(p));
        self.passed_over.retain(|p, _| present.contains(p));
        noticed
    }

    /// Takes the next file that has settled (the one waiting longest first), if any.
    pub fn take_ready(&mut self, now: Instant) -> Option<(PathBuf, Look)> {
        let path = self
            .waiting
            .iter()
            .filter(|(_, s)| now.duration_since(s.since) >= self.settle)
            .min_by(|a, b| a.1.since.cmp(&b.1.since).then_with(|| a.0.cmp(b.0)))
            .map(|(p, _)| p.clone())?;
        let s = self.waiting.remove(&path)?;
        Some((path, s.look))
    }

    /// Waits again for a file taken too early (it is the same as one being run right now).
    pub fn put_back(&mut self, path: PathBuf, look: Look, now: Instant) {
        self.waiting.insert(path, Sighting { look, since: now });
    }

    /// Not to be taken again until it changes.
    pub fn pass_over(&mut self, path: PathBuf, look: Look) {
        self.passed_over.insert(path, look);
    }

    /// How long until the next waiting file could have settled; `None` if none is waiting.
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.waiting
            .values()
            .map(|s| (s.since + self.settle).saturating_duration_since(now))
            .min()
    }

    /// Whether any file is still waiting to settle.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_csv_names_are_candidates() {
        for yes in ["a.csv", "A.CSV", "reviews 2026.csv", "x.results.csv"] {
            assert!(is_candidate(yes), "{yes}");
        }
        for no in [
            ".a.csv",
            "~$a.csv",
            "a.csv.partial",
            "a.csv.tmp",
            "a.tmp",
            "a.txt",
            ".csv",
            "a.csvx",
        ] {
            assert!(!is_candidate(no), "{no}");
        }
    }

    #[test]
    fn a_file_is_ready_only_after_it_stops_changing_for_the_settle_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        std::fs::write(&path, "id,text\n").unwrap();
        std::fs::write(dir.path().join(".hidden.csv"), "id\n").unwrap();
        std::fs::create_dir(dir.path().join("sub.csv")).unwrap();
        let settle = Duration::from_secs(10);
        let mut inbox = Inbox::new(dir.path(), settle);
        let t0 = Instant::now();
        assert_eq!(
            inbox.scan(&HashSet::new(), t0),
            [Noticed::Arrived(path.clone(), 8)]
        );
        assert_eq!(inbox.next_due(t0), Some(settle));
        assert!(inbox.take_ready(t0 + settle / 2).is_none());

        // It grows: the settle period starts again from the scan that saw the change.
        std::fs::write(&path, "id,text\n1,a\n").unwrap();
        let t1 = t0 + settle / 2;
        assert_eq!(
            inbox.scan(&HashSet::new(), t1),
            [Noticed::Changed(path.clone(), 12)]
        );
        assert!(inbox.take_ready(t0 + settle).is_none());
        assert!(inbox.scan(&HashSet::new(), t1 + settle).is_empty());
        let (taken, look) = inbox.take_ready(t1 + settle).expect("settled");
        assert_eq!((taken, look.size), (path.clone(), 12));
        assert!(inbox.is_empty());

        // A file being run is not seen; one passed over is not taken again until it changes.
        let busy = HashSet::from([path.clone()]);
        assert!(inbox.scan(&busy, t1 + settle).is_empty());
        inbox.pass_over(path.clone(), look);
        assert!(inbox.scan(&HashSet::new(), t1 + settle).is_empty());
        assert!(inbox.is_empty());
        std::fs::write(&path, "id,text\n1,b\n2,c\n").unwrap();
        assert_eq!(
            inbox.scan(&HashSet::new(), t1 + settle),
            [Noticed::Arrived(path.clone(), 16)]
        );

        // A file that goes away stops waiting.
        std::fs::remove_file(&path).unwrap();
        assert!(inbox.scan(&HashSet::new(), t1 + settle).is_empty());
        assert!(inbox.is_empty());
    }
}
