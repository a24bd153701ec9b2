//! rustbpe: byte-level BPE in the GPT-4 style — a fast trainer and a tiktoken-exact encoder.
//!
//! The core (this file, `split`, `train`, `encode`) is plain Rust with no Python types; `py`
//! is the thin PyO3 binding that the `rustbpe` Python module exposes (see its docs for the
//! Python API). Token ids are ranks: the 256 single bytes first (id == byte value after
//! training), then one token per merge in the order the merges were learned.
//!
//! Run the unit tests with `cargo test` (in this folder); build the Python module with
//! `uv sync` at the repository root.

pub mod encode;
mod py;
pub mod split;
pub mod train;

use std::fmt;

use ahash::AHashMap;

pub use split::{Splitter, GPT4_PATTERN, GPT4_PATTERN_3_DIGITS};

/// Everything that can go wrong, with a message meant for the person calling the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// vocab_size below the 256 single-byte tokens.
    VocabTooSmall(i64),
    /// A token id that is not in the vocabulary.
    UnknownToken { id: i64, vocab_size: usize },
    /// The split pattern does not compile.
    InvalidPattern(String),
    /// The regex engine failed while matching (e.g. its backtrack limit).
    RegexRuntime(String),
    /// A ranks table that is not a valid byte-level BPE vocabulary.
    InvalidRanks(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::VocabTooSmall(v) => write!(
                f,
                "vocab_size must be at least 256 (one token per byte value); got {v}"
            ),
            Error::UnknownToken { id, vocab_size } => write!(
                f,
                "token id {id} is not in the vocabulary (valid ids are 0..{vocab_size})"
            ),
            Error::InvalidPattern(msg) => write!(f, "invalid split pattern {msg}"),
            Error::RegexRuntime(msg) => write!(f, "split pattern failed while matching: {msg}"),
            Error::InvalidRanks(msg) => write!(f, "invalid mergeable ranks: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Pack a pair of token ids into one hashable word.
#[inline]
pub(crate) fn pair_key(left: u32, right: u32) -> u64 {
    ((left as u64) << 32) | right as u64
}

/// Longest byte string that [`small_key`] packs.
pub(crate) const SMALL_KEY_BYTES: usize = 15;

/// Pack up to 15 bytes and their length into one integer: hashing and comparing it is much
/// cheaper than hashing a slice and calling memcmp, and almost all pieces and tokens are short.
#[inline]
pub(crate) fn small_key(bytes: &[u8]) -> Option<u128> {
    if bytes.len() > SMALL_KEY_BYTES {
        return None;
    }
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[15] = bytes.len() as u8;
    Some(u128::from_le_bytes(buf))
}

/// The bytes that [`small_key`] packed.
pub(crate) fn small_key_bytes(key: &u128) -> Vec<u8> {
    let buf = key.to_le_bytes();
    buf[..buf[15] as usize].to_vec()
}

/// A trained (or loaded) tokenizer: split pattern + vocabulary.
pub struct Tokenizer {
    pattern: String,
    splitter: Splitter,
    /// (vocab_size,) the bytes of each token id.
    vocab: Vec<Vec<u8>>,
    /// bytes -> id, for the "whole piece is a token" shortcut and for building `pair_ranks`.
    encoder: AHashMap<Vec<u8>, u32>,
    /// The same for tokens of at most 15 bytes, keyed by [`small_key`] (the hot lookup).
    small_encoder: AHashMap<u128, u32>,
    /// (left id, right id) -> id of the token whose bytes are left ++ right, for every split
    /// point of every token whose two halves are tokens. This is exactly tiktoken's rule
    /// "merge the adjacent parts whose concatenation has the lowest rank", looked up by ids.
    pair_ranks: AHashMap<u64, u32>,
    /// (256,) id of each single byte.
    byte_ids: [u32; 256],
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("pattern", &self.pattern)
            .field("vocab_size", &self.vocab.len())
            .finish()
    }
}

impl Default for Tokenizer {
    /// The untrained tokenizer: the 256 bytes and the default pattern.
    fn default() -> Self {
        let vocab = (0..=255u8).map(|b| vec![b]).collect();
        Tokenizer::from_vocab(vocab, GPT4_PATTERN).expect("the byte vocabulary is valid")
    }
}

impl Tokenizer {
    /// Build from token bytes indexed by id (checked: unique, and all 256 single bytes present).
    pub fn from_vocab(vocab: Vec<Vec<u8>>, pattern: &str) -> Result<Tokenizer, Error> {
        let splitter = Splitter::new(pattern)?;
        let mut encoder = AHashMap::with_capacity(vocab.len());
        for (id, bytes) in vocab.iter().enumerate() {
            if bytes.is_empty() {
                return Err(Error::InvalidRanks(format!("token id {id} has empty bytes")));
            }
            let id = u32::try_from(id).map_err(|_| Error::InvalidRanks("too many tokens".into()))?;
            if let Some(other) = encoder.insert(bytes.clone(), id) {
                return Err(Error::InvalidRanks(format!(
                    "token ids {other} and {id} have the same bytes {bytes:?}"
                )));
            }
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            byte_ids[b as usize] = *encoder.get(&[b][..]).ok_or_else(|| {
                Error::InvalidRanks(format!(
                    "the single byte {b} has no token; all 256 bytes must be present"
                ))
            })?;
        }
        let mut pair_ranks = AHashMap::new();
        for (id, bytes) in vocab.iter().enumerate() {
            for split in 1..bytes.len() {
                if let (Some(&l), Some(&r)) = (encoder.get(&bytes[..split]), encoder.get(&bytes[split..])) {
                    pair_ranks.insert(pair_key(l, r), id as u32);
                }
            }
        }
        let small_encoder = encoder
            .iter()
            .filter_map(|(bytes, &id)| small_key(bytes).map(|key| (key, id)))
            .collect();
        Ok(Tokenizer {
            pattern: pattern.to_string(),
            splitter,
            vocab,
            encoder,
            small_encoder,
            pair_ranks,
            byte_ids,
        })
    }

    /// Build from (bytes, rank) pairs, e.g. tiktoken's mergeable ranks: the ranks must be
    /// exactly 0..n-1 (rank == token id).
    pub fn from_ranks(ranks: Vec<(Vec<u8>, u32)>, pattern: &str) -> Result<Tokenizer, Error> {
        let n = ranks.len();
        let mut vocab: Vec<Option<Vec<u8>>> = vec![None; n];
        for (bytes, rank) in ranks {
            let slot = vocab.get_mut(rank as usize).ok_or_else(|| {
                Error::InvalidRanks(format!("rank {rank} is out of range: {n} ranks must be 0..{n}"))
            })?;
            if slot.is_some() {
                return Err(Error::InvalidRanks(format!("rank {rank} appears twice")));
            }
            *slot = Some(bytes);
        }
        let vocab = vocab
            .into_iter()
            .map(|b| b.expect("n ranks in 0..n, none twice"))
            .collect();
        Tokenizer::from_vocab(vocab, pattern)
    }

    /// Build from learned merges: merge i (left id, right id) makes token 256 + i.
    pub fn from_merges(merges: &[(u32, u32)], pattern: &str) -> Result<Tokenizer, Error> {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for &(l, r) in merges {
            let mut bytes = vocab[l as usize].clone();
            bytes.extend_from_slice(&vocab[r as usize]);
            vocab.push(bytes);
        }
        Tokenizer::from_vocab(vocab, pattern)
    }

    /// Train on texts held in memory (for Rust callers and tests; the Python binding streams
    /// batches from an iterator into [`train::ChunkCounter`] instead). Same result either way.
    pub fn train<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        vocab_size: usize,
        pattern: &str,
    ) -> Result<Tokenizer, Error> {
        if vocab_size < 256 {
            return Err(Error::VocabTooSmall(vocab_size as i64));
        }
        let splitter = Splitter::new(pattern)?;
        let mut counter = train::ChunkCounter::default();
        let texts: Vec<&str> = texts.into_iter().collect();
        counter.add_batch(&splitter, &texts)?;
        let merges = train::learn_merges(counter.into_chunks(), vocab_size - 256);
        Tokenizer::from_merges(&merges, pattern)
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The bytes of each token id, indexed by id.
    pub fn vocab(&self) -> &[Vec<u8>] {
        &self.vocab
    }

    /// Concatenated bytes of `ids`.
    pub fn decode_bytes(&self, ids: &[i64]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let bytes =
                usize::try_from(id)
                    .ok()
                    .and_then(|i| self.vocab.get(i))
                    .ok_or(Error::UnknownToken {
                        id,
                        vocab_size: self.vocab.len(),
                    })?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// Token ids of `text`, identical to tiktoken's `encode_ordinary` with the same ranks and
    /// pattern.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut scratch = encode::Scratch::default();
        self.splitter.for_each_piece(text, |piece| {
            self.encode_piece(piece.as_bytes(), &mut out, &mut scratch)
        })?;
        Ok(out)
    }

    /// The id of the token whose bytes are exactly `piece`, if there is one.
    #[inline]
    fn lookup(&self, piece: &[u8]) -> Option<u32> {
        match small_key(piece) {
            Some(key) => self.small_encoder.get(&key).copied(),
            None => self.encoder.get(piece).copied(),
        }
    }

    /// Append the ids of one piece (tiktoken's rule: the whole piece if it is a token,
    /// otherwise merge the adjacent pair whose concatenation has the lowest rank, leftmost first).
    #[inline]
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>, scratch: &mut encode::Scratch) {
        if piece.len() == 1 {
            out.push(self.byte_ids[piece[0] as usize]);
        } else if let Some(id) = self.lookup(piece) {
            out.push(id);
        } else {
            encode::merge_piece(piece, &self.byte_ids, &self.pair_ranks, out, scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_keys_round_trip_and_stay_distinct() {
        let samples: [&[u8]; 6] = [b"", b"a", b"a\0", b"\0a", b"fifteen bytes!!", b"\xff\xfe"];
        for s in samples {
            assert_eq!(small_key_bytes(&small_key(s).unwrap()), s);
        }
        let keys: std::collections::HashSet<u128> = samples.iter().map(|s| small_key(s).unwrap()).collect();
        assert_eq!(keys.len(), samples.len());
        assert_eq!(small_key(b"sixteen bytes!!!"), None);
    }

    #[test]
    fn whole_piece_tokens_short_and_long() {
        let long = " a very long token indeed";
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        vocab.push(b"he".to_vec());
        vocab.push(b"hello".to_vec());
        vocab.push(long.as_bytes().to_vec());
        let tok = Tokenizer::from_vocab(vocab, r"\S+|\s+|.").unwrap();
        // "hello" is a token although no merge path leads to it: tiktoken returns it whole.
        assert_eq!(tok.encode("hello").unwrap(), vec![257]);
        assert_eq!(
            tok.encode("hellos").unwrap(),
            vec![256, b'l' as u32, b'l' as u32, b'o' as u32, b's' as u32]
        );
        let tok = Tokenizer::from_vocab(tok.vocab().to_vec(), r".+").unwrap();
        assert_eq!(tok.encode(long).unwrap(), vec![258]);
    }

    #[test]
    fn decode_rejects_unknown_ids() {
        let tok = Tokenizer::default();
        assert_eq!(tok.decode_bytes(&[104, 105]).unwrap(), b"hi");
        let err = tok.decode_bytes(&[1, 256]).unwrap_err();
        assert_eq!(
            err,
            Error::UnknownToken {
                id: 256,
                vocab_size: 256
            }
        );
        assert!(tok.decode_bytes(&[-3]).unwrap_err().to_string().contains("-3"));
    }

    #[test]
    fn bad_ranks_are_errors() {
        let bytes: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        let mut gap = bytes.clone();
        gap.push((b"ab".to_vec(), 300));
        assert!(matches!(
            Tokenizer::from_ranks(gap, GPT4_PATTERN),
            Err(Error::InvalidRanks(_))
        ));
        let missing: Vec<_> = bytes[1..].iter().map(|(b, r)| (b.clone(), r - 1)).collect();
        let err = Tokenizer::from_ranks(missing, GPT4_PATTERN).unwrap_err();
        assert!(err.to_string().contains("single byte 0"), "{err}");
    }
}
