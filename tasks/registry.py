"""
Which task is loaded under which name: the one home of the task tables of the scripts.

    task = load_eval_task("ARC-Easy")                       # chat_eval, chat_sft's in-training metrics
    train, test = load_rl_task("gsm8k")                     # chat_rl
    train_parts, val_parts = chat_mixture("mid", seed=42, identity_size=1000, spelling_size=10000)

The library (nanochat/task_eval.py) scores a Task it is given and imports nothing from tasks/;
the scripts pick the task here.

The two chat training mixtures (mid_train, chat_sft) are built by one function, chat_mixture; what
differs between them is the table CHAT_MIXTURES below, and nothing else:
  - the parts, in mixture order (the order decides the shuffled mixture, so it is kept as it was);
  - how rows are made from them (nanochat/chat_data.py): mid-training PACKS whole conversations into
    rows of T + 1 tokens (BOS-aligned best fit), SFT PADS one conversation per row;
  - the default sizes of the generated parts (--chat-size, --identity-size, --spelling-size).
Validation: the same parts, from their held-out splits (chat test, GSM8K test, ARC validation) and,
for the generated parts, other items: a tenth of the training size each (VAL_FRACTION; mid-training
once used a twentieth for the spelling tasks, SFT a tenth; identity used a tenth in both).
"""

from tasks.arc import ARC
from tasks.common import TaskMixture
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.spellingbee import SimpleSpelling, SpellingBee

# The tasks chat_eval knows: name -> the constructor of its evaluation split.
EVAL_TASKS = {
    "ARC-Easy": lambda: ARC("ARC-Easy", "test"),
    "ARC-Challenge": lambda: ARC("ARC-Challenge", "test"),
    "MMLU": lambda: MMLU("all", "test"),
    "GSM8K": lambda: GSM8K("main", "test"),
    "HumanEval": lambda: HumanEval(),
    "SpellingBee": lambda: SpellingBee(size=256, split="test"),
}

SPELLINGBEE_TRAIN_SIZE = 10_000
# The tasks chat_rl learns: name -> (train split, test split).
RL_TASKS = {
    "gsm8k": lambda: (GSM8K("main", "train"), GSM8K("main", "test")),
    "spellingbee": lambda: (SpellingBee(size=SPELLINGBEE_TRAIN_SIZE, split="train"), SpellingBee(size=256, split="test")),
}

VAL_FRACTION = 10  # the generated parts' validation items: 1 / VAL_FRACTION of their training size
CHAT_MIXTURES = {
    # stage: parts in mixture order, how rows are made, default sizes (chat_size None: the whole split)
    "mid": dict(parts=("chat", "GSM8K", "ARC-Easy", "ARC-Challenge", "MMLU auxiliary_train", "identity", "spelling"),
                rows="packed", chat_size=None, identity_size=1000, spelling_size=10000),
    "sft": dict(parts=("ARC-Easy", "ARC-Challenge", "GSM8K", "chat", "identity", "spelling"),
                rows="padded", chat_size=10000, identity_size=1000, spelling_size=300),
}


def load_eval_task(name):
    """The evaluation split of a task by its chat_eval name."""
    if name not in EVAL_TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(EVAL_TASKS)}")
    return EVAL_TASKS[name]()


def load_rl_task(name):
    """(train task, test task) of a chat_rl --task."""
    if name not in RL_TASKS:
        raise ValueError(f"unknown RL task {name!r}; choose from {', '.join(RL_TASKS)}")
    return RL_TASKS[name]()


def _chat_part(split, chat_size):
    from tasks.smoltalk import SmolTalk

    if split == "train":
        chat = SmolTalk("train")
        if chat_size is not None and 0 < chat_size < len(chat):  # evenly spaced: every source is represented
            chat = chat[::len(chat) // chat_size][:chat_size]
        return chat
    return SmolTalk("test")


def chat_mixture(stage, seed, identity_size, spelling_size, chat_size=None, custom_json=(), log=print):
    """({name: task} of the training mixture, {name: task} of the validation mixture) of a chat stage
    ("mid" | "sft", see CHAT_MIXTURES); mixtures() shuffles them into two TaskMixtures.
    chat_size: general chat conversations (None or -1: all; 0: none); identity_size, spelling_size:
    0 for none; custom_json: JSONL files of one's own conversations (training only, appended last).
    MMLU auxiliary_train is optional (the offline mirror has none): `log` says so and it is left out.
    Raises FileNotFoundError / RuntimeError / ValueError for missing data or a malformed file."""
    from tasks.customjson import CustomJSON
    from tasks.identity import Identity

    chat_size = None if chat_size == -1 else chat_size
    train, val = {}, {}
    for part in CHAT_MIXTURES[stage]["parts"]:
        if part == "chat" and chat_size != 0:
            train["chat"], val["chat"] = _chat_part("train", chat_size), _chat_part("test", chat_size)
        elif part == "GSM8K":
            train[part], val[part] = GSM8K("main", "train"), GSM8K("main", "test")
        elif part in ("ARC-Easy", "ARC-Challenge"):
            train[part], val[part] = ARC(part, "train"), ARC(part, "validation")
        elif part == "MMLU auxiliary_train":
            try:
                train[part] = MMLU("auxiliary_train", "train")
            except Exception as e:  # optional: absent offline, or the hub is unreachable; any failure means "without it"
                log(f"MMLU auxiliary_train is not available, training without it: {str(e).splitlines()[0]}")
        elif part == "identity" and identity_size:
            train[part] = Identity(size=identity_size, seed=seed)
            val[part] = Identity(size=max(1, identity_size // VAL_FRACTION), seed=seed + 1)
        elif part == "spelling" and spelling_size:
            for cls in (SimpleSpelling, SpellingBee):
                train[cls.__name__] = cls(size=spelling_size, split="train", seed=seed)
            for cls in (SimpleSpelling, SpellingBee):
                val[cls.__name__] = cls(size=max(1, spelling_size // VAL_FRACTION), split="test", seed=seed)
    for path in custom_json:
        train[f"custom {path}"] = CustomJSON(path)
    return train, val


def mixtures(train_parts, val_parts, seed, log=print):
    """(train TaskMixture, validation TaskMixture) of chat_mixture's parts; `log` lists them."""
    train, val = TaskMixture(list(train_parts.values()), seed=seed), TaskMixture(list(val_parts.values()), seed=seed)
    for name, task in train_parts.items():
        log(f"  train {name:<22} {len(task):>8,} conversations")
    log(f"  train total {len(train):,} conversations | validation {len(val):,} conversations")
    return train, val
