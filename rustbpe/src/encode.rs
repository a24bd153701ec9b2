//! BPE on one piece, with tiktoken's exact rule: repeatedly merge the adjacent pair of parts
//! whose concatenation has the lowest rank (the leftmost such pair on ties) until no adjacent
//! pair concatenates to a token.
//!
//! Short pieces (almost all of them) run the simple quadratic scan on small stack arrays, which
//! stays in L1 cache; long pieces (e.g. a 10k-letter run) use a linked list and a min-heap of
//! (rank, byte position), which picks the same pair at every step in O(n log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ahash::AHashMap;

use crate::pair_key;

/// Pieces up to this many bytes use the quadratic scan on stack arrays.
const SMALL: usize = 64;
const NO_RANK: u32 = u32::MAX;
const END: u32 = u32::MAX;

/// Reusable buffers for long pieces, so encoding a text allocates them once.
#[derive(Default)]
pub struct Scratch {
    ids: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    heap: BinaryHeap<Reverse<u64>>,
}

#[inline]
fn rank_of(pair_ranks: &AHashMap<u64, u32>, left: u32, right: u32) -> u32 {
    pair_ranks.get(&pair_key(left, right)).copied().unwrap_or(NO_RANK)
}

/// Append the token ids of `piece` (2+ bytes, not itself a token) to `out`.
pub fn merge_piece(
    piece: &[u8],
    byte_ids: &[u32; 256],
    pair_ranks: &AHashMap<u64, u32>,
    out: &mut Vec<u32>,
    scratch: &mut Scratch,
) {
    if piece.len() <= SMALL {
        merge_small(piece, byte_ids, pair_ranks, out);
    } else {
        merge_long(piece, byte_ids, pair_ranks, out, scratch);
    }
}

fn merge_small(piece: &[u8], byte_ids: &[u32; 256], pair_ranks: &AHashMap<u64, u32>, out: &mut Vec<u32>) {
    let mut m = piece.len();
    let mut ids = [0u32; SMALL]; // (m,) current parts
    let mut ranks = [NO_RANK; SMALL]; // (m - 1,) rank of the concatenation of parts k and k + 1
    for (k, &b) in piece.iter().enumerate() {
        ids[k] = byte_ids[b as usize];
    }
    for k in 0..m - 1 {
        ranks[k] = rank_of(pair_ranks, ids[k], ids[k + 1]);
    }
    while m > 1 {
        // leftmost minimum
        let mut best = 0;
        for k in 1..m - 1 {
            if ranks[k] < ranks[best] {
                best = k;
            }
        }
        let rank = ranks[best];
        if rank == NO_RANK {
            break;
        }
        ids[best] = rank;
        ids.copy_within(best + 2..m, best + 1);
        if best + 2 < m {
            ranks.copy_within(best + 2..m - 1, best + 1);
        }
        m -= 1;
        if best > 0 {
            ranks[best - 1] = rank_of(pair_ranks, ids[best - 1], rank);
        }
        if best + 1 < m {
            ranks[best] = rank_of(pair_ranks, rank, ids[best + 1]);
        }
    }
    out.extend_from_slice(&ids[..m]);
}

fn merge_long(
    piece: &[u8],
    byte_ids: &[u32; 256],
    pair_ranks: &AHashMap<u64, u32>,
    out: &mut Vec<u32>,
    scratch: &mut Scratch,
) {
    let n = piece.len();
    let Scratch {
        ids,
        next,
        prev,
        heap,
    } = scratch;
    // Parts form a linked list over byte positions: a part starting at byte k has id ids[k]
    // and neighbours prev[k] / next[k]. Heap entries are rank << 32 | k, so the minimum is the
    // lowest rank and, on ties, the leftmost position — tiktoken's choice.
    ids.clear();
    ids.extend(piece.iter().map(|&b| byte_ids[b as usize]));
    next.clear();
    next.extend((1..=n as u32).map(|k| if k as usize == n { END } else { k }));
    prev.clear();
    prev.extend((0..n as u32).map(|k| if k == 0 { END } else { k - 1 }));
    heap.clear();
    for k in 0..n - 1 {
        let r = rank_of(pair_ranks, ids[k], ids[k + 1]);
        if r != NO_RANK {
            heap.push(Reverse(((r as u64) << 32) | k as u64));
        }
    }
    while let Some(Reverse(entry)) = heap.pop() {
        let rank = (entry >> 32) as u32;
        let k = (entry & 0xFFFF_FFFF) as usize;
        // Stale entries: the part at k was absorbed, or its right neighbour changed.
        let j = next[k];
        if ids[k] == END || j == END || rank_of(pair_ranks, ids[k], ids[j as usize]) != rank {
            continue;
        }
        let j = j as usize;
        ids[k] = rank;
        ids[j] = END;
        next[k] = next[j];
        if next[j] != END {
            prev[next[j] as usize] = k as u32;
        }
        if prev[k] != END {
            let p = prev[k] as usize;
            let r = rank_of(pair_ranks, ids[p], rank);
            if r != NO_RANK {
                heap.push(Reverse(((r as u64) << 32) | p as u64));
            }
        }
        if next[k] != END {
            let r = rank_of(pair_ranks, rank, ids[next[k] as usize]);
            if r != NO_RANK {
                heap.push(Reverse(((r as u64) << 32) | k as u64));
            }
        }
    }
    let mut k = 0u32;
    while k != END {
        out.push(ids[k as usize]);
        k = next[k as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tokenizer;

    /// tiktoken's algorithm written the plain way, on byte slices: the reference.
    fn reference(tok: &Tokenizer, piece: &[u8]) -> Vec<u32> {
        let rank = |b: &[u8]| tok.vocab().iter().position(|t| t == b).map(|i| i as u32);
        if let Some(r) = rank(piece) {
            return vec![r];
        }
        let mut parts: Vec<Vec<u8>> = piece.iter().map(|&b| vec![b]).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for k in 0..parts.len().saturating_sub(1) {
                let cat = [parts[k].clone(), parts[k + 1].clone()].concat();
                if let Some(r) = rank(&cat) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, k));
                    }
                }
            }
            let Some((_, k)) = best else { break };
            let right = parts.remove(k + 1);
            parts[k].extend(right);
        }
        parts.iter().map(|p| rank(p).unwrap()).collect()
    }

    fn tokenizer_with(extra: &[&str]) -> Tokenizer {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        vocab.extend(extra.iter().map(|s| s.as_bytes().to_vec()));
        Tokenizer::from_vocab(vocab, crate::GPT4_PATTERN).unwrap()
    }

    #[test]
    fn short_and_long_paths_match_the_reference() {
        // A vocabulary where merge order matters: "abc" reachable two ways, overlapping "aa".
        let tok = tokenizer_with(&["bc", "ab", "aa", "abc", "aaa", "bca", "cab", "abcabc", "aaaa"]);
        let alphabet = b"abc";
        let mut state = 12345u64;
        for len in [2usize, 3, 5, 8, 20, 63, 64, 65, 100, 300] {
            for _ in 0..50 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        alphabet[(state >> 33) as usize % 3]
                    })
                    .collect();
                let mut got = Vec::new();
                if tok.encoder.get(&piece[..]).is_some() {
                    continue;
                }
                merge_piece(
                    &piece,
                    &tok.byte_ids,
                    &tok.pair_ranks,
                    &mut got,
                    &mut Scratch::default(),
                );
                assert_eq!(
                    got,
                    reference(&tok, &piece),
                    "piece {:?}",
                    String::from_utf8_lossy(&piece)
                );
            }
        }
    }
}
