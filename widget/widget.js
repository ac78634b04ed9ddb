/*!
 * Switchboard web widget — an embeddable chat panel for one Switchboard tenant.
 *
 * Served by the gateway at GET /widget.js and embedded with
 *   <script src="https://gateway.example/widget.js" data-key="sbw_..." [data-open="true"]></script>
 *
 * It opens one WebSocket to ws(s)://<script host>/v1/widget/ws?key=<key> and speaks the protocol
 * described in docs/widget-protocol.md (hello/welcome, send/sent, message, ack, stream, typing,
 * ping/pong, close codes). In short:
 *   - the visitor token from `welcome` is kept in localStorage (`switchboard:<key>`);
 *   - visitor messages get a client_id and wait in a persisted queue (one localStorage entry per
 *     message, `switchboard:<key>:pending:<client_id>`) until the gateway confirms them with `sent`;
 *     they are re-sent in order after every reconnect (the gateway dedupes by client_id), so nothing
 *     typed offline is lost, even across a reload;
 *   - `message` frames are rendered once per seq, in seq order, and acknowledged (`ack`);
 *   - `stream` frames build a preview ("draft") that the final `message` replaces;
 *   - reconnects use exponential back-off with full jitter; a `ping` every heartbeat_ms detects
 *     dead connections;
 *   - a socket refused before it opened makes the widget ask GET /v1/widget/config?key=<key>
 *     whether this page may chat at all (origin in `allowed_origins`, valid key); if not, it says
 *     so, stops reconnecting, and tells the site owner in the console how to fix it;
 *   - an answer's `citations` are listed under it ("Sources: [1] Title — Section"), and the log
 *     shows a new message from its start.
 *
 * Everything is rendered inside an open shadow root (style isolation). No HTML strings are ever parsed:
 * message text goes through a tiny markdown renderer that builds DOM nodes.
 * Plain ES2020, no build step, no dependencies.
 */
(() => {
  'use strict';

  // ---------------------------------------------------------------- configuration
  const script = document.currentScript || (() => {
    const all = document.querySelectorAll('script[src*="widget.js"][data-key]');
    return all[all.length - 1] || null;
  })();
  if (!script) return;
  const KEY = script.getAttribute('data-key') || '';
  if (!KEY || document.getElementById('switchboard-widget')) return; // no key, or embedded twice
  const OPEN_AT_LOAD = script.getAttribute('data-open') === 'true';
  const SRC = new URL(script.src || '/widget.js', location.href);
  const WS_URL = (SRC.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + SRC.host +
    '/v1/widget/ws?key=' + encodeURIComponent(KEY);
  const HTTP_BASE = (SRC.protocol === 'https:' ? 'https:' : 'http:') + '//' + SRC.host;
  const ACCESS_URL = HTTP_BASE + '/v1/widget/config?key=' + encodeURIComponent(KEY);

  const TOKEN_KEY = 'switchboard:' + KEY;
  const QUEUE_KEY = TOKEN_KEY + ':pending';          // legacy: the whole queue as one array
  const ITEM_PREFIX = QUEUE_KEY + ':';                 // + client_id: one pending message
  const MAX_FRAME_BYTES = 16384;   // the gateway's default frame limit
  const MAX_TEXT = 4000;
  const PONG_TIMEOUT_MS = 10000;
  const WELCOME_TIMEOUT_MS = 10000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const STABLE_MS = 30000;         // a connection open this long resets the back-off
  const ACK_DEBOUNCE_MS = 200;
  const ACCESS_TIMEOUT_MS = 10000;
  const FATAL_CLOSES = [1003, 1009, 4400];
  const HEX_COLOR = /^#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?$/;
  const DEFAULT_THEME = { title: 'Chat with us', primary: '#2f5bea', background: '#ffffff', text: '#1b1f24' };

  // ---------------------------------------------------------------- markdown (begin)
  // A deliberately small renderer: paragraphs, "#" headings (shown bold), "> " quotes, **bold**,
  // *italic*/_italic_, `code`, ``` fenced blocks ```, "- "/"* " and "1. " lists, [text](url) for
  // http(s)/mailto URLs and bare http(s):// URLs. Everything else is literal text (createTextNode /
  // textContent only).
  // As in Markdown, a single newline inside a paragraph, list item or quote is a space: quoted
  // knowledge passages are hard-wrapped at ~100 columns and must read as one paragraph. A line
  // ending in two spaces or "\" keeps its break, and so do table rows ("| a | b |").
  const SAFE_URL = /^(https?:|mailto:)/i;
  const INLINE = new RegExp([
    '`([^`\\n]+)`',                                            // 1 code
    '\\[([^\\]\\n]+)\\]\\(([^\\s)]+)\\)',                      // 2,3 link
    '\\*\\*(?=[^\\s*])([^\\n]*?[^\\s])\\*\\*',                 // 4 bold
    '\\*(?=[^\\s*])([^*\\n]*?[^\\s*])\\*',                     // 5 italic *
    '(?<![A-Za-z0-9_])_(?=[^\\s_])([^_\\n]*?[^\\s_])_(?![A-Za-z0-9_])', // 6 italic _
    '(https?:\\/\\/[^\\s<>"]+)',                               // 7 bare URL
  ].join('|'), 'g');
  const FENCE = /^\s*```/;
  const QUOTE = /^\s{0,3}>/;
  const HEADING = /^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$/;
  const UL_ITEM = /^\s*[-*]\s+(.*)$/;
  const OL_ITEM = /^\s*(\d{1,9})[.)]\s+(.*)$/;
  const TABLE_ROW = /^\s*\|/;
  const HARD_BREAK = /(?: {2,}|\\)$/;
  const MAX_QUOTE_DEPTH = 8;

  function make(tag, cls) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    return node;
  }

  function link(url, text) {
    const a = make('a');
    a.setAttribute('href', url);
    a.setAttribute('target', '_blank');
    a.setAttribute('rel', 'noopener noreferrer nofollow');
    a.textContent = text;
    return a;
  }

  function renderInline(text, parent) {
    const re = new RegExp(INLINE.source, 'g'); // fresh lastIndex: this function recurses
    const addText = (s) => { if (s) parent.appendChild(document.createTextNode(s)); };
    let last = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      addText(text.slice(last, m.index));
      last = re.lastIndex;
      if (m[1] !== undefined) {
        const code = make('code');
        code.textContent = m[1];
        parent.appendChild(code);
      } else if (m[2] !== undefined) {
        if (SAFE_URL.test(m[3])) parent.appendChild(link(m[3], m[2]));
        else addText(m[0]);
      } else if (m[4] !== undefined) {
        const b = make('strong');
        renderInline(m[4], b);
        parent.appendChild(b);
      } else if (m[5] !== undefined || m[6] !== undefined) {
        const i = make('em');
        renderInline(m[5] !== undefined ? m[5] : m[6], i);
        parent.appendChild(i);
      } else {
        // Bare URL: trailing punctuation belongs to the sentence, not the URL.
        const tail = /[.,;:!?'")\]*_]+$/.exec(m[7]);
        const url = tail ? m[7].slice(0, -tail[0].length) : m[7];
        if (/^https?:\/\/[^/?#]/i.test(url)) parent.appendChild(link(url, url));
        else addText(url);
        addText(tail ? tail[0] : '');
      }
    }
    addText(text.slice(last));
  }

  // The lines of one paragraph (or list item), reflowed: joined with spaces (so inline markup may
  // span a wrap), broken only after a hard break or around table rows.
  function renderLines(lines, parent) {
    let run = '';
    lines.forEach((line, i) => {
      let text = line.trim();
      const hard = HARD_BREAK.test(line);
      if (hard && text.endsWith('\\')) text = text.slice(0, -1).trimEnd();
      run = run && text ? run + ' ' + text : run + text;
      const next = lines[i + 1];
      if (next !== undefined && (hard || TABLE_ROW.test(line) || TABLE_ROW.test(next))) {
        renderInline(run, parent);
        parent.appendChild(make('br'));
        run = '';
      }
    });
    renderInline(run, parent);
  }

  function startsBlock(line) {
    return FENCE.test(line) || QUOTE.test(line) || HEADING.test(line) || UL_ITEM.test(line) || OL_ITEM.test(line);
  }

  function renderMarkdown(source, parent, depth) {
    const lines = String(source).replace(/\r\n?/g, '\n').split('\n');
    let para = null;   // lines of the paragraph being collected
    let list = null;   // { node, ordered, item, lines }: the list and its item being collected
    const flushPara = () => {
      if (!para) return;
      const p = make('p');
      renderLines(para, p);
      parent.appendChild(p);
      para = null;
    };
    const flushItem = () => {
      if (!list || !list.item) return;
      renderLines(list.lines, list.item);
      list.item = null;
    };
    const endList = () => { flushItem(); list = null; };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      if (FENCE.test(line)) {                           // fenced code block: kept verbatim
        flushPara();
        endList();
        const body = [];
        for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) body.push(lines[i]);
        const pre = make('pre');
        const code = make('code');
        code.textContent = body.join('\n');
        pre.appendChild(code);
        parent.appendChild(pre);
        continue;
      }
      if (!line.trim()) { flushPara(); endList(); continue; }
      if (QUOTE.test(line) && (depth || 0) < MAX_QUOTE_DEPTH) {
        // "> " lines, and lines continuing a quoted paragraph without the marker (a hard wrap),
        // are the quote; its body is Markdown again (paragraphs at blank "> " lines, lists, ...).
        flushPara();
        endList();
        const body = [];
        for (; i < lines.length; i++) {
          const l = lines[i];
          if (QUOTE.test(l)) body.push(l.replace(/^\s{0,3}> ?/, ''));
          else if (l.trim() && body.length && body[body.length - 1].trim() && !startsBlock(l)) body.push(l);
          else break;
        }
        i--;
        const quote = make('blockquote');
        renderMarkdown(body.join('\n'), quote, (depth || 0) + 1);
        parent.appendChild(quote);
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) {
        flushPara();
        endList();
        const p = make('p', 'h');
        const strong = make('strong');
        renderInline(heading[1], strong);
        p.appendChild(strong);
        parent.appendChild(p);
        continue;
      }
      const ul = UL_ITEM.exec(line);
      const ol = ul ? null : OL_ITEM.exec(line);
      if (ul || ol) {
        flushPara();
        flushItem();
        const ordered = !!ol;
        if (!list || list.ordered !== ordered) {
          list = { node: make(ordered ? 'ol' : 'ul'), ordered, item: null, lines: [] };
          if (ordered && ol[1] !== '1') list.node.setAttribute('start', String(Number(ol[1])));
          parent.appendChild(list.node);
        }
        list.item = make('li');
        list.lines = [ordered ? ol[2] : ul[1]];
        list.node.appendChild(list.item);
        continue;
      }
      if (list && list.item && /^\s+\S/.test(line)) {   // indented continuation of a list item
        list.lines.push(line);
        continue;
      }
      endList();
      (para = para || []).push(line);
    }
    flushPara();
    endList();
  }
  // ---------------------------------------------------------------- markdown (end)

  // ---------------------------------------------------------------- storage
  let storageOk = false;
  try {
    localStorage.setItem(TOKEN_KEY + ':probe', '1');
    localStorage.removeItem(TOKEN_KEY + ':probe');
    storageOk = true;
  } catch (_) { /* private mode / sandboxed iframe: keep everything in memory */ }

  function load(key) {
    try { return storageOk ? localStorage.getItem(key) : null; } catch (_) { return null; }
  }
  function save(key, value) {
    if (!storageOk) return;
    try {
      if (value == null) localStorage.removeItem(key); else localStorage.setItem(key, value);
    } catch (_) { /* quota: nothing useful to do */ }
  }

  // The pending queue lives in localStorage (shared with other tabs of this site) so that a
  // message typed offline survives a reload. Each message is its own entry, so tabs never
  // read-modify-write a shared value: adding or removing one message touches only its key.
  const memQueue = new Map();     // client_id -> item, when localStorage is unusable
  let lastTs = 0;
  function validItem(q) {
    return q && typeof q.client_id === 'string' && typeof q.text === 'string' && typeof q.ts === 'number';
  }
  function readQueue() {          // every pending item, oldest first
    let items = [];
    if (!storageOk) {
      items = Array.from(memQueue.values());
    } else {
      try {
        for (let i = 0; i < localStorage.length; i++) {
          const k = localStorage.key(i);
          if (!k || !k.startsWith(ITEM_PREFIX)) continue;
          try {
            const q = JSON.parse(localStorage.getItem(k) || 'null');
            if (validItem(q) && k === ITEM_PREFIX + q.client_id) items.push(q);
          } catch (_) { /* not ours */ }
        }
      } catch (_) { return []; }
    }
    return items.sort((a, b) => a.ts - b.ts);
  }
  function queueAdd(item) {       // item: { client_id, text }; gets its ts here
    lastTs = Math.max(Date.now(), lastTs + 1); // strictly increasing within this tab
    const stored = { client_id: item.client_id, text: item.text, ts: lastTs };
    if (storageOk) save(ITEM_PREFIX + item.client_id, JSON.stringify(stored));
    else memQueue.set(item.client_id, stored);
  }
  function queueHas(clientId) {
    return storageOk ? load(ITEM_PREFIX + clientId) !== null : memQueue.has(clientId);
  }
  function queueRemove(clientId) {
    if (storageOk) save(ITEM_PREFIX + clientId, null);
    else memQueue.delete(clientId);
  }
  (function migrateQueue() {      // the old single-array queue, once
    const old = load(QUEUE_KEY);
    if (old === null) return;
    try {
      const parsed = JSON.parse(old);
      if (Array.isArray(parsed)) {
        for (const q of parsed) {
          if (q && typeof q.client_id === 'string' && typeof q.text === 'string' && !queueHas(q.client_id)) {
            queueAdd(q);
          }
        }
      }
    } catch (_) { /* unreadable: drop it */ }
    save(QUEUE_KEY, null);
  })();

  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
    const bytes = new Uint8Array(22);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => chars[b % chars.length]).join('');
  }

  // ---------------------------------------------------------------- styles
  const CSS = `
:host { all: initial; }
.root { --sb-primary: ${DEFAULT_THEME.primary}; --sb-on-primary: #ffffff;
  --sb-bg: ${DEFAULT_THEME.background}; --sb-text: ${DEFAULT_THEME.text};
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--sb-text); }
.root *, .root *::before, .root *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
.vh { position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
button, textarea { font: inherit; color: inherit; }
:focus-visible { outline: 3px solid var(--sb-primary); outline-offset: 2px; }
.launcher { position: fixed; bottom: 20px; right: 20px; z-index: 2147483000; width: 56px; height: 56px;
  border: 0; border-radius: 50%; background: var(--sb-primary); color: var(--sb-on-primary);
  cursor: pointer; box-shadow: 0 4px 14px rgba(0,0,0,.25); display: grid; place-items: center;
  transition: transform .15s ease; }
.launcher:hover { transform: scale(1.06); }
.launcher svg { width: 26px; height: 26px; fill: currentColor; }
.launcher:focus-visible { outline-color: var(--sb-text); outline-offset: 3px; }
.panel { position: fixed; bottom: 88px; right: 20px; z-index: 2147483001; width: 360px; height: 560px;
  max-height: calc(100vh - 108px); display: flex; flex-direction: column; overflow: hidden;
  background: var(--sb-bg); color: var(--sb-text); border-radius: 14px;
  box-shadow: 0 10px 40px rgba(0,0,0,.28); animation: sb-in .18s ease-out; }
.left .launcher { right: auto; left: 20px; }
.left .panel { right: auto; left: 20px; }
@keyframes sb-in { from { opacity: 0; transform: translateY(12px); } to { opacity: 1; transform: none; } }
@media (max-width: 479px) {
  .panel { inset: 0; width: auto; height: auto; max-height: none; border-radius: 0; }
}
.header { display: flex; align-items: center; gap: 10px; padding: 12px 14px;
  background: var(--sb-primary); color: var(--sb-on-primary); }
.header img { width: 32px; height: 32px; border-radius: 50%; object-fit: cover; background: rgba(255,255,255,.3); }
.header h2 { flex: 1; margin: 0; font-size: 16px; font-weight: 600; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
.close { border: 0; background: transparent; color: inherit; width: 32px; height: 32px;
  border-radius: 8px; cursor: pointer; font-size: 22px; line-height: 1; }
.close:focus-visible { outline-color: var(--sb-on-primary); outline-offset: 0; }
.log { flex: 1; overflow-y: auto; padding: 14px; display: flex; flex-direction: column; gap: 8px;
  overscroll-behavior: contain; }
.msg { max-width: 85%; padding: 8px 12px; border-radius: 14px; overflow-wrap: anywhere;
  background: rgba(127,127,127,.14); align-self: flex-start; }
.msg.in { align-self: flex-end; background: var(--sb-primary); color: var(--sb-on-primary); }
.msg.in a { color: inherit; }
.msg.system { align-self: center; background: transparent; font-size: 13px; opacity: .75; }
.msg[data-pending="true"] { opacity: .6; }
.msg[data-failed="true"] { opacity: .6; outline: 1px dashed currentColor; }
.msg.draft { opacity: .85; }
.who { display: block; font-size: 12px; font-weight: 600; opacity: .75; }
.note { display: block; font-size: 12px; margin-top: 2px; }
.text.plain { white-space: pre-wrap; }
.text p, .text ul, .text ol, .text pre, .text blockquote { margin: 0 0 .5em; }
.text blockquote { padding: 0 0 0 .7em; border-left: 3px solid rgba(127,127,127,.45); }
.text blockquote > :last-child { margin-bottom: 0; }
.text > :last-child { margin-bottom: 0; }
.text ul, .text ol { padding-left: 1.3em; }
.text code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
  background: rgba(127,127,127,.18); border-radius: 4px; padding: 0 .25em; }
.text pre { overflow-x: auto; background: rgba(127,127,127,.18); border-radius: 6px; padding: 8px; }
.text pre code { background: none; padding: 0; white-space: pre; }
.text a { color: var(--sb-primary); text-decoration: underline; }
.sources { margin-top: 6px; padding-top: 5px; border-top: 1px solid rgba(127,127,127,.3); font-size: 12px;
  line-height: 1.4; }
.sources .label { display: block; font-weight: 600; opacity: .8; }
.sources ol { list-style: none; margin: 0; padding: 0; }
.sources .n { font-variant-numeric: tabular-nums; opacity: .8; }
.typing { padding: 0 14px 6px; display: flex; gap: 4px; }
.typing .dot { width: 7px; height: 7px; border-radius: 50%; background: currentColor; opacity: .4;
  animation: sb-dot 1.2s infinite ease-in-out; }
.typing .dot:nth-child(2) { animation-delay: .2s; }
.typing .dot:nth-child(3) { animation-delay: .4s; }
@keyframes sb-dot { 0%, 80%, 100% { opacity: .25; transform: none; } 40% { opacity: .9; transform: translateY(-3px); } }
.status { padding: 4px 14px; font-size: 12px; opacity: .75; border-top: 1px solid rgba(127,127,127,.2); }
.status[data-state="open"] { opacity: .55; }
.status[data-state="blocked"] { opacity: 1; font-weight: 600; }
.form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid rgba(127,127,127,.2); }
.form textarea { flex: 1; resize: none; min-height: 40px; max-height: 120px; padding: 9px 10px;
  border: 1px solid rgba(127,127,127,.45); border-radius: 10px; background: var(--sb-bg); }
.form textarea:focus-visible { outline-offset: 0; }
.send { border: 0; border-radius: 10px; padding: 0 14px; background: var(--sb-primary);
  color: var(--sb-on-primary); cursor: pointer; font-weight: 600; }
.send:focus-visible { outline-color: var(--sb-text); }
.form textarea:disabled, .send:disabled { opacity: .5; cursor: not-allowed; }
@media (prefers-reduced-motion: reduce) {
  .launcher, .panel, .typing .dot { transition: none !important; animation: none !important; }
  .typing .dot { opacity: .6; }
}`;

  // ---------------------------------------------------------------- DOM
  const host = make('div');
  host.id = 'switchboard-widget';
  const shadow = host.attachShadow({ mode: 'open' });
  const style = make('style');
  style.textContent = CSS;
  const root = make('div', 'root');
  shadow.append(style, root);

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const icon = (d) => {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    svg.appendChild(path);
    return svg;
  };
  const chatIcon = icon('M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 1-2z');
  const closeIcon = icon('M18.3 5.7 12 12l6.3 6.3-1.4 1.4L10.6 13.4 4.3 19.7l-1.4-1.4L9.2 12 2.9 5.7l1.4-1.4 6.3 6.3 6.3-6.3z');

  const launcher = make('button', 'launcher');
  launcher.type = 'button';
  launcher.setAttribute('data-sb', 'launcher');
  launcher.setAttribute('aria-controls', 'sb-panel');
  launcher.append(chatIcon, closeIcon);

  const panel = make('div', 'panel');
  panel.id = 'sb-panel';
  panel.hidden = true;
  panel.setAttribute('data-sb', 'panel');
  panel.setAttribute('role', 'dialog');
  panel.setAttribute('aria-label', DEFAULT_THEME.title);

  const header = make('div', 'header');
  const avatar = make('img');
  avatar.alt = '';
  avatar.hidden = true;
  const titleEl = make('h2');
  titleEl.textContent = DEFAULT_THEME.title;
  const closeBtn = make('button', 'close');
  closeBtn.type = 'button';
  closeBtn.setAttribute('aria-label', 'Close chat');
  closeBtn.textContent = '\u00d7';
  header.append(avatar, titleEl, closeBtn);

  const log = make('div', 'log');
  log.setAttribute('data-sb', 'log');
  log.setAttribute('role', 'log');
  log.setAttribute('aria-live', 'polite');
  log.setAttribute('aria-relevant', 'additions');
  log.tabIndex = 0; // scrollable region reachable by keyboard

  const typingEl = make('div', 'typing');
  typingEl.setAttribute('data-sb', 'typing');
  typingEl.hidden = true;
  for (let i = 0; i < 3; i++) {
    const dot = make('span', 'dot');
    dot.setAttribute('aria-hidden', 'true');
    typingEl.appendChild(dot);
  }
  const typingText = make('span', 'vh');
  typingText.textContent = 'Assistant is typing';
  typingEl.appendChild(typingText);

  const statusEl = make('div', 'status');
  statusEl.setAttribute('data-sb', 'status');
  statusEl.setAttribute('role', 'status');

  const form = make('form', 'form');
  const label = make('label', 'vh');
  label.htmlFor = 'sb-input';
  label.textContent = 'Type your message';
  const input = make('textarea');
  input.id = 'sb-input';
  input.rows = 1;
  input.maxLength = MAX_TEXT;
  input.placeholder = 'Type a message…';
  input.setAttribute('data-sb', 'input');
  const sendBtn = make('button', 'send');
  sendBtn.type = 'submit';
  sendBtn.textContent = 'Send';
  sendBtn.setAttribute('data-sb', 'send');
  form.append(label, input, sendBtn);

  panel.append(header, log, typingEl, statusEl, form);
  root.append(panel, launcher);

  // ---------------------------------------------------------------- theme
  let welcomeBubble = null;

  function contrastOn(hex) {
    let h = hex.slice(1);
    if (h.length === 3) h = h.replace(/./g, (c) => c + c);
    const [r, g, b] = [0, 2, 4].map((i) => {
      const c = parseInt(h.slice(i, i + 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 ? '#111111' : '#ffffff';
  }

  function applyTheme(theme) {
    if (!theme || typeof theme !== 'object') return;
    const title = typeof theme.title === 'string' && theme.title.trim() ? theme.title : DEFAULT_THEME.title;
    titleEl.textContent = title;
    panel.setAttribute('aria-label', title);
    root.classList.toggle('left', theme.position === 'left');
    const colors = theme.colors && typeof theme.colors === 'object' ? theme.colors : {};
    const color = (v) => (typeof v === 'string' && HEX_COLOR.test(v) ? v : null);
    const primary = color(colors.primary);
    if (primary) {
      root.style.setProperty('--sb-primary', primary);
      root.style.setProperty('--sb-on-primary', contrastOn(primary));
    }
    if (color(colors.background)) root.style.setProperty('--sb-bg', colors.background);
    if (color(colors.text)) root.style.setProperty('--sb-text', colors.text);
    const url = typeof theme.avatar_url === 'string' ? theme.avatar_url : '';
    if (/^https?:\/\//i.test(url)) {
      avatar.src = url;
      avatar.hidden = false;
    } else {
      avatar.removeAttribute('src');
      avatar.hidden = true;
    }
    const welcome = typeof theme.welcome_message === 'string' ? theme.welcome_message.trim() : '';
    if (!welcome) {
      if (welcomeBubble) welcomeBubble.remove();
      welcomeBubble = null;
      return;
    }
    if (!welcomeBubble) {
      welcomeBubble = make('div', 'msg out bot');
      welcomeBubble.setAttribute('data-sb', 'welcome');
      log.insertBefore(welcomeBubble, log.firstChild);
    }
    const text = make('div', 'text');
    renderMarkdown(welcome, text);
    welcomeBubble.replaceChildren(text);
  }

  // ---------------------------------------------------------------- panel open / close
  function setOpen(open, opts) {
    panel.hidden = !open;
    launcher.setAttribute('aria-expanded', String(open));
    launcher.setAttribute('aria-label', open ? 'Close chat' : 'Open chat');
    chatIcon.style.display = open ? 'none' : '';
    closeIcon.style.display = open ? '' : 'none';
    if (open) {
      // Closed, the log had no layout to scroll: show the newest message from its start now.
      if (revealEl && revealEl.parentNode === log) reveal(revealEl); else scrollToEnd();
      if (!opts || !opts.quiet) input.focus();
    } else if (opts && opts.focusLauncher) {
      launcher.focus();
    }
  }
  launcher.addEventListener('click', () => setOpen(panel.hidden));
  closeBtn.addEventListener('click', () => setOpen(false, { focusLauncher: true }));
  panel.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.stopPropagation();
      setOpen(false, { focusLauncher: true });
    }
  });

  // ---------------------------------------------------------------- scrolling
  // A new message is shown from its START: its top goes to the top of the log (a short one simply
  // ends up at the bottom, as the log cannot scroll past its end), so a long answer is read from
  // its first line. The log moves only if the visitor was following the conversation — at its end,
  // or still where the widget last put it — which must be decided BEFORE the log changes: a long
  // new message moves the end away. A visitor scrolled up into the history is left there.
  const REVEAL_GAP = 8;   // px left above a revealed message
  let autoTop = -1;       // the scrollTop the widget last set (the visitor has not scrolled since)
  let revealEl = null;    // the newest message to show when the panel opens
  function distanceToEnd() {
    return log.scrollHeight - log.scrollTop - log.clientHeight;
  }
  function following() {
    if (panel.hidden) return true; // no layout: decided again at open
    return distanceToEnd() < 80 || Math.abs(log.scrollTop - autoTop) < 2;
  }
  function scrollLogTo(top) {
    log.scrollTop = Math.max(0, top);
    autoTop = log.scrollTop; // as clamped by the browser
  }
  function scrollToEnd() {
    scrollLogTo(log.scrollHeight);
  }
  // Scrolls the log so that `el`'s top edge is at its top (or as far as the log scrolls). Used for
  // a growing preview as well: it is followed to its end until its start would leave the view.
  function reveal(el) {
    revealEl = el;
    if (panel.hidden) return;
    const offset = el.getBoundingClientRect().top - log.getBoundingClientRect().top;
    scrollLogTo(log.scrollTop + offset - REVEAL_GAP);
  }

  // ---------------------------------------------------------------- connection status
  let uiState = '';
  let everWelcomed = false;
  function setState(state, text) {
    const label = text || (state === 'open' ? 'Connected'
      : state === 'connecting' ? (everWelcomed ? 'Reconnecting…' : 'Connecting…')
        : 'Offline — messages will be sent when the connection is back');
    if (state !== uiState) {
      uiState = state;
      host.setAttribute('data-state', state);
      statusEl.setAttribute('data-state', state);
    }
    if (statusEl.textContent !== label) statusEl.textContent = label;
  }

  // ---------------------------------------------------------------- conversation rendering
  const seqEls = new Map();      // seq -> element, of the current conversation only
  const pendingEls = new Map();  // client_id -> element not yet confirmed
  const drafts = new Map();      // stream_id -> { el, textEl, text, stale }; several answers may stream at once
  const answered = new Set();    // stream ids (visitor message ids) whose answer is rendered
  let conversationId = null;     // in memory only: a fresh page load asks for recent history
  let lastSeq = 0;               // highest seq received in a `message` frame (contiguous)
  let ackedSeq = 0;

  // The sources an answer cites (`citations` of its `message` frame: {title, document_id, chunk,
  // section?}), listed under it as "[1] Title — Section", numbered in the order given (or by a
  // citation's own `n`, the number the answer's text uses, where the gateway sends one).
  const MAX_SOURCES = 20;
  function sourcesEl(citations) {
    if (!Array.isArray(citations)) return null;
    const str = (v) => (typeof v === 'string' ? v.trim() : '');
    const list = make('ol');
    citations.slice(0, MAX_SOURCES).forEach((c, i) => {
      if (!c || typeof c !== 'object') return;
      const title = str(c.title) || str(c.document_id) || 'Source';
      const section = str(c.section);
      const n = Number.isInteger(c.n) && c.n > 0 ? c.n : i + 1;
      const item = make('li');
      const num = make('span', 'n');
      num.textContent = '[' + n + ']';
      item.append(num, document.createTextNode(' ' + title + (section && section !== title ? ' \u2014 ' + section : '')));
      list.appendChild(item);
    });
    if (!list.children.length) return null;
    const box = make('div', 'sources');
    box.setAttribute('data-sb', 'sources');
    const label = make('span', 'label');
    label.textContent = 'Sources:';
    box.append(label, list);
    return box;
  }

  function messageEl(author, direction, text, citations) {
    const el = make('div', 'msg ' + (direction === 'inbound' ? 'in' : 'out') + ' ' + author);
    el.setAttribute('data-sb-msg', '');
    el.setAttribute('data-author', author);
    el.setAttribute('data-direction', direction);
    if (author === 'agent') {
      const who = make('span', 'who');
      who.textContent = 'Agent';
      el.appendChild(who);
    }
    const textEl = make('div', author === 'contact' ? 'text plain' : 'text');
    textEl.setAttribute('data-sb', 'text');
    if (author === 'contact') textEl.textContent = text; // the visitor's own words: verbatim
    else renderMarkdown(text, textEl);
    el.appendChild(textEl);
    const sources = author === 'contact' ? null : sourcesEl(citations);
    if (sources) el.appendChild(sources);
    return el;
  }

  // Confirmed messages sit in seq order after the welcome bubble; pending/failed messages and
  // drafts follow them.
  function insertBySeq(el, seq) {
    let before = null;
    for (const child of log.children) {
      if (child === welcomeBubble || child === el) continue;
      const s = child.getAttribute('data-seq');
      if (s === null || Number(s) > seq) { before = child; break; }
    }
    log.insertBefore(el, before);
  }

  function confirmEl(el, seq, id) {
    el.setAttribute('data-seq', String(seq));
    el.removeAttribute('data-pending');
    if (id) el.setAttribute('data-id', id);
    seqEls.set(seq, el);
    insertBySeq(el, seq);
  }

  // Drops the shown conversation when another one starts. Only previews answering one of its
  // messages go with it: a preview of the new conversation may arrive before its first `message`.
  function clearConversation() {
    for (const el of seqEls.values()) {
      const id = el.getAttribute('data-id');
      if (id) removeDraft(id);
      el.remove();
    }
    seqEls.clear();
    answered.clear();
    lastSeq = 0;
    ackedSeq = 0;
  }

  function renderPending(clientId, text) {
    const el = messageEl('contact', 'inbound', text);
    el.setAttribute('data-client-id', clientId);
    el.setAttribute('data-pending', 'true');
    pendingEls.set(clientId, el);
    const firstDraft = log.querySelector('[data-sb="draft"]');
    log.insertBefore(el, firstDraft);
    reveal(el); // the visitor's own message: always shown
  }

  function markFailed(clientId, why) {
    queueRemove(clientId);
    const el = pendingEls.get(clientId);
    if (!el) return;
    pendingEls.delete(clientId);
    el.removeAttribute('data-pending');
    el.setAttribute('data-failed', 'true');
    const note = make('span', 'note');
    note.textContent = why || 'Not sent';
    el.appendChild(note);
  }

  function onMessage(f) {
    if (typeof f.seq !== 'number' || !isFinite(f.seq)) return;
    const follow = following(); // before anything in the log moves (a preview is removed below)
    const conv = typeof f.conversation_id === 'string' ? f.conversation_id : null;
    if (conv && conversationId && conv !== conversationId) clearConversation(); // new conversation
    if (conv) conversationId = conv;
    const clientId = typeof f.client_id === 'string' ? f.client_id : null;
    if (clientId) queueRemove(clientId); // stored, so never needs sending again
    if (typeof f.reply_to === 'string') {
      answered.add(f.reply_to);
      removeDraft(f.reply_to);
    }
    if (f.seq > lastSeq) lastSeq = f.seq;
    scheduleAck();
    let el = clientId ? pendingEls.get(clientId) : null;
    let isNew = false;             // not the confirmation of a message shown pending
    if (seqEls.has(f.seq)) {       // already rendered (replay after a reconnect): drop any pending copy
      if (el && el !== seqEls.get(f.seq)) { pendingEls.delete(clientId); el.remove(); }
      return;
    }
    if (el) {
      pendingEls.delete(clientId);
    } else {
      const author = ['contact', 'bot', 'agent', 'system'].includes(f.author) ? f.author : 'system';
      const direction = f.direction === 'inbound' ? 'inbound' : 'outbound';
      el = messageEl(author, direction, typeof f.text === 'string' ? f.text : '', f.citations);
      if (clientId) el.setAttribute('data-client-id', clientId);
      isNew = true;
    }
    if (typeof f.created_at === 'string') el.title = f.created_at;
    confirmEl(el, f.seq, typeof f.id === 'string' ? f.id : null);
    if (isNew && follow) reveal(el);
  }

  function onSent(f) {
    if (typeof f.client_id !== 'string') return;
    queueRemove(f.client_id); // stored: never needs sending again
    const el = pendingEls.get(f.client_id);
    if (!el || typeof f.conversation_id !== 'string') return;
    if (conversationId && f.conversation_id !== conversationId) {
      // Stored in a conversation other than the one shown (an older one, e.g. a duplicate of a
      // message sent before the switch): no `message` for it comes here, so drop the bubble. If
      // it is in fact a newer conversation, its `message` follows and renders it again.
      pendingEls.delete(f.client_id);
      el.remove();
      return;
    }
    if (typeof f.seq !== 'number') return;
    conversationId = f.conversation_id;
    pendingEls.delete(f.client_id);
    if (seqEls.has(f.seq)) { // already shown (same conversation, e.g. replayed history): drop the copy
      el.remove();
      return;
    }
    // Confirm now; the `message` frame that follows is then a no-op. lastSeq is not moved: it
    // only follows `message` frames, so acks and resumes never skip a message still in flight.
    confirmEl(el, f.seq, typeof f.message_id === 'string' ? f.message_id : null);
  }

  // ---------------------------------------------------------------- streaming previews
  function removeDraft(streamId) {
    const d = drafts.get(streamId);
    if (!d) return;
    d.el.remove();
    drafts.delete(streamId);
  }

  function onStream(f) {
    const id = f.stream_id;
    if (typeof id !== 'string' || typeof f.delta !== 'string' || typeof f.offset !== 'number') return;
    if (answered.has(id)) return; // the final answer is already shown
    const follow = following();
    const d = drafts.get(id);
    const current = d ? d.text : '';
    let text;
    if (f.offset === 0) text = f.delta;
    else if (f.offset === current.length) text = current + f.delta;
    else if (f.offset < current.length) {
      const overlap = current.length - f.offset;
      if (f.delta.length <= overlap) { if (d) d.stale = false; return; }
      text = current + f.delta.slice(overlap);
    } else return; // a gap: wait for the next restart or for the final message
    let draft = d;
    if (!draft) {
      const el = make('div', 'msg out bot draft');
      el.setAttribute('data-sb', 'draft');
      el.setAttribute('data-stream-id', id);
      el.setAttribute('aria-hidden', 'true'); // screen readers get the final message only
      const textEl = make('div', 'text');
      el.appendChild(textEl);
      log.appendChild(el);
      draft = { el, textEl, text: '', stale: false };
      drafts.set(id, draft);
    }
    draft.text = text;
    draft.stale = false;
    draft.textEl.replaceChildren();
    renderMarkdown(text, draft.textEl);
    if (follow) reveal(draft.el);
  }

  // The dots sit below the log and shrink it: a log that was at its end stays there.
  function setTyping(on) {
    const atEnd = !panel.hidden && distanceToEnd() < 80;
    typingEl.hidden = !on;
    if (on && atEnd) scrollToEnd();
  }

  // ---------------------------------------------------------------- connection
  let ws = null;
  let welcomed = false;
  let attempts = 0;          // reconnects since a connection last stayed open STABLE_MS
  let fatal = false;         // closed with 1003/1009/4400: wait for the visitor to send
  let helloHadToken = false;
  let lastSendId = null;     // client_id of the last `send`, blamed for a 1009 close
  let reconnectTimer = 0;
  let heartbeatTimer = 0;
  let pongTimer = 0;
  let welcomeTimer = 0;
  let ackTimer = 0;
  let staleTimer = 0;
  let stableTimer = 0;       // started at welcome: resets `attempts` if the connection lasts
  let retryTimer = 0;        // set after rate_limited/internal: sending is paused until it fires
  let blocked = false;       // the gateway refuses this page (origin or key): never connect again
  let accessCheck = null;    // the access check in flight
  let accessOk = false;      // the check said this page may chat: not asked again until a welcome

  function sendFrame(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    if (ws || blocked) return;
    setState(attempts >= 3 || navigator.onLine === false ? 'closed' : 'connecting');
    let sock;
    try {
      sock = new WebSocket(WS_URL);
    } catch (_) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      if (sock !== ws) return;
      opened = true;
      const token = load(TOKEN_KEY);
      const hello = { type: 'hello', v: 1 };
      if (token) hello.token = token;
      if (conversationId) { hello.conversation_id = conversationId; hello.last_seq = lastSeq; }
      helloHadToken = !!token;
      sendFrame(hello);
      welcomeTimer = setTimeout(() => drop(sock), WELCOME_TIMEOUT_MS);
    };
    sock.onmessage = (ev) => { if (sock === ws) onFrame(ev.data); };
    sock.onerror = () => { /* a close event follows */ };
    sock.onclose = (ev) => {
      if (sock !== ws) return;
      onClosed(ev.code);
      if (!opened) checkAccessOnce(); // refused before the upgrade? The browser will not say why
    };
  }

  // Abandon a connection that looks dead, without waiting for the browser's close handshake.
  function drop(sock) {
    if (!sock || sock !== ws) return;
    ws = null;
    try { sock.close(); } catch (_) { /* already closing */ }
    onClosed(1006);
  }

  function stopTimers() {
    clearInterval(heartbeatTimer);
    clearTimeout(pongTimer);
    clearTimeout(welcomeTimer);
    clearTimeout(ackTimer);
    clearTimeout(stableTimer);
    heartbeatTimer = pongTimer = welcomeTimer = ackTimer = stableTimer = 0;
  }

  function onClosed(code) {
    ws = null;
    welcomed = false;
    stopTimers();
    setTyping(false);
    if (blocked) return;
    if (code === 4401) {               // token invalid or from another tenant: forget it
      save(TOKEN_KEY, null);
      if (helloHadToken) { connect(); return; }
    }
    if (FATAL_CLOSES.includes(code)) {
      if (code === 1009 && lastSendId) markFailed(lastSendId, 'Too long — not sent');
      fatal = true;
      setState('closed', 'Connection error — send a message to try again');
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (reconnectTimer || ws || blocked) return;
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, attempts));
    attempts++;
    setState(attempts > 3 || navigator.onLine === false ? 'closed' : 'connecting');
    reconnectTimer = setTimeout(connect, Math.random() * cap); // full jitter
  }

  function onFrame(data) {
    if (typeof data !== 'string') return;
    clearTimeout(pongTimer); // any frame proves the connection is alive
    pongTimer = 0;
    let f;
    try { f = JSON.parse(data); } catch (_) { return; }
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      case 'welcome': return onWelcome(f);
      case 'message': return onMessage(f);
      case 'sent': return onSent(f);
      case 'typing': return setTyping(!!f.on);
      case 'stream': return onStream(f);
      case 'stream_reset':
        if (typeof f.stream_id === 'string') removeDraft(f.stream_id);
        return;
      case 'error': return onError(f);
      default: return; // pong and anything newer
    }
  }

  function onWelcome(f) {
    clearTimeout(welcomeTimer);
    welcomeTimer = 0;
    welcomed = true;
    accessOk = false; // a later run of failures asks again
    everWelcomed = true;
    fatal = false;
    // A server that welcomes and then closes (1011, 4409) must not get instant reconnects: the
    // back-off only starts over once this connection has stayed open for a while.
    clearTimeout(stableTimer);
    stableTimer = setTimeout(() => { stableTimer = 0; attempts = 0; }, STABLE_MS);
    if (typeof f.token === 'string' && f.token) save(TOKEN_KEY, f.token);
    if (!conversationId && typeof f.conversation_id === 'string') conversationId = f.conversation_id;
    applyTheme(f.theme);
    setState('open');
    const sock = ws;
    const every = typeof f.heartbeat_ms === 'number' && f.heartbeat_ms >= 1000 ? f.heartbeat_ms : 25000;
    heartbeatTimer = setInterval(() => {
      if (sock !== ws || !sendFrame({ type: 'ping' })) return;
      if (!pongTimer) pongTimer = setTimeout(() => drop(sock), PONG_TIMEOUT_MS);
    }, every);
    // A preview interrupted by the drop is re-sent now (offset 0); one that is not re-sent soon
    // was finished or abandoned while we were away.
    for (const d of drafts.values()) d.stale = true;
    clearTimeout(staleTimer);
    staleTimer = setTimeout(() => {
      for (const [id, d] of drafts) if (d.stale) removeDraft(id);
    }, 3000);
    flushQueue();
    scheduleAck();
  }

  function onError(f) {
    const cid = typeof f.client_id === 'string' ? f.client_id : null;
    if (cid && (f.code === 'rate_limited' || f.code === 'internal')) {
      // Pause all sending, then re-send the whole remaining queue in order from one timer, so a
      // newer message is never stored before an older refused one. Refusals of the items that
      // were already on the way join the same pause.
      if (!retryTimer) {
        const wait = typeof f.retry_after_ms === 'number' && isFinite(f.retry_after_ms) ? f.retry_after_ms : 1000;
        retryTimer = setTimeout(() => { retryTimer = 0; flushQueue(); }, Math.max(0, Math.min(wait, 60000)));
      }
    } else if (cid && f.code === 'invalid_message') {
      markFailed(cid);
    } else if (window.console) {
      console.warn('[switchboard] error from gateway:', f.code, f.message);
    }
  }

  // ---------------------------------------------------------------- access check
  // The gateway refuses a page whose origin is not in the tenant's `allowed_origins` (403) or a
  // bad key (401) before the WebSocket upgrade, and browsers do not tell scripts why a handshake
  // failed: to the widget that looks like a gateway that is down. So when a socket fails before it
  // ever opened, the widget asks `GET /v1/widget/config?key=<key>` (answered to any origin, with
  // `Access-Control-Allow-Origin: *`) whether this page may chat at all:
  //   200 {"origin":"https://shop.example","origin_allowed":false}  -> 'origin'
  //   401 {"error":{"code":"invalid_key",…}}                        -> 'key'
  //   200 {…,"origin_allowed":true}                                 -> 'ok' (down, or busy: retry)
  //   200 {"origin":null,"origin_allowed":null}                    -> 'unknown' (a same-origin
  //       fetch carries no Origin: the gateway cannot tell; the handshake is checked)
  // Anything else (no answer, a gateway without that endpoint) is 'unknown': keep reconnecting.
  async function checkAccess() {
    if (typeof fetch !== 'function') return { verdict: 'unknown' };
    const abort = typeof AbortController === 'function' ? new AbortController() : null;
    const timer = abort ? setTimeout(() => abort.abort(), ACCESS_TIMEOUT_MS) : 0;
    try {
      const res = await fetch(ACCESS_URL, {
        mode: 'cors', credentials: 'omit', cache: 'no-store', signal: abort ? abort.signal : undefined,
      });
      let body = null;
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      if (!body || typeof body !== 'object') return { verdict: 'unknown' };
      if (res.status === 200 && body.origin_allowed === false) {
        return { verdict: 'origin', origin: typeof body.origin === 'string' ? body.origin : null };
      }
      if (res.status === 200 && body.origin_allowed === true) return { verdict: 'ok' };
      if (res.status === 401 && body.error && body.error.code === 'invalid_key') return { verdict: 'key' };
      return { verdict: 'unknown' };
    } catch (_) {
      return { verdict: 'unknown' }; // offline, timed out, or refused by CORS (an older gateway)
    } finally {
      clearTimeout(timer);
    }
  }

  function checkAccessOnce() {
    if (accessCheck || accessOk || blocked) return;
    accessCheck = checkAccess().then((r) => {
      accessCheck = null;
      if (welcomed) return; // connected meanwhile: whatever it said is outdated
      if (r.verdict === 'ok') accessOk = true;
      else if (r.verdict === 'origin' || r.verdict === 'key') block(r);
    }, () => { accessCheck = null; });
  }

  // This page may not use the chat: say so, stop reconnecting for good, and tell the site owner
  // (in the console) how to fix it.
  function block(r) {
    blocked = true;
    clearTimeout(reconnectTimer);
    clearTimeout(retryTimer);
    reconnectTimer = retryTimer = 0;
    const sock = ws;
    ws = null;
    welcomed = false;
    stopTimers();
    if (sock) { try { sock.close(); } catch (_) { /* already closing */ } }
    setTyping(false);
    setState('blocked', 'Chat is not enabled on this site.');
    input.disabled = true;
    sendBtn.disabled = true;
    input.placeholder = 'Chat is not available';
    if (!window.console || typeof console.error !== 'function') return;
    const settings = HTTP_BASE + '/v1/widget/settings';
    if (r.verdict === 'key') {
      console.error('[switchboard] Chat disabled: the gateway at ' + HTTP_BASE + ' does not accept this ' +
        'widget key (data-key="' + KEY + '": unknown, revoked, or not a widget key). Copy the current ' +
        'embed tag from "embed" in GET ' + settings + ' (with the tenant\'s admin key).');
      return;
    }
    const origin = r.origin || location.origin;
    console.error('[switchboard] Chat disabled: this page\'s origin, ' + origin + ', is not in the ' +
      'allowed_origins of the widget settings, so the gateway refuses the connection ' +
      '(403 origin_not_allowed). To fix it, add "' + origin + '" to allowed_origins: ' +
      'GET ' + settings + ', add the origin to its "allowed_origins" list, and send the whole object back ' +
      'with PUT ' + settings + ' (with the tenant\'s admin key).' +
      (origin === 'null' ? ' This page has no origin (opened from a file or in a sandboxed frame): ' +
        'serve it over http(s), or allow "*".' : ''));
  }

  // ---------------------------------------------------------------- sending
  const encoder = new TextEncoder();

  function sendItem(item) {
    if (!welcomed || retryTimer) return; // paused after a refusal: the retry timer sends it
    const frame = JSON.stringify({ type: 'send', client_id: item.client_id, text: item.text });
    if (encoder.encode(frame).length > MAX_FRAME_BYTES) { markFailed(item.client_id, 'Too long — not sent'); return; }
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(frame);
    lastSendId = item.client_id;
  }

  function flushQueue() {
    for (const item of readQueue()) {  // oldest first; confirmed items are no longer queued
      if (!welcomed || retryTimer) return;
      sendItem(item);
    }
  }

  function scheduleAck() {
    if (ackTimer || lastSeq <= ackedSeq) return;
    ackTimer = setTimeout(() => {
      ackTimer = 0;
      if (welcomed && lastSeq > ackedSeq && sendFrame({ type: 'ack', seq: lastSeq })) ackedSeq = lastSeq;
    }, ACK_DEBOUNCE_MS);
  }

  function submit() {
    if (blocked) return;
    const text = input.value.trim();
    if (!text) return;
    if (text.length > MAX_TEXT) return; // maxlength already prevents this
    const item = { client_id: newClientId(), text };
    queueAdd(item);
    renderPending(item.client_id, text);
    input.value = '';
    autosize();
    if (welcomed) {
      sendItem(item);
    } else if (fatal || reconnectTimer) { // manual retry: try right away
      fatal = false;
      connect();
    }
  }

  function autosize() {
    input.style.height = 'auto';
    input.style.height = Math.min(input.scrollHeight + 2, 120) + 'px';
  }

  form.addEventListener('submit', (e) => { e.preventDefault(); submit(); input.focus(); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  input.addEventListener('input', autosize);
  window.addEventListener('online', () => { if (!ws && !fatal && !blocked) { attempts = 0; connect(); } });
  window.addEventListener('offline', () => { if (!welcomed && !blocked) setState('closed'); });
  // Another tab removed a pending item (confirmed or failed there): drop its pending bubble here.
  // If the message is in the conversation shown, its `message` frame renders it confirmed.
  window.addEventListener('storage', (e) => {
    if (!storageOk || e.newValue !== null || typeof e.key !== 'string' || !e.key.startsWith(ITEM_PREFIX)) return;
    const cid = e.key.slice(ITEM_PREFIX.length);
    const el = pendingEls.get(cid);
    if (el) { pendingEls.delete(cid); el.remove(); }
  });

  // ---------------------------------------------------------------- start
  function start() {
    document.body.appendChild(host);
    setState('connecting');
    for (const item of readQueue()) renderPending(item.client_id, item.text); // from before a reload
    setOpen(OPEN_AT_LOAD, { quiet: true }); // auto-open must not steal the host page's focus
    connect();
  }
  if (document.body) start();
  else document.addEventListener('DOMContentLoaded', start, { once: true });
})();
