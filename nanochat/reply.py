"""
An assistant reply as parts: the one home of tool-call parts and of "the reply text".

The calculator's special tokens cut a reply into parts:
    text <|python_start|> expr <|python_end|> <|output_start|> result <|output_end|> text ...
-> [{"type": "text" | "python" | "python_output", "text": ...}], the shape that
tokenizer.render_conversation reads back as an assistant message's content.

    decoder = ReplyParts(tokenizer)
    for ev in engine.step():                        # one request's TokenEvents, in order
        piece = decoder.feed(ev.token, ev.text)     # (part, call, text) or None (a marker, no text)
    decoder.parts, decoder.text()                   # the parts; the reply text
    parts_of(tokenizer, completion.tokens)          # the same parts from a finished token list

The reply text (reply_text) is what a plain reader reads: the text parts and the tool's results,
without the tool's expressions: "Natalia sold 48/2 = 24 clips" where the model wrote "Natalia sold
48/2 = " and called the tool on 48/2. It is the server's message.content (and the concatenation of
its streamed delta.content) and the text chat_cli writes outside its [calc ...] brackets. Two other
strings come from the same tokens and are not the reply text: the engine's Completion.text (every
non-special token's text, the expressions included: what stop strings are matched against) and
tokenizer.decode(tokens) (the transcript with the special tokens named, which the task scorers read).

Tests: tests/test_chat_web.py (the server's parts and content), tests/test_chat_cli.py.
"""

TOOL_MARKERS = {"<|python_start|>": "python", "<|python_end|>": "text",
                "<|output_start|>": "python_output", "<|output_end|>": "text"}  # marker -> the part it opens


def reply_text(parts):
    """The reply text of a list of parts: text and tool results, without the tool's expressions."""
    return "".join(p["text"] for p in parts if p["type"] != "python")


class ReplyParts:
    """The parts of one reply, built token by token.

    part: the part the next text belongs to; calls: calculator calls so far (the current one is
    calls - 1). A part is opened by its marker token and gets its first text after it; a marker
    with no text after it (an expression the calculator refused gets no output) leaves no part."""

    def __init__(self, tokenizer):
        sp = tokenizer.encode_special
        self.markers = {sp(name): part for name, part in TOOL_MARKERS.items()}
        self.part, self.calls, self._boundary = "text", 0, True
        self.parts = []

    def feed(self, token, text):
        """One token and its text delta -> (part, call, text), or None for a marker token or an empty
        delta. call numbers the calculator calls from 0 (-1 before the first)."""
        part = self.markers.get(token)
        if part is not None:
            self.part, self._boundary = part, True  # the next text opens a new part
            self.calls += part == "python"
            return None
        if not text:
            return None
        if self._boundary:
            self.parts.append({"type": self.part, "text": text})
            self._boundary = False
        else:
            self.parts[-1]["text"] += text
        return self.part, self.calls - 1, text

    def text(self):
        return reply_text(self.parts)


def parts_of(tokenizer, tokens):
    """The parts of a finished reply's tokens (e.g. an engine Completion's): the runs between marker
    tokens decoded whole, so a character split over tokens comes out whole."""
    decoder, run = ReplyParts(tokenizer), []
    for token in list(tokens) + [None]:
        if token is None or token in decoder.markers:
            if run:
                decoder.feed(run[0], tokenizer.decode(run))  # run[0] is no marker: its part is decoder.part
                run = []
            if token is not None:
                decoder.feed(token, "")
        else:
            run.append(token)
    return decoder.parts
