//! Pre-tokenization: cutting text into the pieces that BPE works on.
//!
//! The split pattern is a regex (GPT-4 style by default). Running a backtracking regex engine is
//! most of tiktoken's encoding time, so the two GPT-4-style patterns we ship get a hand-written
//! scanner ([`Splitter::Gpt4`]) that gives exactly the same pieces; any other pattern runs through
//! `fancy-regex` ([`Splitter::Regex`]). The unit tests below check the scanner against
//! `fancy-regex` on random unicode.
//!
//! The character classes (`\p{L}`, `\p{N}`, `\s`) come from `regex-syntax` itself, so the scanner
//! and the regex engine agree on every code point by construction, not by a hand-kept table.

use std::sync::OnceLock;

use crate::Error;

/// The default split pattern: GPT-4's (cl100k) pattern with numbers in groups of 1 to 2 digits.
///
/// 1-2 digits rather than GPT-4's 1-3, measured (2026-11-23) by training at vocab 32768 on the
/// first 100.0 MB of the pretraining shards and encoding the validation shard (shard_00011,
/// 13.2 MB):
///
/// | digits | val tokens | bytes/token | all-digit tokens in the vocab |
/// |--------|-----------:|------------:|------------------------------:|
/// | 1-2    | 2,952,474  | 4.4548      | 110                           |
/// | 1-3    | 2,946,862  | 4.4633      | 668                           |
///
/// 1-3 compresses 0.19% better, but spends 558 more vocabulary entries on numbers and still
/// learns only part of the 1000 three-digit groups, so how a number splits depends on which
/// groups happened to be frequent. With 1-2 all 100 two-digit groups are tokens and every number
/// splits the same regular way, which is worth more to a small model doing arithmetic than 0.19%.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// GPT-4's own pattern (numbers in groups of 1 to 3 digits); also served by the fast scanner.
pub const GPT4_PATTERN_3_DIGITS: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// How a text is cut into pieces.
#[derive(Debug)]
pub enum Splitter {
    /// Hand-written scanner equivalent to [`GPT4_PATTERN`] with numbers of 1..=`max_digits`.
    Gpt4 { max_digits: usize },
    /// Any other pattern, run by `fancy-regex`.
    Regex(Box<fancy_regex::Regex>),
}

impl Splitter {
    /// Build the splitter for `pattern`: the fast scanner when the pattern is one of ours,
    /// `fancy-regex` otherwise.
    pub fn new(pattern: &str) -> Result<Splitter, Error> {
        if pattern == GPT4_PATTERN {
            return Ok(Splitter::Gpt4 { max_digits: 2 });
        }
        if pattern == GPT4_PATTERN_3_DIGITS {
            return Ok(Splitter::Gpt4 { max_digits: 3 });
        }
        Self::new_regex(pattern)
    }

    /// Always use the regex engine (used by tests to compare against the scanner).
    pub fn new_regex(pattern: &str) -> Result<Splitter, Error> {
        let re = fancy_regex::Regex::new(pattern)
            .map_err(|e| Error::InvalidPattern(format!("{pattern:?}: {e}")))?;
        Ok(Splitter::Regex(Box::new(re)))
    }

    /// Call `f` on each piece of `text`, in order. The pieces concatenate back to `text`
    /// (for patterns that match every character, as ours do; unmatched text is skipped like
    /// tiktoken skips it).
    pub fn for_each_piece<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) -> Result<(), Error> {
        match self {
            Splitter::Gpt4 { max_digits } => {
                let classes = CharClasses::get();
                let bytes = text.as_bytes();
                let mut start = 0;
                while start < bytes.len() {
                    let end = gpt4_piece_end(classes, bytes, start, *max_digits);
                    f(&text[start..end]);
                    start = end;
                }
                Ok(())
            }
            Splitter::Regex(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| Error::RegexRuntime(e.to_string()))?;
                    f(m.as_str());
                }
                Ok(())
            }
        }
    }
}

// Character classes as bit flags; a code point is in at most one of them (Unicode general
// categories L and N are disjoint, and White_Space code points are in Z* or Cc).
const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;
const OTHER: u8 = 0;

/// Two-stage lookup table: code point -> class, blocks of 256 code points deduplicated.
pub struct CharClasses {
    latin1: [u8; 256],      // classes of U+0000..U+00FF, the hot path
    block_of: Vec<u16>,     // (0x1100,) index into `blocks` for each 256-code-point block
    blocks: Vec<[u8; 256]>, // (num_unique_blocks, 256) classes
}

impl CharClasses {
    /// The table, built once on first use from regex-syntax's Unicode data.
    pub fn get() -> &'static CharClasses {
        static TABLE: OnceLock<CharClasses> = OnceLock::new();
        TABLE.get_or_init(CharClasses::build)
    }

    fn build() -> CharClasses {
        let mut flat = vec![OTHER; 0x110000];
        for (class_regex, flag) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            let hir = regex_syntax::Parser::new()
                .parse(class_regex)
                .expect("class regex parses");
            let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) = hir.kind()
            else {
                panic!("{class_regex} should parse to a Unicode class");
            };
            for range in class.ranges() {
                for class_of in &mut flat[range.start() as usize..=range.end() as usize] {
                    *class_of |= flag;
                }
            }
        }
        let mut block_of = Vec::with_capacity(0x1100);
        let mut blocks: Vec<[u8; 256]> = Vec::new();
        let mut seen = ahash::AHashMap::new();
        for chunk in flat.chunks(256) {
            let block: [u8; 256] = chunk.try_into().expect("256 code points per block");
            let index = *seen.entry(block).or_insert_with(|| {
                blocks.push(block);
                blocks.len() - 1
            });
            block_of.push(u16::try_from(index).expect("fewer than 65536 unique blocks"));
        }
        CharClasses {
            latin1: blocks[block_of[0] as usize],
            block_of,
            blocks,
        }
    }

    #[inline(always)]
    fn class(&self, cp: u32) -> u8 {
        if cp < 256 {
            return self.latin1[cp as usize];
        }
        self.blocks[self.block_of[(cp >> 8) as usize] as usize][(cp & 0xff) as usize]
    }
}

/// Decode the UTF-8 character starting at byte `i` of valid UTF-8: (code point, byte length).
#[inline(always)]
fn decode_at(bytes: &[u8], i: usize) -> (u32, usize) {
    let b0 = bytes[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (bytes[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        let cp = ((b0 & 0x0F) << 12) | ((bytes[i + 1] as u32 & 0x3F) << 6) | (bytes[i + 2] as u32 & 0x3F);
        (cp, 3)
    } else {
        let cp = ((b0 & 0x07) << 18)
            | ((bytes[i + 1] as u32 & 0x3F) << 12)
            | ((bytes[i + 2] as u32 & 0x3F) << 6)
            | (bytes[i + 3] as u32 & 0x3F);
        (cp, 4)
    }
}

/// End of the run of characters of class `class` starting at byte `i`.
#[inline]
fn run_end(classes: &CharClasses, bytes: &[u8], mut i: usize, class: u8) -> usize {
    while i < bytes.len() {
        let (cp, len) = decode_at(bytes, i);
        if classes.class(cp) != class {
            break;
        }
        i += len;
    }
    i
}

/// Does `cp` match `c` case-insensitively under the regex crate's simple case folding?
/// The only non-ASCII fold among the contraction letters is U+017F LATIN SMALL LETTER LONG S.
#[inline]
fn folds_to(cp: u32, c: u8) -> bool {
    cp == c as u32 || cp == c.to_ascii_uppercase() as u32 || (c == b's' && cp == 0x17F)
}

/// Byte length of `(?i:[sdmt]|ll|ve|re)` matched at byte `i`, if it matches.
#[inline]
fn contraction_len(bytes: &[u8], i: usize) -> Option<usize> {
    if i >= bytes.len() {
        return None;
    }
    let (c1, l1) = decode_at(bytes, i);
    if b"sdmt".iter().any(|&c| folds_to(c1, c)) {
        return Some(l1);
    }
    if i + l1 >= bytes.len() {
        return None;
    }
    let (c2, l2) = decode_at(bytes, i + l1);
    let pairs: [&[u8; 2]; 3] = [b"ll", b"ve", b"re"];
    if pairs.iter().any(|p| folds_to(c1, p[0]) && folds_to(c2, p[1])) {
        return Some(l1 + l2);
    }
    None
}

/// End (byte offset) of the piece that the GPT-4 pattern matches at byte `start`.
///
/// The pattern's alternatives are tried in order, exactly like the regex engine does:
///   1. `'(?i:[sdmt]|ll|ve|re)`         contractions
///   2. `[^\r\n\p{L}\p{N}]?+\p{L}+`     a word, with at most one leading non-letter/number
///   3. `\p{N}{1,max_digits}`           numbers in short groups
///   4. ` ?[^\s\p{L}\p{N}]++[\r\n]*`    punctuation, with an optional leading space
///   5. `\s*[\r\n]`                     whitespace up to the last newline of the run
///   6. `\s+(?!\S)`                     whitespace, leaving one space for the next word
///   7. `\s+`                           whatever whitespace is left
fn gpt4_piece_end(classes: &CharClasses, bytes: &[u8], start: usize, max_digits: usize) -> usize {
    let n = bytes.len();
    let (c, clen) = decode_at(bytes, start);
    let class = classes.class(c);
    let after = start + clen;
    // 1. contractions
    if c == '\'' as u32 {
        if let Some(len) = contraction_len(bytes, after) {
            return after + len;
        }
    }
    // 2. letters, optionally preceded by one character that is not \r, \n, a letter or a number
    if class == LETTER {
        return run_end(classes, bytes, after, LETTER);
    }
    if class != NUMBER && c != '\r' as u32 && c != '\n' as u32 && after < n {
        let (c2, _) = decode_at(bytes, after);
        if classes.class(c2) == LETTER {
            return run_end(classes, bytes, after, LETTER);
        }
    }
    // 3. numbers
    if class == NUMBER {
        let mut end = after;
        for _ in 1..max_digits {
            if end >= n {
                break;
            }
            let (cp, len) = decode_at(bytes, end);
            if classes.class(cp) != NUMBER {
                break;
            }
            end += len;
        }
        return end;
    }
    // 4. punctuation run, optionally after one space, then any \r / \n
    let punct_start = if c == ' ' as u32 { after } else { start };
    if punct_start < n {
        let (cp, _) = decode_at(bytes, punct_start);
        if classes.class(cp) == OTHER {
            let mut end = run_end(classes, bytes, punct_start, OTHER);
            while end < n && (bytes[end] == b'\r' || bytes[end] == b'\n') {
                end += 1;
            }
            return end;
        }
    }
    // Only whitespace is left here: letters, numbers and punctuation returned above.
    debug_assert_eq!(class, SPACE, "code point {c:#x} reached the whitespace branches");
    // Scan the maximal whitespace run, remembering where its last newline ends and where its
    // last character starts.
    let mut end = start;
    let mut after_last_newline = None;
    let mut last_char_start = start;
    while end < n {
        let (cp, len) = decode_at(bytes, end);
        if classes.class(cp) != SPACE {
            break;
        }
        last_char_start = end;
        end += len;
        if cp == '\r' as u32 || cp == '\n' as u32 {
            after_last_newline = Some(end);
        }
    }
    // 5. whitespace up to and including the run's last \r or \n
    if let Some(e) = after_last_newline {
        return e;
    }
    // 6. the run minus its last character when a non-space follows (that space joins the word);
    //    the whole run at the end of the text
    if end == n {
        return end;
    }
    if last_char_start > start {
        return last_char_start;
    }
    // 7. a single whitespace character before a non-space
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(splitter: &Splitter, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        splitter
            .for_each_piece(text, |p| out.push(p.to_string()))
            .unwrap();
        out
    }

    /// A tiny deterministic generator (xorshift) so the tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random text mixing the hard cases: contractions (incl. the long s), CJK, emoji,
    /// combining marks, digits of several scripts, long whitespace runs and newlines.
    fn random_text(rng: &mut Rng, len: usize) -> String {
        const ATOMS: &[&str] = &[
            "a",
            "Z",
            "é",
            "ß",
            "ſ",
            "the",
            " ",
            "  ",
            "    ",
            "\t",
            "\n",
            "\r\n",
            "\r",
            "\n\n",
            "'",
            "'s",
            "'S",
            "'ll",
            "'LL",
            "'Ve",
            "'re",
            "'d",
            "'m",
            "'t",
            "'ſ",
            "0",
            "12",
            "345",
            "٣",
            "²",
            "Ⅻ",
            "汉字",
            "日本",
            "😀",
            "👍🏽",
            "\u{301}",
            "e\u{301}",
            ".",
            ",",
            "!?",
            "...",
            "-",
            "(",
            ")",
            "\"",
            "#",
            "$",
            "\u{a0}",
            "\u{2003}",
            "\u{3000}",
            "\u{200b}",
            "\u{feff}",
            "\u{85}",
            "\u{2028}",
            "\u{b}",
            "\u{c}",
            "\u{0}",
            "Ω",
            "ǅ",
            "ʰ",
            "\u{10ffff}",
            "𝔘",
            "\u{e000}",
        ];
        let mut s = String::new();
        for _ in 0..len {
            if rng.below(8) == 0 {
                // any code point at all
                if let Some(c) = char::from_u32(rng.below(0x110000) as u32) {
                    s.push(c);
                }
            } else {
                s.push_str(ATOMS[rng.below(ATOMS.len())]);
            }
        }
        s
    }

    #[test]
    fn scanner_matches_regex_on_examples() {
        for (pattern, _) in [(GPT4_PATTERN, 2), (GPT4_PATTERN_3_DIGITS, 3)] {
            let fast = Splitter::new(pattern).unwrap();
            assert!(matches!(fast, Splitter::Gpt4 { .. }));
            let slow = Splitter::new_regex(pattern).unwrap();
            for text in [
                "",
                "Hello world",
                "I'm here, they'll go; we've 12345 apples!!\n\n  x",
                "   leading and trailing   ",
                "tabs\t\tand\r\nnewlines\n \n  end",
                "a'S b'LL c'ſ 'ſ",
                "  !!?\r\n\r\nfoo",
                "🙂 emoji 👍🏽 and 汉字 text",
            ] {
                assert_eq!(pieces(&fast, text), pieces(&slow, text), "text {text:?}");
            }
        }
    }

    #[test]
    fn scanner_matches_regex_on_random_unicode() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for pattern in [GPT4_PATTERN, GPT4_PATTERN_3_DIGITS] {
            let fast = Splitter::new(pattern).unwrap();
            let slow = Splitter::new_regex(pattern).unwrap();
            for _ in 0..3000 {
                let len = 1 + rng.below(40);
                let text = random_text(&mut rng, len);
                assert_eq!(pieces(&fast, &text), pieces(&slow, &text), "text {text:?}");
            }
        }
    }

    #[test]
    fn digit_groups() {
        let two = Splitter::new(GPT4_PATTERN).unwrap();
        let three = Splitter::new(GPT4_PATTERN_3_DIGITS).unwrap();
        assert_eq!(pieces(&two, "12345"), ["12", "34", "5"]);
        assert_eq!(pieces(&three, "12345"), ["123", "45"]);
    }

    #[test]
    fn other_patterns_use_the_regex_engine() {
        let s = Splitter::new(r"\w+|\W+").unwrap();
        assert!(matches!(s, Splitter::Regex(_)));
        assert_eq!(pieces(&s, "ab, cd"), ["ab", ", ", "cd"]);
    }

    #[test]
    fn invalid_pattern_is_an_error() {
        let err = Splitter::new("(unclosed").unwrap_err();
        assert!(err.to_string().contains("(unclosed"), "{err}");
    }

    #[test]
    fn every_code_point_has_one_class() {
        let classes = CharClasses::get();
        for cp in 0..0x110000u32 {
            let k = classes.class(cp);
            assert!(
                matches!(k, OTHER | LETTER | NUMBER | SPACE),
                "cp {cp:#x} has class {k}"
            );
        }
    }
}
