"""
The chat UI (nanochat/ui.html) in a real browser: Debian's Chromium driven by Playwright, against
real chat_web servers on the tiny checkpoints of tests/chat_fixtures.py (no mocked responses):
    scripted  every reply is the scripted one: markdown, a calculator call, and HTML that must stay
              text (<script>, <img onerror>); this server wants an API key, which the page asks for
    random    replies run until max_tokens; 2 slots and no queue, so a third row gets 429
Checks: the key prompt, a streamed reply, markdown and the tool call drawn apart, model and user
HTML rendered as text and never run, stop (and the slot freed), regenerate, edit, new chat,
Enter / Shift+Enter, and visible errors for a bad request, a busy server and a server that is gone;
markup in a reply's usage stays text, and a link around a calculator call leaves the page intact.
Screenshots go to the test's tmp dir and to /tmp/nanochat_ui.png.

    uv run pytest tests/test_chat_ui.py -q
"""

import json
import os
import re
import shutil
import time

import pytest

from tests.chat_fixtures import (RANDOM_TAG, SCRIPTED_TAG, SSE, TOOL_EXPR, TOOL_RESULT, XSS_IMG, XSS_SCRIPT,
                                 chat_servers, make_chat_base, request, stop_server)

CHROMIUM = "/usr/bin/chromium"
KEY = "ui-key"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt install chromium)")


@pytest.fixture(scope="module")
def servers(tiny_tokenizer, tmp_path_factory):
    base = make_chat_base(tmp_path_factory.mktemp("chat_ui"), tiny_tokenizer)
    with chat_servers(base, ["--model-tag", SCRIPTED_TAG, "--api-key", KEY],
                      ["--model-tag", RANDOM_TAG, "--num-slots", "2", "--max-queue", "0"]) as urls:
        yield urls


@pytest.fixture(scope="module")
def browser():
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, url, settings=None, **context_args):
    context = browser.new_context(**{"viewport": {"width": 1000, "height": 860}, **context_args})
    if settings:
        context.add_init_script(f"localStorage.setItem('nanochat.settings', {json.dumps(json.dumps(settings))})")
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    return page


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_done(page, timeout=120_000):
    page.wait_for_function("() => document.getElementById('send').dataset.mode === 'send' && "
                           "document.querySelector('.msg.assistant:last-child .actions')", timeout=timeout)


def last_reply(page):
    return page.inner_text(".msg.assistant:last-child .bubble")


def test_scripted_reply_renders_markdown_and_tool_calls_as_safe_text(browser, servers, tmp_path):
    url = servers[0]
    page = open_page(browser, url)
    # the server wants a key: the page asks for it, then lists the model
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    page.wait_for_function("() => document.getElementById('model').textContent.startsWith('nanochat-sft-')")

    send(page, f"Please echo {XSS_IMG} and <b>this</b>")
    wait_done(page)
    user_bubble = page.locator(".msg.user .bubble")
    assert user_bubble.inner_text() == f"Please echo {XSS_IMG} and <b>this</b>"  # the user's HTML is text too
    bubble = page.locator(".msg.assistant .bubble")
    text = bubble.inner_text()
    assert XSS_SCRIPT in text and XSS_IMG in text  # shown literally ...
    assert page.evaluate("document.querySelectorAll('.msg img, .msg script, .msg b').length") == 0  # ... never as elements
    assert page.evaluate("window.__xss") is None and not page.errors
    # markdown: bold, inline code, a fenced code block (its HTML kept as text), a list
    assert bubble.locator("strong").first.inner_text() == "bold"
    assert bubble.locator(":not(pre) > code").first.inner_text() == "inline code"
    assert bubble.locator(".codeblock pre code").inner_text() == 'print("<b>not bold</b>")'
    assert bubble.locator("li").all_inner_texts() == ["one", "two"]
    # the calculator call is drawn apart from the text, with its forced result
    chip = bubble.locator(".tool")
    assert chip.count() == 1
    assert chip.locator("code").inner_text() == TOOL_EXPR and chip.locator(".out").inner_text() == TOOL_RESULT
    assert "six times seven is" in text and text.rstrip().endswith("Done.")
    page.screenshot(path=str(tmp_path / "nanochat_ui.png"))
    shutil.copy(tmp_path / "nanochat_ui.png", "/tmp/nanochat_ui.png")
    # the same conversation on a phone, in the dark
    phone = open_page(browser, url, {"key": KEY}, viewport={"width": 390, "height": 760}, color_scheme="dark",
                      is_mobile=True, has_touch=True)
    send(phone, "What is six times seven?")
    wait_done(phone)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    phone.screenshot(path=str(tmp_path / "nanochat_ui_phone.png"))
    shutil.copy(tmp_path / "nanochat_ui_phone.png", "/tmp/nanochat_ui_phone.png")
    page.context.close()
    phone.context.close()


def test_stream_stop_regenerate_edit_and_new_chat(browser, servers):
    url = servers[1]
    page = open_page(browser, url, {"temperature": 0, "top_k": 0, "max_tokens": 300, "system": "", "key": ""})
    page.wait_for_function("() => document.getElementById('model').textContent.startsWith('nanochat-sft-')")
    # Shift+Enter is a new line, not a send
    page.fill("#input", "line one")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two" and page.locator(".msg").count() == 0
    page.fill("#input", "")

    send(page, "Hello there")
    # the reply streams: text shows while the send button is the stop button
    # polled every 10 ms rather than per animation frame: a 300-token reply of the tiny model streams
    # in a fraction of a second, and a wait that misses the streaming state times out after 30 s
    page.wait_for_function("() => document.getElementById('send').dataset.mode === 'stop' && "
                           "(document.querySelector('.msg.assistant .bubble') || {}).textContent?.length > 5",
                           polling=10)
    # stop: a real click at the button, without Playwright's wait for a still layout (a reply streaming
    # into the page kept it "attempting click action" for 30 s once, with the button shown as Stop)
    page.click("#send", force=True)
    page.wait_for_function("() => document.getElementById('send').dataset.mode === 'send'")
    assert page.locator(".msg.assistant .note").inner_text() == "Stopped."
    stopped = last_reply(page)
    time.sleep(0.3)
    assert last_reply(page) == stopped
    deadline = time.time() + 10
    while request(url, "GET", "/stats")[2]["active"] != 0:  # the server cancelled it and freed the slot
        assert time.time() < deadline, "the stopped reply kept its slot"
        time.sleep(0.05)

    # regenerate (greedy): the same reply again, this time to the end
    page.click(".msg.assistant:last-child [data-action=regenerate]")
    wait_done(page)
    full = last_reply(page)
    assert page.locator(".msg").count() == 2 and len(full) > len(stopped)
    assert full.startswith(stopped.rstrip()[:20])
    assert "max tokens" in page.locator(".msg.assistant .note").inner_text()

    # edit the last user message: the reply is replaced by one to the new text
    page.click(".msg.user [data-action=edit]")
    page.fill("#edit-input", "Hello again")
    page.press("#edit-input", "Enter")
    page.wait_for_function("() => document.getElementById('send').dataset.mode === 'stop'", polling=10)
    page.click("#send", force=True)  # stop, as above
    page.wait_for_function("() => document.getElementById('send').dataset.mode === 'send'")
    assert page.locator(".msg").count() == 2 and page.inner_text(".msg.user .bubble") == "Hello again"
    assert not last_reply(page).startswith(full[:20])

    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.locator(".empty").count() == 1
    assert not page.errors
    page.context.close()


def test_usage_from_the_server_is_text_not_html(browser, servers):
    # issue 18 item 14: usage.completion_tokens went into innerHTML unescaped. A server (or anything on
    # the path) that sends markup there: the real reply, its usage rewritten on the way to the page
    url = servers[1]
    payload = '<img id="pwn" src="x">'

    def tamper(route):
        response = route.fetch()
        body = re.sub(r'"completion_tokens":\d+', '"completion_tokens":' + json.dumps(payload), response.text())
        route.fulfill(response=response, body=body)

    page = open_page(browser, url, {"temperature": 0, "top_k": 0, "max_tokens": 8, "system": "", "key": ""})
    page.route("**/v1/chat/completions", tamper)
    page.wait_for_function("() => document.getElementById('model').textContent.startsWith('nanochat-sft-')")
    send(page, "hi")
    wait_done(page)
    assert last_reply(page)  # the reply itself came through
    assert page.evaluate("document.querySelectorAll('#pwn, .msg img').length") == 0
    assert payload not in page.content() or "&lt;img" in page.content()
    assert not page.errors
    page.context.close()


def test_markdown_link_around_a_calculator_call_keeps_the_page_intact(browser, servers):
    # issue 18 item 14: the link pattern took the placeholder of a tool call (or a code span) into its
    # href; swapping the chip in then cut the href and put attribute text on the page
    page = open_page(browser, servers[1], {"key": ""})
    cases = {
        "call": [{"type": "text", "text": "see [the docs](https://example.com/a"}, {"type": "python", "text": "6*7"},
                 {"type": "python_output", "text": "42"}, {"type": "text", "text": "/b) now"}],
        "code": [{"type": "text", "text": "see [x](https://example.com/`b`) and [ok](https://example.com/c)"}],
    }
    for name, parts in cases.items():
        got = page.evaluate("""(parts) => {
            const div = document.createElement("div");
            div.innerHTML = renderAssistant({ role: "assistant", parts }, false);
            return { hrefs: [...div.querySelectorAll("a")].map((a) => a.getAttribute("href")), text: div.textContent,
                     chips: div.querySelectorAll(".tool").length, codes: div.querySelectorAll("code").length };
        }""", parts)
        assert all(re.fullmatch(r"https://example\.com/[\w/]*", h) for h in got["hrefs"]), (name, got)
        assert "class=" not in got["text"] and "title=" not in got["text"] and "<" not in got["text"], (name, got)
        if name == "call":
            assert got["chips"] == 1 and "6*7" in got["text"] and "42" in got["text"], got
        else:
            assert got["hrefs"] == ["https://example.com/c"] and got["codes"] == 1, got
    assert not page.errors
    page.context.close()


def test_errors_are_visible(browser, servers):
    url = servers[1]
    # a bad request (a setting the server refuses)
    page = open_page(browser, url, {"temperature": 0, "top_k": 0, "max_tokens": 5000, "system": "", "key": ""})
    send(page, "hi")
    page.wait_for_selector(".msg.assistant .error")
    assert "refused the request" in page.inner_text(".error") and "max_tokens" in page.inner_text(".error")
    page.context.close()

    # more samples than the server has slots is a bad request, not a busy server
    status, _, err = request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 4})
    assert status == 400 and err["error"]["param"] == "n", err

    # a busy server: another client holds both slots and there is no queue
    page = open_page(browser, url, {"temperature": 0, "top_k": 0, "max_tokens": 8, "system": "", "key": ""})
    page.wait_for_function("() => document.getElementById('model').textContent.startsWith('nanochat-sft-')")
    hog = SSE(url, {"messages": [{"role": "user", "content": "hog"}], "max_tokens": 480, "n": 2})
    try:
        assert hog.status == 200
        send(page, "hi")
        page.wait_for_selector(".msg.assistant .error")
        assert "busy" in page.inner_text(".error")
    finally:
        hog.close()
    deadline = time.time() + 10
    while request(url, "GET", "/stats")[2]["active"] != 0:
        assert time.time() < deadline
        time.sleep(0.05)
    page.click(".error [data-action=regenerate]")  # Retry
    wait_done(page)
    assert page.locator(".error").count() == 0 and last_reply(page)

    # the server is gone
    stop_server(url)
    send(page, "are you there?")
    page.wait_for_selector(".msg.assistant:last-child .error")
    assert "Cannot reach the server" in page.inner_text(".msg.assistant:last-child .error")
    assert not page.errors
    page.context.close()
