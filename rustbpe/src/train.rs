//! BPE training: count the distinct chunks of the text, then learn merges.
//!
//! Counting ([`ChunkCounter`]) splits each batch of texts in parallel (rayon) and keeps one
//! count per distinct chunk, so memory grows with the number of distinct chunks, not with the
//! text. Learning ([`learn_merges`]) keeps
//!
//!   - `pair_counts`: for each adjacent pair of token ids, sum over chunks of
//!     (chunk count) x (number of positions where the pair occurs; overlaps count, so "aaa"
//!     holds the pair (a, a) twice),
//!   - `pair_words`: for each pair, the chunks that may contain it,
//!   - a max-heap of (count, pair) with lazy invalidation,
//!
//! so each merge costs time proportional to the occurrences it touches, not a rescan.
//!
//! Tie-breaking (documented because the Python reference in tests/bpe_reference.py must match
//! it exactly): the pair with the highest count wins; among equal counts, the pair with the
//! smallest (left id, right id), compared left id first. Each chunk is merged left to right,
//! non-overlapping ("aaa" with (a, a) becomes [aa, a]).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use ahash::AHashMap;
use rayon::prelude::*;

use crate::{pair_key, small_key, small_key_bytes, Error, Splitter};

/// Distinct chunks (pieces of the split text) and how often each occurs.
#[derive(Default)]
pub struct ChunkCounter {
    /// Chunks of at most 15 bytes (nearly all), keyed by [`small_key`].
    small: AHashMap<u128, u64>,
    long: AHashMap<Box<str>, u64>,
}

/// One thread's counts for part of a batch; long chunks borrow from the batch's texts.
#[derive(Default)]
struct LocalCounts<'t> {
    small: AHashMap<u128, u64>,
    long: AHashMap<&'t str, u64>,
}

impl<'t> LocalCounts<'t> {
    fn add(&mut self, piece: &'t str) {
        match small_key(piece.as_bytes()) {
            Some(key) => *self.small.entry(key).or_insert(0) += 1,
            None => *self.long.entry(piece).or_insert(0) += 1,
        }
    }

    /// Merge the smaller of two maps into the larger one.
    fn merge(a: Self, b: Self) -> Self {
        fn merge_maps<K: std::hash::Hash + Eq>(a: AHashMap<K, u64>, b: AHashMap<K, u64>) -> AHashMap<K, u64> {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (k, v) in small {
                *big.entry(k).or_insert(0) += v;
            }
            big
        }
        LocalCounts {
            small: merge_maps(a.small, b.small),
            long: merge_maps(a.long, b.long),
        }
    }
}

impl ChunkCounter {
    /// Split `texts` in parallel and add their chunks to the counts.
    pub fn add_batch<T: AsRef<str> + Sync>(&mut self, splitter: &Splitter, texts: &[T]) -> Result<(), Error> {
        // One contiguous slice of texts per thread (one local map each, merged pairwise), rather
        // than rayon's adaptive splits, which would build and merge many more maps.
        let per_thread = texts.len().div_ceil(rayon::current_num_threads()).max(1);
        let batch = texts
            .par_chunks(per_thread)
            .map(|slice| {
                let mut local = LocalCounts::default();
                for text in slice {
                    splitter.for_each_piece(text.as_ref(), |piece| local.add(piece))?;
                }
                Ok::<_, Error>(local)
            })
            .try_reduce(LocalCounts::default, |a, b| Ok(LocalCounts::merge(a, b)))?;
        for (key, n) in batch.small {
            *self.small.entry(key).or_insert(0) += n;
        }
        for (chunk, n) in batch.long {
            match self.long.get_mut(chunk) {
                Some(c) => *c += n,
                None => {
                    self.long.insert(chunk.into(), n);
                }
            }
        }
        Ok(())
    }

    /// Number of distinct chunks so far.
    pub fn len(&self) -> usize {
        self.small.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.small.is_empty() && self.long.is_empty()
    }

    /// (chunk bytes, count) for every distinct chunk, in no particular order.
    pub fn into_chunks(self) -> Vec<(Box<[u8]>, u64)> {
        let small = self
            .small
            .into_iter()
            .map(|(k, v)| (small_key_bytes(&k).into_boxed_slice(), v));
        small
            .chain(self.long.into_iter().map(|(k, v)| (k.into_boxed_bytes(), v)))
            .collect()
    }
}

/// A heap entry: the pair and its count when pushed (possibly stale).
#[derive(PartialEq, Eq)]
struct Candidate {
    count: i64,
    pair: u64,
}

impl Ord for Candidate {
    /// Max-heap order: higher count first, then the smaller pair (left id, then right id).
    fn cmp(&self, other: &Self) -> Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| other.pair.cmp(&self.pair))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// All chunks' tokens in one flat buffer; chunks only shrink as merges apply, in place.
struct Words {
    tokens: Vec<u32>,
    start: Vec<usize>, // (num_words,) offset of each word in `tokens`
    len: Vec<u32>,     // (num_words,) current number of tokens
    count: Vec<i64>,   // (num_words,) occurrences of the chunk in the text
}

/// Learn up to `num_merges` merges from chunk counts. Merge i makes token 256 + i. Fewer
/// merges come back when the chunks run out of pairs (a tiny corpus).
pub fn learn_merges<S: AsRef<[u8]>>(chunks: Vec<(S, u64)>, num_merges: usize) -> Vec<(u32, u32)> {
    let mut words = Words {
        tokens: Vec::new(),
        start: Vec::new(),
        len: Vec::new(),
        count: Vec::new(),
    };
    for (chunk, count) in &chunks {
        let bytes = chunk.as_ref();
        if bytes.len() < 2 {
            continue; // a single byte never takes part in a merge
        }
        words.start.push(words.tokens.len());
        words.len.push(bytes.len() as u32);
        words.count.push(*count as i64);
        words.tokens.extend(bytes.iter().map(|&b| b as u32));
    }
    drop(chunks);

    let (mut pair_counts, mut pair_words) = count_pairs(&words);
    let mut heap: BinaryHeap<Candidate> = pair_counts
        .iter()
        .filter(|&(_, &count)| count > 0)
        .map(|(&pair, &count)| Candidate { count, pair })
        .collect::<Vec<_>>()
        .into();

    let mut merges = Vec::with_capacity(num_merges);
    let mut deltas: AHashMap<u64, i64> = AHashMap::new();
    while merges.len() < num_merges {
        let Some(top) = heap.pop() else { break };
        let current = pair_counts.get(&top.pair).copied().unwrap_or(0);
        if current != top.count {
            // Stale. A pair's count only shrinks after its first push (pairs made by a merge are
            // pushed once, when complete), so re-push the smaller count; 0 means it is gone.
            if current > 0 && current < top.count {
                heap.push(Candidate {
                    count: current,
                    pair: top.pair,
                });
            }
            continue;
        }
        let (a, b) = ((top.pair >> 32) as u32, top.pair as u32);
        let new_id = 256 + merges.len() as u32;
        merges.push((a, b));
        pair_counts.remove(&top.pair);
        let candidates = pair_words.remove(&top.pair).unwrap_or_default();
        for &w in &candidates {
            merge_word(
                &mut words,
                w as usize,
                (a, b),
                new_id,
                &mut pair_counts,
                &mut deltas,
                &mut pair_words,
            );
        }
        // The pairs with new_id are new: their counts only exist once every word is merged.
        for (pair, count) in deltas.drain() {
            debug_assert!(count >= 0, "pair {pair:#x} ends with count {count}");
            if count > 0 {
                pair_counts.insert(pair, count);
                heap.push(Candidate { count, pair });
            }
        }
    }
    merges
}

/// Initial pair counts and, for each pair, the words containing it (each word once).
fn count_pairs(words: &Words) -> (AHashMap<u64, i64>, AHashMap<u64, Vec<u32>>) {
    let mut pair_counts: AHashMap<u64, i64> = AHashMap::new();
    let mut pair_words: AHashMap<u64, Vec<u32>> = AHashMap::new();
    for w in 0..words.start.len() {
        let toks = &words.tokens[words.start[w]..words.start[w] + words.len[w] as usize];
        for k in 0..toks.len() - 1 {
            let pair = pair_key(toks[k], toks[k + 1]);
            *pair_counts.entry(pair).or_insert(0) += words.count[w];
            let list = pair_words.entry(pair).or_default();
            if list.last() != Some(&(w as u32)) {
                list.push(w as u32);
            }
        }
    }
    (pair_counts, pair_words)
}

/// Replace every non-overlapping (a, b) in word `w`, left to right, by `new_id`. Counts of the
/// pairs that disappear are decremented in `pair_counts` (the merged pair itself is already
/// gone from it); the pairs with `new_id` accumulate in `new_pairs`, and `pair_words` learns
/// that the word contains them.
#[allow(clippy::too_many_arguments)]
fn merge_word(
    words: &mut Words,
    w: usize,
    (a, b): (u32, u32),
    new_id: u32,
    pair_counts: &mut AHashMap<u64, i64>,
    new_pairs: &mut AHashMap<u64, i64>,
    pair_words: &mut AHashMap<u64, Vec<u32>>,
) {
    let start = words.start[w];
    let len = words.len[w] as usize;
    let c = words.count[w];
    let toks = &mut words.tokens[start..start + len];
    // `added`: the word gained one occurrence of `pair`; otherwise it lost one.
    let mut change = |pair: u64, added: bool| {
        if added {
            *new_pairs.entry(pair).or_insert(0) += c;
            let list = pair_words.entry(pair).or_default();
            if list.last() != Some(&(w as u32)) {
                list.push(w as u32);
            }
        } else if (pair >> 32) as u32 == new_id || pair as u32 == new_id {
            // a pair with new_id exists only in new_pairs (this merge made it)
            *new_pairs.entry(pair).or_insert(0) -= c;
        } else if let Some(count) = pair_counts.get_mut(&pair) {
            *count -= c;
        }
    };
    let (mut read, mut write) = (0, 0);
    while read < len {
        if read + 1 < len && toks[read] == a && toks[read + 1] == b {
            // toks[write - 1] is the current left neighbour (possibly a new_id merged just before).
            if write > 0 {
                let left = toks[write - 1];
                change(pair_key(left, a), false);
                change(pair_key(left, new_id), true);
            }
            if read + 2 < len {
                let right = toks[read + 2];
                change(pair_key(b, right), false);
                change(pair_key(new_id, right), true);
            }
            toks[write] = new_id;
            read += 2;
        } else {
            toks[write] = toks[read];
            read += 1;
        }
        write += 1;
    }
    words.len[w] = write as u32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tokenizer, GPT4_PATTERN};

    /// The naive trainer: recount every pair from scratch before each merge (same tie rule).
    fn naive_merges(chunks: &[(&str, u64)], num_merges: usize) -> Vec<(u32, u32)> {
        let mut words: Vec<(Vec<u32>, i64)> = chunks
            .iter()
            .map(|(s, c)| (s.bytes().map(u32::from).collect(), *c as i64))
            .collect();
        let mut merges = Vec::new();
        while merges.len() < num_merges {
            let mut counts: std::collections::BTreeMap<(u32, u32), i64> = Default::default();
            for (w, c) in &words {
                for k in 0..w.len().saturating_sub(1) {
                    *counts.entry((w[k], w[k + 1])).or_insert(0) += c;
                }
            }
            // highest count, then smallest pair
            let Some((&pair, _)) = counts.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))) else {
                break;
            };
            let new_id = 256 + merges.len() as u32;
            merges.push(pair);
            for (w, _) in &mut words {
                let mut out = Vec::with_capacity(w.len());
                let mut k = 0;
                while k < w.len() {
                    if k + 1 < w.len() && (w[k], w[k + 1]) == pair {
                        out.push(new_id);
                        k += 2;
                    } else {
                        out.push(w[k]);
                        k += 1;
                    }
                }
                *w = out;
            }
        }
        merges
    }

    #[test]
    fn incremental_matches_naive() {
        let corpora: Vec<Vec<(&str, u64)>> = vec![
            vec![("aaaa", 3), ("aaa", 2), ("abab", 5), ("ba", 1)],
            vec![
                ("hello", 4),
                (" hello", 7),
                (" world", 3),
                ("low", 2),
                (" lower", 2),
                ("lll", 9),
            ],
            vec![
                ("abcabcabc", 2),
                ("cabcab", 3),
                ("bcb", 4),
                ("aabbcc", 1),
                ("x", 100),
            ],
        ];
        for chunks in corpora {
            let expected = naive_merges(&chunks, 1000);
            let got = learn_merges(chunks.iter().map(|&(s, c)| (s.as_bytes(), c)).collect(), 1000);
            assert_eq!(got, expected, "chunks {chunks:?}");
        }
    }

    #[test]
    fn ties_break_towards_the_smallest_pair() {
        // (a, b), (c, d) and (x, y) all occur 3 times: the smallest pair (a, b) goes first.
        let merges = learn_merges(vec![("xy", 3u64), ("cd", 3), ("ab", 3)], 3);
        assert_eq!(
            merges,
            vec![
                (b'a' as u32, b'b' as u32),
                (b'c' as u32, b'd' as u32),
                (b'x' as u32, b'y' as u32)
            ]
        );
    }

    #[test]
    fn training_is_deterministic_and_round_trips() {
        let text = "The quick brown fox jumps over the lazy dog. It's 2024, and we've 123456 reasons!\n\n"
            .repeat(20);
        let docs: Vec<&str> = text.split_inclusive('\n').collect();
        let t1 = Tokenizer::train(docs.iter().copied(), 300, GPT4_PATTERN).unwrap();
        let t2 = Tokenizer::train(docs.iter().copied(), 300, GPT4_PATTERN).unwrap();
        assert_eq!(t1.vocab(), t2.vocab());
        assert!(t1.vocab_size() > 256 && t1.vocab_size() <= 300);
        let ids = t1.encode(&text).unwrap();
        assert!(
            ids.len() < text.len() / 2,
            "trained merges should compress the training text"
        );
        let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        assert_eq!(t1.decode_bytes(&ids64).unwrap(), text.as_bytes());
    }

    #[test]
    fn tiny_corpus_stops_early() {
        let tok = Tokenizer::train(["ab ab"], 1000, GPT4_PATTERN).unwrap();
        // chunks "ab" and " ab": merges (a, b) then (' ', ab)
        assert_eq!(tok.vocab_size(), 258);
    }

    #[test]
    fn vocab_below_256_is_an_error() {
        let err = Tokenizer::train(["x"], 255, GPT4_PATTERN).unwrap_err();
        assert_eq!(err, Error::VocabTooSmall(255));
        assert!(err.to_string().contains("at least 256"));
    }

    #[test]
    fn counter_matches_serial_count() {
        let splitter = Splitter::new(GPT4_PATTERN).unwrap();
        let texts: Vec<String> = (0..200)
            .map(|i| format!("doc {i}: hello hello world {}", i % 7))
            .collect();
        let mut counter = ChunkCounter::default();
        counter.add_batch(&splitter, &texts[..100]).unwrap();
        counter.add_batch(&splitter, &texts[100..]).unwrap();
        let mut expected: AHashMap<String, u64> = AHashMap::new();
        for t in &texts {
            splitter
                .for_each_piece(t, |p| *expected.entry(p.to_string()).or_insert(0) += 1)
                .unwrap();
        }
        let got: AHashMap<String, u64> = counter
            .into_chunks()
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k.into()).unwrap(), v))
            .collect();
        assert_eq!(got, expected);
    }
}
