// The last hour as this gateway saw it (/api/network/series): tokens per second, requests
// (errors in red) and time to first token (p50 line, p95 dashed), one point per bucket.
"use strict";

import { svg } from "./map.js";

const W = 240;
const H = 110;
const PAD = { left: 34, right: 6, top: 8, bottom: 18 };

function scaleY(max) {
  return (v) => PAD.top + (H - PAD.top - PAD.bottom) * (1 - v / max);
}

function niceMax(values) {
  const top = Math.max(0, ...values.filter((v) => v != null));
  if (top <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(top));
  return [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((m) => m >= top);
}

function short(v) {
  return v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k` : String(+v.toFixed(1));
}

function frame(root, max, unit, series) {
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.replaceChildren();
  const y = scaleY(max);
  const axes = svg("g", { class: "axes" });
  for (const v of [0, max / 2, max]) {
    axes.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: v ? "grid" : "base" }));
    axes.append(svg("text", { x: PAD.left - 4, y: y(v) + 3, "text-anchor": "end" }, short(v)));
  }
  axes.append(svg("text", { x: PAD.left, y: H - 4 }, "−60 min"));
  axes.append(svg("text", { x: W - PAD.right, y: H - 4, "text-anchor": "end" }, "now"));
  axes.append(svg("text", { x: PAD.left + 4, y: PAD.top + 8, class: "unit" }, unit));
  root.append(axes);
  const n = series.requests.length;
  const x = (i) => PAD.left + ((W - PAD.left - PAD.right) * (i + 0.5)) / n;
  return { x, y, n };
}

// A polyline over the buckets that have a value; a null (no answer then) breaks the line.
function line(values, x, y) {
  let d = "";
  let pen = false;
  values.forEach((v, i) => {
    if (v == null) { pen = false; return; }
    d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  });
  return d;
}

function drawTokens(root, s) {
  const values = s.tokens_per_s;
  const { x, y, n } = frame(root, niceMax(values), "tok/s", s);
  const d = line(values, x, y);
  root.append(svg("path", { class: "area", d: `${d}L${x(n - 1).toFixed(1)},${y(0)}L${x(0).toFixed(1)},${y(0)}Z` }));
  root.append(svg("path", { class: "series tokens", d }));
  return values.filter((v) => v > 0).length;
}

function drawRequests(root, s) {
  const { x, y, n } = frame(root, niceMax(s.requests), `requests / ${s.bucket_s} s`, s);
  const width = Math.max(0.6, (W - PAD.left - PAD.right) / n - 0.2);
  const bars = svg("g", { class: "bars" });
  s.requests.forEach((count, i) => {
    if (!count) return;
    const ok = count - Math.min(count, s.errors[i]);
    bars.append(svg("rect", { class: "ok", x: (x(i) - width / 2).toFixed(2), width: width.toFixed(2),
      y: y(count).toFixed(1), height: (y(0) - y(count)).toFixed(1) }));
    if (count > ok) {
      bars.append(svg("rect", { class: "failed", x: (x(i) - width / 2).toFixed(2), width: width.toFixed(2),
        y: y(count).toFixed(1), height: (y(ok) - y(count)).toFixed(1) }));
    }
  });
  root.append(bars);
  return s.requests.filter((v) => v > 0).length;
}

function drawTtft(root, s) {
  const { x, y } = frame(root, niceMax(s.ttft_p95_ms), "ms to first token", s);
  root.append(svg("path", { class: "series p95", d: line(s.ttft_p95_ms, x, y) }));
  root.append(svg("path", { class: "series p50", d: line(s.ttft_p50_ms, x, y) }));
  // A lone bucket draws no line: mark every point too.
  s.ttft_p50_ms.forEach((v, i) => {
    if (v != null) root.append(svg("circle", { class: "point p50", cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 1.6 }));
  });
  return s.ttft_p50_ms.filter((v) => v != null).length;
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] != null) return values[i];
  return null;
}

export function drawCharts(series) {
  const t = series.totals;
  const charts = [
    ["chart-tokens", drawTokens, `${short(lastValue(series.tokens_per_s) ?? 0)} tok/s now · ${short(t.tokens)} tokens`],
    ["chart-requests", drawRequests, `${t.requests} request${t.requests === 1 ? "" : "s"} · ${t.errors} failed`],
    ["chart-ttft", drawTtft, t.ttft_p50_ms == null ? "no answer yet"
      : `p50 ${Math.round(t.ttft_p50_ms)} ms · p95 ${Math.round(t.ttft_p95_ms)} ms`],
  ];
  for (const [id, draw, headline] of charts) {
    const root = document.getElementById(id);
    root.dataset.points = String(draw(root, series));
    root.parentElement.querySelector(".headline").textContent = headline;
  }
}
