// dinet's page: chat through the gateway's own OpenAI API, and a live view of the network:
// drawn from a summary whose size grows with groups, not peers; one group's peers listed
// on demand; the last hour charted. Plain ES modules, no build step, nothing loaded from
// outside this gateway.
import { drawCharts } from "./charts.js";
import { drawMap, groupLabel } from "./map.js";

const LIST_ALL_UP_TO = 40; // a network this small is listed whole, as well as drawn
const LIST_LIMIT = 200; // rows of one group fetched at once

const $ = (id) => document.getElementById(id);
const history = [];
let apiKey = localStorage.getItem("dinet-api-key") || "";
let lastServedBy = null;
let busy = false;
let selected = null; // the group listed: {region, model}, chosen by a click on the map
let drawn = ""; // what the map shows now, to redraw only when it changes

function headers(extra = {}) {
  return apiKey ? { ...extra, authorization: `Bearer ${apiKey}` } : extra;
}

function shortId(id) {
  return id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function needKey() {
  $("key-form").hidden = false;
  $("status").textContent = "this gateway needs an API key";
  $("live-dot").className = "dot down";
}

// ---- network view ----------------------------------------------------------------------

async function getJson(path) {
  const reply = await fetch(path, { headers: headers() });
  if (reply.status === 401) {
    needKey();
    return null;
  }
  if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
  return reply.json();
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

async function refreshNetwork() {
  let summary;
  try {
    summary = await getJson("/api/network/summary");
  } catch (err) {
    $("live-dot").className = "dot down";
    $("status").textContent = `gateway unreachable (${err.message})`;
    return;
  }
  if (!summary) return;
  $("key-form").hidden = true;
  renderModels(summary.models);
  renderMap(summary);
  const peers = summary.peers;
  $("live-dot").className = peers ? "dot live" : "dot down";
  const node = summary.gateway.node_reachability;  // set when this gateway runs beside a node
  $("status").textContent = `${plural(peers, "peer")} · ${plural(summary.models.length, "model")} · gateway ${shortId(summary.gateway.peer_id)}`
    + (node ? ` · node reachability ${node.state}` : "");
  $("status").title = node ? node.reason : "";
  $("peer-count").textContent = `${plural(peers, "peer")} · ${plural(summary.groups.length, "group")}`
    + ` · ${summary.links.direct} direct · ${summary.links.relayed} relayed`;
  await refreshList(peers);
  await refreshPayments();
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// The gateway's payment channels (hidden when it pays and is paid by none): amounts in the
// channel's token's smallest unit, wei for ETH.
async function refreshPayments() {
  const reply = await getJson("/api/payments").catch(() => null);
  const channels = reply ? reply.channels : [];
  $("payments").hidden = channels.length === 0;
  $("payments").querySelector("tbody").replaceChildren(...channels.map((c) => {
    const row = el("tr");
    const cells = [
      shortId(c.channel), c.role, shortId(c.peer), c.deposit, c.owed, c.paid, c.pending, c.closed ? "closed" : "open",
    ];
    cells.forEach((value, i) => {
      const cell = el("td", i >= 3 && i <= 6 ? "num" : "");
      cell.textContent = String(value);
      row.append(cell);
    });
    return row;
  }));
}

function renderMap(summary) {
  const key = selected ? `${selected.region}\u0000${selected.model}` : null;
  const shape = JSON.stringify([key, summary.groups, summary.chains.map((c) => [c.model, c.stages, c.uses])]);
  if (shape === drawn) return;
  drawn = shape;
  const colors = drawMap($("map"), summary, {
    selected: key,
    onSelect: (group) => {  // a second click on the group listed lets it go
      const same = selected && selected.region === group.region && selected.model === group.model;
      selected = same ? null : { region: group.region, model: group.model };
      refreshNetwork();
    },
  });
  const peersByModel = new Map();
  for (const g of summary.groups) peersByModel.set(g.model, (peersByModel.get(g.model) ?? 0) + g.peers);
  $("model-keys").replaceChildren(...[...peersByModel.entries()].sort().map(([model, count]) => {
    const item = el("span", "key");
    const swatch = el("span", "swatch");
    swatch.style.background = colors.get(model);
    item.append(swatch, `${model || "no model"} (${count})`);
    return item;
  }));
}

// The table: the whole network while it is small, else the group chosen on the map.
async function refreshList(peers) {
  let path = null;
  if (selected) {
    const query = new URLSearchParams({ region: selected.region, model: selected.model, limit: LIST_LIMIT });
    path = `/api/network?${query}`;
  } else if (peers <= LIST_ALL_UP_TO) {
    path = "/api/network";
  }
  if (path === null) {
    $("list-title").textContent = "Peers";
    renderPeers([], "Click a group on the map to list its peers.");
    return;
  }
  let snapshot;
  try {
    snapshot = await getJson(path);
  } catch (err) {
    return; // the status line already says when the gateway is unreachable
  }
  if (!snapshot) return;
  $("list-title").textContent = selected
    ? `Peers of ${groupLabel(selected)}: ${snapshot.total}${snapshot.total > snapshot.peers.length ? ` (first ${snapshot.peers.length} listed)` : ""}`
    : "Peers";
  renderPeers(snapshot.peers);
}

function renderPeers(peers, empty = "No peers found yet: looking…") {
  const body = $("peers").tBodies[0];
  body.replaceChildren();
  if (!peers.length) {
    const row = el("tr", "empty");
    const cell = el("td", "", empty);
    cell.colSpan = 10;
    row.append(cell);
    body.append(row);
    return;
  }
  for (const p of peers) {
    const row = el("tr", p.peer_id === lastServedBy ? "served" : "");
    row.dataset.peer = p.peer_id;
    row.dataset.link = p.link ?? "none";
    const id = el("td", "peer-id", shortId(p.peer_id));
    id.title = p.peer_id;
    const models = el("td");
    for (const m of p.models) {
      const tag = el("span", "tag", m.model_id);
      tag.title = `${m.quantization} · ${m.model_hash}`;
      models.append(tag);
    }
    if (!p.models.length) models.append(el("span", "muted", "no model"));
    // How this gateway reaches the peer, and what the peer found out about itself.
    const link = el("td", `link ${p.link ?? "none"}`, p.link ?? "–");
    link.title = `${p.link ? `reached ${p.link === "relayed" ? "through a relay" : "directly"}` : "not connected"}`
      + ` · the peer says it is ${p.reach === "unknown" ? "of unknown reachability" : p.reach}`;
    const load = el("td");
    const used = p.load.active + p.load.queued;
    const wrap = el("div", "load");
    const track = el("div", "bar-track");
    const fill = el("div", used >= p.max_concurrent ? "bar-fill busy" : "bar-fill");
    fill.style.width = `${Math.min(100, (100 * used) / Math.max(1, p.max_concurrent))}%`;
    track.append(fill);
    wrap.append(track, el("span", "", `${p.load.active}+${p.load.queued}/${p.max_concurrent}`));
    load.append(wrap);
    row.append(
      id,
      el("td", "", p.region),
      models,
      load,
      el("td", "num", p.tokens_per_s ? p.tokens_per_s.toFixed(1) : "–"),
      el("td", "num", p.rtt_ms == null ? "–" : `${p.rtt_ms.toFixed(1)} ms`),
      link,
      el("td", "num", p.ttft_ms ? `${Math.round(p.ttft_ms)} ms` : "–"),
      el("td", "num", p.price_per_token ? p.price_per_token.toPrecision(2) : "free"),
      el("td", "num", p.reputation == null ? "–"
        : p.reputation.toFixed(2) + (p.excluded ? " excluded" : "")),
    );
    body.append(row);
  }
}

function renderModels(models) {
  const select = $("model");
  const chosen = select.value;
  const ids = models.map((m) => m.id);
  if (ids.join() === [...select.options].map((o) => o.value).join()) return;
  select.replaceChildren(...models.map((m) => {
    const option = el("option", "", `${m.id} (${m.peers} peer${m.peers === 1 ? "" : "s"})`);
    option.value = m.id;
    return option;
  }));
  if (ids.includes(chosen)) {
    select.value = chosen;
  } else if (models.length) {  // nothing chosen yet: the model most peers serve
    select.value = models.reduce((best, m) => (m.peers > best.peers ? m : best)).id;
  }
}

// ---- chat ------------------------------------------------------------------------------

function addMessage(role, text) {
  $("hint")?.remove();
  const box = el("div", `msg ${role}`);
  const body = el("span", "text", text);
  box.append(body);
  $("messages").append(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

function chatRequest(model) {
  const request = {
    model, messages: history, stream: true, max_tokens: 256, temperature: 0, logprobs: true, top_logprobs: 3,
  };
  if ($("json-mode").checked) request.response_format = { type: "json_object" };
  return request;
}

// A chunk's text, titled with how likely the serving peer's model found its token(s)
// and the likeliest alternatives: shown on hover.
function tokenSpan(content, logprobs) {
  const span = el("span", "tok", content);
  const percent = (logprob) => `${(100 * Math.exp(logprob)).toFixed(1)}%`;
  span.title = logprobs
    .map((t) => `${JSON.stringify(t.token)} ${percent(t.logprob)}` +
      (t.top_logprobs.length ? ` · also ${t.top_logprobs.map((c) => `${JSON.stringify(c.token)} ${percent(c.logprob)}`).join(", ")}` : ""))
    .join("\n");
  if (logprobs.length) span.dataset.logprob = String(logprobs[0].logprob);
  return span;
}

async function send(prompt) {
  const model = $("model").value;
  if (!model) {
    addMessage("error", "No model is offered by the network yet: wait for a peer to appear.");
    return;
  }
  history.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const box = addMessage("assistant streaming", "");
  const text = box.querySelector(".text");
  const started = performance.now();
  let firstAt = null;
  let final = null;
  let usage = null;
  try {
    const reply = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "content-type": "application/json" }),
      body: JSON.stringify(chatRequest(model)),
    });
    if (reply.status === 401) needKey();
    if (!reply.ok) {
      const problem = await reply.json().catch(() => ({}));
      throw new Error(problem.error?.message || `HTTP ${reply.status}`);
    }
    const peer = reply.headers.get("x-dinet-peer");
    if (peer) box.dataset.peer = peer;
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
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
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        if (event.usage) usage = event.usage;
        const choice = event.choices?.[0];
        if (choice?.delta?.content) {
          firstAt ??= performance.now();
          text.append(tokenSpan(choice.delta.content, choice.logprobs?.content ?? []));
          box.dataset.chunks = String(Number(box.dataset.chunks || 0) + 1);
          box.scrollIntoView({ block: "end" });
        }
        if (choice?.finish_reason) final = event;
      }
    }
    box.classList.remove("streaming");
    history.push({ role: "assistant", content: text.textContent });
    if (final?.dinet) {
      const info = final.dinet;
      lastServedBy = info.peer_id;
      box.dataset.peer = info.peer_id;
      const meta = el("div", "meta");
      meta.dataset.testid = "answer-meta";
      meta.append("served by ", el("code", "", shortId(info.peer_id)));
      meta.lastChild.title = info.peer_id;
      const tokens = usage ? `${usage.completion_tokens} tokens · ` : "";
      meta.append(` · ${tokens}${info.tokens_per_s.toFixed(1)} tok/s · first token after ${Math.round((firstAt ?? performance.now()) - started)} ms`);
      box.append(meta);
      box.scrollIntoView({ block: "end" });
    }
  } catch (err) {
    box.remove();
    history.pop();
    addMessage("error", `Could not answer: ${err.message}`);
  }
  refreshNetwork();
  refreshSeries();
}

async function refreshSeries() {
  try {
    const series = await getJson("/api/network/series");
    if (series) drawCharts(series);
  } catch (err) {
    // the status line already says when the gateway is unreachable
  }
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || busy) return;
  busy = true;
  $("send").disabled = true;
  $("prompt").value = "";
  try {
    await send(prompt);
  } finally {
    busy = false;
    $("send").disabled = false;
    $("prompt").focus();
  }
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("key-input").value.trim();
  localStorage.setItem("dinet-api-key", apiKey);
  refreshNetwork();
  refreshSeries();
});

refreshNetwork();
refreshSeries();
setInterval(refreshNetwork, 2000);
setInterval(refreshSeries, 5000);
