//! The writer of a run's new answers: groups of them, written on a thread of its own.

use std::time::Duration;

use super::{Cache, CachedAnswer};
use crate::base::error::Error;

/// Stores a run's new answers in large groups, a commit each (see [`Cache::put_many`] for where
/// they land). The journal, not the cache, is what makes a run
/// resumable, so answers waiting here when a run is killed are only answers not cached.
///
/// The groups are written on a thread of their own: written by the journal's thread, each one
/// held up the journal (and so the release of every row's slot) for as long as its commit took,
/// which is what made the cache cost a run a third of its throughput. At most one group waits
/// for the writer, so memory stays at three groups (filling, waiting, being written).
pub struct CacheWriter {
    /// The cache, while no writer thread has it.
    cache: Option<Cache>,
    worker: Option<Worker>,
    pending: Vec<(String, CachedAnswer)>,
    /// Rows journaled since the last write, answers or not.
    rows: usize,
    last_flush: std::time::Instant,
}

/// The writer thread, and its queue of groups.
struct Worker {
    tx: std::sync::mpsc::SyncSender<Vec<(String, CachedAnswer)>>,
    handle: std::thread::JoinHandle<(Cache, Result<(), Error>)>,
}

impl Worker {
    fn start(mut cache: Cache) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(String, CachedAnswer)>>(1);
        let handle = std::thread::spawn(move || {
            for group in rx {
                if let Err(e) = cache.put_many(group.iter().map(|(k, a)| (k.as_str(), a))) {
                    return (cache, Err(e));
                }
            }
            (cache, Ok(()))
        });
        Worker { tx, handle }
    }

    /// Waits until every group sent is written (or one failed). No cache comes back from a
    /// thread that died.
    fn finish(self) -> (Option<Cache>, Result<(), Error>) {
        drop(self.tx);
        match self.handle.join() {
            Ok((cache, written)) => (Some(cache), written),
            Err(_) => {
                let died = std::io::Error::other("the cache writer thread stopped");
                (
                    None,
                    Err(Error::io("cannot write the response cache", died)),
                )
            }
        }
    }
}

impl CacheWriter {
    /// Rows journaled between writes, at most. [`crate::engine::dedup`] counts on an answer
    /// being in the cache at most a few times this many journaled rows after it was journaled
    /// (this group, and the one the writer thread may still be writing).
    pub const GROUP: usize = 8192;
    /// And time between writes, at most (a slow run still caches as it goes).
    const EVERY: Duration = Duration::from_secs(2);

    pub fn new(cache: Cache) -> Self {
        CacheWriter {
            cache: Some(cache),
            worker: None,
            pending: Vec::new(),
            rows: 0,
            last_flush: std::time::Instant::now(),
        }
    }

    /// Queues an answer for the next write.
    pub fn add(&mut self, key: &str, answer: CachedAnswer) {
        self.pending.push((key.to_string(), answer));
    }

    /// `rows` more rows were journaled (with their answers added): hands the queue to the
    /// writer thread once [`Self::GROUP`] rows or [`Self::EVERY`] have passed since the last
    /// time. An error is that of an earlier group, which stopped the writer.
    pub fn journaled(&mut self, rows: usize) -> Result<(), Error> {
        self.rows += rows;
        if self.rows >= Self::GROUP || self.last_flush.elapsed() >= Self::EVERY {
            return self.hand_over();
        }
        Ok(())
    }

    /// Hands the queued answers to the writer thread (started if need be).
    fn hand_over(&mut self) -> Result<(), Error> {
        self.last_flush = std::time::Instant::now();
        self.rows = 0;
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        if self.worker.is_none()
            && let Some(cache) = self.cache.take()
        {
            self.worker = Some(Worker::start(cache));
        }
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        if worker.tx.send(pending).is_err() {
            // The writer stopped at an error: it says which.
            return self.wait();
        }
        Ok(())
    }

    /// Waits for the writer thread to write everything handed over, and takes the cache back.
    fn wait(&mut self) -> Result<(), Error> {
        match self.worker.take() {
            Some(worker) => {
                let (cache, written) = worker.finish();
                self.cache = cache;
                written
            }
            None => Ok(()),
        }
    }

    /// Writes every queued answer, and returns once they are written.
    pub fn flush(&mut self) -> Result<(), Error> {
        let handed = self.hand_over();
        let written = self.wait();
        handed.and(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cache::tests::answer;

    #[test]
    fn the_writer_stores_in_groups_and_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = CacheWriter::new(Cache::open(dir.path()).unwrap());
        let reader = Cache::open(dir.path()).unwrap();
        for i in 0..10 {
            w.add(&format!("k{i}"), answer("a"));
        }
        w.journaled(10).unwrap();
        assert_eq!(reader.stats().unwrap().entries, 0, "waits for a group");
        // A group of rows journaled (answers or not) hands what is queued to the writer thread.
        w.journaled(CacheWriter::GROUP - 10).unwrap();
        assert!(w.pending.is_empty() && w.worker.is_some());
        w.wait().unwrap();
        assert_eq!(reader.stats().unwrap().entries, 10);
        w.add("last", answer("b"));
        assert_eq!(reader.get("last").unwrap(), None);
        w.flush().unwrap();
        assert_eq!(reader.get("last").unwrap().unwrap().text, "b");
    }
}
