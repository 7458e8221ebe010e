//! Identical requests are sent once per run: a row whose request is already in flight waits for
//! that answer, and a row whose request was answered a moment ago reuses it.
//!
//! Memory does not grow with the input: the rows waiting are at most the ones in the pipeline,
//! and the answered requests remembered are the last [`RECENT`] (the first 64 bits of the
//! request hash, to the row's position: about 2 MB). An identical request answered longer ago
//! than that is found by the response cache (on by default): the reader looks every row up in it
//! when it renders the row, and an answer is there at most three
//! [`crate::engine::cache::CacheWriter::GROUP`]s of journaled rows after its own (its group,
//! the one waiting for the cache's writer thread, and the one it may still be writing). The window only
//! has to cover that and the rows between the look-up and their dispatch (the work queue, the
//! rows in flight, a journal group), which it does several times over. With `--no-cache` or `--refresh-cache`,
//! an identical request further apart than the window is sent again.
//!
//! A hit is read back from the state file by position and its key compared, so a collision of
//! the 64-bit keys only means a request is sent again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::base::error::Error;
use crate::base::record::RowResult;
use crate::base::record::RowStatus;
use crate::engine::store::FinishedRows;

/// What a row should do about identical requests.
pub enum Turn {
    /// Nothing identical is in flight or answered: send it, and answer the followers after.
    Lead,
    /// An identical request is in flight: its answer will be written for this row too.
    Follow,
    /// An identical request was answered: this is its result.
    Reuse(Box<RowResult>),
}

/// The run's identical-request bookkeeping, shared by the dispatcher and the journal.
pub struct Dedup {
    state: Mutex<State>,
    /// This run's state file, to read an answered row back.
    rows: Mutex<FinishedRows>,
}

#[derive(Default)]
struct State {
    /// Rows waiting for the answer to an identical request in flight, by request hash.
    followers: HashMap<String, Vec<(u64, String)>>,
    /// The last [`RECENT`] requests answered `ok` in this run and committed: hash key to the
    /// row's position.
    answered: HashMap<u64, u64>,
    /// The keys of `answered`, oldest first, to forget the oldest.
    order: VecDeque<u64>,
}

/// How many answered requests are remembered. The pipeline between the cache look-up and a
/// row's dispatch holds at most a few thousand rows (256 queued, the concurrency ceiling, a
/// journal group of 1,024).
pub const RECENT: usize = 1 << 16;

/// The first 64 bits of a hex SHA-256 request hash.
fn key(hash: &str) -> u64 {
    hash.get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

impl Dedup {
    pub fn new(rows: FinishedRows) -> Self {
        Dedup {
            state: Mutex::default(),
            rows: Mutex::new(rows),
        }
    }

    /// Decides row `seq`'s turn for the request `hash`. A `Lead` must later be reported to
    /// [`Dedup::answered`] once its outcome is committed, whatever the outcome.
    pub fn turn(&self, seq: u64, id: &str, hash: &str) -> Turn {
        let mut s = self.state.lock().expect("dedup lock");
        if let Some(waiting) = s.followers.get_mut(hash) {
            waiting.push((seq, id.to_string()));
            return Turn::Follow;
        }
        if let Some(&original) = s.answered.get(&key(hash)) {
            match self.read(original, hash) {
                Ok(Some(r)) => {
                    return Turn::Reuse(Box::new(RowResult::reused(seq, id.to_string(), &r)));
                }
                Ok(None) => {}
                // The row is sent again rather than the run stopped for a read.
                Err(e) => tracing::warn!("{e}"),
            }
        }
        s.followers.insert(hash.to_string(), Vec::new());
        Turn::Lead
    }

    /// The committed `ok` row at `seq`, if its request is `hash`.
    fn read(&self, seq: u64, hash: &str) -> Result<Option<RowResult>, Error> {
        let prior = self.rows.lock().expect("journal reader lock").row(seq)?;
        Ok(prior
            .filter(|p| p.is_request(hash) && p.result.status == RowStatus::Ok)
            .map(|p| p.result))
    }

    /// A leading row's outcome is committed: remembers it if it is an answer, and returns the
    /// rows that waited for it.
    pub fn answered(&self, hash: &str, result: &RowResult) -> Vec<(u64, String)> {
        let mut s = self.state.lock().expect("dedup lock");
        if result.status == RowStatus::Ok {
            s.remember(key(hash), result.seq);
        }
        s.followers.remove(hash).unwrap_or_default()
    }
}

impl State {
    /// Remembers an answered request, forgetting the oldest beyond [`RECENT`].
    fn remember(&mut self, key: u64, seq: u64) {
        if self.answered.insert(key, seq).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > RECENT {
            if let Some(old) = self.order.pop_front() {
                self.answered.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{Finished, Store};

    fn hash(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn answer(seq: u64, hash: &str, status: RowStatus) -> Finished {
        let mut result = RowResult::skipped(seq, format!("r{seq}"), "m", "");
        result.status = status;
        result.output = format!("answer {seq}");
        Finished {
            result,
            request_hash: hash.to_string(),
            attempts: Vec::new(),
        }
    }

    #[test]
    fn a_request_is_led_once_followed_while_in_flight_and_reused_once_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut store = Store::open(&path).unwrap();
        store
            .start_run(&crate::engine::store::tests::settings(), 10)
            .unwrap();
        let dedup = Dedup::new(FinishedRows::open(&path).unwrap());
        let (a, b) = (hash(0xa), hash(0xb));

        assert!(matches!(dedup.turn(0, "r0", &a), Turn::Lead));
        assert!(matches!(dedup.turn(1, "r1", &a), Turn::Follow));
        assert!(matches!(dedup.turn(2, "r2", &b), Turn::Lead));
        // Row 0 is answered and committed: row 1 waited for it; later rows reuse it.
        let ok = answer(0, &a, RowStatus::Ok);
        store.record(std::slice::from_ref(&ok)).unwrap();
        assert_eq!(dedup.answered(&a, &ok.result), vec![(1, "r1".to_string())]);
        match dedup.turn(3, "r3", &a) {
            Turn::Reuse(r) => {
                assert_eq!(
                    (r.seq, r.id.as_str(), r.output.as_str()),
                    (3, "r3", "answer 0")
                );
                assert!(r.cached);
            }
            _ => panic!("an answered request is reused"),
        }
        // A failed request is not an answer: the next identical row sends it again.
        let failed = answer(2, &b, RowStatus::Failed);
        store.record(std::slice::from_ref(&failed)).unwrap();
        assert!(dedup.answered(&b, &failed.result).is_empty());
        assert!(matches!(dedup.turn(4, "r4", &b), Turn::Lead));
        // Same 64-bit key, another request: the full hash decides, and it is sent.
        let twin = format!("{}{}", &a[..16], "0".repeat(48));
        assert!(matches!(dedup.turn(5, "r5", &twin), Turn::Lead));
    }

    #[test]
    fn only_the_recent_answers_are_remembered() {
        let mut s = State::default();
        for seq in 0..(RECENT as u64 + 10) {
            s.remember(seq * 7, seq);
        }
        s.remember(70, 99); // already known: moves nothing
        assert_eq!((s.answered.len(), s.order.len()), (RECENT, RECENT));
        assert!(!s.answered.contains_key(&0) && !s.answered.contains_key(&63));
        assert_eq!(
            s.answered.get(&(7 * RECENT as u64 + 7 * 9)),
            Some(&(RECENT as u64 + 9))
        );
    }

    #[test]
    fn keys_are_the_hash_prefix_and_never_panic() {
        assert_eq!(key("00000000000000ff"), 255);
        assert_eq!(key(&"f".repeat(64)), u64::MAX);
        assert_eq!(key("short"), 0);
        assert_eq!(key("zzzzzzzzzzzzzzzzzz"), 0);
        assert_eq!(key("é"), 0);
    }
}
