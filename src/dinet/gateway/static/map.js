// The network drawn from /api/network/summary: this gateway in the middle, one cluster of
// peer dots per (region, model) group around it, regions as sectors; a solid line to a
// group for the peers reached directly, a dashed one for those reached through a relay;
// the chains answers went through as curved paths from the gateway through their stages.
// Its cost grows with the groups, not the peers: one dot per peer, no per-peer data.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 760;
const HEIGHT = 600;
const CX = WIDTH / 2;
const CY = HEIGHT / 2;
const INNER = 150; // ring radius of the first clusters
const PALETTE = ["#3b5bdb", "#2b8a3e", "#ae3ec9", "#0c8599", "#c2255c", "#5c940d", "#1971c2", "#862e9c",
  "#d9480f", "#087f5b"];
const NO_MODEL_COLOR = "#868e96";
const GOLDEN_ANGLE = Math.PI * (3 - Math.sqrt(5));

export function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

function title(node, text) {
  node.append(svg("title", {}, text));
  return node;
}

export function modelColors(models) {
  const colors = new Map();
  [...new Set(models)].filter((m) => m).sort().forEach((m, k) => colors.set(m, PALETTE[k % PALETTE.length]));
  colors.set("", NO_MODEL_COLOR);
  return colors;
}

export function groupLabel(g) {
  return `${g.region} · ${g.model || "no model"}`;
}

// Where each group sits: regions (largest first) take sectors in proportion to their
// groups; within one, neighbouring groups alternate between two rings so they never touch.
function layout(groups) {
  const regions = new Map();
  for (const g of groups) {
    if (!regions.has(g.region)) regions.set(g.region, []);
    regions.get(g.region).push(g);
  }
  const order = [...regions.entries()].sort((a, b) => peersOf(b[1]) - peersOf(a[1]) || a[0].localeCompare(b[0]));
  const slots = groups.length;
  const step = (2 * Math.PI) / Math.max(slots, 1);
  const rings = slots > 6 ? 2 : 1;
  // The biggest cluster fits between its neighbours on its ring, and between the rings.
  const arc = (2 * Math.PI * INNER) / Math.max(1, Math.ceil(slots / rings));
  const maxRadius = Math.max(10, Math.min(56, 0.45 * arc));
  const outer = INNER + 2 * maxRadius + 14;
  const biggest = Math.max(1, ...groups.map((g) => g.peers));
  const spread = maxRadius / Math.sqrt(biggest); // phyllotaxis: a cluster of n dots spans spread·√n
  const placed = [];
  const sectors = [];
  let slot = 0;
  for (const [region, members] of order) {
    members.sort((a, b) => a.model.localeCompare(b.model));
    const start = slot * step - Math.PI / 2;
    for (const g of members) {
      const angle = (slot + 0.5) * step - Math.PI / 2;
      const ring = rings === 2 && slot % 2 ? outer : INNER;
      placed.push({ g, x: CX + ring * Math.cos(angle), y: CY + ring * Math.sin(angle),
        r: Math.max(4, spread * Math.sqrt(g.peers)) + 2 });
      slot += 1;
    }
    sectors.push({ region, start, end: slot * step - Math.PI / 2, peers: peersOf(members) });
  }
  return { placed, sectors, spread, edge: (rings === 2 ? outer : INNER) + maxRadius + 8 };
}

function peersOf(groups) {
  return groups.reduce((sum, g) => sum + g.peers, 0);
}

function wedge(start, end, radius) {
  const large = end - start > Math.PI ? 1 : 0;
  const a = [CX + radius * Math.cos(start), CY + radius * Math.sin(start)];
  const b = [CX + radius * Math.cos(end), CY + radius * Math.sin(end)];
  return `M${CX},${CY} L${a[0].toFixed(1)},${a[1].toFixed(1)} A${radius},${radius} 0 ${large} 1 ${b[0].toFixed(1)},${b[1].toFixed(1)} Z`;
}

// A line from the gateway to a cluster's edge, moved sideways by `offset` pixels.
function spoke(p, offset) {
  const dx = p.x - CX;
  const dy = p.y - CY;
  const length = Math.hypot(dx, dy) || 1;
  const [ux, uy] = [dx / length, dy / length];
  const [nx, ny] = [-uy * offset, ux * offset];
  const from = 18;
  const to = length - p.r - 2;
  return { x1: CX + ux * from + nx, y1: CY + uy * from + ny, x2: CX + ux * to + nx, y2: CY + uy * to + ny };
}

function drawDots(cluster, p, color, spread) {
  const g = p.g;
  // Direct first, then relayed, then not connected: the kinds read as bands from the middle.
  const kinds = [["direct", g.direct], ["relayed", g.relayed], ["unlinked", g.unlinked]];
  const dot = Math.max(1.2, Math.min(3.2, spread * 0.62));
  let i = 0;
  for (const [kind, count] of kinds) {
    for (let k = 0; k < count; k += 1, i += 1) {
      const radius = spread * Math.sqrt(i + 0.5);
      const angle = i * GOLDEN_ANGLE;
      cluster.append(svg("circle", {
        class: `peer ${kind}`,
        cx: (p.x + radius * Math.cos(angle)).toFixed(1),
        cy: (p.y + radius * Math.sin(angle)).toFixed(1),
        r: dot.toFixed(2),
        fill: kind === "direct" ? color : null,
      }));
    }
  }
}

function chainPath(chain, where) {
  const points = [[CX, CY]];
  for (const stage of chain.stages) {
    const p = where.get(`${stage.region}\u0000${chain.model}`);
    if (p) points.push([p.x, p.y]);
  }
  if (points.length < 2) return null;
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let k = 1; k < points.length; k += 1) {
    const [ax, ay] = points[k - 1];
    const [bx, by] = points[k];
    // Bend each hop sideways so a chain stays visible over the straight links.
    const mx = (ax + bx) / 2 - (by - ay) * 0.18;
    const my = (ay + by) / 2 + (bx - ax) * 0.18;
    d += ` Q${mx.toFixed(1)},${my.toFixed(1)} ${bx.toFixed(1)},${by.toFixed(1)}`;
  }
  return d;
}

export function drawMap(root, summary, { selected, onSelect }) {
  const groups = summary.groups;
  const colors = modelColors(groups.map((g) => g.model));
  const { placed, sectors, spread, edge } = layout(groups);
  const where = new Map(placed.map((p) => [`${p.g.region}\u0000${p.g.model}`, p]));
  root.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  root.replaceChildren();

  const back = svg("g", { class: "sectors" });
  sectors.forEach((s, k) => {
    if (sectors.length > 1) back.append(svg("path", { d: wedge(s.start, s.end, edge), class: `sector s${k % 2}` }));
    const mid = (s.start + s.end) / 2;
    const label = svg("text", {
      class: "region-label",
      x: (CX + (edge + 4) * Math.cos(mid)).toFixed(1),
      y: (CY + (edge + 4) * Math.sin(mid)).toFixed(1),
      "text-anchor": Math.cos(mid) > 0.3 ? "start" : Math.cos(mid) < -0.3 ? "end" : "middle",
      "dominant-baseline": "middle",
    }, `${s.region} · ${s.peers}`);
    label.dataset.region = s.region;
    back.append(label);
  });

  const links = svg("g", { class: "links" });
  for (const p of placed) {
    const both = p.g.direct && p.g.relayed;
    if (p.g.direct) {
      links.append(title(svg("line", { class: "link direct", ...spoke(p, both ? -2 : 0),
        "stroke-width": (0.6 + Math.log2(1 + p.g.direct) * 0.45).toFixed(2) }),
      `${p.g.direct} reached directly`));
    }
    if (p.g.relayed) {
      links.append(title(svg("line", { class: "link relayed", ...spoke(p, both ? 2 : 0),
        "stroke-width": (0.6 + Math.log2(1 + p.g.relayed) * 0.45).toFixed(2) }),
      `${p.g.relayed} reached through a relay`));
    }
  }

  const clusters = svg("g", { class: "clusters" });
  for (const p of placed) {
    const g = p.g;
    const color = colors.get(g.model);
    const cluster = svg("g", { class: "group", tabindex: 0 });
    Object.assign(cluster.dataset, { region: g.region, model: g.model, peers: g.peers, direct: g.direct,
      relayed: g.relayed, unlinked: g.unlinked });
    if (selected === `${g.region}\u0000${g.model}`) cluster.classList.add("selected");
    cluster.append(svg("circle", { class: "halo", cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: (p.r + 3).toFixed(1),
      fill: color, stroke: color }));
    drawDots(cluster, p, color, spread);
    cluster.append(svg("text", { class: "count", x: p.x.toFixed(1), y: (p.y + p.r + 12).toFixed(1),
      "text-anchor": "middle" }, String(g.peers)));
    title(cluster, `${groupLabel(g)}: ${g.peers} peer${g.peers === 1 ? "" : "s"} — ${g.direct} direct, `
      + `${g.relayed} through a relay, ${g.unlinked} not connected; ${g.busy} busy`
      + `${g.stages ? `; ${g.stages} pipeline stages` : ""} · click to list them`);
    const choose = () => onSelect(g);
    cluster.addEventListener("click", choose);
    cluster.addEventListener("keydown", (event) => { if (event.key === "Enter") choose(); });
    clusters.append(cluster);
  }

  const chains = svg("g", { class: "chains" });
  for (const chain of summary.chains) {
    const d = chainPath(chain, where);
    if (!d) continue;
    const path = svg("path", { class: "chain", d, "stroke-width": Math.min(5, 1.5 + Math.log2(chain.uses)).toFixed(2) });
    path.dataset.model = chain.model;
    path.dataset.stages = String(chain.stages.length);
    title(path, `chain of ${chain.stages.length} stages for ${chain.model}: ${chain.stages.map((s) => s.region ?? "gone").join(" → ")}`
      + ` · ${chain.uses} answer${chain.uses === 1 ? "" : "s"}, last ${Math.round(chain.last_used_s)} s ago`);
    chains.append(path);
  }

  const me = svg("g", { class: "gateway" });
  me.append(svg("circle", { cx: CX, cy: CY, r: 14 }));
  me.append(svg("text", { x: CX, y: CY + 30, "text-anchor": "middle" }, "this gateway"));
  title(me, summary.gateway.peer_id);

  root.append(back, links, clusters, chains, me);
  return colors;
}
