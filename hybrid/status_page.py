"""The status page: one self-contained HTML document (inline CSS, JS and SVG; nothing fetched but
`api/status`, relative, so the page works wherever the app is mounted)."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Hybrid AI Stack: queues</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2rem; color: #1d2430; background: #f6f7f9; }
  h1 { font-size: 1.25rem; margin: 0 0 .6rem; }
  h2 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
  #redis { padding: .55rem .8rem; border-radius: 6px; font-weight: 600; }
  #redis.up { background: #dff3e4; color: #17622e; }
  #redis.down { background: #fde2e1; color: #8a1c17; }
  .note { margin-top: .4rem; padding: .45rem .8rem; border-radius: 6px; background: #fff4d6; color: #6b4a00; }
  table { border-collapse: collapse; background: #fff; min-width: 40rem; }
  th, td { padding: .25rem .6rem; border-bottom: 1px solid #e3e6ea; text-align: right; }
  th:first-child, td:first-child, th.l, td.l { text-align: left; }
  th { background: #eef0f3; font-weight: 600; }
  .open { color: #b3261e; font-weight: 700; } .half_open { color: #a15c00; font-weight: 700; }
  .closed { color: #17622e; }
  .muted { color: #6b7380; }
  svg { background: #fff; border: 1px solid #e3e6ea; }
  .legend span { display: inline-block; margin-right: 1rem; }
  .legend i { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; vertical-align: -1px; }
</style>
</head>
<body>
<h1>Hybrid AI Stack: queues</h1>
<div id="redis" class="down" data-up="">loading...</div>
<div id="notes"></div>
<h2>Backlog per lane <span class="muted" id="window"></span></h2>
<svg id="chart" width="760" height="240" viewBox="0 0 760 240" role="img" aria-label="backlog per lane"></svg>
<div class="legend" id="legend"></div>
<h2>Lanes</h2>
<table id="lanes"><thead><tr><th>zone</th><th class="l">lane</th><th>backlog</th><th>lag</th><th>pending</th>
<th>oldest age</th><th>workers active / known</th><th>added</th><th>removed</th></tr></thead><tbody></tbody></table>
<h2>Cost breakers</h2>
<table id="breakers"><thead><tr><th>zone</th><th class="l">scope</th><th class="l">breaker</th>
<th>spend / budget per hour</th><th>spend / budget per day</th></tr></thead><tbody></tbody></table>
<h2>Dead letters</h2>
<table id="dlq"><thead><tr><th>zone</th><th class="l">reason</th><th>count (newest)</th><th>last failure</th>
</tr></thead><tbody></tbody></table>
<h2>Fleet</h2>
<table id="fleet"><thead><tr><th>zone</th><th>edge devices online</th><th>GPU workers alive</th><th>ready</th>
<th>jobs held</th></tr></thead><tbody></tbody></table>
<p class="muted"><span id="foot"></span> Prometheus: <a href="metrics">metrics</a>,
JSON: <a href="api/status">api/status</a></p>
<script>
"use strict";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const NS = "http://www.w3.org/2000/svg";
let interval = 5;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function row(tbody, cells, attrs) {
  const tr = el("tr", attrs);
  for (const c of cells) {
    const td = el("td", c && c.cls ? {class: c.cls} : {}, c && typeof c === "object" ? c.text : c);
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
}
function age(s) {
  if (s < 1) return s > 0 ? "<1 s" : "0";
  if (s < 120) return s.toFixed(0) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function usd(v) { return "$" + Number(v).toFixed(2); }
function when(ms) { return ms ? new Date(ms).toLocaleString() : ""; }

function chart(st) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const W = 760, H = 240, L = 56, R = 12, T = 12, B = 28;
  const t = st.history.t_ms, series = st.history.series;
  let max = 1;
  for (const vals of Object.values(series)) for (const v of vals) if (v !== null && v > max) max = v;
  svg.dataset.max = String(max);
  const t1 = t.length ? t[t.length - 1] : Date.now(), t0 = t1 - st.history_s * 1000;
  const span = st.history_s >= 120 ? Math.round(st.history_s / 60) + " min" : Math.round(st.history_s) + " s";
  const x = ms => L + (W - L - R) * (ms - t0) / (t1 - t0 || 1);
  const y = v => T + (H - T - B) * (1 - v / max);
  svg.appendChild(el("svg:line", {x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#999"}));
  svg.appendChild(el("svg:line", {x1: L, y1: T, x2: L, y2: y(0), stroke: "#999"}));
  svg.appendChild(el("svg:text", {x: L - 6, y: T + 10, "text-anchor": "end", "font-size": 11}, max));
  svg.appendChild(el("svg:text", {x: L - 6, y: y(0), "text-anchor": "end", "font-size": 11}, 0));
  svg.appendChild(el("svg:text", {x: L, y: H - 8, "font-size": 11}, "-" + span));
  svg.appendChild(el("svg:text", {x: W - R, y: H - 8, "text-anchor": "end", "font-size": 11}, "now"));
  for (let i = 0; i < t.length; i++) if (!st.history.up[i] && t[i] >= t0) {
    svg.appendChild(el("svg:rect", {x: x(t[i]) - 2, y: T, width: 4, height: H - T - B, fill: "#fde2e1"}));
  }
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  Object.keys(series).forEach((name, i) => {
    const vals = series[name], color = COLORS[i % COLORS.length];
    let d = "", last = null, lx = 0, ly = 0;
    for (let j = 0; j < vals.length; j++) {
      if (vals[j] === null || t[j] < t0) continue;
      lx = x(t[j]).toFixed(1); ly = y(vals[j]).toFixed(1);
      d += (d ? " L" : "M") + lx + "," + ly;
      last = vals[j];
    }
    const path = el("svg:path", {d: d || "M0,0", fill: "none", stroke: color, "stroke-width": 2, class: "series",
      "data-series": name, "data-last": last === null ? "" : last});
    svg.appendChild(path);
    if (last !== null) svg.appendChild(el("svg:circle", {cx: lx, cy: ly, r: 3, fill: color, "data-series": name}));
    const item = el("span", {"data-series": name});
    item.appendChild(el("i", {style: "background:" + color}));
    item.appendChild(document.createTextNode(name + ": " + (last === null ? "-" : last)));
    legend.appendChild(item);
  });
  document.getElementById("window").textContent = "(last " + span + ", sampled every " + st.interval_s + " s)";
}

function render(st) {
  interval = st.interval_s || 5;
  const banner = document.getElementById("redis"), snap = st.snapshot;
  banner.dataset.up = st.redis.up ? "1" : "0";
  banner.className = st.redis.up ? "up" : "down";
  banner.textContent = st.redis.up
    ? "Redis is up (" + st.redis_url + ", version " + st.redis.version + "), sampled " + when(snap.taken_ms)
    : "Redis is DOWN: " + st.redis.error + " (retrying every " + interval + " s; figures below are stale)";
  const notes = document.getElementById("notes");
  notes.replaceChildren();
  for (const n of (st.redis.up ? snap.notes : [])) notes.appendChild(el("div", {class: "note"}, n));
  chart(st);
  if (!st.redis.up) return;
  const lanes = document.querySelector("#lanes tbody");
  lanes.replaceChildren();
  for (const l of snap.lanes) {
    row(lanes, [l.zone, {text: l.lane, cls: "l"}, l.backlog, l.lag, l.pending, age(l.oldest_age_s),
      l.consumers_active + " / " + l.consumers, l.added_total, l.removed_total],
      {"data-zone": l.zone, "data-lane": l.lane, "data-backlog": l.backlog});
  }
  const br = document.querySelector("#breakers tbody");
  br.replaceChildren();
  for (const b of snap.budgets) {
    const cell = w => w in b.budget_usd ? usd(b.spend_usd[w]) + " / " + usd(b.budget_usd[w]) + " ("
      + Math.round(100 * b.spend_usd[w] / b.budget_usd[w]) + " %)" : usd(b.spend_usd[w] || 0);
    row(br, [b.zone, {text: b.scope, cls: "l"}, {text: b.state.replace("_", "-") + (b.forced ? " (forced)" : ""),
      cls: "l " + b.state}, cell("hour"), cell("day")], {"data-scope": b.scope, "data-state": b.state});
  }
  const dlq = document.querySelector("#dlq tbody");
  dlq.replaceChildren();
  for (const d of snap.dlq) {
    const last = d.last_failed_ms;
    const reasons = Object.keys(d.reasons).sort((a, b) => d.reasons[b] - d.reasons[a]);
    if (!reasons.length) row(dlq, [d.zone, {text: "(empty)", cls: "l muted"}, 0, ""], {"data-zone": d.zone});
    for (const r of reasons) {
      row(dlq, [d.zone, {text: r, cls: "l"}, d.reasons[r], when(last[r])],
        {"data-zone": d.zone, "data-reason": r, "data-count": d.reasons[r]});
    }
  }
  const fleet = document.querySelector("#fleet tbody");
  fleet.replaceChildren();
  for (const f of snap.fleet) {
    row(fleet, [f.zone, f.devices_online === null ? "-" : f.devices_online, f.workers, f.workers_ready,
      f.workers_in_flight], {"data-zone": f.zone, "data-devices": f.devices_online, "data-workers": f.workers});
  }
  document.getElementById("foot").textContent = "added/removed: " +
    (snap.exact_counts ? "exact (Redis entries-added)" : "the exporter's running count since it started (Redis 6.2)") +
    "; sample took " + (1000 * snap.scrape_s).toFixed(1) + " ms.";
}

async function tick() {
  try {
    const r = await fetch("api/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const banner = document.getElementById("redis");
    banner.dataset.up = "0";
    banner.className = "down";
    banner.textContent = "The exporter is not answering (" + e.message + "); retrying every " + interval + " s";
  }
  setTimeout(tick, interval * 1000);
}
tick();
</script>
</body>
</html>
"""

__all__ = ["PAGE"]
