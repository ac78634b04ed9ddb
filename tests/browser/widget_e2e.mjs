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
// Exit code 0 and `widget e2e: ok` on success; 1 with a `widget e2e: FAILED: ...` line otherwise.
import { chromium } from 'playwright-core';

const DEMO_URL = process.env.SB_DEMO_URL;
const CONTROL_URL = (process.env.SB_CONTROL_URL || '').replace(/\/+$/, '');
const SCREENSHOT = process.env.SB_SCREENSHOT;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OVERALL_TIMEOUT_MS = 60_000;

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

  // i. screenshot and summary.
  if (SCREENSHOT) {
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    step(`screenshot saved to ${SCREENSHOT}`);
  }
  console.log('widget e2e: ok');
  console.log(JSON.stringify({
    messages: all.map((m) => ({ author: m.author, seq: Number(m.seq), text: m.text.slice(0, 40) })),
  }));
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
