"""The status page's script, which runs in the browser: it polls `api/v1/targets`
(docs/api.md) every few seconds and redraws the table in place, a page of targets at a time.
`monitor.page` puts it inline in the document and allows exactly it by its SHA-256.
"""

from __future__ import annotations

# Seconds between two polls, unless the page's address says `?refresh=SECONDS`; bounded.
REFRESH_DEFAULT = 3
REFRESH_MIN = 0.5
REFRESH_MAX = 60
PAGE_SIZE = 100  # targets per page (the API's `limit`)

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


def fill(template: str, **values: object) -> str:
    """The template with each %NAME% replaced by its value."""
    for name, value in values.items():
        template = template.replace(f"%{name}%", str(value))
    return template


SCRIPT = fill(_SCRIPT, PAGE=PAGE_SIZE, MIN=REFRESH_MIN, MAX=REFRESH_MAX, DEFAULT=REFRESH_DEFAULT)
