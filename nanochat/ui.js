// The chat page's behaviour. chat_server.build_app inlines it into nanochat/ui.html when the server starts
// (one GET serves the page, and its CSP nonce covers this script).
"use strict";
// ---------------------------------------------------------------------------------------------
// state
const $ = (id) => document.getElementById(id);
const store = {
  get(key, fallback) { try { const v = localStorage.getItem("nanochat." + key); return v === null ? fallback : JSON.parse(v); } catch { return fallback; } },
  set(key, value) { try { localStorage.setItem("nanochat." + key, JSON.stringify(value)); } catch { /* private mode */ } },
};
const DEFAULTS = { temperature: 0.8, top_k: 50, max_tokens: 512, system: "", key: "" };
const settings = Object.assign({}, DEFAULTS, store.get("settings", {}));
// messages: {role: "user", content} | {role: "assistant", parts: [{type, text, call}], finish, error, stopped, usage}
let messages = [];
let streaming = null;  // {controller, msg, started} while a reply streams
let editing = false;

const ICONS = {
  send: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"><path d="M12 19V5M5 12l7-7 7 7"/></svg>',
  stop: '<svg viewBox="0 0 24 24" fill="currentColor"><rect x="6" y="6" width="12" height="12" rx="2"/></svg>',
  copy: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round"><rect x="9" y="9" width="11" height="11" rx="2"/><path d="M5 15V5a2 2 0 0 1 2-2h8"/></svg>',
  regen: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round"><path d="M20 11a8 8 0 1 0-2.3 5.7M20 4v7h-7"/></svg>',
  edit: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round"><path d="M4 20h4L19 9l-4-4L4 16z"/></svg>',
};

// ---------------------------------------------------------------------------------------------
// rendering: everything from the model or the user goes through esc() before any tag is added

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function inline(text) {
  // text is raw; escape it, then add the few inline tags. Code spans are set aside first.
  const codes = [];
  let s = esc(text).replace(/`([^`\n]+)`/g, (_, c) => { codes.push(c); return "\uE002" + (codes.length - 1) + "\uE003"; });
  s = s.replace(/\*\*([^*\n]+?)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^*\w])\*([^*\s][^*\n]*?)\*(?![\w*])/g, "$1<em>$2</em>");
  // an href never spans a placeholder (\uE000-\uE003: a tool call or a code span, swapped for markup later)
  s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)\uE000-\uE003]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer nofollow">$1</a>');
  return s.replace(/\uE002(\d+)\uE003/g, (_, i) => "<code>" + codes[+i] + "</code>");
}

function codeBlock(lang, code) {
  return '<div class="codeblock"><div class="bar"><span>' + esc(lang || "code") + '</span><button type="button" data-copy-code>Copy</button></div>' +
         "<pre><code>" + esc(code) + "</code></pre></div>";
}

function markdown(src) {
  // a small block parser: fenced code, headings, lists, quotes, paragraphs (single newlines kept)
  const lines = src.split("\n");
  let html = "", i = 0;
  const isBlockStart = (l) => /^\s*```/.test(l) || /^#{1,6}\s/.test(l) || /^\s*([-*+]|\d+[.)])\s+/.test(l) || /^\s*>/.test(l);
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+#.-]*)\s*$/);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
      i++;  // the closing fence (a reply still streaming may not have it yet)
      html += codeBlock(fence[1], body.join("\n"));
    } else if (/^#{1,6}\s/.test(line)) {
      const level = Math.min(line.match(/^#+/)[0].length + 1, 4);  // h2..h4: a reply never outranks the page
      html += `<h${level}>` + inline(line.replace(/^#+\s*/, "")) + `</h${level}>`;
      i++;
    } else if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
      const ordered = /^\s*\d/.test(line), items = [];
      while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i]) && /^\s*\d/.test(lines[i]) === ordered) {
        items.push("<li>" + inline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, "")) + "</li>");
        i++;
      }
      html += (ordered ? "<ol>" : "<ul>") + items.join("") + (ordered ? "</ol>" : "</ul>");
    } else if (/^\s*>/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      html += "<blockquote>" + quoted.map(inline).join("<br>") + "</blockquote>";
    } else if (!line.trim()) {
      i++;
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && (para.length === 0 || !isBlockStart(lines[i]))) para.push(lines[i++]);
      html += "<p>" + para.map(inline).join("<br>") + "</p>";
    }
  }
  return html;
}

function toolChip(call) {
  let result;
  if (call.output !== null) result = '<span aria-hidden="true">→</span><span class="out">' + esc(call.output) + "</span>";
  else if (call.open) result = '<span class="none">…</span>';
  else result = '<span class="none">no result</span>';
  return '<span class="tool" title="calculator call"><span class="label">calc</span><code>' + esc(call.expr) + "</code>" + result + "</span>";
}

function renderAssistant(msg, live) {
  // text parts go through markdown; each tool call becomes a placeholder, swapped for its chip after
  const calls = [];
  let src = "";
  for (const p of msg.parts) {
    if (p.type === "text") src += p.text.replace(/[\uE000-\uE003]/g, "");
    else if (p.type === "python") { calls.push({ expr: p.text, output: null, open: true }); src += "\uE000" + (calls.length - 1) + "\uE001"; }
    else if (p.type === "python_output" && calls.length) { calls[calls.length - 1].output = (calls[calls.length - 1].output || "") + p.text; }
  }
  calls.forEach((c, k) => { c.open = live && k === calls.length - 1 && c.output === null && msg.parts[msg.parts.length - 1].type === "python"; });
  let html = markdown(src).replace(/\uE000(\d+)\uE001/g, (_, k) => toolChip(calls[+k]));
  if (live && !src && !calls.length) html = '<div class="thinking" aria-label="waiting for the reply"><span></span><span></span><span></span></div>';
  return html;
}

function plainText(msg) {
  if (msg.role === "user") return msg.content;
  return msg.parts.filter((p) => p.type !== "python").map((p) => p.text).join("");
}

function actionButton(name, label, icon) {
  return `<button type="button" data-action="${name}" title="${label}" aria-label="${label}">${ICONS[icon]}<span>${label}</span></button>`;
}

function messageHTML(msg, k) {
  const last = k === messages.length - 1;
  const live = streaming && streaming.msg === msg;
  if (msg.role === "user") {
    if (editing && k === lastUserIndex()) {
      return `<div class="msg user" data-k="${k}"><div class="edit-box"><textarea id="edit-input" aria-label="Edit message">${esc(msg.content)}</textarea>` +
             `<div><button type="button" class="secondary" data-action="edit-cancel">Cancel</button> <button type="button" class="primary" data-action="edit-save">Send</button></div></div></div>`;
    }
    const canEdit = !streaming && k === lastUserIndex();
    return `<div class="msg user" data-k="${k}"><div class="bubble">${esc(msg.content)}</div>` +
           `<div class="actions">${actionButton("copy", "Copy", "copy")}${canEdit ? actionButton("edit", "Edit", "edit") : ""}</div></div>`;
  }
  let html = `<div class="msg assistant" data-k="${k}"><div class="bubble${live ? " cursor" : ""}">${renderAssistant(msg, live)}</div>`;
  if (msg.stopped) html += '<div class="note">Stopped.</div>';
  else if (msg.finish === "length") html += '<div class="note">The reply reached the max tokens limit.</div>';
  if (msg.error) html += `<div class="error" role="alert"><span class="text">${esc(msg.error)}</span>${last ? '<button type="button" data-action="regenerate">Retry</button>' : ""}</div>`;
  if (!live) {
    html += '<div class="actions">' + (plainText(msg) ? actionButton("copy", "Copy", "copy") : "") +
            (last ? actionButton("regenerate", "Regenerate", "regen") : "");
    const tokens = msg.usage ? Number(msg.usage.completion_tokens) : NaN;  // from the server: a number, or nothing shown
    if (Number.isFinite(tokens) && msg.seconds) html += `<span class="meta">${esc(tokens)} tokens · ${esc((tokens / msg.seconds).toFixed(0))} tok/s</span>`;
    html += "</div>";
  }
  return html + "</div>";
}

function lastUserIndex() {
  for (let k = messages.length - 1; k >= 0; k--) if (messages[k].role === "user") return k;
  return -1;
}

const SUGGESTIONS = ["Why is the sky blue?", "What is 1234 * 5678?", "Write a haiku about GPUs", "Explain recursion to a child"];

function render() {
  const thread = $("thread");
  if (!messages.length) {
    thread.innerHTML = '<div class="empty"><h1>nanochat</h1><p>A small chat model, served by this machine.</p><div class="suggestions">' +
      SUGGESTIONS.map((s) => `<button type="button" data-suggest="${esc(s)}">${esc(s)}</button>`).join("") + "</div></div>";
  } else {
    thread.innerHTML = messages.map(messageHTML).join("");
  }
  const edit = $("edit-input");
  if (edit) { edit.focus(); edit.setSelectionRange(edit.value.length, edit.value.length); }
  updateComposer();
}

let frame = 0;
function renderLive() {
  // during a stream only the streaming message is redrawn, at most once per frame
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    if (!streaming) return;
    const k = messages.indexOf(streaming.msg);
    const el = document.querySelector(`.msg[data-k="${k}"] .bubble`);
    if (!el) return render();
    const stick = nearBottom();
    el.innerHTML = renderAssistant(streaming.msg, true);
    if (stick) scrollToBottom();
  });
}

function nearBottom() { const s = $("scroller"); return s.scrollHeight - s.scrollTop - s.clientHeight < 120; }
function scrollToBottom() { const s = $("scroller"); s.scrollTop = s.scrollHeight; }

function updateComposer() {
  const send = $("send");
  if (streaming) {
    send.innerHTML = ICONS.stop; send.title = "Stop"; send.setAttribute("aria-label", "Stop"); send.disabled = false;
    send.dataset.mode = "stop";
  } else {
    send.innerHTML = ICONS.send; send.title = "Send (Enter)"; send.setAttribute("aria-label", "Send");
    send.disabled = !$("input").value.trim(); send.dataset.mode = "send";
  }
}

function autosize(el) { el.style.height = "auto"; el.style.height = Math.min(el.scrollHeight, window.innerHeight * 0.4) + "px"; }

// ---------------------------------------------------------------------------------------------
// talking to the server: the same /v1/chat/completions stream any OpenAI client reads

function headers() {
  const h = { "Content-Type": "application/json" };
  if (settings.key) h["Authorization"] = "Bearer " + settings.key;
  return h;
}

function apiMessages(upto) {
  const out = [];
  if (settings.system.trim()) out.push({ role: "system", content: settings.system });
  for (const m of messages.slice(0, upto)) {
    if (m.role === "user") out.push({ role: "user", content: m.content });
    // the reply as parts, so the model sees its earlier tool calls as it made them
    else out.push({ role: "assistant", content: m.parts.length ? m.parts.map((p) => ({ type: p.type, text: p.text })) : "" });
  }
  return out;
}

async function errorText(resp) {
  let detail = "";
  try { const body = await resp.json(); detail = (body.error && body.error.message) || ""; } catch { /* not JSON */ }
  if (resp.status === 429) {
    const wait = resp.headers.get("Retry-After");
    return "The server is busy: every slot is taken" + (wait ? `; try again in ${wait} s.` : ". Try again in a moment.");
  }
  if (resp.status === 401) return "The API key is missing or wrong. Set it in Settings.";
  if (resp.status >= 400 && resp.status < 500) return "The server refused the request: " + (detail || resp.statusText);
  return `The server failed (HTTP ${resp.status})` + (detail ? ": " + detail : ".");
}

function addPiece(msg, type, text, call) {
  const last = msg.parts[msg.parts.length - 1];
  if (last && last.type === type && (type === "text" || last.call === call)) last.text += text;
  else msg.parts.push({ type, text, call });
}

async function generate() {
  // messages end on a user turn; append the assistant reply and stream it in
  const msg = { role: "assistant", parts: [], finish: null, error: null, stopped: false, usage: null };
  const history = apiMessages(messages.length);
  messages.push(msg);
  const controller = new AbortController();
  streaming = { controller, msg, started: performance.now() };
  render();
  scrollToBottom();
  const body = { model: $("model").dataset.id || "nanochat", messages: history, stream: true, stream_options: { include_usage: true },
                 temperature: settings.temperature, top_k: settings.top_k, max_tokens: settings.max_tokens };
  try {
    let resp;
    try {
      resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    } catch (e) {
      if (controller.signal.aborted) throw e;
      throw new Error(`Cannot reach the server at ${location.host}. Is it running?`);
    }
    if (!resp.ok) {
      if (resp.status === 401) askKey("The server needs an API key (the one it was started with).");
      throw new Error(await errorText(resp));
    }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "", done = false;
    while (!done) {
      let chunk;
      try { chunk = await reader.read(); } catch (e) {
        if (controller.signal.aborted) throw e;
        throw new Error("The connection to the server was lost mid-reply.");
      }
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") { done = true; break; }
          const obj = JSON.parse(data);
          if (obj.error) throw new Error("The server failed mid-reply: " + obj.error.message);
          if (obj.usage) msg.usage = obj.usage;
          for (const choice of obj.choices || []) {
            if (choice.index !== 0) continue;
            const d = choice.delta || {};
            if (d.nanochat) addPiece(msg, d.nanochat.part, d.nanochat.text, d.nanochat.call);
            else if (d.content) addPiece(msg, "text", d.content);
            if (choice.finish_reason) msg.finish = choice.finish_reason;
          }
        }
        renderLive();
      }
    }
    if (!done && !msg.finish) throw new Error("The reply ended early: the connection closed before it was complete.");
  } catch (e) {
    if (controller.signal.aborted) msg.stopped = true;
    else msg.error = e.message || String(e);
  } finally {
    msg.seconds = (performance.now() - streaming.started) / 1000;
    streaming = null;
    render();
    if (nearBottom()) scrollToBottom();
  }
}

function send(text) {
  text = text.trim();
  if (!text || streaming) return;
  messages.push({ role: "user", content: text });
  $("input").value = "";
  autosize($("input"));
  generate();
}

function stop() { if (streaming) streaming.controller.abort(); }

function regenerate() {
  if (streaming) return;
  if (messages.length && messages[messages.length - 1].role === "assistant") messages.pop();
  if (messages.length) generate();
}

function newChat() {
  stop();
  messages = []; editing = false;
  render();
  $("input").focus();
}

async function loadModel() {
  const el = $("model");
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (resp.status === 401) { el.textContent = "API key needed"; askKey("This server asks for an API key."); return; }
    if (!resp.ok) throw new Error();
    const body = await resp.json();
    const id = body.data && body.data[0] ? body.data[0].id : "nanochat";
    el.textContent = id; el.dataset.id = id; el.title = id;
  } catch { el.textContent = "offline"; el.title = "Cannot reach the server"; }
}

function askKey(reason) {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("key-reason").textContent = reason;
  $("key-input").value = settings.key;
  dialog.returnValue = "";
  dialog.showModal();
}

// ---------------------------------------------------------------------------------------------
// events

async function copyText(text, button) {
  try { await navigator.clipboard.writeText(text); } catch {
    const t = document.createElement("textarea");  // plain http on a LAN address: no Clipboard API
    t.value = text; document.body.appendChild(t); t.select(); document.execCommand("copy"); t.remove();
  }
  const label = button.querySelector("span") || button;
  const before = label.textContent;
  label.textContent = "Copied";
  setTimeout(() => { label.textContent = before; }, 1200);
}

$("thread").addEventListener("click", (e) => {
  const suggest = e.target.closest("[data-suggest]");
  if (suggest) return send(suggest.dataset.suggest);
  const codeCopy = e.target.closest("[data-copy-code]");
  if (codeCopy) return copyText(codeCopy.closest(".codeblock").querySelector("code").textContent, codeCopy);
  const button = e.target.closest("[data-action]");
  if (!button) return;
  const k = +button.closest(".msg").dataset.k;
  const action = button.dataset.action;
  if (action === "copy") copyText(plainText(messages[k]), button);
  else if (action === "regenerate") regenerate();
  else if (action === "edit") { editing = true; render(); }
  else if (action === "edit-cancel") { editing = false; render(); }
  else if (action === "edit-save") saveEdit();
});

$("thread").addEventListener("keydown", (e) => {
  if (e.target.id !== "edit-input") return;
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); saveEdit(); }
  if (e.key === "Escape") { editing = false; render(); }
});

function saveEdit() {
  const text = $("edit-input").value.trim();
  if (!text) return;
  const k = lastUserIndex();
  messages = messages.slice(0, k + 1);
  messages[k].content = text;
  editing = false;
  generate();
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  if (streaming) stop(); else send($("input").value);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!streaming) send($("input").value);
  }
});
$("input").addEventListener("input", (e) => { autosize(e.target); updateComposer(); });
$("new-chat").addEventListener("click", newChat);

const THEMES = ["auto", "light", "dark"];
function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme; else document.documentElement.dataset.theme = theme;
  $("theme").title = "Theme: " + theme;
}
$("theme").addEventListener("click", () => {
  const next = THEMES[(THEMES.indexOf(store.get("theme", "auto")) + 1) % THEMES.length];
  store.set("theme", next);
  applyTheme(next);
});

$("settings").addEventListener("click", () => {
  $("set-temperature").value = settings.temperature; $("set-top-k").value = settings.top_k;
  $("set-max-tokens").value = settings.max_tokens; $("set-system").value = settings.system; $("set-key").value = settings.key;
  $("settings-dialog").returnValue = "";  // Esc closes without a value: not a save
  $("settings-dialog").showModal();
});
$("settings-dialog").addEventListener("close", () => {
  if ($("settings-dialog").returnValue !== "save") return;
  const num = (id, lo, hi, fallback, int) => {
    let v = Number($(id).value);
    if (!Number.isFinite(v) || $(id).value === "") return fallback;
    v = Math.min(hi, Math.max(lo, v));
    return int ? Math.round(v) : v;
  };
  settings.temperature = num("set-temperature", 0, 2, DEFAULTS.temperature, false);
  settings.top_k = num("set-top-k", 0, 200, DEFAULTS.top_k, true);
  settings.max_tokens = num("set-max-tokens", 1, 4096, DEFAULTS.max_tokens, true);
  settings.system = $("set-system").value;
  const keyChanged = settings.key !== $("set-key").value;
  settings.key = $("set-key").value;
  store.set("settings", settings);
  if (keyChanged) loadModel();
});
$("key-dialog").addEventListener("close", () => {
  if ($("key-dialog").returnValue !== "save") return;
  settings.key = $("key-input").value.trim();
  store.set("settings", settings);
  loadModel();
});

for (const b of document.querySelectorAll("dialog [data-close]")) b.addEventListener("click", () => b.closest("dialog").close("cancel"));
// Enter in a field submits with the form's only submit button, "save"
for (const f of ["settings-form", "key-form"]) $(f).addEventListener("submit", (e) => { e.preventDefault(); e.target.closest("dialog").close("save"); });

applyTheme(store.get("theme", "auto"));
render();
loadModel();
