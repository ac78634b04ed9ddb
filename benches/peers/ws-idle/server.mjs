// Node baseline for the idle-session memory benchmark: a `ws` server that holds widget-like
// sessions the way Switchboard's gateway does (hello -> welcome, ping/pong, a server ping every
// 25 s) and nothing else, so the benchmark can compare memory per idle connection.
//
// Usage: node server.mjs <port>   (0 = any free port). Prints exactly `listening <port>` when ready.
import { randomBytes, randomUUID } from 'node:crypto';
import { WebSocketServer } from 'ws';

const port = Number.parseInt(process.argv[2] ?? '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: node server.mjs <port>');
  process.exit(2);
}

const PING_EVERY_MS = 25_000;
const TOKEN_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function randomToken(length) {
  const bytes = randomBytes(length);
  let out = '';
  for (let i = 0; i < length; i++) out += TOKEN_CHARS[bytes[i] & 63];
  return out;
}

const sessions = new Map(); // visitor id -> socket

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: false,
  maxPayload: 16384,
  clientTracking: false,
});

wss.on('connection', (socket) => {
  let visitorId = null;
  socket.on('error', () => socket.terminate());
  socket.on('message', (data, isBinary) => {
    if (isBinary) { socket.close(1003); return; }
    let frame;
    try { frame = JSON.parse(data.toString('utf8')); } catch { return; }
    if (visitorId === null) {
      if (frame?.type !== 'hello') { socket.close(4400); return; }
      visitorId = randomUUID();
      sessions.set(visitorId, socket);
      socket.send(JSON.stringify({
        type: 'welcome',
        v: 1,
        token: randomToken(100),
        visitor_id: visitorId,
        conversation_id: null,
        last_seq: 0,
        heartbeat_ms: PING_EVERY_MS,
        theme: {},
      }));
    } else if (frame?.type === 'ping') {
      socket.send('{"type":"pong"}');
    }
  });
  socket.on('close', () => {
    if (visitorId !== null) sessions.delete(visitorId);
  });
});

// One timer for every session, like the gateway's heartbeat.
const pinger = setInterval(() => {
  for (const socket of sessions.values()) socket.ping();
}, PING_EVERY_MS);

wss.on('listening', () => {
  process.stdout.write(`listening ${wss.address().port}\n`);
});
wss.on('error', (err) => {
  console.error(`ws-idle: ${err.message}`);
  process.exit(1);
});

const shutdown = () => {
  clearInterval(pinger);
  for (const socket of sessions.values()) socket.terminate();
  wss.close(() => process.exit(0));
};
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
