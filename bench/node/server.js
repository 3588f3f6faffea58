'use strict';
/*
 * Load-side WebSocket server for wsmon's benchmarks (bench/run.py starts it; it is not ours,
 * it is the `ws` package from npm).
 *
 * Answers Deriv-style requests:
 *   {"ping":1,"req_id":N} -> {"echo_req":{...},"msg_type":"ping","ping":"pong","req_id":N}
 *   {"time":1,"req_id":N} -> {"echo_req":{...},"msg_type":"time","time":<epoch s>,"req_id":N}
 *   {"ticks":"R_50","subscribe":1,"req_id":N}
 *                         -> a tick at once, then one every 1/--tick-rate seconds, shaped as
 *                            the Deriv API's: {"echo_req":{...},"msg_type":"tick","req_id":N,
 *                            "subscription":{"id":S},"tick":{"ask":..,"bid":..,"epoch":..,
 *                            "id":S,"pip_size":4,"quote":..,"symbol":"R_50"}}
 *   {"forget":S,"req_id":N} -> ends subscription S: {"echo_req":{...},"forget":1|0,...}
 *   anything else         -> {"echo_req":{...},"error":{"code":"UnrecognisedRequest",...},...}
 * optionally after a reply delay (not the ticks), and counts connections and handshakes.
 * A connection is named by the `target` query parameter of its URL (ws://host:port/?target=t7;
 * none: its number), which /stall takes.
 *
 * Usage:
 *   node server.js [--host 127.0.0.1] [--port 0] [--delay MS] [--handshake-delay MS]
 *                  [--tick-rate PER_S]
 *   (or the environment: WSMON_BENCH_PORT, WSMON_BENCH_DELAY_MS,
 *    WSMON_BENCH_HANDSHAKE_DELAY_MS)
 *
 * Prints one JSON line once listening: {"event":"listening","port":P,...}.
 *
 * HTTP paths on the same port (anything that is not a WebSocket upgrade):
 *   GET /stats            counters as JSON (see stats() below)
 *   GET /reset            zero the maxima and the message counters, keep connections
 *   GET /drop?n=K&how=close|terminate
 *                         end K open connections: a 1001 close frame, or a TCP reset
 *   GET /stall?targets=a,b,c&gap_ms=G
 *                         the named connections' subscriptions stop sending (the connections
 *                         stay open, and later subscriptions on them send nothing either),
 *                         one after another G ms apart; each stall is recorded: its stream's
 *                         last tick sent (wall clock, ms), and how many it sent
 *   GET /stalls           those records
 *   GET /quiet            every subscription stops sending at once (for a count of what was
 *                         sent that no tick in flight can change); /reset ends the quiet
 *   GET /clock            the wall clock as this process keeps it for the records (ms)
 *   GET /targets          per connection named by its URL (the `target` query parameter):
 *                         connections open now and upgrades completed since the start,
 *                         {"open": {name: n}, "accepted": {name: n}} (workload 8 checks each
 *                         target is connected exactly once)
 * SIGUSR2 prints the same stats as one JSON line on stdout; SIGTERM/SIGINT end the process.
 *
 * Handshake concurrency: an upgrade is "in progress" from the `upgrade` event (request
 * headers parsed) until ws has written the 101 response (handleUpgrade's callback). With
 * --handshake-delay the server holds every upgrade that long before answering, so the
 * number in progress at once equals the client's own concurrency and can be checked
 * against its limit (without a delay, node finishes each upgrade before reading the next,
 * and the maximum says nothing about the client). Sockets accepted but not yet upgraded
 * are counted too (`max_pending_sockets`): that interval also lies inside the client's
 * handshake slot, so neither maximum can exceed the client's real concurrency.
 */

const http = require('http');
const url = require('url');
const crypto = require('crypto');
const { performance } = require('perf_hooks');
const { WebSocketServer } = require('ws');
const WS_VERSION = require('ws/package.json').version;

function arg(name, envName, fallback) {
  const i = process.argv.indexOf(name);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (envName && process.env[envName] !== undefined && process.env[envName] !== '') {
    return process.env[envName];
  }
  return fallback;
}

const host = arg('--host', 'WSMON_BENCH_HOST', '127.0.0.1');
const port = Number(arg('--port', 'WSMON_BENCH_PORT', '0'));
const delayMs = Number(arg('--delay', 'WSMON_BENCH_DELAY_MS', '0'));
const handshakeDelayMs = Number(arg('--handshake-delay', 'WSMON_BENCH_HANDSHAKE_DELAY_MS', '0'));
const tickRate = Number(arg('--tick-rate', 'WSMON_BENCH_TICK_RATE', '10'));
const tickPeriodMs = 1000 / tickRate;

const counters = {
  connections_total: 0, // upgrades completed
  upgrade_requests: 0,
  upgrades_in_progress: 0,
  max_upgrades_in_progress: 0,
  pending_sockets: 0, // TCP accepted, no request answered and not upgraded yet
  max_pending_sockets: 0,
  messages: 0,
  replies: 0,
  bad_requests: 0,
  closed_total: 0,
  dropped_total: 0,
  ticks_sent: 0, // stream messages written to a socket (ws.send called on an open socket)
  tick_bytes: 0, // their JSON text, bytes
  subscribes: 0,
  forgets: 0,
};
let subscriptionsActive = 0;
let quiet = false; // /quiet: no subscription sends
let stallRecords = [];
let connectionSeq = 0;
// Per connection name: open now, and accepted since the start (never reset).
const openByTarget = new Map();
const acceptedByTarget = new Map();

// The wall clock with sub-millisecond steps (Date.now() has whole milliseconds only).
function wallMs() {
  return performance.timeOrigin + performance.now();
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: true });

function stats() {
  const cpu = process.cpuUsage();
  return {
    ...counters,
    open: wss.clients.size,
    delay_ms: delayMs,
    handshake_delay_ms: handshakeDelayMs,
    cpu_user_s: cpu.user / 1e6,
    cpu_system_s: cpu.system / 1e6,
    rss_bytes: process.memoryUsage().rss,
    node: process.version,
    ws: WS_VERSION,
    pid: process.pid,
    tick_rate: tickRate,
    subscriptions_active: subscriptionsActive,
    quiet,
    stalls: stallRecords.length,
  };
}

function reply(ws, text) {
  counters.replies += 1;
  ws.send(text);
}

// --- subscriptions -------------------------------------------------------------------------

function tickText(sub) {
  // A random walk, written as the Deriv API writes it (4 decimals, ask/bid around the quote).
  sub.quote += (Math.random() - 0.5) * 0.02;
  const q = sub.quote;
  const epoch = Math.floor(Date.now() / 1000);
  return `{"echo_req":${sub.echo},"msg_type":"tick"${sub.reqIdPart},"subscription":{"id":"${sub.id}"},` +
    `"tick":{"ask":${(q + 0.01).toFixed(4)},"bid":${(q - 0.01).toFixed(4)},"epoch":${epoch},` +
    `"id":"${sub.id}","pip_size":4,"quote":${q.toFixed(4)},"symbol":${sub.symbol}}}`;
}

function sendTick(conn, sub) {
  sub.timer = null;
  if (sub.ended || quiet || conn.stalled || conn.ws.readyState !== 1) return;
  const text = tickText(sub);
  conn.ws.send(text);
  sub.lastSentMs = wallMs();
  sub.sent += 1;
  counters.ticks_sent += 1;
  counters.tick_bytes += text.length; // ASCII: one byte a character
  // The next one on the stream's own schedule (no drift), at least 0 ms from now.
  sub.due += tickPeriodMs;
  sub.timer = setTimeout(sendTick, Math.max(0, sub.due - performance.now()), conn, sub);
}

function subscribe(conn, req) {
  counters.subscribes += 1;
  subscriptionsActive += 1;
  const sub = {
    id: crypto.randomUUID(),
    echo: JSON.stringify(req),
    reqIdPart: req.req_id !== undefined ? `,"req_id":${JSON.stringify(req.req_id)}` : '',
    symbol: JSON.stringify(String(req.ticks)),
    quote: 100 + Math.random() * 100,
    due: performance.now(),
    sent: 0,
    lastSentMs: null,
    timer: null,
    ended: false,
  };
  conn.subs.set(sub.id, sub);
  sendTick(conn, sub); // the first at once, as the Deriv API answers a subscribe
}

function endSubscription(conn, sub) {
  if (sub.ended) return;
  sub.ended = true;
  subscriptionsActive -= 1;
  if (sub.timer !== null) clearTimeout(sub.timer);
  sub.timer = null;
  conn.subs.delete(sub.id);
}

function stall(conn) {
  if (conn.stalled) return;
  conn.stalled = true;
  const at = wallMs();
  for (const sub of conn.subs.values()) {
    if (sub.timer !== null) clearTimeout(sub.timer);
    sub.timer = null;
    stallRecords.push({
      target: conn.target,
      subscription: sub.id,
      last_sent_ms: sub.lastSentMs,
      stalled_ms: at,
      sent: sub.sent,
    });
  }
}

function onMessage(ws, data, isBinary) {
  counters.messages += 1;
  let req;
  try {
    req = JSON.parse(isBinary ? data.toString('utf8') : data);
  } catch (e) {
    req = null;
  }
  let out;
  if (req === null || typeof req !== 'object' || Array.isArray(req)) {
    counters.bad_requests += 1;
    out = { error: { code: 'InputValidationFailed', message: 'Input validation failed' },
      msg_type: 'error' };
  } else if ('ping' in req) {
    out = { echo_req: req, msg_type: 'ping', ping: 'pong' };
  } else if ('time' in req) {
    out = { echo_req: req, msg_type: 'time', time: Math.floor(Date.now() / 1000) };
  } else if ('ticks' in req && req.subscribe === 1) {
    subscribe(ws.wsmonConn, req);
    return;
  } else if ('forget' in req) {
    const conn = ws.wsmonConn;
    const sub = conn.subs.get(String(req.forget));
    if (sub !== undefined) {
      counters.forgets += 1;
      endSubscription(conn, sub);
    }
    out = { echo_req: req, forget: sub !== undefined ? 1 : 0, msg_type: 'forget' };
  } else {
    counters.bad_requests += 1;
    out = { echo_req: req, error: { code: 'UnrecognisedRequest', message: 'Unrecognised request' },
      msg_type: Object.keys(req)[0] || 'error' };
  }
  if (req && typeof req === 'object' && req.req_id !== undefined) out.req_id = req.req_id;
  const text = JSON.stringify(out);
  if (delayMs > 0) {
    setTimeout(() => {
      if (ws.readyState === 1) reply(ws, text);
    }, delayMs);
  } else {
    reply(ws, text);
  }
}

function notPending(socket) {
  if (socket.wsmonPending) {
    socket.wsmonPending = false;
    counters.pending_sockets -= 1;
  }
}

function handleHttp(req, res) {
  notPending(req.socket);
  const parsed = url.parse(req.url, true);
  let body;
  if (parsed.pathname === '/stats') {
    body = stats();
  } else if (parsed.pathname === '/reset') {
    counters.max_upgrades_in_progress = counters.upgrades_in_progress;
    counters.max_pending_sockets = counters.pending_sockets;
    counters.messages = 0;
    counters.replies = 0;
    counters.bad_requests = 0;
    counters.ticks_sent = 0;
    counters.tick_bytes = 0;
    counters.subscribes = 0;
    counters.forgets = 0;
    stallRecords = [];
    quiet = false;
    body = stats();
  } else if (parsed.pathname === '/drop') {
    const n = Number(parsed.query.n || 1);
    const how = parsed.query.how === 'terminate' ? 'terminate' : 'close';
    let dropped = 0;
    for (const ws of wss.clients) {
      if (dropped >= n) break;
      if (ws.readyState !== 1) continue;
      if (how === 'terminate') ws.terminate();
      else ws.close(1001, 'going away');
      dropped += 1;
    }
    counters.dropped_total += dropped;
    body = { dropped, how };
  } else if (parsed.pathname === '/stall') {
    const names = String(parsed.query.targets || '').split(',').filter((x) => x !== '');
    const gapMs = Number(parsed.query.gap_ms || 0);
    const byTarget = new Map();
    for (const ws of wss.clients) {
      if (ws.readyState === 1 && ws.wsmonConn) byTarget.set(ws.wsmonConn.target, ws.wsmonConn);
    }
    const missing = names.filter((n) => !byTarget.has(n));
    names.forEach((n, i) => {
      const conn = byTarget.get(n);
      if (conn !== undefined) setTimeout(stall, i * gapMs, conn);
    });
    body = { scheduled: names.length - missing.length, missing, gap_ms: gapMs, at_ms: wallMs() };
  } else if (parsed.pathname === '/stalls') {
    body = { records: stallRecords };
  } else if (parsed.pathname === '/quiet') {
    quiet = true;
    for (const ws of wss.clients) {
      if (!ws.wsmonConn) continue;
      for (const sub of ws.wsmonConn.subs.values()) {
        if (sub.timer !== null) clearTimeout(sub.timer);
        sub.timer = null;
      }
    }
    body = stats();
  } else if (parsed.pathname === '/clock') {
    body = { wall_ms: wallMs() };
  } else if (parsed.pathname === '/targets') {
    body = {
      open: Object.fromEntries(openByTarget),
      accepted: Object.fromEntries(acceptedByTarget),
    };
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
    return;
  }
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body) + '\n');
}

const server = http.createServer(handleHttp);
server.keepAliveTimeout = 60000;

server.on('connection', (socket) => {
  socket.wsmonPending = true;
  counters.pending_sockets += 1;
  if (counters.pending_sockets > counters.max_pending_sockets) {
    counters.max_pending_sockets = counters.pending_sockets;
  }
  socket.once('close', () => notPending(socket));
});

server.on('upgrade', (req, socket, head) => {
  counters.upgrade_requests += 1;
  counters.upgrades_in_progress += 1;
  if (counters.upgrades_in_progress > counters.max_upgrades_in_progress) {
    counters.max_upgrades_in_progress = counters.upgrades_in_progress;
  }
  let finished = false;
  const finish = () => {
    if (!finished) {
      finished = true;
      counters.upgrades_in_progress -= 1;
    }
  };
  socket.once('close', finish);
  socket.on('error', () => {});
  const complete = () => {
    if (socket.destroyed) {
      finish();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      finish();
      notPending(socket);
      counters.connections_total += 1;
      connectionSeq += 1;
      const target = url.parse(req.url, true).query.target;
      ws.wsmonConn = {
        ws,
        target: typeof target === 'string' ? target : String(connectionSeq),
        subs: new Map(),
        stalled: false,
      };
      // Counted by name only when the URL names the connection (workloads 7 and 8).
      const name = typeof target === 'string' ? target : null;
      if (name !== null) {
        openByTarget.set(name, (openByTarget.get(name) || 0) + 1);
        acceptedByTarget.set(name, (acceptedByTarget.get(name) || 0) + 1);
      }
      ws.on('message', (data, isBinary) => onMessage(ws, data, isBinary));
      ws.on('error', () => {});
      ws.on('close', () => {
        counters.closed_total += 1;
        if (name !== null) {
          const left = openByTarget.get(name) - 1;
          if (left > 0) openByTarget.set(name, left);
          else openByTarget.delete(name);
        }
        for (const sub of [...ws.wsmonConn.subs.values()]) endSubscription(ws.wsmonConn, sub);
      });
    });
  };
  if (handshakeDelayMs > 0) setTimeout(complete, handshakeDelayMs);
  else complete();
});

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  server.close();
  setTimeout(() => process.exit(0), 50).unref();
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.on('SIGUSR2', () => {
  process.stdout.write(JSON.stringify({ event: 'stats', ...stats() }) + '\n');
});

server.listen({ host, port, backlog: 4096 }, () => {
  const addr = server.address();
  process.stdout.write(
    JSON.stringify({
      event: 'listening',
      host: addr.address,
      port: addr.port,
      pid: process.pid,
      node: process.version,
      ws: WS_VERSION,
      delay_ms: delayMs,
      handshake_delay_ms: handshakeDelayMs,
      tick_rate: tickRate,
    }) + '\n',
  );
});
