"""
Spelling and letter counting, the classic weak spot of token-based models ("how many r in strawberry").

    from tasks.spellingbee import SpellingBee, SimpleSpelling
    task = SpellingBee(size=1000, split="train")   # count a letter; split: train | test
    task = SimpleSpelling(size=1000, split="train")   # spell a word as comma-separated letters

Items are generated, not stored: item i uses random.Random(seed + i) (the test split starts from
another seed), so a task is deterministic and as large as asked. Words come from the English word
list words_alpha.txt: $NANOCHAT_DATA_DIR/words/words_alpha.txt, else downloaded once into the
base dir. SpellingBee's answer spells the word, counts with a python tool call
('strawberry'.count('r')) and ends with "#### <count>", the format it teaches and the only one
`evaluate` scores (also as chat_rl's reward): a reply without "#### <n>" in its own text scores 0,
however its numbers end ("... x1", or a reply cut off right after the tool printed the count).
"""

import os
import random
import re
import urllib.request
from functools import lru_cache

from tasks.common import Task, check_choice, data_path, extract_final_number, numbers_equal

WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt"
TEST_SEED_OFFSET = 1_000_000_007  # test items draw from seeds far from any train index
ALPHABET = "abcdefghijklmnopqrstuvwxyz"

COUNT_TEMPLATES = (
    "How many {letter} are in the word {word}?",
    "How many {letter}s are in {word}?",
    "how many {letter} in {word}",
    "Count the number of times the letter {letter} appears in {word}.",
    "How many times does {letter} occur in {word}?",
    "In the word {word}, how many {letter}'s are there?",
    "What is the count of the letter {letter} in {word}?",
    "{word}: how many {letter}?",
    "Can you tell me how many {letter} there are in {word}?",
    "Number of {letter} in {word}?",
)
SPELL_TEMPLATES = (
    "Spell the word: {word}",
    "How do you spell {word}?",
    "spell {word}",
    "Please spell out {word} letter by letter.",
    "Write out the letters of {word}, separated by commas.",
)


def load_words(path=None):
    """The lowercase alphabetic words of the word list (one per line, CRLF in the original file):
    `path`, else the mirror's words/words_alpha.txt, else a copy downloaded once into the base dir."""
    path = path or data_path("words", "words_alpha.txt")
    if path is None:
        from nanochat.common import get_base_dir

        path = os.path.join(get_base_dir(), "words_alpha.txt")
        if not os.path.exists(path):
            tmp = f"{path}.tmp{os.getpid()}"
            try:
                urllib.request.urlretrieve(WORDS_URL, tmp)
            except OSError as e:
                raise RuntimeError(f"could not download the word list from {WORDS_URL} ({e}). Set "
                                   f"NANOCHAT_DATA_DIR to a data mirror with words/words_alpha.txt.") from None
            os.replace(tmp, path)  # atomic: a crash mid-download leaves no truncated list behind
    return _read_words(os.path.abspath(path))


@lru_cache(maxsize=4)
def _read_words(path):
    with open(path, encoding="utf-8") as f:
        words = tuple(w for w in (line.strip() for line in f) if w.isalpha() and w.isascii())
    if not words:
        raise ValueError(f"the word list {path} holds no alphabetic words")
    return words


def quoted(rng, text):
    """text as is, or in single or double quotes."""
    return rng.choice((text, f"'{text}'", f'"{text}"'))


class _GeneratedTask(Task):
    def __init__(self, size=1000, split="train", seed=42, words_path=None, **kwargs):
        super().__init__(**kwargs)
        check_choice("split", split, ("train", "test"))
        assert size > 0, f"size must be positive, got {size}"
        self.size, self.split = size, split
        self.seed = seed + (TEST_SEED_OFFSET if split == "test" else 0)
        self.words = load_words(words_path)

    def num_examples(self):
        return self.size


class SpellingBee(_GeneratedTask):
    eval_type = "generative"
    baseline = 0.0

    def get_example(self, index):
        rng = random.Random(self.seed + index)
        word = rng.choice(self.words)
        # mostly a letter of the word; sometimes any letter, so that 0 is a possible answer
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(ALPHABET)
        count = word.count(letter)
        shown_letter = quoted(rng, letter.upper() if rng.random() < 0.2 else letter)
        question = rng.choice(COUNT_TEMPLATES).format(letter=shown_letter, word=quoted(rng, word))
        if rng.random() < 0.3:
            question = question.lower()
        times = "time" if count == 1 else "times"
        parts = [
            {"type": "text", "text": f"Let me spell '{word}' letter by letter: {','.join(word)}.\n"
                                     f"Now I count the '{letter}' with Python:\n\n"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nThe letter '{letter}' appears {count} {times} in '{word}'.\n\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}],
                "word": word, "letter": letter}

    def evaluate(self, conversation, completion):
        """1 if the completion's "#### <number>" (the last one) is the count, else 0 (also with no "####")."""
        reference = extract_final_number(conversation["messages"][-1]["content"][-1]["text"])
        return int(numbers_equal(extract_final_number(completion), reference))


class SimpleSpelling(_GeneratedTask):
    eval_type = "generative"

    def get_example(self, index):
        rng = random.Random(self.seed + index)
        word = rng.choice(self.words)
        question = rng.choice(SPELL_TEMPLATES).format(word=word)
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": ",".join(word)}],
                "word": word}

    def evaluate(self, conversation, completion):
        """1 if the completion spells the word (commas, spaces and case ignored around the letters)."""
        letters = [c for c in re.split(r"[\s,\-]+", completion.strip().lower()) if c]
        return int(letters == list(conversation["word"]))
