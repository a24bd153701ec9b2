"""
The user's own conversations from a JSONL file (e.g. an identity or style dataset for SFT).

    from tasks.customjson import CustomJSON
    task = CustomJSON("my_conversations.jsonl")

Each non-blank line is one conversation: a JSON list of messages, or an object {"messages": [...]}.
A message is {"role": "system" | "user" | "assistant", "content": ...}: an optional system message
first, then user and assistant strictly alternating, starting with user and ending with assistant.
User and system content is a string; assistant content is a string or a list of parts
{"type": "text" | "python" | "python_output", "text": str}. Every line is checked on load and all
malformed lines are reported together, each with its line number and what is wrong.
"""

import json
import os

from tasks.common import Task

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")
MAX_REPORTED = 50  # malformed lines listed in the error (the count covers all of them)


def conversation_problem(obj):
    """None if `obj` (a parsed line) is a valid conversation, else the reason it is not."""
    if isinstance(obj, dict):
        if "messages" not in obj:
            return "an object line needs a 'messages' key"
        obj = obj["messages"]
    if not isinstance(obj, list):
        return f"expected a list of messages or an object with 'messages', got {type(obj).__name__}"
    if len(obj) < 2:
        return f"a conversation needs at least a user and an assistant message, got {len(obj)} message(s)"
    start = 1 if isinstance(obj[0], dict) and obj[0].get("role") == "system" else 0
    for i, message in enumerate(obj):
        if not isinstance(message, dict):
            return f"message {i} is a {type(message).__name__}, not an object"
        if "role" not in message or "content" not in message:
            return f"message {i} needs 'role' and 'content'"
        role, content = message["role"], message["content"]
        if role not in ROLES:
            return f"message {i} has role {role!r}, not one of {', '.join(ROLES)}"
        expected = "system" if i < start else ("user" if (i - start) % 2 == 0 else "assistant")
        if role != expected:
            where = "only first" if role == "system" else "alternating user/assistant, starting with user"
            return f"message {i} has role {role!r} where {expected!r} was expected ({where})"
        if role == "assistant" and isinstance(content, list):
            for j, part in enumerate(content):
                valid = isinstance(part, dict) and part.get("type") in PART_TYPES and isinstance(part.get("text"), str)
                if not valid:
                    return (f"message {i} part {j} must be {{\"type\": one of {', '.join(PART_TYPES)}, "
                            f"\"text\": a string}}, got {json.dumps(part)[:80]}")
        elif not isinstance(content, str):
            kinds = "a string or a list of parts" if role == "assistant" else "a string"
            return f"message {i} ({role}) content must be {kinds}, got {type(content).__name__}"
    if obj[-1]["role"] != "assistant":
        return "the last message must be the assistant's"
    return None


def load_conversations(path):
    """The list of conversations (each a list of messages) in a JSONL file; ValueError listing
    every malformed line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"custom conversations file {path!r} does not exist")
    conversations, problems, lines = [], [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            lines += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            problem = conversation_problem(obj)
            if problem:
                problems.append(f"{path}:{lineno}: {problem}")
            else:
                conversations.append(obj["messages"] if isinstance(obj, dict) else obj)
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ValueError(f"{path}: {len(problems)} of {lines} conversation lines are malformed; fix them:\n"
                         + "\n".join(shown) + more)
    if not conversations:
        raise ValueError(f"{path} holds no conversations (expected one JSON conversation per line)")
    return conversations


class CustomJSON(Task):
    eval_type = "generative"

    def __init__(self, filepath, **kwargs):
        super().__init__(**kwargs)
        self.filepath = filepath
        self.conversations = load_conversations(filepath)

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return {"messages": self.conversations[index]}
