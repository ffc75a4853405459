// tokenwise playground: chat through the server's own OpenAI-compatible API, each token
// coloured by the entropy of the model's distribution when it was chosen.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // [{role, content}] of the conversation so far
const ENTROPY_TOP = 3.0;     // nats at which the colour scale saturates
const BUILTIN = /^tw-/;      // the built-in (testbed) models' names
let servedModels = [];       // the server's model ids, from /tokenwise/options
// Each sampler's parameter input: its default (the library's own) and its allowed range.
// Kept as JSON: tests/serving/test_playground.py sends every default to the server.
const SAMPLER_PARAMS = {
  "top_p": {"value": 0.9, "step": 0.05, "min": 0.05, "max": 1},
  "top_k": {"value": 40, "step": 1, "min": 1},
  "min_p": {"value": 0.05, "step": 0.01, "min": 0, "max": 1},
  "typical_p": {"value": 0.95, "step": 0.05, "min": 0.05, "max": 1},
  "top_h": {"value": 0.4, "step": 0.05, "min": 0.05, "max": 1}
};

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function fillSelect(select, values, keepFirst) {
  const first = keepFirst ? select.options[0] : null;
  select.innerHTML = "";
  if (first) select.appendChild(first);
  for (const v of values) {
    const o = document.createElement("option");
    o.value = o.textContent = v;
    select.appendChild(o);
  }
}

async function loadOptions() {
  const r = await fetch("/tokenwise/options", { headers: headers() });
  if (r.status === 401) { setStatus("This server needs an API key: type it above."); return; }
  if (!r.ok) { setStatus("Could not read the server's options (" + r.status + ")."); return; }
  const opts = await r.json();
  servedModels = opts.models;
  fillSelect($("model"), opts.models, false);
  fillSelect($("compress-method"), opts.compression, true);
  fillSelect($("unc-method"), opts.uncertainty, true);
  modelChanged();
  setStatus("Ready: " + opts.models.length + " model(s).");
}

// EAD switches to another (larger) model that shares the chat model's tokenizer: the model
// itself is never offered (the server refuses it), and with one model served there is none.
function modelChanged() {
  const model = $("model").value;
  const ead = $("ead-large");
  const before = ead.value;
  const others = servedModels.filter((m) => m !== model);
  fillSelect(ead, others, true);
  ead.value = others.includes(before) ? before : "";
  ead.disabled = others.length === 0;
  ead.title = others.length ? "" : "EAD needs a second model that shares this one's tokenizer";
  // The built-in models learned the testbed's facts; real models know the real world.
  $("prompt").placeholder = "Ask something, e.g. " +
    (BUILTIN.test(model) ? "Where was Tavoun born?" : "What is the capital of France?");
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function buildRequest() {
  const body = {
    model: $("model").value,
    messages: history.map((m) => ({ role: m.role, content: m.content })),
    max_tokens: numberOrNull("max-tokens") || 64,
    stream: true,
    stream_options: { include_usage: true },
    logprobs: true,
  };
  const seed = numberOrNull("seed");
  if (seed !== null) body.seed = seed;
  const sampler = $("sampler").value;
  const param = numberOrNull("sampler-param");
  if (sampler === "greedy") {
    body.temperature = 0;
  } else {
    body.temperature = numberOrNull("temperature") ?? 1;
    if (SAMPLER_PARAMS[sampler] && param !== null) body[sampler] = param;
  }
  const tw = {};
  if ($("compress-method").value) {
    tw.compress = { method: $("compress-method").value, rate: numberOrNull("compress-rate") || 0.5 };
  }
  if ($("unc-method").value) {
    tw.uncertainty = { method: $("unc-method").value, n: numberOrNull("unc-n") || 5 };
  }
  if ($("ead-large").value) {
    tw.ead = { large: $("ead-large").value, up: numberOrNull("ead-up") || 1.0 };
  } else {
    body.top_logprobs = 5;  // EAD reports no alternatives
  }
  if (Object.keys(tw).length) body.tokenwise = tw;
  return body;
}

function entropyColour(h) {
  const x = Math.max(0, Math.min(1, h / ENTROPY_TOP));
  return "hsl(" + Math.round(120 * (1 - x)) + " 70% 80%)";
}

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "you" : $("model").value;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text || "";
  const meta = document.createElement("div");
  meta.className = "meta";
  box.append(who, body, meta);
  $("messages").appendChild(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

// A token's text as it adds to the reply. Byte-level tokenizers (GPT-2, Llama 3, SmolLM2)
// split a character such as an emoji over several tokens, none of which is UTF-8 alone (the
// API's "token" is then U+FFFD); decoding the tokens' bytes as one stream puts the character
// on the token that completes it, and the spans' text adds up to the reply's.
function tokenText(tok, decoder) {
  if (Array.isArray(tok.bytes)) return decoder.decode(new Uint8Array(tok.bytes), { stream: true });
  return tok.token;
}

// How a token or an alternative is shown in the tooltip: its text, or its bytes in hex when
// they are part of a character.
function tokenLabel(tok) {
  if (Array.isArray(tok.bytes) && tok.token.includes("\ufffd")) {
    return "bytes " + tok.bytes.map((b) => b.toString(16).padStart(2, "0")).join(" ") +
      " (part of a character)";
  }
  return JSON.stringify(tok.token);
}

function addToken(box, tok, decoder) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = tokenText(tok, decoder);
  if (span.textContent === "") span.classList.add("partial");
  span.style.background = entropyColour(tok.entropy);
  span.dataset.entropy = tok.entropy.toFixed(4);
  span._tok = tok;
  box.querySelector(".text").appendChild(span);
}

// Tokens after a stop string are generated but not part of the answer: trim them away.
function trimTo(box, content) {
  let used = 0;
  for (const span of Array.from(box.querySelectorAll(".tok"))) {
    const t = span.textContent;
    if (used >= content.length) { span.remove(); continue; }
    if (used + t.length > content.length) span.textContent = t.slice(0, content.length - used);
    used += t.length;
  }
}

function showMeta(box, tw, usage, finish) {
  const parts = [];
  const add = (label, value) => parts.push("<span>" + label + " <b>" + value + "</b></span>");
  if (tw && tw.mean_entropy) add("mean entropy", tw.mean_entropy[0].toFixed(3) + " nats");
  if (tw && tw.uncertainty) add("uncertainty (" + tw.uncertainty.method + ", n=" + tw.uncertainty.n + ")",
    tw.uncertainty.score.toFixed(3));
  if (tw && tw.large_share !== null && tw.large_share !== undefined)
    add("large-model share", (100 * tw.large_share).toFixed(0) + "%");
  if (tw && tw.compression) add("prompt tokens", tw.compression.tokens_before + " → " + tw.compression.tokens_after);
  if (usage) add("tokens", usage.prompt_tokens + " in / " + usage.completion_tokens + " out");
  if (tw && tw.seeds && tw.seeds[0] !== null) add("seed", String(tw.seeds[0]));
  if (finish === "length") add("cut at", "max tokens");
  box.querySelector(".meta").innerHTML = parts.join("");
  if (tw && tw.large_share !== null && tw.large_share !== undefined) {
    for (const span of box.querySelectorAll(".tok")) {
      if (span._tok.model && span._tok.model === tw.ead.large) span.classList.add("large");
    }
  }
}

function showPrompt(tw) {
  const panel = $("compressed");
  panel.innerHTML = "";
  $("final-prompt").textContent = tw && typeof tw.prompt === "string" ? tw.prompt : "";
  if (!tw || !tw.compression) return;
  const c = tw.compression;
  const stats = document.createElement("span");
  stats.className = "stats";
  stats.textContent = "compressed by " + c.method + ": " + c.tokens_before + " → " + c.tokens_after +
    " tokens (rate " + c.rate.toFixed(2) + ")";
  panel.appendChild(stats);
  let segment = null;
  for (const [seg, text, kept] of c.pieces) {
    if (segment !== null && seg !== segment) panel.appendChild(document.createTextNode("\n"));
    segment = seg;
    const s = document.createElement("span");
    s.textContent = text;
    if (kept === true) s.className = "kept";
    if (kept === false) s.className = "dropped";
    panel.appendChild(s);
  }
  $("prompt-panel").open = true;
}

function showError(message) {
  const box = addMessage("assistant", message);
  box.classList.add("error");
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  history.push({ role: "user", content: text });
  addMessage("user", text);
  $("prompt").value = "";
  $("send").disabled = true;
  setStatus("Generating…");
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(buildRequest()),
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({ error: { message: r.statusText } }));
      history.pop();
      showError(r.status + ": " + err.error.message);
      setStatus("");
      return;
    }
    const box = addMessage("assistant", "");
    const bytes = new TextDecoder();  // the tokens' bytes, as one UTF-8 stream
    let content = "", tw = null, usage = null, buffer = "", finish = null;
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        if (chunk.tokenwise) tw = chunk.tokenwise;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) content += choice.delta.content;
          if (choice.finish_reason) finish = choice.finish_reason;
          const lp = choice.logprobs && choice.logprobs.content;
          if (lp) for (const tok of lp) addToken(box, tok, bytes);
        }
      }
    }
    trimTo(box, content);
    history.push({ role: "assistant", content: content });
    showMeta(box, tw, usage, finish);
    showPrompt(tw);
    setStatus("Done. Hover a token for its details.");
  } catch (err) {
    showError(String(err.message || err));
    setStatus("");
  } finally {
    $("send").disabled = false;
  }
}

function fmt(x) { return Number(x).toFixed(3); }

function showTooltip(event) {
  const span = event.target.closest(".tok");
  const tip = $("tooltip");
  if (!span) { tip.hidden = true; return; }
  const t = span._tok;
  let html = "<div class='head'>" + escapeHtml(tokenLabel(t)) + "</div>" +
    "<div>p " + fmt(Math.exp(t.logprob)) + " · logprob " + fmt(t.logprob) +
    " · entropy " + fmt(t.entropy) + " nats</div>";
  if (t.top_logprobs && t.top_logprobs.length) {
    html += "<table>" + t.top_logprobs.map((a) =>
      "<tr><td>" + escapeHtml(tokenLabel(a)) + "</td><td>" + fmt(Math.exp(a.logprob)) +
      "</td></tr>").join("") + "</table>";
  }
  tip.innerHTML = html;
  tip.hidden = false;
  tip.style.left = Math.min(event.clientX + 12, window.innerWidth - 300) + "px";
  tip.style.top = (event.clientY + 16) + "px";
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("clear").addEventListener("click", () => {
  history.length = 0;
  $("messages").innerHTML = "";
  $("compressed").innerHTML = "";
  $("final-prompt").textContent = "";
});
// A new sampler gets its own default parameter: one sampler's value (top-p's 0.9) is
// often not allowed for another (top-k takes a whole number).
function samplerChanged() {
  const input = $("sampler-param");
  const spec = SAMPLER_PARAMS[$("sampler").value];
  input.disabled = !spec;
  for (const attr of ["step", "min", "max"]) {
    if (spec && spec[attr] !== undefined) input.setAttribute(attr, spec[attr]);
    else input.removeAttribute(attr);
  }
  input.value = spec ? spec.value : "";
}

$("api-key").addEventListener("change", loadOptions);
$("sampler").addEventListener("change", samplerChanged);
$("model").addEventListener("change", modelChanged);
samplerChanged();
$("messages").addEventListener("mousemove", showTooltip);
$("messages").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
loadOptions();
