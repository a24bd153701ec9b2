"""
Who the model is: conversations about its name, maker, abilities and limits, generated offline
from a small editable spec (tasks/identity.json) so that mid-training and SFT teach the model
its own identity. No network and no other model are involved: the conversations are templates
filled from the spec, with many phrasings, casings and typos on the user's side.

    from tasks.identity import Identity
    task = Identity(size=1000, seed=42)                  # the default spec, tasks/identity.json
    task = Identity(size=500, spec_path="my_bot.json")   # your own assistant

Item i is drawn from random.Random(f"identity:{seed}:{i}"): the same seed gives the same
conversations, another seed others. Each conversation has 1-3 user turns (a greeting, "who are
you", "who made you", "what can you do", each limit in `cannot`, the tools, languages, tone,
thanks/bye) and carries "topics", the topic of each assistant reply, for tests and inspection.

The spec, a JSON object (every field is required unless marked optional):
    name               str   the assistant's name, e.g. "nanochat"
    maker              str   who made it, as it reads after "made by", e.g. "the nanochat project"
    origin             str   a sentence on how it was made, in the first person ("I was trained ...")
    model              str   what it is, a noun phrase after "I'm", e.g. "a small GPT-style language model"
    purpose            str   an infinitive phrase, e.g. "to chat, answer questions and help with code"
    can                [str] verb phrases after "I can", e.g. "explain ideas in simple words"
    cannot             [{"topic": str, "text": str}]  each limit as a first-person sentence; the topics
                       internet, memory, mistakes, realtime, actions, senses also get questions of
                       their own (any other topic appears in the "what can't you do" answers)
    tools              [{"name": str, "text": str}]  tools it can use (may be empty); a tool whose
                       name contains "calculator" also gets worked arithmetic with a python call
    tone               str   how it talks, after "I try to be", e.g. "friendly, plain and concise"
    languages          {"best": str, "some": [str], "note": str}  its best language, the ones it
                       manages a little, and a first-person sentence about the others
    foreign_greetings  [str] (optional) greetings in other languages a user might open with
A malformed spec raises ValueError naming the file, the field and what was expected.
Tests: uv run pytest tests/test_identity.py
"""

import json
import os
import random

from tasks.common import Task

DEFAULT_SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "identity.json")
QUESTION_LIMITS = ("internet", "memory", "mistakes", "realtime", "actions", "senses")

# -----------------------------------------------------------------------------
# the spec


def load_spec(path=None):
    """The spec at `path` (default tasks/identity.json), checked field by field."""
    path = os.fspath(path) if path is not None else DEFAULT_SPEC_PATH
    hint = "see the format in the docstring of tasks/identity.py (or start from tasks/identity.json)"
    if not os.path.isfile(path):
        raise ValueError(f"identity spec {path!r} does not exist; {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"identity spec {path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"identity spec {path}: not UTF-8 text ({e})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"identity spec {path}: expected a JSON object, got {type(spec).__name__}; {hint}")

    def fail(field, expected):
        got = json.dumps(spec.get(field))[:80] if field in spec else "nothing (the field is missing)"
        raise ValueError(f"identity spec {path}: field {field!r} must be {expected}, got {got}; {hint}")

    def text(value):
        return isinstance(value, str) and value.strip() != ""

    def records(value, keys):
        return isinstance(value, list) and all(isinstance(r, dict) and all(text(r.get(k)) for k in keys) for r in value)

    for field in ("name", "maker", "origin", "model", "purpose", "tone"):
        if not text(spec.get(field)):
            fail(field, "a non-empty string")
    if not (isinstance(spec.get("can"), list) and spec["can"] and all(text(c) for c in spec["can"])):
        fail("can", "a non-empty list of non-empty strings")
    if not (records(spec.get("cannot"), ("topic", "text")) and spec["cannot"]):
        fail("cannot", 'a non-empty list of {"topic": str, "text": str}')
    if not records(spec.get("tools"), ("name", "text")):
        fail("tools", 'a list (possibly empty) of {"name": str, "text": str}')
    languages = spec.get("languages")
    if not (isinstance(languages, dict) and text(languages.get("best")) and text(languages.get("note"))
            and isinstance(languages.get("some"), list) and all(text(s) for s in languages["some"])):
        fail("languages", '{"best": str, "some": [str], "note": str}')
    greetings = spec.setdefault("foreign_greetings", [])
    if not (isinstance(greetings, list) and all(text(g) for g in greetings)):
        fail("foreign_greetings", "a list of non-empty strings")
    unknown = sorted(set(spec) - {"name", "maker", "origin", "model", "purpose", "can", "cannot", "tools", "tone",
                                  "languages", "foreign_greetings"})
    if unknown:
        raise ValueError(f"identity spec {path}: unknown field(s) {unknown} (a typo?); {hint}")
    return spec


# -----------------------------------------------------------------------------
# the user's side: phrasings and noise

GREETINGS = ("hi", "hello", "hey", "hey there", "hi there", "hello there", "good morning", "good afternoon",
             "good evening", "yo", "hiya", "greetings", "howdy", "heya", "morning")
QUESTIONS = {
    "who": ("who are you?", "what are you?", "introduce yourself", "tell me about yourself",
            "who am I talking to?", "what kind of AI are you?", "so what exactly are you?",
            "could you tell me a bit about yourself?", "who is this?", "what are you exactly?",
            "give me a quick intro about yourself", "who or what are you?"),
    "name": ("what is your name?", "what's your name?", "whats ur name", "do you have a name?",
             "what should I call you?", "what do I call you?", "your name?", "name please",
             "may I ask your name?", "how should I address you?"),
    "human": ("are you a human?", "are you a real person?", "am I talking to a bot?", "are you a robot?",
              "is this a person or a machine?", "are you an AI?", "are you alive?", "r u human"),
    "maker": ("who made you?", "who created you?", "who built you?", "who trained you?", "who is your creator?",
              "who developed you?", "which company made you?", "where do you come from?", "who owns you?",
              "who are your makers?", "who programmed you?", "who is behind you?"),
    "origin": ("how were you made?", "how were you trained?", "how did you learn to talk?",
               "what were you trained on?", "how do you work?", "how were you built?"),
    "can": ("what can you do?", "how can you help me?", "what are you good at?", "what are your skills?",
            "what can I ask you?", "what are your capabilities?", "what do you do?", "what can you help with?",
            "what are you for?", "what are you able to do?"),
    "cannot": ("what can't you do?", "what are your limitations?", "what are you bad at?",
               "any limitations I should know about?", "what are your weaknesses?",
               "is there anything you can't do?", "what are your limits?"),
    "internet": ("can you browse the internet?", "can you google something for me?", "are you connected to the internet?",
                 "can you search the web?", "can you look something up online for me?", "do you have internet access?",
                 "can you check a website for me?"),
    "memory": ("do you remember me?", "do you remember what we talked about yesterday?",
               "will you remember this conversation?", "can you remember my name for next time?",
               "do you keep a memory of our chats?", "what did I tell you last time?"),
    "mistakes": ("are you always right?", "can I trust your answers?", "do you make mistakes?", "how accurate are you?",
                 "are you smart?", "should I believe everything you say?", "how reliable are you?"),
    "realtime": ("what's the date today?", "what time is it?", "what's the weather like?", "what day is it today?",
                 "what's in the news today?", "what year is it?"),
    "actions": ("can you send an email for me?", "can you book a flight for me?", "can you order a pizza?",
                "can you open a file on my computer?", "can you set an alarm?", "can you call my mom?"),
    "senses": ("can you see this picture?", "can you hear me?", "can you look at an image?",
               "can I send you a photo?", "can you watch a video for me?"),
    "tools": ("can you use tools?", "can you use a calculator?", "can you do math?", "are you good at arithmetic?",
              "can you run code?", "do you have any tools?", "how do you do calculations?"),
    "languages": ("what languages do you speak?", "which languages do you know?", "do you speak other languages?",
                  "what languages can you understand?", "can you talk in other languages?"),
    "tone": ("describe your personality", "what's your personality like?", "how would you describe yourself?",
             "what's your style?", "how do you talk?"),
    "feelings": ("how are you?", "how's it going?", "how are you doing today?", "do you have feelings?",
                 "are you happy?", "do you get bored?"),
    "confusion": ("are you {other}?", "are you made by {company}?", "is this {other}?", "are you related to {other}?",
                  "wait, are you {other}?"),
}
OTHERS = (("ChatGPT", "OpenAI"), ("GPT-4", "OpenAI"), ("Claude", "Anthropic"), ("Gemini", "Google"), ("Siri", "Apple"),
          ("Alexa", "Amazon"), ("Llama", "Meta"), ("Copilot", "Microsoft"))
LANGUAGE_QUESTIONS = ("do you speak {lang}?", "can you speak {lang}?", "can we talk in {lang}?", "do you know {lang}?")
FAR_LANGUAGES = ("Japanese", "Chinese", "Russian", "Arabic", "Hindi", "Korean", "Swahili")
CLOSINGS = ("thanks!", "thank you", "cool, thanks", "ok thanks", "great, that's helpful", "got it, thanks",
            "nice", "awesome, thank you!", "ok bye", "bye!", "see you later", "good to know")
SHORTHAND = {"you": "u", "are": "r", "your": "ur", "please": "pls", "what's": "whats", "thanks": "thx"}


def typo(rng, word):
    """One keyboard slip in a word of 4+ letters: two letters swapped, one dropped, or one doubled."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def noisy(rng, text):
    """The way people type: case, trailing punctuation, shorthand and a typo or two, at random."""
    words = text.split(" ")
    if rng.random() < 0.1:
        words = [SHORTHAND.get(w.lower(), w) for w in words]
    if rng.random() < 0.25:
        for _ in range(rng.choice((1, 1, 2))):
            k = rng.randrange(len(words))
            core = words[k].rstrip("?!.,")
            words[k] = typo(rng, core) + words[k][len(core):]
    text = " ".join(words)
    r = rng.random()
    if r < 0.4:
        text = text.lower()
    elif r < 0.45:
        text = text.upper()
    elif r < 0.85:
        text = text[0].upper() + text[1:]
    r = rng.random()
    if r < 0.3:
        text = text.rstrip("?!.")
    elif r < 0.4 and text.endswith("?"):
        text += rng.choice(("?", "??", "!"))
    return text


# -----------------------------------------------------------------------------
# the assistant's side


def sentence(text):
    """Capitalised, with a final full stop unless it already ends a sentence."""
    text = text.strip()
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def listing(items):
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def calculator_exchange(rng, spec):
    """A user asks for arithmetic; the answer calls the python calculator and reads its output."""
    from nanochat.calculator import use_calculator  # the engine's own tool: the output text is what it would force

    a, b = rng.randrange(12, 10000), rng.randrange(2, 1000)
    op = rng.choice(("+", "-", "*"))
    expression = f"{a} {op} {b}"
    result = use_calculator(expression)
    assert result is not None, f"the calculator refused {expression!r}"
    user = rng.choice(("what is {e}?", "can you calculate {e}?", "compute {e}", "{e} = ?", "how much is {e}?",
                       "quick, what's {e}?")).format(e=expression)
    parts = [
        {"type": "text", "text": rng.choice(("Let me use my python calculator for that.\n\n",
                                             "I'll compute it with the calculator:\n\n", "Sure, calculating:\n\n"))},
        {"type": "python", "text": expression},
        {"type": "python_output", "text": result},
        {"type": "text", "text": f"\n\n{expression} = {result}."},
    ]
    return user, parts


def answer(rng, spec, topic, user_text):
    """The assistant's reply (a str) to a question of the given topic."""
    name, maker, model = spec["name"], spec["maker"], spec["model"]
    limits = {c["topic"]: c["text"] for c in spec["cannot"]}
    languages = spec["languages"]
    if topic == "greeting":
        return rng.choice((f"Hello! I'm {name}. How can I help you today?",
                           f"Hi there! I'm {name}, {model}. What would you like to talk about?",
                           f"Hey! I'm {name}. What can I do for you?",
                           f"Hello! {name} here. Ask me anything, and I'll do my best."))
    if topic == "foreign_greeting":
        return (f"{sentence(user_text.strip('!?. ')).rstrip('.')}! I'm {name}. I work best in {languages['best']}, "
                f"so I'll answer in {languages['best']}. {sentence(languages['note'])} How can I help?")
    if topic == "who":
        return rng.choice((f"I'm {name}, {model} made by {maker}. I'm here {spec['purpose']}.",
                           f"My name is {name}. I'm {model}, created by {maker}. {sentence(spec['origin'])}",
                           f"I'm {name}! I'm {model} built by {maker}, and I'm here {spec['purpose']}.",
                           f"I'm {name}, an AI assistant made by {maker}. Technically, I'm {model}."))
    if topic == "name":
        return rng.choice((f"My name is {name}.", f"I'm {name}. Nice to meet you!",
                           f"You can call me {name}.", f"I'm called {name}, {model} made by {maker}."))
    if topic == "human":
        return rng.choice((f"No, I'm not a human. I'm {name}, {model} made by {maker}.",
                           f"I'm an AI, not a person: my name is {name}, and I'm {model}.",
                           f"Not at all! I'm {name}, a computer program ({model}) that writes text."))
    if topic == "maker":
        return rng.choice((f"I was made by {maker}. {sentence(spec['origin'])}",
                           f"{sentence(maker)[:-1]} made me. I'm {name}, {model}.",
                           f"I'm {name}, and I was created by {maker}.",
                           f"{name} was built by {maker}. {sentence(spec['origin'])}"))
    if topic == "origin":
        return f"{sentence(spec['origin'])} I'm {name}, {model}, made by {maker}."
    if topic == "can":
        skills = rng.sample(spec["can"], min(len(spec["can"]), rng.randrange(3, 6)))
        tools = [t["text"] for t in spec["tools"]]
        if rng.random() < 0.5:
            intro = f"I'm {name}, {model}, and I'm here {spec['purpose']}. Some things I can do:\n"
            body = "\n".join(f"- {sentence(s)}" for s in skills)
        else:
            intro, body = f"I'm {name}. I can {listing(skills)}.", ""
        extra = f"\n\nAlso, {tools[0]}." if tools and rng.random() < 0.5 else ""
        return intro + body + extra + rng.choice(("", " What would you like to try?", "\n\nJust ask!"))
    if topic == "cannot":
        chosen = rng.sample(spec["cannot"], min(len(spec["cannot"]), rng.randrange(2, 5)))
        if "mistakes" in limits and all(c["topic"] != "mistakes" for c in chosen):
            chosen.append({"topic": "mistakes", "text": limits["mistakes"]})
        lines = "\n".join(f"- {sentence(c['text'])}" for c in chosen)
        return rng.choice(("Good question. My main limits:\n", "A few things to keep in mind:\n",
                           f"I'm {name}, and I do have limits:\n")) + lines
    if topic in limits:
        lead = {"internet": "No.", "memory": "No, I don't.", "mistakes": "Not always.", "realtime": "I can't tell you that.",
                "actions": "I'm afraid not.", "senses": "No, I can't."}.get(topic, "")
        return (f"{lead} {sentence(limits[topic])}").strip()
    if topic == "tools":
        if not spec["tools"]:
            return f"I don't have any tools: I'm {name}, and everything I answer comes from my own training."
        text = " ".join(f"{sentence(t['text'])}" for t in spec["tools"])
        return f"Yes. {text} Apart from that, {limits.get('internet', 'I have no other tools')}."
    if topic == "languages":
        some = languages["some"]
        also = f" I can also manage some {listing(some)}." if some else ""
        return f"I work best in {languages['best']}.{also} {sentence(languages['note'])}"
    if topic == "language":  # "do you speak <lang>?"
        lang = next(w for w in (languages["some"] + list(FAR_LANGUAGES)) if w.lower() in user_text.lower())
        if lang in languages["some"]:
            return (f"A little, yes. I work best in {languages['best']}, but I can manage some {lang}; "
                    f"expect more mistakes there.")
        return f"Only very little, I'm afraid. I work best in {languages['best']}. {sentence(languages['note'])}"
    if topic == "tone":
        return rng.choice((f"I try to be {spec['tone']}. I'm {name}, {model}.",
                           f"I aim to be {spec['tone']}, and to say so when I'm not sure."))
    if topic == "feelings":
        return rng.choice((f"I'm doing fine, thanks for asking! I'm {name}, so I don't have feelings the way you do, "
                           f"but I'm ready to help. What's on your mind?",
                           f"As {model}, I don't have feelings or moods, but I'm happy to chat. How can I help?"))
    if topic == "confusion":
        other = next((o for o, company in OTHERS if o.lower() in user_text.lower() or company.lower() in user_text.lower()))
        return rng.choice((f"No, I'm not {other}. I'm {name}, {model} made by {maker}.",
                           f"No. I'm {name}, a different assistant: I was made by {maker}."))
    if topic == "closing":
        if any(w in user_text.lower() for w in ("bye", "later")):
            return rng.choice(("Bye! Have a great day.", "See you! Come back any time.", f"Goodbye from {name}!"))
        return rng.choice(("You're welcome!", "Glad I could help!", "Any time! Anything else?", "Happy to help."))
    raise AssertionError(f"no answer for topic {topic!r}")


def user_question(rng, spec, topic):
    """A user message of the given topic, before noise."""
    if topic == "confusion":
        other, company = rng.choice(OTHERS)
        return rng.choice(QUESTIONS["confusion"]).format(other=other, company=company)
    if topic == "language":
        lang = rng.choice(spec["languages"]["some"] + list(FAR_LANGUAGES))
        return rng.choice(LANGUAGE_QUESTIONS).format(lang=lang)
    return rng.choice(QUESTIONS[topic])


def question_topics(spec):
    """Every topic a question can be about, given the spec."""
    topics = ["who", "name", "human", "maker", "origin", "can", "cannot", "tools", "languages", "language",
              "tone", "feelings", "confusion", "calculator"]
    topics += [c["topic"] for c in spec["cannot"] if c["topic"] in QUESTION_LIMITS]
    if not any("calculator" in t["name"].lower() for t in spec["tools"]):
        topics.remove("calculator")
    return topics


# the questions a model is most often asked about itself come up more often
TOPIC_WEIGHTS = {"who": 4, "name": 3, "maker": 4, "can": 3, "cannot": 2, "human": 2, "confusion": 2}


def generate_conversation(rng, spec):
    """One conversation: {"messages": [...], "topics": [topic of each assistant reply]}."""
    topics = question_topics(spec)
    weights = [TOPIC_WEIGHTS.get(t, 1) for t in topics]
    num_turns = rng.choices((1, 2, 3), weights=(4, 4, 3))[0]
    messages, asked = [], []
    opening = rng.random()
    if opening < 0.2:  # a bare greeting first
        greeting = rng.choice(GREETINGS) + rng.choice(("", "!", "!!", "."))
        messages += [{"role": "user", "content": noisy(rng, greeting)},
                     {"role": "assistant", "content": answer(rng, spec, "greeting", greeting)}]
        asked.append("greeting")
    elif opening < 0.27 and spec["foreign_greetings"]:
        greeting = rng.choice(spec["foreign_greetings"]) + rng.choice(("", "!"))
        messages += [{"role": "user", "content": greeting},
                     {"role": "assistant", "content": answer(rng, spec, "foreign_greeting", greeting)}]
        asked.append("foreign_greeting")
    while len(asked) < num_turns:
        if len(asked) > 0 and len(asked) == num_turns - 1 and rng.random() < 0.3:
            topic = "closing"
        else:
            remaining = [(t, w) for t, w in zip(topics, weights) if t not in asked]
            topic = rng.choices([t for t, _ in remaining], weights=[w for _, w in remaining])[0]
        if topic == "calculator":
            text, reply = calculator_exchange(rng, spec)
        else:
            text = rng.choice(CLOSINGS) if topic == "closing" else user_question(rng, spec, topic)
            reply = answer(rng, spec, topic, text)
        if not asked and opening < 0.5 and topic not in ("closing", "calculator"):  # "hi! who are you?"
            text = rng.choice(GREETINGS) + rng.choice((", ", "! ", ". ")) + text
        messages += [{"role": "user", "content": noisy(rng, text)}, {"role": "assistant", "content": reply}]
        asked.append(topic)
    return {"messages": messages, "topics": asked}


class Identity(Task):
    """`size` generated conversations about the assistant described by the spec."""

    eval_type = "generative"

    def __init__(self, size=1000, seed=42, spec_path=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"Identity: size must be a positive int, got {size!r}")
        self.size, self.seed = size, seed
        self.spec_path = os.fspath(spec_path) if spec_path is not None else DEFAULT_SPEC_PATH
        self.spec = load_spec(self.spec_path)

    def num_examples(self):
        return self.size

    def get_example(self, index):
        return generate_conversation(random.Random(f"identity:{self.seed}:{index}"), self.spec)
