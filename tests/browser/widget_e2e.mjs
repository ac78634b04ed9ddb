// Browser end-to-end test of the Switchboard web widget, driven by a Rust test (tests/*.rs).
//
// Environment:
//   SB_DEMO_URL     page to open (the demo page, through a proxy that can cut connections)
//   SB_CONTROL_URL  the proxy's control endpoint: POST /cut, /block, /unblock
//   SB_SCREENSHOT   PNG path for a full-page screenshot at the end (optional)
//   CHROMIUM        browser executable (default /usr/bin/chromium)
//
// The gateway under test answers every visitor message by streaming `You said: <text>.` followed
// by filler words, so replies are checked by structure and that prefix only.
//
// Two more pages follow the main story, in contexts of their own:
//   - the demo page with its WebSocket answered by a scripted gateway in this file (Playwright's
//     routeWebSocket): a long Markdown answer with citations checks how answers are shown —
//     scrolled to from their start, reflowed paragraphs and quotes, "Sources:" under them — and
//     that a visitor reading the history is not yanked down by a new message;
//   - a page of another origin (served by this script on 127.0.0.1) embedding the gateway's
//     widget.js: the gateway refuses its WebSocket (403, origin not allowed), and the widget must
//     say that chat is not enabled, stop reconnecting, and tell the site owner how to fix it in
//     the console.
// Exit code 0 and `widget e2e: ok` on success; 1 with a `widget e2e: FAILED: ...` line otherwise.
import http from 'node:http';
import { chromium } from 'playwright-core';

const DEMO_URL = process.env.SB_DEMO_URL;
const CONTROL_URL = (process.env.SB_CONTROL_URL || '').replace(/\/+$/, '');
const SCREENSHOT = process.env.SB_SCREENSHOT;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OVERALL_TIMEOUT_MS = 90_000;

const FIRST = 'hello from the browser';
const SECOND = 'sent while offline';

class CheckFailed extends Error {}
const fail = (message) => { throw new CheckFailed(message); };
const step = (message) => console.log(`widget e2e: ${message}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function control(action) {
  let response;
  try {
    response = await fetch(`${CONTROL_URL}/${action}`, { method: 'POST' });
  } catch (err) {
    fail(`POST ${CONTROL_URL}/${action} failed: ${err.message}`);
  }
  if (!response.ok) fail(`POST ${CONTROL_URL}/${action} answered ${response.status}`);
  step(`proxy: ${action}`);
}

// Polls `probe` until it returns a truthy value; fails with `what` after `timeoutMs`.
async function waitUntil(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

// Every rendered message, in DOM order (locators pierce the widget's open shadow root).
async function messages(page) {
  return page.locator('[data-sb-msg]').evaluateAll((els) => els.map((el) => {
    const textEl = el.querySelector('[data-sb="text"]');
    return {
      author: el.getAttribute('data-author'),
      direction: el.getAttribute('data-direction'),
      seq: el.getAttribute('data-seq'),
      pending: el.getAttribute('data-pending'),
      failed: el.getAttribute('data-failed'),
      clientId: el.getAttribute('data-client-id'),
      text: (textEl ? textEl.textContent : '').trim(),
      fullText: el.textContent,
    };
  }));
}

async function hostState(page) {
  return page.locator('#switchboard-widget').getAttribute('data-state');
}

async function botReply(page, prefix, timeoutMs) {
  return waitUntil(`a bot message starting "${prefix}"`, timeoutMs, async () =>
    (await messages(page)).find((m) => m.author === 'bot' && m.text.startsWith(prefix)));
}

async function send(page, text) {
  const input = page.locator('[data-sb="input"]');
  await input.fill(text);
  await input.press('Enter');
  step(`typed "${text}" + Enter`);
}

async function run(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('console', (msg) => console.log(`[console] ${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => {
    pageErrors.push(err.message);
    console.log(`[console] pageerror: ${err.message}`);
  });

  // b. open the demo page and wait for the widget to connect.
  step(`opening ${DEMO_URL}`);
  await page.goto(DEMO_URL, { waitUntil: 'load', timeout: 15_000 });
  await page.locator('#switchboard-widget[data-state="open"]').waitFor({ state: 'attached', timeout: 15_000 })
    .catch(() => fail('the widget never reached data-state="open" (connected + welcomed)'));
  step('widget connected');
  const panel = page.locator('[data-sb="panel"]');
  if (!(await panel.isVisible())) await page.locator('[data-sb="launcher"]').click();
  await panel.waitFor({ state: 'visible', timeout: 5_000 }).catch(() => fail('the chat panel did not open'));
  step('panel open');

  // Record every data-state change of the host, so a fast reconnect is not missed.
  await page.evaluate(() => {
    const host = document.getElementById('switchboard-widget');
    window.__sbStates = [];
    new MutationObserver(() => window.__sbStates.push(host.getAttribute('data-state')))
      .observe(host, { attributes: true, attributeFilter: ['data-state'] });
  });

  // c. first message.
  await send(page, FIRST);

  // d. wait for the streamed preview, then cut the connection mid-stream.
  await page.locator('[data-sb="draft"]').filter({ hasText: /\S/ }).first()
    .waitFor({ state: 'attached', timeout: 10_000 })
    .catch(() => fail('no streamed preview ([data-sb="draft"] with text) appeared'));
  step('streamed preview visible');
  await control('cut');

  // e. the widget notices, reconnects, and ends with the complete answer exactly once.
  await waitUntil('data-state to leave "open" after the cut', 10_000, () =>
    page.evaluate(() => window.__sbStates.some((s) => s !== 'open')));
  step('connection lost');
  await waitUntil('data-state "open" again after the cut', 15_000, async () => (await hostState(page)) === 'open');
  step('reconnected');
  await botReply(page, `You said: ${FIRST}`, 15_000);
  step('first answer complete');

  // f. offline: block new connections, cut the current one, type, then let it back in.
  await control('block');
  await control('cut');
  await waitUntil('data-state to leave "open" while blocked', 10_000, async () => (await hostState(page)) !== 'open');
  step(`offline (data-state=${await hostState(page)})`);
  await send(page, SECOND);
  await waitUntil(`"${SECOND}" shown as pending`, 3_000, async () =>
    (await messages(page)).some((m) => m.author === 'contact' && m.text === SECOND && m.pending === 'true'));
  step('offline message shown as pending');
  await sleep(1_000);
  await control('unblock');
  await botReply(page, `You said: ${SECOND}`, 20_000);
  step('second answer complete');
  await sleep(500); // let any late frame land before the final checks

  // g. structure of the conversation.
  const all = await messages(page);
  for (const text of [FIRST, SECOND]) {
    const mine = all.filter((m) => m.author === 'contact' && m.text === text);
    if (mine.length !== 1) fail(`expected exactly one visitor message "${text}", found ${mine.length}`);
    if (mine[0].seq === null) fail(`visitor message "${text}" has no data-seq`);
    if (mine[0].pending !== null) fail(`visitor message "${text}" is still pending`);
    if (mine[0].failed !== null) fail(`visitor message "${text}" is marked failed`);
  }
  const bots = all.filter((m) => m.author === 'bot');
  if (bots.length !== 2) fail(`expected exactly 2 bot messages, found ${bots.length}: ${JSON.stringify(bots.map((b) => b.text.slice(0, 40)))}`);
  const drafts = await page.locator('[data-sb="draft"]').count();
  if (drafts !== 0) fail(`${drafts} streamed preview(s) left over`);
  const seqs = all.filter((m) => m.seq !== null).map((m) => Number(m.seq));
  if (seqs.length !== all.length) fail('a message without data-seq is left over');
  if (new Set(seqs).size !== seqs.length) fail(`duplicate data-seq values: ${seqs.join(',')}`);
  for (let i = 1; i < seqs.length; i++) {
    if (!(seqs[i] > seqs[i - 1])) fail(`data-seq not increasing in DOM order: ${seqs.join(',')}`);
  }
  const panelText = await panel.evaluate((el) => el.textContent);
  if (all.some((m) => m.fullText.includes('undefined')) || panelText.includes('undefined')) {
    fail('the text "undefined" appears in the widget');
  }
  step(`conversation ok (${all.length} messages, seqs ${seqs.join(',')})`);

  // h. no <script> element inside the widget's shadow root.
  const scripts = await page.evaluate(() =>
    document.getElementById('switchboard-widget').shadowRoot.querySelectorAll('script').length);
  if (scripts !== 0) fail(`${scripts} <script> element(s) inside the widget's shadow root`);
  if (pageErrors.length) fail(`uncaught errors in the page: ${pageErrors.join(' | ')}`);

  // i. screenshot.
  if (SCREENSHOT) {
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    step(`screenshot saved to ${SCREENSHOT}`);
  }

  // j. how answers are shown, against a scripted gateway.
  await checkRendering(browser);

  // k. a page whose origin the tenant does not allow.
  const key = await page.locator('script[data-key]').first().getAttribute('data-key');
  if (!key) fail('the demo page has no script[data-key]');
  await checkForeignOrigin(browser, key);

  console.log('widget e2e: ok');
  console.log(JSON.stringify({
    messages: all.map((m) => ({ author: m.author, seq: Number(m.seq), text: m.text.slice(0, 40) })),
  }));
}

// ------------------------------------------------------------------ j. rendering
// A long answer as the knowledge responder writes them: hard-wrapped paragraphs (knowledge files
// are wrapped at ~100 columns), a hard-wrapped quote of two paragraphs, a wrapped list item, a
// code block, and enough text to be much taller than the log.
const ANSWER_INTRO = 'Here is what the guide says about winding down [1]. It arrives as a hard-wrapped';
const ANSWER_PARA = `${ANSWER_INTRO} paragraph, the way knowledge files are written, and must read as one paragraph.`;
const QUOTE_1 = 'Keep the last hour before bed for quiet things: dim the lights, put the phone away and read something on paper.';
const QUOTE_2 = 'A second quoted paragraph, also wrapped.';
const FILLER = Array.from({ length: 10 }, (_, i) =>
  `Filler paragraph ${i + 1} makes the answer taller than the chat log, so that the check sees where\n` +
  'the log was scrolled to: the start of the answer, not its end, and not where it was before.');
const LONG_ANSWER = [
  'Here is what the guide says about winding down [1]. It arrives as a hard-wrapped',
  'paragraph, the way knowledge files are written, and must read as one paragraph.',
  '',
  '> Keep the last hour before bed for quiet things: dim the lights, put the phone',
  '> away and read something on paper.',
  '>',
  '> A second quoted paragraph, also',
  '> wrapped.',
  '',
  '- a list item that is',
  '  wrapped onto a second line [2]',
  '- a second item',
  '',
  '```',
  'code keeps',
  '  its lines',
  '```',
  '',
  FILLER.join('\n\n'),
].join('\n');
const CITATIONS = [
  { document_id: 'doc-sleep', title: 'Sleep better', section: 'Wind down', chunk: 3 },
  { document_id: 'doc-habits', title: 'Habits that stick', chunk: 0 },
];
const LATE_AGENT = 'An agent joined while you were reading the history.';
const LATE_ANSWER = `A second long answer, pushed by the gateway.\n\n${FILLER.join('\n\n')}`;

// The gateway's side of docs/widget-protocol.md, scripted: history, `sent`, a streamed answer.
function scriptedGateway() {
  const conversation = 'conv-scripted';
  const history = [];
  let seq = 0;
  let socket = null;
  const frame = (f) => { if (socket) socket.send(JSON.stringify(f)); };
  const store = (fields) => {
    seq += 1;
    const m = { type: 'message', conversation_id: conversation, id: `msg-${seq}`, seq,
      created_at: new Date().toISOString(), citations: [], ...fields };
    history.push(m);
    return m;
  };
  for (let i = 1; i <= 6; i++) {
    store({ direction: 'inbound', author: 'contact', text: `earlier question ${i}`, client_id: `old-${i}` });
    store({ direction: 'outbound', author: 'bot', text: `Earlier answer ${i}.`, reply_to: `msg-${seq}` });
  }
  const answer = async (question) => {
    await sleep(400); // the visitor's own message is checked in view before the answer comes
    frame({ type: 'typing', on: true });
    const pieces = LONG_ANSWER.match(/[\s\S]{1,120}/g);
    let offset = 0;
    for (const delta of pieces) {
      frame({ type: 'stream', stream_id: question.id, offset, delta });
      offset += delta.length;
      await sleep(25);
    }
    frame(store({ direction: 'outbound', author: 'bot', text: LONG_ANSWER, reply_to: question.id, citations: CITATIONS }));
    frame({ type: 'typing', on: false });
  };
  const handler = (ws) => {
    socket = ws;
    ws.onMessage((data) => {
      let f;
      try { f = JSON.parse(String(data)); } catch { return; }
      if (f.type === 'hello') {
        frame({ type: 'welcome', v: 1, token: 'v1.scripted.w_scripted.0.sig', visitor_id: 'w_scripted',
          conversation_id: conversation, last_seq: seq, heartbeat_ms: 25000,
          theme: { title: 'Scripted gateway', welcome_message: 'Hi! Ask me anything.' } });
        const after = f.conversation_id === conversation && typeof f.last_seq === 'number' ? f.last_seq : 0;
        for (const m of history) if (m.seq > after) frame(m);
      } else if (f.type === 'send') {
        const question = store({ direction: 'inbound', author: 'contact', text: f.text, client_id: f.client_id });
        frame({ type: 'sent', client_id: f.client_id, message_id: question.id, conversation_id: conversation,
          seq: question.seq, duplicate: false });
        frame(question);
        answer(question);
      } else if (f.type === 'ping') {
        frame({ type: 'pong' });
      }
    });
  };
  return { handler, push: (fields) => frame(store(fields)) };
}

// Where a message sits in the log: `top` is its top edge below the log's top edge (px).
async function placement(page, text) {
  return page.evaluate((prefix) => {
    const log = document.getElementById('switchboard-widget').shadowRoot.querySelector('[data-sb="log"]');
    const el = [...log.querySelectorAll('[data-sb-msg]')].reverse()
      .find((m) => (m.querySelector('[data-sb="text"]') || m).textContent.trim().startsWith(prefix));
    if (!el) return null;
    const logRect = log.getBoundingClientRect();
    const rect = el.getBoundingClientRect();
    return { top: rect.top - logRect.top, bottom: rect.bottom - logRect.top, height: rect.height,
      logHeight: log.clientHeight, scrollTop: log.scrollTop,
      toEnd: log.scrollHeight - log.scrollTop - log.clientHeight };
  }, text);
}

async function checkRendering(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const gateway = scriptedGateway();
  await context.routeWebSocket(/\/v1\/widget\/ws/, gateway.handler);
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => { pageErrors.push(err.message); console.log(`[rendering] pageerror: ${err.message}`); });
  await page.goto(DEMO_URL, { waitUntil: 'load', timeout: 15_000 });
  await page.locator('#switchboard-widget[data-state="open"]').waitFor({ state: 'attached', timeout: 15_000 })
    .catch(() => fail('rendering: the widget never connected to the scripted gateway'));
  const panel = page.locator('[data-sb="panel"]');
  if (!(await panel.isVisible())) await page.locator('[data-sb="launcher"]').click();
  await panel.waitFor({ state: 'visible', timeout: 5_000 });
  await waitUntil('the scripted history', 5_000, async () =>
    (await messages(page)).filter((m) => m.seq !== null).length === 12);
  step('rendering: scripted gateway connected, history shown');

  // 1. the visitor's own message is shown; then the long answer from its START.
  const QUESTION = 'where does this come from?';
  await send(page, QUESTION);
  await sleep(150);
  const mine = await placement(page, QUESTION);
  if (!mine) fail('rendering: the visitor message is not shown');
  if (mine.top < -1 || mine.bottom > mine.logHeight + 1) {
    fail(`rendering: the visitor's own message is not in view after sending: ${JSON.stringify(mine)}`);
  }
  await botReply(page, ANSWER_INTRO, 10_000);
  await sleep(300);
  const answer = await placement(page, ANSWER_INTRO);
  if (!(answer.height > answer.logHeight)) fail(`rendering: the answer is not taller than the log: ${JSON.stringify(answer)}`);
  if (answer.top < -1 || answer.top > 24) {
    fail(`rendering: the answer's start is not at the top of the log (top ${answer.top}px): ${JSON.stringify(answer)}`);
  }
  step(`rendering: long answer shown from its start (top ${Math.round(answer.top)}px, ${Math.round(answer.height)}px tall)`);

  // 2 + 3. sources, and reflowed Markdown.
  const shown = await page.evaluate((intro) => {
    const log = document.getElementById('switchboard-widget').shadowRoot.querySelector('[data-sb="log"]');
    const el = [...log.querySelectorAll('[data-sb-msg]')].find((m) =>
      m.querySelector('[data-sb="text"]').textContent.trim().startsWith(intro));
    const text = el.querySelector('[data-sb="text"]');
    const sources = el.querySelector('[data-sb="sources"]');
    const quote = text.querySelector(':scope > blockquote');
    return {
      firstPara: text.querySelector(':scope > p').textContent,
      breaks: text.querySelectorAll('br').length,
      quoteParas: quote ? [...quote.querySelectorAll(':scope > p')].map((p) => p.textContent) : null,
      items: [...text.querySelectorAll(':scope > ul > li')].map((li) => li.textContent),
      code: (text.querySelector('pre') || { textContent: null }).textContent,
      fillerParas: [...text.querySelectorAll(':scope > p')].filter((p) => p.textContent.startsWith('Filler')).length,
      markers: [...text.querySelectorAll('p')].filter((p) => p.textContent.trim().startsWith('>')).length,
      sourcesLabel: sources ? sources.querySelector('.label').textContent : null,
      sources: sources ? [...sources.querySelectorAll('li')].map((li) => li.textContent) : null,
      sourcesLast: sources ? sources === el.lastElementChild : false,
      fullText: el.textContent,
    };
  }, ANSWER_INTRO);
  const expectSources = ['[1] Sleep better \u2014 Wind down', '[2] Habits that stick'];
  if (shown.sourcesLabel !== 'Sources:' || JSON.stringify(shown.sources) !== JSON.stringify(expectSources) || !shown.sourcesLast) {
    fail(`rendering: expected "Sources:" ${JSON.stringify(expectSources)} under the answer, found ${shown.sourcesLabel} ${JSON.stringify(shown.sources)}`);
  }
  step(`rendering: sources listed: ${shown.sources.join(' | ')}`);
  if (shown.firstPara !== ANSWER_PARA) fail(`rendering: the wrapped paragraph was not reflowed: ${JSON.stringify(shown.firstPara)}`);
  if (shown.breaks !== 0) fail(`rendering: ${shown.breaks} <br> left in a reflowed answer`);
  if (JSON.stringify(shown.quoteParas) !== JSON.stringify([QUOTE_1, QUOTE_2])) {
    fail(`rendering: the quote is not two reflowed paragraphs: ${JSON.stringify(shown.quoteParas)}`);
  }
  if (shown.markers !== 0) fail('rendering: a "> " quote marker is shown as text');
  if (JSON.stringify(shown.items) !== JSON.stringify(['a list item that is wrapped onto a second line [2]', 'a second item'])) {
    fail(`rendering: list items not kept (and reflowed): ${JSON.stringify(shown.items)}`);
  }
  if (shown.code !== 'code keeps\n  its lines') fail(`rendering: the code block lost its lines: ${JSON.stringify(shown.code)}`);
  if (shown.fillerParas !== FILLER.length) fail(`rendering: expected ${FILLER.length} filler paragraphs, found ${shown.fillerParas}`);
  if (shown.fullText.includes('undefined')) fail('rendering: the text "undefined" appears in the answer');
  step('rendering: paragraphs and quote reflowed; list, code block kept');
  if (SCREENSHOT) {
    const path = SCREENSHOT.replace(/(\.png)?$/, '-answer.png');
    await page.screenshot({ path });
    step(`screenshot saved to ${path}`);
  }

  // 1 (cont.). Reading the history: a new message must not move the view.
  await page.evaluate(() => {
    document.getElementById('switchboard-widget').shadowRoot.querySelector('[data-sb="log"]').scrollTop = 0;
  });
  await sleep(200);
  gateway.push({ direction: 'outbound', author: 'agent', text: LATE_AGENT });
  await waitUntil('the agent message', 5_000, async () =>
    (await messages(page)).some((m) => m.author === 'agent' && m.text === LATE_AGENT));
  await sleep(200);
  const scrolledUp = await page.evaluate(() =>
    document.getElementById('switchboard-widget').shadowRoot.querySelector('[data-sb="log"]').scrollTop);
  if (scrolledUp > 2) fail(`rendering: a new message yanked the view from the history (scrollTop ${scrolledUp})`);
  step('rendering: a visitor reading the history stays there');

  // ... while a visitor at the end of the log is taken to the start of the next answer.
  await page.evaluate(() => {
    const log = document.getElementById('switchboard-widget').shadowRoot.querySelector('[data-sb="log"]');
    log.scrollTop = log.scrollHeight;
  });
  await sleep(200);
  gateway.push({ direction: 'outbound', author: 'bot', text: LATE_ANSWER, citations: [CITATIONS[1]] });
  await botReply(page, 'A second long answer', 5_000);
  await sleep(200);
  const late = await placement(page, 'A second long answer');
  if (late.top < -1 || late.top > 24) fail(`rendering: a pushed answer's start is not at the top of the log: ${JSON.stringify(late)}`);
  step(`rendering: pushed answer shown from its start (top ${Math.round(late.top)}px)`);
  if (pageErrors.length) fail(`rendering: uncaught errors in the page: ${pageErrors.join(' | ')}`);
  await context.close();
}

// ------------------------------------------------------------------ k. origin not allowed
// The host's data-state now, or null while the widget is not on the page.
async function hostStateNow(page) {
  return page.evaluate(() => {
    const host = document.getElementById('switchboard-widget');
    return host ? host.getAttribute('data-state') : null;
  });
}

// Another site: a page on its own loopback port (so, another origin than the gateway's) that
// embeds the gateway's widget.js. Loopback, not a Playwright-fulfilled page: Chromium refuses a
// page it takes for public access to the loopback gateway (Local Network Access).
async function foreignSite(gateway, key) {
  const page = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Another site</title></head>' +
    `<body><p>A shop that embeds the widget without being allowed to.</p><script src="${gateway}/widget.js" ` +
    `data-key="${key}" data-open="true"></script></body></html>`;
  const server = http.createServer((req, res) => {
    if (req.url !== '/shop') { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page);
  });
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

async function checkForeignOrigin(browser, key) {
  const gateway = new URL(DEMO_URL).origin;
  const site = await foreignSite(gateway, key);
  const FOREIGN_ORIGIN = site.origin;
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // Count the page's WebSocket attempts (a refused handshake included).
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sbSockets = 0;
    window.WebSocket = class extends Native {
      constructor(...args) { super(...args); window.__sbSockets += 1; }
    };
  });
  // The widget asks GET /v1/widget/config?key=… why its socket was refused; the gateway answers
  // any origin, and says this one is not allowed.
  const probe = await fetch(`${gateway}/v1/widget/config?key=${encodeURIComponent(key)}`, {
    headers: { origin: FOREIGN_ORIGIN },
  }).catch((err) => fail(`GET ${gateway}/v1/widget/config failed: ${err.message}`));
  const verdict = await probe.json().catch(() => null);
  if (probe.status !== 200 || probe.headers.get('access-control-allow-origin') !== '*' ||
      !verdict || verdict.origin_allowed !== false || verdict.origin !== FOREIGN_ORIGIN) {
    fail(`GET /v1/widget/config from ${FOREIGN_ORIGIN}: ${probe.status} ${JSON.stringify(verdict)}`);
  }
  const badKey = await fetch(`${gateway}/v1/widget/config?key=sbw_nosuchkey`);
  const badBody = await badKey.json().catch(() => null);
  if (badKey.status !== 401 || !badBody || !badBody.error || badBody.error.code !== 'invalid_key') {
    fail(`GET /v1/widget/config with an unknown key: ${badKey.status} ${JSON.stringify(badBody)}`);
  }
  const page = await context.newPage();
  const consoleErrors = [];
  const pageErrors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(msg.text()); });
  page.on('pageerror', (err) => pageErrors.push(err.message));
  await page.goto(`${FOREIGN_ORIGIN}/shop`, { waitUntil: 'load', timeout: 15_000 });
  await waitUntil(`data-state "blocked" on a page at ${FOREIGN_ORIGIN}`, 15_000, async () =>
    (await hostStateNow(page)) === 'blocked');
  const status = (await page.locator('[data-sb="status"]').textContent() || '').trim();
  if (status !== 'Chat is not enabled on this site.') fail(`foreign origin: status line is ${JSON.stringify(status)}`);
  if (!(await page.locator('[data-sb="input"]').isDisabled())) fail('foreign origin: the input is still enabled');
  const advice = consoleErrors.find((t) => t.includes('[switchboard]'));
  if (!advice || !advice.includes(FOREIGN_ORIGIN) || !advice.includes('allowed_origins') ||
      !advice.includes(`PUT ${gateway}/v1/widget/settings`)) {
    fail(`foreign origin: no console.error telling the site owner how to allow ${FOREIGN_ORIGIN}: ${JSON.stringify(consoleErrors)}`);
  }
  step(`foreign origin: "${status}"; console: ${advice}`);
  const before = await page.evaluate(() => window.__sbSockets);
  if (!(before >= 1)) fail('foreign origin: the widget never tried to connect');
  await sleep(3_000);
  const after = await page.evaluate(() => window.__sbSockets);
  if (after !== before) fail(`foreign origin: the widget kept reconnecting (${before} -> ${after} sockets)`);
  if ((await hostStateNow(page)) !== 'blocked') fail('foreign origin: the widget left the blocked state');
  if (pageErrors.length) fail(`foreign origin: uncaught errors in the page: ${pageErrors.join(' | ')}`);
  step(`foreign origin: no reconnects after the refusal (${before} socket(s) in all)`);
  await context.close();
  await site.close();
}

async function main() {
  if (!DEMO_URL) fail('SB_DEMO_URL is not set');
  if (!CONTROL_URL) fail('SB_CONTROL_URL is not set');
  step(`launching ${CHROMIUM}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  }).catch((err) => fail(`could not launch ${CHROMIUM}: ${err.message}`));
  let timer;
  try {
    await Promise.race([
      run(browser),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new CheckFailed(`overall timeout of ${OVERALL_TIMEOUT_MS} ms`)), OVERALL_TIMEOUT_MS);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    await browser.close().catch(() => {});
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.log(`widget e2e: FAILED: ${err instanceof CheckFailed ? err.message : err.stack || err}`);
    process.exit(1);
  },
);
