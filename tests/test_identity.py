"""
Tests of tasks/identity.py: the generated identity conversations are deterministic per seed,
differ across seeds, are varied, render with the tokenizer (mask = the assistant's tokens), carry
the spec's name and maker where they are asked for, follow an edited spec, and a bad spec file is
a clear error. Run: uv run pytest tests/test_identity.py -q
"""

import json
import re

import pytest

from chat_stage_fixtures import reference_render
from tasks.identity import DEFAULT_SPEC_PATH, QUESTIONS, Identity, load_spec, noisy

NAME_TOPICS = {"who", "name", "human", "confusion"}
MAKER_TOPICS = {"maker", "origin"}


def as_text(conversations):
    return [json.dumps(c["messages"], sort_keys=True) for c in conversations]


def mentions(text, phrase):
    """phrase in text, allowing a capital first letter at the start of a sentence."""
    return phrase in text or phrase[0].upper() + phrase[1:] in text


def assistant_texts(conversation):
    for message, topic in zip(conversation["messages"][1::2], conversation["topics"]):
        content = message["content"]
        yield topic, content if isinstance(content, str) else "".join(p["text"] for p in content)


def test_same_seed_same_conversations_other_seed_others():
    a, b = Identity(size=300, seed=7), Identity(size=300, seed=7)
    assert as_text(a) == as_text(b)
    assert as_text(a[100:110]) == as_text(b)[100:110]  # item i does not depend on what came before
    c = Identity(size=300, seed=8)
    shared = set(as_text(a)) & set(as_text(c))
    assert len(shared) < 30, f"{len(shared)} of 300 conversations are the same for seeds 7 and 8"


def test_varied_multi_turn_and_noisy():
    convs = list(Identity(size=1000, seed=0))
    texts = as_text(convs)
    assert len(set(texts)) > 900, "the conversations repeat too often"
    turns = [len(c["messages"]) // 2 for c in convs]
    assert set(turns) == {1, 2, 3}
    topics = {t for c in convs for t in c["topics"]}
    assert {"who", "name", "maker", "can", "cannot", "internet", "memory", "mistakes", "tools", "calculator",
            "languages", "greeting"} <= topics
    users = [m["content"] for c in convs for m in c["messages"][0::2]]
    assert any(u == u.lower() and any(ch.isalpha() for ch in u) for u in users)  # lower-cased
    assert any(u == u.upper() and any(ch.isalpha() for ch in u) for u in users)  # shouting
    questions = {q.rstrip("?").lower() for qs in QUESTIONS.values() for q in qs}
    assert sum(u.lower().rstrip("?!. ") not in questions for u in users) > 0.3 * len(users)  # typos, greetings...
    for c in convs:
        roles = [m["role"] for m in c["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(c["topics"]) == len(roles) // 2


def test_noise_is_deterministic_and_keeps_most_letters():
    import random
    text = "what can you do for me today?"
    outs = [noisy(random.Random(k), text) for k in range(200)]
    assert outs == [noisy(random.Random(k), text) for k in range(200)]
    assert len(set(outs)) > 20
    for out in outs:
        assert abs(len(out) - len(text)) <= 8  # a typo or two, shorthand, punctuation


def test_every_conversation_renders_with_the_assistant_tokens_trained(tiny_tokenizer):
    for conversation in Identity(size=400, seed=3):
        ids, mask = tiny_tokenizer.render_conversation(conversation, max_tokens=None)
        ref_ids, trained = reference_render(tiny_tokenizer, conversation)
        assert ids == ref_ids and mask == [int(t) for t in trained]
        assert tiny_tokenizer.render_for_completion(conversation)[-1] == tiny_tokenizer.encode_special("<|assistant_start|>")


def test_answers_carry_the_name_and_maker():
    spec = load_spec()
    checked = 0
    for conversation in Identity(size=600, seed=5):
        for topic, text in assistant_texts(conversation):
            if topic in NAME_TOPICS:
                assert spec["name"] in text, (topic, text)
                checked += 1
            if topic in MAKER_TOPICS:
                assert mentions(text, spec["maker"]), (topic, text)
                checked += 1
    assert checked > 300


def test_calculator_turns_call_the_tool_and_show_its_output(tiny_tokenizer):
    from nanochat.calculator import use_calculator
    seen = 0
    for conversation in Identity(size=800, seed=11):
        for message, topic in zip(conversation["messages"][1::2], conversation["topics"]):
            if topic != "calculator":
                continue
            kinds = [p["type"] for p in message["content"]]
            assert kinds == ["text", "python", "python_output", "text"]
            expression, output = message["content"][1]["text"], message["content"][2]["text"]
            assert output == use_calculator(expression)  # what the engine would force at inference
            seen += 1
    assert seen > 10


def test_edited_spec_changes_the_answers(tmp_path):
    spec = json.load(open(DEFAULT_SPEC_PATH))
    spec.update(name="Pebble", maker="the Quarry Lab", languages={"best": "English", "some": [], "note": "That is all."},
                tools=[])
    path = tmp_path / "pebble.json"
    path.write_text(json.dumps(spec))
    convs = list(Identity(size=400, seed=1, spec_path=path))
    for conversation in convs:
        for topic, text in assistant_texts(conversation):
            assert "nanochat" not in text.replace("nanochat code", "")  # the default name is gone
            if topic in NAME_TOPICS:
                assert "Pebble" in text
            if topic in MAKER_TOPICS:
                assert mentions(text, "the Quarry Lab")
            if topic == "tools":
                assert "don't have any tools" in text
    assert not any("calculator" in c["topics"] for c in convs)  # no calculator tool, no calculator turns


@pytest.mark.parametrize("content, message", [
    ("{not json", r"not valid JSON \(.* line 1"),
    ("[1, 2]", "expected a JSON object"),
    ('{"name": ""}', "field 'name' must be a non-empty string"),
    ("SPEC_WITHOUT:maker", "field 'maker' must be a non-empty string, got nothing"),
    ("SPEC_WITH:can=[]", "field 'can' must be a non-empty list"),
    ('SPEC_WITH:cannot=[{"topic": "internet"}]', "field 'cannot' must be"),
    ('SPEC_WITH:languages={"best": "English"}', "field 'languages' must be"),
    ('SPEC_WITH:nmae="x"', r"unknown field\(s\) \['nmae'\]"),
])
def test_bad_spec_is_a_clear_error(tmp_path, content, message):
    spec = json.load(open(DEFAULT_SPEC_PATH))
    if content.startswith("SPEC_WITHOUT:"):
        spec.pop(content.split(":", 1)[1])
        content = json.dumps(spec)
    elif content.startswith("SPEC_WITH:"):
        key, value = content.split(":", 1)[1].split("=", 1)
        spec[key] = json.loads(value)
        content = json.dumps(spec)
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        Identity(size=10, spec_path=path)
    assert str(path) in str(info.value)


def test_missing_spec_and_bad_size():
    with pytest.raises(ValueError, match="does not exist"):
        Identity(spec_path="/nonexistent/identity.json")
    with pytest.raises(ValueError, match="size must be a positive int"):
        Identity(size=0)


def test_default_spec_mentions_the_required_facts():
    spec = load_spec()
    assert spec["name"] == "nanochat"
    topics = {c["topic"] for c in spec["cannot"]}
    assert {"internet", "memory", "mistakes"} <= topics
    assert any(re.search("calculator", t["name"]) for t in spec["tools"])
    assert spec["languages"]["best"] == "English"
