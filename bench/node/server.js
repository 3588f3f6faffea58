'use strict';
/*
 * Load-side WebSocket server for wsmon's benchmarks (bench/run.py starts it; it is not ours,
 * it is the `ws` package from npm).
 *
 * Answers Deriv-style requests:
 *   {"ping":1,"req_id":N} -> {"echo_req":{...},"msg_type":"ping","ping":"pong","req_id":N}
 *   {"time":1,"req_id":N} -> {"echo_req":{...},"msg_type":"time","time":<epoch s>,"req_id":N}
 *   anything else         -> {"echo_req":{...},"error":{"code":"UnrecognisedRequest",...},...}
 * optionally after a reply delay, and counts connections and handshakes.
 *
 * Usage:
 *   node server.js [--host 127.0.0.1] [--port 0] [--delay MS] [--handshake-delay MS]
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
};

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
  };
}

function reply(ws, text) {
  counters.replies += 1;
  ws.send(text);
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
      ws.on('message', (data, isBinary) => onMessage(ws, data, isBinary));
      ws.on('error', () => {});
      ws.on('close', () => {
        counters.closed_total += 1;
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
    }) + '\n',
  );
});
