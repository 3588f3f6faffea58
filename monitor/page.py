"""The status page served at `/`: one HTML document with its style and script inline, which
polls `api/v1/targets` (docs/api.md) and redraws the table in place.

No file, CDN or build step: the page is this module's string. Its Content-Security-Policy
allows exactly the inline style and script below (by their SHA-256, computed at import),
requests to the same origin, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib

from . import __version__

# Seconds between two polls, unless the page's address says `?refresh=SECONDS`; bounded.
REFRESH_DEFAULT = 3
REFRESH_MIN = 0.5
REFRESH_MAX = 60
PAGE_SIZE = 100  # targets per page (the API's `limit`)

STYLE = """
:root { color-scheme: light; --fg: #1b1b1b; --muted: #545454; --line: #d0d5dc;
  --head: #f1f3f6; --focus: #0b57d0; --link: #0b57d0; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: #fff; }
header, main, footer { max-width: 1280px; margin: 0 auto; padding: 0 1rem; }
h1 { font-size: 1.35rem; margin: 1rem 0 .25rem; }
h2 { font-size: 1.1rem; margin: 1rem 0 .5rem; }
.summary { font-size: 1.2rem; font-weight: 600; margin: .25rem 0; }
.detail, footer { color: var(--muted); margin: .25rem 0; }
.error { color: #8f0b0b; background: #fde7e7; border: 1px solid #e3a0a0; border-radius: 4px;
  padding: .4rem .6rem; }
a { color: var(--link); }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
.filters { display: flex; flex-wrap: wrap; gap: .75rem 1.5rem; align-items: end;
  margin: 0 0 .75rem; }
.filters label { display: block; font-weight: 600; font-size: .9rem; }
input, select, button { font: inherit; color: var(--fg); background: #fff;
  border: 1px solid #767676; border-radius: 4px; padding: .35rem .5rem; }
input { width: 16rem; max-width: 100%; }
button { cursor: pointer; min-width: 6.5rem; }
button[aria-disabled="true"] { color: #6b6b6b; border-color: #b4b4b4; cursor: default; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: .4rem .5rem;
  border-bottom: 1px solid var(--line); }
thead th { background: var(--head); position: sticky; top: 0; font-size: .9rem;
  white-space: nowrap; }
.nowrap { white-space: nowrap; }
tbody th { font-weight: 600; }
.url, .reason, .note, .muted { display: block; color: var(--muted); font-size: .85rem;
  font-weight: 400; overflow-wrap: anywhere; }
.note { color: #7a4100; }
.badge { display: inline-block; font-weight: 600; border: 1px solid; border-radius: 1rem;
  padding: 0 .55rem; white-space: nowrap; }
.badge span { margin-right: .3rem; }
.st-connected { color: #14602c; background: #e3f3e6; border-color: #8fc79c; }
.st-connecting { color: #0b4a8b; background: #e5eefa; border-color: #9dbbe3; }
.st-backoff { color: #7a4100; background: #fff1db; border-color: #e0b470; }
.st-failed { color: #a50e0e; background: #fde7e7; border-color: #e3a0a0; }
tr.problem > :first-child { box-shadow: inset 4px 0 #c5221f; }
.probe { white-space: nowrap; }
.probe b { font-weight: 600; margin-right: .35rem; }
.spark { vertical-align: middle; margin-left: .35rem; color: #36587f; }
.pager { display: flex; align-items: center; gap: 1rem; margin: .75rem 0 1rem; }
footer { border-top: 1px solid var(--line); padding-top: .5rem; margin-top: 1rem;
  font-size: .9rem; }
footer ul { display: inline; padding: 0; margin: 0; }
footer li { display: inline; margin-right: .75rem; }
@media (max-width: 720px) {
  table, tbody, tr, td, tbody th { display: block; }
  thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%);
    white-space: nowrap; }
  tr { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 .75rem;
    padding: .35rem .6rem; }
  tr.problem { border-left: 4px solid #c5221f; }
  tr.problem > :first-child { box-shadow: none; }
  th, td { border: 0; padding: .2rem 0; }
  td { display: grid; grid-template-columns: 7.5rem 1fr; gap: .5rem; }
  td::before { content: attr(data-label); font-weight: 600; color: var(--muted); }
  .probe, .nowrap { white-space: normal; }
  .pager { justify-content: space-between; }
}
"""

_SCRIPT = """
"use strict";
(() => {
  const PAGE = %PAGE%;
  const $ = (id) => document.getElementById(id);
  const asked = parseFloat(new URLSearchParams(location.search).get("refresh") ?? "");
  const every = Number.isFinite(asked) ? Math.min(%MAX%, Math.max(%MIN%, asked)) : %DEFAULT%;
  const view = { offset: 0, state: "", q: "" };
  const rows = new Map();  // target name -> its <tr>, kept across polls
  const COLUMNS = ["Target", "State", "Time in state", "Round trips", "Last close",
    "Reconnects"];
  let skew = 0;  // the daemon's clock minus ours, in ms, when they differ by more than 2 s
  let timer = 0;
  let typing = 0;
  let inflight = null;
  let shown = null;  // the latest answer

  const plural = (n, word) => `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;
  const now = () => (Date.now() + skew) / 1000;

  function age(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function ms(seconds) {
    const v = seconds * 1000;
    if (v < 1) return `${v.toFixed(2)} ms`;
    if (v < 100) return `${v.toFixed(1)} ms`;
    if (v < 10000) return `${Math.round(v)} ms`;
    return `${seconds.toFixed(1)} s`;
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function spark(probe, values) {
    if (values.length < 2) return null;
    const NS = "http://www.w3.org/2000/svg";
    const w = 72, h = 18;
    const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo;
    const x = (i) => (1 + (i * (w - 2)) / (values.length - 1)).toFixed(1);
    const y = (v) => (span ? h - 2 - ((v - lo) / span) * (h - 4) : h / 2).toFixed(1);
    const svg = document.createElementNS(NS, "svg");
    for (const [k, v] of Object.entries({ class: "spark", width: w, height: h,
      viewBox: `0 0 ${w} ${h}`, role: "img",
      "aria-label": `${probe}, last ${values.length} round trips: ${ms(lo)} to ${ms(hi)}` })) {
      svg.setAttribute(k, v);
    }
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", values.map((v, i) => `${x(i)},${y(v)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "currentColor");
    line.setAttribute("stroke-width", "1.5");
    const dot = document.createElementNS(NS, "circle");
    dot.setAttribute("cx", x(values.length - 1));
    dot.setAttribute("cy", y(values[values.length - 1]));
    dot.setAttribute("r", "2");
    dot.setAttribute("fill", "currentColor");
    svg.append(line, dot);
    return svg;
  }

  const GLYPH = { connected: "\\u25CF", connecting: "\\u2026", backoff: "\\u21BB",
    failed: "\\u2715" };

  // Each cell: [signature, what to put in it]. A cell is rebuilt only when its signature
  // changed, so a poll that changes nothing leaves the table (and any selection) alone.
  function cells(t, at) {
    const notes = [];
    if (t.state === "connected" && !t.up) notes.push("not up: latest probe unanswered or wrong");
    for (const [name, s] of Object.entries(t.streams || {})) {
      if (s.stale) notes.push(`stream ${name} stale`);
    }
    if (t.tls && t.tls.not_after - at < 14 * 86400) {
      notes.push(`certificate expires in ${age(t.tls.not_after - at)}`);
    }
    const since = age(at - t.since);
    const probes = Object.entries(t.last_rtt_seconds);
    const streams = Object.entries(t.streams || {});
    const c = t.last_close;
    return [
      [t.name + "\\n" + t.url, () => [el("span", {}, t.name), el("span", { class: "url" }, t.url)]],
      [t.state + notes.join(), () => [
        el("span", { class: `badge st-${t.state}` },
          el("span", { "aria-hidden": "true" }, GLYPH[t.state] || ""), t.state),
        ...notes.map((n) => el("span", { class: "note" }, n))]],
      [since, () => [el("time", { datetime: new Date(t.since * 1000).toISOString(),
        title: new Date(t.since * 1000).toLocaleString() }, since)]],
      [JSON.stringify([t.last_rtt_seconds, t.recent_rtt_seconds]) +
        streams.map(([n, s]) => n + s.stale + age(at - (s.last_message_at || at))).join(), () => [
        ...probes.map(([name, rtt]) => el("div", { class: "probe" }, el("b", {}, name),
          rtt === null ? "no reply yet" : ms(rtt),
          spark(name, (t.recent_rtt_seconds || {})[name] || []))),
        ...streams.map(([name, s]) => el("div", { class: "probe" }, el("b", {}, name),
          s.last_message_at ? `stream, last message ${age(at - s.last_message_at)} ago`
            : "stream, no message yet")),
        ...(probes.length + streams.length ? [] : ["no probes"])]],
      [c ? `${c.code}${c.origin}${c.reason}${age(at - c.at)}` : "", () => c ? [
        el("span", { class: "nowrap" }, `${c.code} ${c.origin}, ${age(at - c.at)} ago`),
        c.reason ? el("span", { class: "reason" }, c.reason) : null,
      ] : [el("span", { class: "muted" }, "none yet")]],
      [`${t.reconnects_last_hour}/${t.reconnects}`, () => [
        el("span", { class: "nowrap" }, `${t.reconnects_last_hour} in the last hour`),
        el("span", { class: "muted" }, `${t.reconnects} in all`)]],
    ];
  }

  function row(t, at) {
    let tr = rows.get(t.name);
    if (!tr) {
      tr = el("tr", {}, el("th", { scope: "row" }),
        ...COLUMNS.slice(1).map((label) => el("td", { "data-label": label })));
      rows.set(t.name, tr);
    }
    tr.className = t.problem ? "problem" : "";
    cells(t, at).forEach(([sig, build], i) => {
      const cell = tr.children[i];
      if (cell.wsmonSig === sig) return;
      cell.wsmonSig = sig;
      cell.replaceChildren(el("div", { class: "v" }, ...build()));
    });
    return tr;
  }

  function render(body) {
    shown = body;
    const s = body.summary, at = now();
    const problems = s.problems ? plural(s.problems, "problem") : "no problems";
    setText($("summary"), `${s.connected.toLocaleString("en")} connected of ` +
      `${plural(s.targets, "target")}, ${problems}`);
    const worst = s.worst_rtt ? `worst round trip ${ms(s.worst_rtt.seconds)} ` +
      `(${s.worst_rtt.target}, ${s.worst_rtt.probe})` : "no round trip yet";
    setText($("detail"), `${s.connecting} connecting, ${s.backoff} in backoff, ` +
      `${s.failed} failed; ${worst}; updated ${new Date().toLocaleTimeString()}`);
    document.title = s.problems ? `(${s.problems}) wsmon status` : "wsmon status";
    const keep = body.targets.map((t) => row(t, at));
    const names = new Set(body.targets.map((t) => t.name));
    for (const name of rows.keys()) if (!names.has(name)) rows.delete(name);
    const tbody = $("rows");
    if (!keep.length) {
      const what = view.q || view.state ? "No target matches the filter." : "No targets.";
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: COLUMNS.length }, what)));
    } else if (keep.length !== tbody.children.length ||
               keep.some((tr, i) => tbody.children[i] !== tr)) {
      tbody.replaceChildren(...keep);
    }
    const first = body.total ? body.offset + 1 : 0;
    setText($("range"), body.total ? `${first.toLocaleString("en")}\\u2013` +
      `${(body.offset + body.targets.length).toLocaleString("en")} of ` +
      `${body.total.toLocaleString("en")}` : "none");
    $("prev").setAttribute("aria-disabled", String(body.offset === 0));
    $("next").setAttribute("aria-disabled", String(body.offset + body.limit >= body.total));
  }

  function problem(text) {
    const box = $("error");
    setText(box, text);
    box.hidden = !text;
  }

  function schedule() {
    clearTimeout(timer);
    if (document.visibilityState !== "hidden") timer = setTimeout(poll, every * 1000);
  }

  async function poll() {
    clearTimeout(timer);
    if (inflight) inflight.abort();
    const ctl = new AbortController();
    inflight = ctl;
    const url = new URL("api/v1/targets", location.href);
    url.search = "";
    url.searchParams.set("limit", PAGE);
    url.searchParams.set("offset", view.offset);
    if (view.state) url.searchParams.set("state", view.state);
    if (view.q) url.searchParams.set("q", view.q);
    try {
      const r = await fetch(url, { credentials: "same-origin", cache: "no-store",
        signal: ctl.signal, headers: { Accept: "application/json" } });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(`HTTP ${r.status}` + (body.error ? `: ${body.error}` : ""));
      const date = Date.parse(r.headers.get("Date") || "");
      if (Number.isFinite(date)) {
        const off = date + 500 - Date.now();
        skew = Math.abs(off) > 2000 ? off : 0;
      }
      if (body.total && body.offset >= body.total) {  // the list shrank under this page
        view.offset = Math.floor((body.total - 1) / PAGE) * PAGE;
        inflight = null;
        poll();
        return;
      }
      render(body);
      problem("");
    } catch (e) {
      if (e.name === "AbortError") return;
      problem(`Cannot load the targets (${e.message}); trying again every ${every} s.`);
    } finally {
      if (inflight === ctl) {
        inflight = null;
        schedule();
      }
    }
  }

  function change(update) {
    update();
    view.offset = 0;
    poll();
  }

  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("q").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => change(() => { view.q = e.target.value.trim(); }), 250);
  });
  $("state").addEventListener("change", (e) => change(() => { view.state = e.target.value; }));
  $("prev").addEventListener("click", (e) => {
    if (e.currentTarget.getAttribute("aria-disabled") === "true") return;
    view.offset = Math.max(0, view.offset - PAGE);
    poll();
  });
  $("next").addEventListener("click", (e) => {
    if (e.currentTarget.getAttribute("aria-disabled") === "true") return;
    if (shown && view.offset + PAGE < shown.total) view.offset += PAGE;
    poll();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") clearTimeout(timer); else poll();
  });
  setText($("every"), `${every} s`);
  poll();
})();
"""


def _fill(template: str, **values: object) -> str:
    """The template with each %NAME% replaced by its value."""
    for name, value in values.items():
        template = template.replace(f"%{name}%", str(value))
    return template


SCRIPT = _fill(_SCRIPT, PAGE=PAGE_SIZE, MIN=REFRESH_MIN, MAX=REFRESH_MAX, DEFAULT=REFRESH_DEFAULT)

_BODY = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>wsmon status</title>
<link rel="icon" href="data:,">
<style>%STYLE%</style>
</head>
<body>
<header>
<h1>wsmon status</h1>
<p id="summary" class="summary" aria-live="polite">Loading the targets&hellip;</p>
<p id="detail" class="detail"></p>
<p id="error" class="error" role="alert" hidden></p>
</header>
<main>
<h2 id="targets-heading">Targets</h2>
<form id="filters" class="filters" role="search" aria-label="Filter the targets">
<div><label for="q">Name contains</label>
<input id="q" type="search" autocomplete="off" spellcheck="false"></div>
<div><label for="state">State</label>
<select id="state">
<option value="">all states</option>
<option value="connecting,backoff,failed">not connected</option>
<option value="connected">connected</option>
<option value="connecting">connecting</option>
<option value="backoff">backoff</option>
<option value="failed">failed</option>
</select></div>
</form>
<table aria-labelledby="targets-heading">
<thead><tr><th scope="col">Target</th><th scope="col">State</th>
<th scope="col">Time in state</th><th scope="col">Round trips</th>
<th scope="col">Last close</th><th scope="col">Reconnects</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<nav class="pager" aria-label="Pages of targets">
<button id="prev" type="button" aria-disabled="true">Previous</button>
<span>Targets <span id="range">&hellip;</span></span>
<button id="next" type="button" aria-disabled="true">Next</button>
</nav>
</main>
<footer>
<p>wsmon %VERSION%; problems first, then by name; refreshed every
<span id="every">few seconds</span>. Endpoints:</p>
<ul>
<li><a href="metrics">/metrics</a></li>
<li><a href="api/v1/targets">/api/v1/targets</a></li>
<li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li>
<li><a href="endpoints">/endpoints</a></li>
</ul>
</footer>
<script>%SCRIPT%</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


DOCUMENT = _fill(_BODY, STYLE=STYLE, SCRIPT=SCRIPT, VERSION=__version__).encode()

# Nothing but the inline style and script, and requests back to the daemon.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
