"""The sections of bench/RESULTS.md that a run writes: the run's record, the goals and
figures (judged by `bench.report`), a paragraph per workload, the hooks ablation."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .report import (
    ABLATION,
    MAIN,
    W6_FIGURES,
    excess,
    fmt,
    goals_table,
    judge,
    ratio_text,
    stall_text,
    table,
    w6_ratio,
    w6_text,
    w6_value,
)

W1_LABELS = {
    "floor": "floor (aiohttp loop)",
    "floor_uvloop": "floor (aiohttp loop)",
    "websockets": "websockets library",
    "wsmon_asyncio": "wsmon",
    "wsmon_uvloop": "wsmon",
    "wsmon_asyncio_portable": "wsmon, portable path",
    "wsmon_uvloop_portable": "wsmon, portable path",
    "wsmon_uvloop_aligned": "wsmon, `send_alignment`",
}
W1_NAMES = {
    "floor_uvloop": "floor on uvloop",
    "websockets": "websockets library",
    "wsmon_asyncio": "wsmon asyncio",
    "wsmon_uvloop": "wsmon uvloop",
    "wsmon_asyncio_portable": "wsmon portable asyncio",
    "wsmon_uvloop_portable": "wsmon portable uvloop",
    "wsmon_uvloop_aligned": "wsmon uvloop with `send_alignment`",
}
ABLATION_LABELS = {
    "floor": "floor (aiohttp loop, asyncio): the reference",
    "all": "every hook (the default path)",
    "no_stamp": "without `stamp` (ReadStamp)",
    "no_inbox": "without `inbox` (DirectQueue)",
    "none": 'no hook (`receive_path="portable"`)',
}


def _loop(r: dict[str, Any]) -> str:
    return "uvloop" if "uvloop" in r.get("loop", "") else "asyncio"


def _hooks(r: dict[str, Any]) -> str:
    if r["kind"] != "wsmon":
        return "-"
    return f"{r['receive_path']}: {', '.join(r['hooks']) or 'none'}"


def _client_row(label: str, r: dict[str, Any]) -> str:
    return (
        f"| {label} | {_loop(r)} | {_hooks(r)} | {r['round_trips']} | {fmt(r['cpu_s'], '.2f')} "
        f"| {fmt(r['cpu_us_per_round_trip'])} | {fmt(r['wakeups_per_round_trip'], '.2f')} "
        f"| {fmt(r['rtt_mean_ms'], '.3f')} | {fmt(r['rss_kb'] / 1024, '.1f')} "
        f"| {fmt(r.get('server_cpu_s'), '.2f')} | {_rest(r)} |"
    )


def _rest(r: dict[str, Any]) -> str:
    """The rest of the machine during the window: other processes / interrupts / steal."""
    keys = ("others_cpu_s", "interrupts_cpu_s", "steal_s")
    return " / ".join(fmt(r.get(k), ".2f") for k in keys)


CLIENT_HEAD = (
    "| client | event loop | receive path: hooks | round trips | CPU s | CPU us / round trip "
    "| wake-ups / round trip | RTT mean ms | RSS MiB | node server CPU s "
    "| rest of the machine, CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|"
)
METHOD = (
    "CPU is the child's, from `/proc/<pid>/task/*/schedstat` between the window's edges; at "
    "each edge the harness reads the CPU, then the counts, then the CPU again, so a scrape's "
    "own cost stays out. wsmon's round trips and RTT mean are the increase of its "
    "`wsmon_probe_rtt_seconds` count and sum between the two scrapes; a baseline client counts "
    "its own between `begin` and `end`. CPU per round trip is the CPU rate over the "
    "round-trip rate. Wake-ups: voluntary context switches of the main thread. Rest of the "
    "machine during the window, from /proc/stat: other processes (neither the client, the "
    "node server nor this harness: other people's work; a high value means a noisier figure) "
    "/ interrupts (much of it the loopback traffic) / time the hypervisor stole."
)


def _w1(w1: dict[str, Any]) -> list[str]:
    f = w1["floor"]
    rounds = f.get("rounds", 1)
    ratios = "; ".join(f"{W1_NAMES[k]} {ratio_text(w1, k)}" for k in w1["ratio"])
    ticks = max(abs(w1[k]["cpu_s"] - w1[k]["cpu_ticks_s"]) for k in W1_LABELS if k in w1)
    return [
        "### 1. CPU per probe round trip",
        "",
        f"{f['targets']} targets, 1 probe each per {w1.get('interval_s', 1):g} s; the clients "
        f"run in turn, {rounds} times (rounds), each in its own process, with a window of "
        f"{f['window_s'] / rounds:.1f} s after every connection was up and a warm-up. Each "
        "round gives each client a ratio to that round's floor; the goals are judged on the "
        f"median (the machine's drift then affects every client alike). {METHOD} The table "
        "pools the rounds (CPU and round trips summed); its RTT and RSS are the last round's. "
        f"utime + stime over the same spans agree with the CPU figures within {ticks:.2f} s "
        "per client (they count whole clock ticks of 10 ms).",
        "",
        CLIENT_HEAD,
        *(_client_row(W1_LABELS[k], w1[k]) for k in W1_LABELS if k in w1),
        "",
        f"Ratios to the floor: {ratios}. The `send_alignment` client "
        f"(`{w1['wsmon_uvloop_aligned']['send_alignment']}`) is not the goal's configuration: "
        "its sends go on a grid (the interval kept, the phase moved by less than the step), "
        "so one wake-up sends several probes, at a cost in RTT precision (see "
        "docs/performance.md). uvloop through `asyncio.Runner(loop_factory="
        "uvloop.new_event_loop)`; the daemon is `monitor.app.Daemon` in the child's process, "
        'built with `receive_path="auto"` (its self-test decides) or `"portable"`.',
        "",
    ]


def _w2_memory(w2: dict[str, Any]) -> str:
    d = w2["wsmon"]
    n, empty = d["targets"], w2["empty"]["rss_before_scrape_kb"]
    if "scrapes" not in w2:  # a run from before the ten scrapes
        return (
            f"Memory (VmRSS, after the warm-up and before any scrape): "
            f"{d['rss_before_scrape_kb']} KiB; the empty daemon {empty} KiB: "
            f"{w2['rss_kib_per_target']:.2f} KiB per target above it; after the scrapes of "
            f"workloads 2 and 3: {d.get('rss_after_scrapes_kb')} KiB. (This run predates the "
            "ten scrapes that goals 2b, 2d and 2e read.)"
        )
    sc, per = w2["scrapes"], w2["rss_whole_kib_per_target"]
    after_w3 = d.get("rss_after_w3_kb")
    return (
        "Memory, the whole process's VmRSS from `/proc/<pid>/status` (nothing subtracted): "
        f"(a) after the warm-up, before any scrape, {d['rss_before_scrape_kb']} KiB = "
        f"{per['before_scrape']:.2f} KiB per target; (b) once the daemon had served "
        f"{sc['scrapes']} scrapes of `/metrics` (the window's {sc['edge_scrapes']} edges, "
        f"then one without gzip and {sc['scrapes'] - sc['edge_scrapes'] - 1} with, "
        f"{sc['pause_s']:g} s apart, VmRSS read at the end of each pause) "
        f"{d['rss_after_scrapes_kb']} KiB = {per['after_scrapes']:.2f} KiB per target; "
        f"(b) - (a) = {w2['rss_growth_mib']:+.1f} MiB. VmRSS after the plain scrape and "
        f"each gzip one after it, KiB: {', '.join(str(v) for v in sc['rss_each_kb'])}. "
        "For comparison, an empty "
        f"daemon (no targets) {empty} KiB before any scrape: "
        f"{w2['rss_kib_per_target']:.2f} KiB per target above it (before any scrape)"
        + (f"; after workload 3's scrapes as well {after_w3} KiB" if after_w3 else "")
        + f"; peak (VmHWM) at the end of the window {d['peak_rss_kb']} KiB."
        "\n\n"
        f"What a scrape holds at {n} targets: {sc['series']} sample lines (series), "
        f"{sc['series_per_target']:.2f} per target, {sc['series_untargeted']} of them "
        f"without a `target` label ({sc['series_per_target_labelled']:.2f} per target "
        f"with one); body {sc['plain_bytes']} bytes plain "
        f"({sc['plain_bytes_per_target']:.0f} per target, asked with `Accept-Encoding: "
        f"identity`), {sc['gzip_bytes']} bytes gzip-compressed "
        f"({sc['gzip_bytes_per_target']:.0f} per target; {sc['gzip_body_bytes']} once "
        f"decompressed). The {sc['gzip_scrape_s']['n']} gzip scrapes, timed to the last "
        f"byte: {', '.join(f'{v:.3f}' for v in sc['gzip_scrape_each_s'])} s (max "
        f"{sc['gzip_scrape_s']['max']:.3f} s)."
    )


def _w2(w2: dict[str, Any]) -> list[str]:
    d = w2["wsmon"]
    lag = d["send_lag"]
    return [
        "### 2. Capacity",
        "",
        f"{d['targets']} targets, 1 probe each per {w2['interval_s']:g} s, `send_alignment: "
        f"{d['send_alignment']}` in the daemon's config (first sends on a grid of that step, "
        "so that one wake-up sends several probes; the schedule itself is kept, see "
        f"docs/performance.md). Window {d['window_s']:.1f} s: CPU {d['cpu_s']:.2f} s = "
        f"{d['cpu_pct_of_core']:.2f} % of one core (utime + stime: {d['cpu_ticks_s']:.2f} s), "
        f"{d['round_trips']} round trips "
        f"({fmt(d['cpu_us_per_round_trip'])} us each), "
        f"{fmt(d['wakeups_per_round_trip'], '.2f')} wake-ups per round trip; the rest of the "
        f"machine meanwhile (other processes / interrupts / steal): {_rest(d)} CPU s. Probes "
        "sent "
        f"{d['probes_sent']}, timeouts {d['probe_timeouts']}, errors {d['probe_errors']}; "
        f"RTT mean {fmt(d['rtt_mean_ms'], '.3f')} ms; garbage collections "
        f"(`python_gc_collections_total`) {d['gc_collections']}.",
        "",
        _w2_memory(w2),
        "",
        f"Probe send lag (`wsmon_probe_send_lag_seconds`, its increase over the window: "
        f"{lag['count']} sends): mean {fmt(lag['mean_ms'], '.3f')} ms (sum over count), p50 "
        f"{fmt(lag['p50_ms'], '.2f')} ms and p99 {fmt(lag['p99_ms'], '.2f')} ms interpolated "
        f"within the buckets as `histogram_quantile` does; "
        f"{fmt(100 * lag['share_within_20ms'], '.3f')} % of the sends within 20 ms (exact: "
        "a bucket bound). Buckets (le: sends): "
        + ", ".join(f"{le:g}: {c:.0f}" for le, c in lag["buckets"])
        + ".",
        "",
    ]


def _w3(w3: dict[str, Any]) -> list[str]:
    out = ["### 3. Scrape cost", ""]
    for key in ("small", "large"):
        if not (ph := w3.get(key)):
            continue
        ex, pt, threshold = ph["exposition"], ph["promtool"], ph["stall_threshold_ms"]
        pt_text = (
            "promtool not installed"
            if not pt.get("available")
            else f"`promtool check metrics`: exit {pt['exit']}"
            + (f", output: `{pt['output'][:300]}`" if pt["output"] else ", no findings")
        )
        out.append(
            f"- {ph['targets']} targets: {ph['scrape_s']['n']} scrapes in a row (gzip accepted, "
            f"timed to the last byte): {', '.join(f'{x:.3f}' for x in ph['scrape_each_s'])} s; "
            f"{ph['wire_bytes']} bytes on the wire, {ph['body_bytes']} uncompressed, "
            f"{ex['samples']} samples in {ex['families']} families; targets with answered "
            f"probes {ex['targets_with_answered_probes']} of {ph['targets']}; disconnects "
            f"counted {ex['disconnects_total']:g} after the server dropped {ph['dropped']}. "
            "Event-loop lag sensor (a 1 ms sleep loop in the daemon's process): max stall "
            f"during scrapes {stall_text(ph['stall_during_scrapes_max_ms'], threshold)}, "
            "outside scrapes (1 s before the first, 0.3 s between them) "
            f"{stall_text(ph['stall_outside_scrapes_max_ms'], threshold)}; garbage "
            f"collections between the first and the last scrape "
            f"{ph['gc_collections_between_scrapes']}. {pt_text}."
        )
    for key in ("baseline_small", "baseline_large"):
        if b := w3.get(key):
            g = b["generate_latest_s"]
            out.append(
                f"- baseline, {b['targets']} targets: `generate_latest` mean {g['mean']:.3f} s, "
                f"max {g['max']:.3f} s over {g['n']} calls; {b['series']} samples, {b['bytes']} "
                f"bytes; registry from {b['source']}"
                + (f" (monitor.metrics could not be used: {b['monitor_error']})"
                   if b.get("monitor_error") else "") + "."
            )  # fmt: skip
    return [*out, ""]


def _w4(w4: dict[str, Any]) -> list[str]:
    wm = w4["wsmon"]
    sc = wm.get("scraping", {})
    out = [
        "### 4. RTT fidelity under load",
        "",
        f"Server reply delay {w4['server_delay_ms']:g} ms, {wm['targets']} targets, one probe "
        f"each per {w4['interval_s']:g} s, window {wm['window_s']:.1f} s each. wsmon was "
        f"scraped every second ({sc.get('scrapes', 0)} besides the window's two edges, mean "
        f"{fmt(sc.get('scrape_s', {}).get('mean'), '.3f')} s each); the floor was not. wsmon's "
        "mean is over every round trip (`wsmon_probe_rtt_seconds` sum over count); its "
        "percentiles are of `wsmon_probe_last_rtt_seconds` sampled at each scrape for every "
        "probe answered since the previous one (about one sample per target and scrape: "
        "`samples`). The floor's are over all its round trips.",
        "",
        "| client | receive path: hooks | round trips | excess mean ms | samples | p50 | p90 "
        "| p99 | max | CPU % of a core |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("floor", "floor (unscraped)"), ("wsmon", "wsmon (scraped 1/s)"),
                       ("wsmon_portable", "wsmon, portable path (scraped 1/s)")):  # fmt: skip
        if not (r := w4.get(key)):
            continue
        e = r["rtt_excess_ms"]
        out.append(
            f"| {label} | {_hooks(r)} | {r['round_trips']} | {excess(r, 'mean'):.3f} "
            f"| {e.get('n', 0)} | {fmt(e.get('p50'), '.3f')} | {fmt(e.get('p90'), '.3f')} "
            f"| {fmt(e.get('p99'), '.3f')} | {fmt(e.get('max'), '.3f')} "
            f"| {fmt(r['cpu_pct_of_core'], '.1f')} |"
        )
    return [*out, ""]


def _w5(w5: dict[str, Any]) -> list[str]:
    return [
        "### 5. Start-up",
        "",
        f"{w5['targets']} targets: config load {w5['config_s']:.2f} s, then from "
        f"`Daemon.start()` (its self-test included) until the server held every connection "
        f"{w5['connect_s']:.2f} s (the server's count polled every 50 ms); "
        f"`wsmon_connected` then added up to {w5['connected']}. The server accepted "
        f"{w5['server_connections_total']} connections, {w5['server_open']} open; it held "
        f"every upgrade {w5['handshake_delay_ms']:g} ms before answering; at most "
        f"{w5['max_upgrades_in_progress']} upgrades were in progress at once and at most "
        f"{w5['max_pending_sockets']} accepted sockets not yet upgraded (limit {w5['limit']}).",
        "",
    ]


def _w6(w6: dict[str, Any]) -> list[str]:
    run = [v for v in ("classic", "native") if v in w6]
    both = len(run) == 2
    head = "| figure | " + " | ".join(run) + (" | native / classic |" if both else " |")
    rows = [
        f"| {what} | " + " | ".join(w6_text(w6_value(w6[v], key)) for v in run)
        + (f" | {w6_ratio(w6, key)} |" if both else " |")
        for key, what in W6_FIGURES
    ]  # fmt: skip
    setups = "; ".join(f"{v}: {_w6_setup(w6[v])}" for v in run)
    return [
        "### 6. Prometheus cost",
        "",
        f"A real Prometheus ({w6['prometheus']}) scraping one daemon with {w6['targets']} "
        f"targets (1 probe each per {w6['interval_s']:g} s, `send_alignment: "
        f"{w6['send_alignment']}`) every {w6['scrape_interval_s']:g} s (`scrape_interval` "
        f"and `scrape_timeout`, one job `wsmon`) for {w6['ingest_s']:g} s after it was "
        f"ready (its first scrape comes a few seconds later: service discovery batches its "
        "updates), a fresh Prometheus and daemon per variant, one after the other on one "
        f"node server; {setups}. Prometheus runs as `prometheus --config.file=... "
        "--storage.tsdb.path=... --web.listen-address=127.0.0.1:PORT [feature flags]` (TSDB "
        "in a temporary directory, a loopback port found free). Then "
        "read from Prometheus's own `/metrics` (head series and chunks, RSS, Go heap, "
        "samples appended) and its query API (instant queries at the end; `[...]`: the "
        "ingestion); CPU of both processes from `/proc/<pid>` over the ingestion. "
        "`scrape_duration_seconds` is Prometheus's own: from its request until the samples "
        "were parsed and appended (longer than workload 3's scrapes, timed to the last "
        "byte). "
        "`absent`: the query's result was empty. With native histograms stored, "
        "`count(wsmon_probe_rtt_seconds_bucket)` is absent and the `histogram_count` of the "
        "RTT histograms' rate is above 0; with classic ones, the reverse.",
        "",
        head,
        "|---|" + "---|" * (len(run) + (1 if both else 0)),
        *rows,
        "",
    ]


def _w6_setup(v: dict[str, Any]) -> str:
    """One variant's daemon config and Prometheus feature flags."""
    hist = v["metrics_histograms"]
    daemon = "no `metrics:` block (classic, the default)" if hist is None else (
        f"`metrics: {{histograms: {hist}}}`")  # fmt: skip
    flags = [a for a in v["prometheus_argv"] if a.startswith("--enable-feature")]
    flag = " ".join(f"`{a}`" for a in flags) or "no feature flag"
    return f"the daemon with {daemon}, Prometheus with {flag}"


W7_LABELS = {"floor": "floor (aiohttp receive + `json.loads`)", "wsmon": "wsmon (`wsmon run`)"}


def _w7_row(label: str, r: dict[str, Any]) -> str:
    n = r["messages_in_cpu_window"]
    return (
        f"| {label} | {_loop(r)} | {r['messages']} | {fmt(r['messages_per_s'], '.0f')} "
        f"| {fmt(r['cpu_ticks_s'], '.2f')} | {fmt(r['cpu_us_per_message'], '.2f')} "
        f"| {fmt(r['cpu_us_per_message_schedstat'], '.2f')} "
        f"| {fmt(r['wakeups'] / n if n else None, '.3f')} | {fmt(r['rss_kb'] / 1024, '.1f')} "
        f"| {fmt(r['server_cpu_s'], '.2f')} | {_rest(r)} |"
    )


def _w7(w7: dict[str, Any]) -> list[str]:
    f, w, st, c = w7["floor"], w7["wsmon"], w7["staleness"], w7["counts"]
    rounds = w7["rounds"]
    d, own = st["delay_ms"], st["daemon_own_ms"]
    offsets = [o["offset_ms"] for pair in st["offsets_ms"] for o in pair]
    uncertainty = max(o["uncertainty_ms"] for pair in st["offsets_ms"] for o in pair)
    per_round = "; ".join(
        f"{i + 1}: {fmt(r['ratio'], '.2f')}x (wsmon {fmt(r['wsmon']['cpu_us_per_message'], '.2f')}"
        f", floor {fmt(r['floor']['cpu_us_per_message'], '.2f')} us), delay p99 "
        f"{fmt(r['wsmon']['stale']['delay_ms'].get('p99'), '.2f')} ms"
        for i, r in enumerate(rounds)
    )
    return [
        "### 7. Streams",
        "",
        f"{w7['streams']} subscription streams, one per connection (a target of the daemon, "
        f"a connection of the floor), each sent {w7['rate_per_stream']:g} messages a second by "
        "the node server (`bench/node/server.js`, its own process): Deriv-style ticks "
        "(`echo_req`, `msg_type: tick`, `req_id`, `subscription.id`, `tick` with `ask`, `bid`, "
        f"`epoch`, `id`, `pip_size`, `quote`, `symbol`), {fmt(w['message_bytes_mean'], '.0f')} "
        "bytes on average; the first at the subscribe, then each on its stream's own schedule "
        "(so the streams' phases are spread). The clients run in turn on one server, "
        f"{len(rounds)} round{'s' if len(rounds) != 1 else ''}, a window of "
        f"{w['window_s'] / len(rounds):.1f} s each after "
        "every stream flowed and a warm-up. wsmon runs as a user runs it: `python -m monitor "
        "run --config FILE` (the `wsmon` command, from the run's copy of monitor/), default "
        f"event loop (`--event-loop auto`: {w7['loop']}, seen mapped in the process), default "
        f"receive path ({w['receive_path']}), its JSON log on stderr to a file; the config "
        "gives every target one probe, `{name: ticks, kind: stream, send: {ticks: R_50, "
        f"subscribe: 1}}, expect: {{msg_type: tick}}, max_gap: {w7['max_gap_s']:g}s}}` and no "
        "other (`defaults.probes` replaces the default `ping`; `on_stale: report`, no "
        "`lag_field`). The floor (`bench/clients.py floor-streams`) opens the same connections, "
        "sends the same subscribe, then loops `msg = await ws.receive(); "
        f"json.loads(msg.data)` per connection, on {w7['loop']} too. CPU is utime + stime from "
        "`/proc/<pid>/stat` between the window's edges (the schedstat sum beside it), read "
        "around the reading of the counts (wsmon: a scrape; the floor: `begin` / `end`), "
        "over the messages it received meanwhile (wsmon: the increase of "
        "`wsmon_stream_messages_total`; the floor: its own count). The table pools the rounds.",
        "",
        "| client | event loop | messages | per s | CPU s (utime + stime) | CPU us / message "
        "| CPU us / message (schedstat) | wake-ups / message | RSS MiB | node server CPU s "
        "| rest of the machine, CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(_w7_row(W7_LABELS[k], w7[k]) for k in ("floor", "wsmon")),
        "",
        f"Per round: {per_round}. The server sent {fmt(f['server_sent'] / f['window_s'], '.0f')} "
        f"messages a second during the floor's windows and "
        f"{fmt(w['server_sent'] / w['window_s'], '.0f')} during wsmon's. In wsmon's windows "
        f"(summed over the rounds): streams gone stale {w['stalls_in_window']}, stream errors "
        f"{w['probe_errors']}, unmatched messages {w['unmatched']}, garbage collections "
        f"{w['gc_collections']}; the last round's mean gap between a stream's messages "
        f"{fmt(w['gap_mean_ms'], '.1f')} ms (`wsmon_stream_gap_seconds`) and event-loop lag "
        f"p99 {fmt(w['loop_lag_p99_ms'], '.2f')} ms (`wsmon_event_loop_lag_seconds`, "
        f"{w['loop_lag_samples']} samples, interpolated within its buckets).",
        "",
        f"Staleness: after its window, in every wsmon round, {st['stalled'] // len(rounds)} "
        f"streams (every {w7['streams'] // max(1, st['stalled'] // len(rounds))}th target) "
        f"stopped, one after another {st['stall_gap_ms']:g} ms apart: the server stopped "
        "sending on them and kept their connections open, the other streams kept flowing. "
        "Each one's delay is its `stream.stale` log line's timestamp (ISO 8601 with "
        f"{st['log_timestamp_digits']} decimals, UTC: the daemon's wall clock when it logged) "
        "minus (the server's record of when it wrote that stream's last message + `max_gap`). "
        "The server keeps its records on `performance.timeOrigin + performance.now()`; its "
        "offset from this process's `time.time()` was measured before and after the stops "
        f"(the shortest of {st['clock_samples']} HTTP round trips each): "
        f"{', '.join(f'{o:+.3f}' for o in offsets)} "
        f"ms (uncertainty at most {uncertainty:.3f} ms), each round's mean applied. Over "
        f"{d.get('n', 0)} stopped streams: p50 {fmt(d.get('p50'), '.2f')}, p90 "
        f"{fmt(d.get('p90'), '.2f')}, p99 {fmt(d.get('p99'), '.2f')}, max "
        f"{fmt(d.get('max'), '.2f')} ms, min {fmt(st['delay_min_ms'], '.2f')} ms; never "
        f"declared stale {st['missed']}; `stream.stale` for streams that kept flowing "
        f"{st['false_stale']}. The delay includes the message's way from the server to the "
        "daemon's read; a negative one is a stale declared before the `max_gap` had passed by "
        "the server's clock (the daemon's clock runs a deadline due within its resolution, "
        "1 ms on uvloop, at once). The daemon's own view, `silent_s` - `max_gap` from the same "
        f"lines (from its read of the last message, `silent_s` rounded to 1 ms): p50 "
        f"{fmt(own.get('p50'), '.1f')}, p99 {fmt(own.get('p99'), '.1f')}, max "
        f"{fmt(own.get('max'), '.1f')} ms.",
        "",
        "Count: then the server stopped every stream, and the daemon's "
        "`wsmon_stream_messages_total` (summed over the targets, scraped until it equalled "
        "the server's count or 5 s passed) was compared with the server's count of the messages it "
        "wrote since the daemon started, per round (daemon / server): "
        + "; ".join(f"{e['daemon_counted']} / {e['server_sent']}" for e in c["each"])
        + f": {'equal' if c['match'] else 'NOT equal'}.",
        "",
    ]


def _w8_attempt_row(a: dict[str, Any]) -> str:
    c, own = a["connect"], a.get("ownership")
    loaded = [x for x in c["loaded_cpu_s"] if x == x]  # NaN: never loaded
    once = "not checked" if own is None else (
        f"{own['targets'] - own['violations']} of {own['targets']}")  # fmt: skip
    ran_out = a["diagnosis"]["ran_out"] or "-"
    return (
        f"| {c['targets']} | {c['shards']} | {c['servers']['servers']} "
        f"| {fmt(c['connect_s'])} | {fmt(c['metrics_connected_s'])} "
        f"| {c['open_at_goal']} | {c['machine_busy_pct']:.0f} "
        f"| {c['daemons_cpu_s']:.1f} ({sum(loaded):.1f}) | {c['servers_cpu_s']:.1f} "
        f"| {once} | {'yes' if a['held'] else 'no'} | {ran_out} |"
    )


def _w8_compare_row(label: str, a: dict[str, Any]) -> str:
    c, st = a["connect"], a.get("steady")
    if st is None:
        return f"| {label} | {a['targets']} | {max(1, a['shards'])} | {fmt(c['connect_s'])} " + (
            "| - " * 13 + "|")  # fmt: skip
    if a["targets"] == 1:  # per-target figures of one target say nothing
        return (
            f"| {label} | 1 | 1 | {fmt(c['connect_s'])} | {st['rss_sum_kb'] / 1024:.0f} | - "
            f"| {st['cpu_pct_of_core']:.1f} |" + " - |" * 9
        )
    return (
        f"| {label} | {a['targets']} | {max(1, a['shards'])} | {fmt(c['connect_s'])} "
        f"| {st['rss_sum_kb'] / 1024:.0f} | {st['rss_kib_per_target']:.2f} "
        f"| {st['cpu_pct_of_core']:.1f} | {st['cpu_us_per_target_s']:.2f} "
        f"| {fmt(st['cpu_us_per_round_trip'])} | {st['round_trips_per_s']:.0f} "
        f"| {st['probe_timeouts']} | {fmt(st['send_lag_p99_ms'], '.2f')} "
        f"| {fmt(st['rtt_mean_ms'], '.3f')} | {st['servers_cpu_pct_of_core']:.1f} "
        f"| {st['machine_busy_pct_of_core']:.0f} | {st['others_pct_of_core']:.0f} |"
    )


def _w8_shards(f: dict[str, Any]) -> list[str]:
    c, own, st = f["connect"], f.get("ownership"), f["steady"]
    rows = []
    for i, lg in enumerate(f["logs"]):
        owned = own["per_shard"][i]["wsmon_targets"] if own else c["owned"][i]
        rows.append(
            f"| {i} | {owned} | {fmt(c['loaded_after_s'][i])} | {fmt(c['loaded_cpu_s'][i])} "
            f"| {fmt(lg['last_connect_s'])} | {c['daemons_cpu_each_s'][i]:.1f} "
            f"| {st['rss_kb'][i] / 1024:.0f} | {st['peak_rss_kb'][i] / 1024:.0f} |"
        )
    return [
        "| shard | targets (`wsmon_targets`) | `config.loaded` after, s | its CPU s by then "
        "| last `connect.ok`, s | CPU s until all connected | RSS MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _w8_ran_out(w8: dict[str, Any]) -> str:
    """What each attempt ran short of, in words."""
    parts = []
    for a in w8["attempts"]:
        c, d = a["connect"], a["diagnosis"]
        failed = ", ".join(f"{k} {v}" for k, v in sorted(d["connect_failed"].items())) or "none"
        what = d["ran_out"] or "nothing"
        parts.append(
            f"{c['targets']} targets: {what} (connect failures by reason: {failed}; "
            f"`fd_budget.short` lines {d['fd_budget_short']}; lines at level error "
            f"{d['error_lines']}; MemAvailable at its lowest "
            f"{c['mem_available_low_kb'] / 2**20:.1f} of {c['mem_available_start_kb'] / 2**20:.1f}"
            f" GiB; the machine's CPU {c['machine_busy_pct']:.0f} % busy while connecting)"
        )
    return "; ".join(parts)


def _w8(w8: dict[str, Any]) -> list[str]:
    f, single, one = w8["fleet"], w8["single"], w8["one"]
    plan = f["connect"]["servers"]
    st = f.get("steady", {})
    why = (
        f" (not {w8['goal_targets']}: one process's descriptors, hard limit "
        f"{plan['nofile_hard']}, hold its targets plus the daemon's reserve only up to this "
        "size)" if w8["single_limited_by_fds"] else ""
    )  # fmt: skip
    out = [
        "### 8. A fleet of shards",
        "",
        f"{w8['goal_targets']} targets, one probe each, `{{name: ping, send: {{ping: 1}}, "
        f"expect: {{msg_type: ping}}, interval: {w8['interval_s']:g}s}}` and no other, in one "
        f"config that every shard reads; {w8['shards']} shards, `python -m monitor run "
        "--config FILE --shard I/N --log-format json` (the `wsmon` command from the run's copy "
        f"of monitor/; default event loop: {st.get('loop', 'n/a')}, seen mapped in the "
        f"process; default receive path: {', '.join(st.get('receive_paths', [])) or 'n/a'}), "
        "all started at once. The targets are spread over node servers "
        "(`bench/node/server.js`), target tI at server I mod servers, each server on a "
        f"loopback address of its own ({', '.join(plan['hosts'])}; {plan['per_server']} "
        f"connections each at most): from one source address a destination (address, port) "
        f"takes at most the ephemeral port range ({plan['port_range'][0]}-"
        f"{plan['port_range'][1]}, {plan['ephemeral_ports']} ports), and a process at most "
        f"its descriptors (hard limit {plan['nofile_hard']}, every process raises its soft "
        "limit to it), so a server takes at most 3/4 of the smaller "
        f"({plan['per_server_max']}). Each server counts the open connections of each target "
        "(named by `?target=tI`). Connect-all runs from the start of the shard processes until "
        "the servers hold every target's connection (polled every 0.25 s); then "
        "`wsmon_connected` is summed over the shards' `/metrics` until it adds up. A probe "
        f"interval after that (every target answered once) each daemon was scraped "
        f"{st.get('scrapes_each', 'n/a')} times (gzip) and its VmRSS read; then a steady window "
        f"of {fmt(st.get('window_s'))} s: CPU is utime + stime from `/proc/<pid>/stat` of "
        "each daemon over its own span between two scrapes (the scrapes' own CPU outside), "
        "summed as rates; round trips, probe timeouts and send lag from the daemons' "
        "`/metrics`. The single daemon is `python -m monitor run --config FILE` (no shard "
        f"flags) with {single['targets']} targets{why}, measured the same way on node servers "
        "of its own; the one-target daemon is the fixed cost of a process.",
        "",
        "Attempts (the first at the goal's size; a smaller one follows when an attempt does "
        "not hold):",
        "",
        "| targets | shards | node servers | connect-all s (servers' counts) "
        f"| `wsmon_connected` adds up, s | connected at {w8['goal_s']:g} s "
        "| machine CPU busy while connecting, % of the cores "
        "| shards' CPU s (until their configs were loaded) "
        "| node servers' CPU s | exactly once | held | ran short of |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_w8_attempt_row(a) for a in w8["attempts"]),
        "",
        f"What ran out: {_w8_ran_out(w8)}.",
        "",
    ]
    if "steady" in f:
        fc = f["connect"]
        curve = ", ".join(f"{t:.0f} s: {n}" for t, n in fc["curve"])
        out += [
            f"The fleet of {f['targets']} (config file {fc['config_bytes'] / 2**20:.1f} MiB), "
            f"connections at the servers over time: {curve}. While it connected the machine's "
            f"CPU went to the shards ({fc['daemons_cpu_s']:.1f} s, "
            f"{sum(fc['loaded_cpu_s']):.1f} s of it before their `config.loaded` lines), the "
            f"node servers ({fc['servers_cpu_s']:.1f} s), interrupts "
            f"({fc['interrupts_cpu_s']:.1f} s), this harness ({fc['harness_cpu_s']:.1f} s) and "
            f"other processes ({fc['others_cpu_s']:.1f} s). Descriptors once every target was "
            f"connected: shards {', '.join(str(x) for x in fc['daemon_fds'])} (soft limits "
            f"{', '.join(str(x) for x in sorted(set(fc['daemon_nofile'])))}), node servers "
            f"{', '.join(str(x) for x in fc['server_fds'])} (soft limits "
            f"{', '.join(str(x) for x in sorted(set(fc['server_nofile'])))}).",
            "",
            *_w8_shards(f),
            "",
            "| daemons | targets | processes | connect-all s | RSS MiB, sum | KiB per target "
            "| CPU % of a core | CPU us per target per s | CPU us per round trip "
            "| round trips per s | probe timeouts | send lag p99 ms | RTT mean ms "
            "| node servers CPU % | machine busy, % of a core | other processes, % of a core |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            _w8_compare_row("fleet", f),
            _w8_compare_row("single daemon", single),
            _w8_compare_row("one target", one),
            "",
        ]
    own = w8["attempts"][0].get("ownership")
    if own:
        shards = "; ".join(
            f"{i}: {p['connected']} connected of {p['series']} series, `wsmon_targets` "
            f"{p['wsmon_targets']}, `wsmon_config_targets` {p['wsmon_config_targets']}"
            for i, p in enumerate(own["per_shard"])
        )
        out += [
            f"Ownership at {own['targets']} targets: per shard {shards}. At the servers, "
            f"targets whose connection was accepted more than once (a reconnect) "
            f"{own['servers_reconnected']}."
            + (f" Examples of exceptions: {', '.join(own['examples'])}." if own["examples"]
               else ""),
            "",
        ]  # fmt: skip
    return out


def _profile(prof: dict[str, Any]) -> list[str]:
    out = ["### Where wsmon spends CPU (workload 1 size, stock asyncio)", "", prof["note"], ""]
    if prof["top"]:
        out += ["| function | self % | total % |", "|---|---|---|"]
        out += [f"| `{fn}` | {s:.1f} | {t:.1f} |" for fn, s, t in prof["top"]]
        out.append("")
    return out


def details(res: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, part in (("w1", _w1), ("w2", _w2), ("w3", _w3), ("w4", _w4), ("w5", _w5),
                      ("w6", _w6), ("w7", _w7), ("w8", _w8), ("profile", _profile)):  # fmt: skip
        if res.get(key):
            out += part(res[key])
    return out


def ablation_details(a: dict[str, Any]) -> list[str]:
    f = a["floor"]
    rounds = a["rounds"]
    head = (
        "| configuration | receive path: hooks | CPU us / round trip (pooled) | ratio to "
        "the floor (median; rounds) | CPU against every hook (median of the rounds) | RTT "
        "mean ms | wake-ups / round trip | rest of the machine, CPU s |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for key, label in ABLATION_LABELS.items():
        r = a[key]
        if key == "floor":
            ratio = vs = "-"
        else:
            ratio = ratio_text(a, key)
            vs = "-" if key == "all" else f"{100 * a['vs_all'][key]:+.1f} %"
        rows.append(
            f"| {label} | {_hooks(r)} | {fmt(r['cpu_us_per_round_trip'])} | {ratio} | {vs} "
            f"| {fmt(r['rtt_mean_ms'], '.3f')} | {fmt(r['wakeups_per_round_trip'], '.2f')} "
            f"| {_rest(r)} |"
        )
    return [
        f"Workload 1's setup ({f['targets']} targets, one probe each per {a['interval_s']:g} s) "
        "with wsmon on "
        f"uvloop, the clients in turn, {len(rounds)} rounds, windows of "
        f"{f['window_s'] / len(rounds):.1f} s. `every hook` is the daemon as it starts "
        "(its self-test decides); each `without` runs `Daemon(hooks=Hooks(...))` with that "
        "field False (with the inbox among them, the daemon's self-test runs first in the "
        "child: it is what installs aiohttp's queue subclass); `no hook` is "
        '`receive_path="portable"`. The hooks each child ran with are checked against the '
        f"ones intended. {METHOD}",
        "",
        head,
        *rows,
        "",
        "Against every hook: the median over the rounds of that round's CPU per round trip "
        "without the hook over the same round's with every hook, minus one (positive: the hook "
        "saves CPU). Rounds (ratio to the floor): "
        + "; ".join(
            f"{i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items())
            for i, r in enumerate(rounds)
        )
        + ".",
        "",
    ]


def runs_text(runs: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """One line per run that produced the figures of `keys` (workloads grouped by run)."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        if key in runs:
            groups.setdefault(json.dumps(runs[key], sort_keys=True, default=str), []).append(key)
    out = []
    for blob, keys_ in groups.items():
        info = json.loads(blob)
        m = info["machine"]
        if m.get("monitor_rev"):
            code = f"monitor/ as committed at `{m['monitor_rev']}` (`git archive`)"
        else:
            dirty = ", ".join(f"`{x.strip()}`" for x in m["monitor_dirty"]) or "none"
            code = (f"monitor/ copied from the working tree at the start (digest "
                    f"{m['monitor_digest']}; uncommitted changes: {dirty})")  # fmt: skip
        moved = m.get("worktree_digest_end")
        if moved and moved != m.get("worktree_digest_start"):
            code += "; the working tree's monitor/ changed during the run (the copy did not)"
        out.append(
            f"- {', '.join(keys_)}: `{info['command']}` ({info['sizes']} sizes), "
            f"{m['date_utc']}, commit `{m['commit']}`, {code}; load average at start "
            f"{m['loadavg_start']}, at the end {m.get('loadavg_end')}; wall time of that run "
            f"{info['wall_s']:.0f} s"
        )
    return out


def machine_text(m: dict[str, Any]) -> str:
    v = m["versions"]
    return (
        f'Machine: `nproc` {m["nproc"]}, CPU "{m["cpu"]}", Linux {m["kernel"]}, Python '
        f"{m['python']} (aiohttp {v.get('aiohttp')}, websockets {v.get('websockets')}, uvloop "
        f"{v.get('uvloop')}, prometheus_client {v.get('prometheus_client')}), node "
        f"{v.get('node')} with ws {v.get('ws')}; RLIMIT_NOFILE hard limit {m['nofile']} per "
        "process (each child raises its soft limit to it). The machine is shared: other "
        "processes may have run at the same time (see the load average)."
    )


def render(merged: dict[str, Any]) -> str:
    """The bench.run section of RESULTS.md, from the merged results."""
    res = merged["results"]
    keys = [k for k in ("1", "2", "3", "4", "5", "6", "7", "8", "profile") if k in merged["runs"]]
    out = [
        MAIN[0],
        "## Performance workloads (`bench/run.py`)",
        "",
        "Generated from what the runs below measured; figures are only comparable within one "
        "run (each baseline runs in the same run, on the same node server). The daemon is "
        "measured from outside: CPU and memory from `/proc/<pid>`, everything else from its "
        "own `/metrics` (see `bench/measure.py`). How to run, from the repository root, in "
        "the project's virtualenv (`pip install -e '.[dev]'`; Node.js >= 18 and npm on PATH, "
        "`bench/node/node_modules` is installed with `npm ci` when missing): "
        "`python -m bench.run [--quick] [--only 1,3] [--monitor-rev REV] [--profile] "
        "[--no-write] [--json PATH]` (workloads 1 to 5 and 7 unless `--only` says otherwise), "
        "`python -m bench.run --only 6` for workload 6 (a real Prometheus: the `prometheus` "
        "binary on PATH; `--w6-variants classic,native`), `python -m bench.run --only 8` for "
        "workload 8 (a fleet of 10 shards with 100,000 targets on this machine, about 10 "
        "minutes), and `python -m bench.run --only 1 "
        "--hooks-ablation` for the section after this one. `--quick` is a smoke test "
        "(`tests/test_bench.py`). "
        "The children run monitor/ from a copy made at the start (or as committed at "
        "`--monitor-rev REV`), so that edits made meanwhile stay out of a run. Every figure "
        "is also in `bench/results.json`.",
        "",
        "Runs these figures come from (workload: command):",
        "",
        *runs_text(merged["runs"], keys),
        "",
        machine_text(merged["machine"]),
        "",
        "### Goals",
        "",
        "Stated once, in `GOALS` of `bench/report.py`; the judged rows run wsmon on its "
        "default receive path (the hooks its start-up self-test proves: "
        '`wsmon_build_info{receive_path="hooked"}`, checked at every window).',
        "",
        goals_table(),
        "",
        "### Figures",
        "",
        table(judge(res)),
        "",
        *details(res),
        MAIN[1],
    ]
    return "\n".join(out) + "\n"


def render_ablation(merged: dict[str, Any]) -> str:
    """The hooks-ablation section of RESULTS.md."""
    return "\n".join([
        ABLATION[0],
        "## What each hook buys (`bench/run.py --hooks-ablation`)",
        "",
        *runs_text(merged["runs"], ["ablation"]),
        "",
        *ablation_details(merged["results"]["ablation"]),
        ABLATION[1],
    ]) + "\n"  # fmt: skip
