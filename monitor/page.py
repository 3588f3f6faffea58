"""The status page served at `/`: one HTML document with its style and script inline, which
polls `api/v1/targets` (docs/api.md) and redraws the table in place.

No file, CDN or build step: the page is this module's string, with its style and the script
of `monitor.pagescript` inline. Its Content-Security-Policy allows exactly those (by their
SHA-256, computed at import), requests to the same origin, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib

from . import __version__
from .pagescript import SCRIPT, fill

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


DOCUMENT = fill(_BODY, STYLE=STYLE, SCRIPT=SCRIPT, VERSION=__version__).encode()

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
