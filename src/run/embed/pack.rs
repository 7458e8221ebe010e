//! Packing rows into requests: as many texts per request as the API's per-request limits allow
//! (inputs and summed tokens), so a million short rows are a few thousand requests. Identical
//! texts within a request are sent once and their vector shared.

use std::collections::HashMap;

/// The per-request limits a pack keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Texts per request at most (OpenAI: 2,048).
    pub max_inputs: usize,
    /// Tokens summed over a request's texts at most (OpenAI: 300,000).
    pub max_tokens: u64,
    /// Tokens of one text at most (OpenAI: 8,192 for every embedding model); a longer row fails
    /// on its own without being sent.
    pub max_input_tokens: u64,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_inputs: 2048,
            max_tokens: 300_000,
            max_input_tokens: 8192,
        }
    }
}

/// One row on its way to the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub seq: u64,
    pub line: u64,
    pub id: String,
    pub text: String,
    /// See [`crate::engine::provider::embeddings::row_hash`].
    pub hash: String,
    pub tokens: u64,
    /// Rows of the same request with the same text: they get this row's vector.
    pub followers: Vec<(u64, String)>,
}

/// Texts sent in one request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pack {
    pub items: Vec<Item>,
    pub tokens: u64,
}

impl Pack {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Rows the pack answers, followers included.
    pub fn rows(&self) -> usize {
        self.items.iter().map(|i| 1 + i.followers.len()).sum()
    }

    /// The two halves of a pack the server refused, to find the row it refused.
    pub fn split(self) -> (Pack, Pack) {
        let mut left = self.items;
        let right = left.split_off(left.len() / 2);
        (Pack::of(left), Pack::of(right))
    }

    fn of(items: Vec<Item>) -> Pack {
        let tokens = items.iter().map(|i| i.tokens).sum();
        Pack { items, tokens }
    }
}

/// Rows (followers included) a pack may answer, per text it may send: bounds a pack's memory
/// and its journal group when most rows repeat one text (a million rows of "N/A" would
/// otherwise all follow one item of one pack).
pub const ROWS_PER_INPUT: usize = 4;

/// Fills packs in input order; a pack is handed out as soon as the next row would break a limit.
pub struct Packer {
    limits: PackLimits,
    current: Pack,
    /// Rows the current pack answers, followers included.
    rows: usize,
    /// Texts of the current pack by hash, when identical texts are shared.
    seen: Option<HashMap<String, usize>>,
}

impl Packer {
    pub fn new(limits: PackLimits, dedup: bool) -> Self {
        Packer {
            limits,
            current: Pack::default(),
            rows: 0,
            seen: dedup.then(HashMap::new),
        }
    }

    /// Adds a row (which must be within `max_input_tokens`); returns the pack it closed, if any.
    /// A pack also closes at [`ROWS_PER_INPUT`] rows per input allowed: the repeated text then
    /// opens the next pack (sent once more, for a bounded pack).
    pub fn push(&mut self, item: Item) -> Option<Pack> {
        let rows_full = self.rows >= self.limits.max_inputs.max(1) * ROWS_PER_INPUT;
        if !rows_full
            && let Some(seen) = &self.seen
            && let Some(&at) = seen.get(&item.hash)
        {
            self.current.items[at].followers.push((item.seq, item.id));
            self.rows += 1;
            return None;
        }
        let full = !self.current.is_empty()
            && (rows_full
                || self.current.len() >= self.limits.max_inputs
                || self.current.tokens + item.tokens > self.limits.max_tokens);
        let closed = full.then(|| self.take());
        if let Some(seen) = &mut self.seen {
            seen.insert(item.hash.clone(), self.current.len());
        }
        self.current.tokens += item.tokens;
        self.current.items.push(item);
        self.rows += 1;
        closed
    }

    /// The last, partly filled pack.
    pub fn finish(mut self) -> Option<Pack> {
        (!self.current.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Pack {
        if let Some(seen) = &mut self.seen {
            seen.clear();
        }
        self.rows = 0;
        std::mem::take(&mut self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, text: &str, tokens: u64) -> Item {
        Item {
            seq,
            line: seq + 2,
            id: (seq + 1).to_string(),
            text: text.into(),
            hash: format!("h-{text}"),
            tokens,
            followers: Vec::new(),
        }
    }

    fn pack_all(limits: PackLimits, dedup: bool, items: Vec<Item>) -> Vec<Pack> {
        let mut p = Packer::new(limits, dedup);
        let mut out: Vec<Pack> = items.into_iter().filter_map(|i| p.push(i)).collect();
        out.extend(p.finish());
        out
    }

    #[test]
    fn packs_keep_to_both_limits_and_to_input_order() {
        let limits = PackLimits {
            max_inputs: 3,
            max_tokens: 10,
            max_input_tokens: 10,
        };
        let tokens = [4, 4, 1, 1, 1, 1, 10, 2, 9];
        let items = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| item(i as u64, &format!("t{i}"), *t))
            .collect();
        let packs = pack_all(limits, true, items);
        let shape: Vec<Vec<u64>> = packs
            .iter()
            .map(|p| p.items.iter().map(|i| i.tokens).collect())
            .collect();
        assert_eq!(
            shape,
            [vec![4, 4, 1], vec![1, 1, 1], vec![10], vec![2], vec![9]]
        );
        for p in &packs {
            assert!(p.len() <= 3 && p.tokens <= 10, "{p:?}");
        }
        let order: Vec<u64> = packs
            .iter()
            .flat_map(|p| p.items.iter().map(|i| i.seq))
            .collect();
        assert_eq!(order, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn identical_texts_in_a_pack_are_sent_once() {
        let items = vec![item(0, "a", 1), item(1, "b", 1), item(2, "a", 1)];
        let packs = pack_all(PackLimits::default(), true, items.clone());
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].len(), 2);
        assert_eq!(packs[0].rows(), 3);
        assert_eq!(packs[0].items[0].followers, [(2, "3".to_string())]);
        let without = pack_all(PackLimits::default(), false, items);
        assert_eq!(without[0].len(), 3);
    }

    #[test]
    fn a_repeated_text_does_not_grow_a_pack_without_bound() {
        let limits = PackLimits {
            max_inputs: 4,
            ..PackLimits::default()
        };
        let n = 1000;
        let items = (0..n).map(|i| item(i, "N/A", 1)).collect();
        let packs = pack_all(limits, true, items);
        for p in &packs {
            assert!(p.rows() <= 4 * ROWS_PER_INPUT, "{} rows", p.rows());
            assert_eq!(p.len(), 1, "the text is sent once a pack");
        }
        let rows: usize = packs.iter().map(Pack::rows).sum();
        assert_eq!(rows, n as usize);
        assert_eq!(packs.len(), (n as usize).div_ceil(4 * ROWS_PER_INPUT));
    }

    #[test]
    fn halves_cover_the_pack() {
        let p = Pack::of((0..5).map(|i| item(i, &i.to_string(), 2)).collect());
        let (l, r) = p.split();
        assert_eq!((l.len(), r.len(), l.tokens, r.tokens), (2, 3, 4, 6));
        let (one, rest) = Pack::of(vec![item(0, "x", 1)]).split();
        assert_eq!((one.len(), rest.len()), (0, 1));
    }
}
