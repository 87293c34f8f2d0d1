// Prints the browser client's figures for docs/benchmarks.md (issue 13); asserts nothing.
//   cd tests/browser && RELAY_BIN_DIR=../../target/debug node measure.mjs   (or: npm run measure)
// - page load to connected: a first visit (sign-up: handshake with the relay's default proof of
//   work) and a returning visit (the stored profile resumes), from navigation to "connected";
// - send to shown at the peer: Enter in one page to the message in the other page's DOM (both
//   pages in one Chromium, one clock), 20 messages one after another, median and spread;
// - bytes per page: what client_ui.html and its scripts weigh, as sent and as transferred.
// One real relay-server (default settings, SQLite, loopback), Debian's Chromium.
import { launchBrowser, startServer } from './helpers.mjs';
import { keepRecoveryCode } from './pages.mjs';

const RUNS = Number(process.env.RUNS || 5);
const SENDS = 20;
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
const ms = (x) => `${x.toFixed(0)} ms`;

const server = await startServer(['--register-burst', '100', '--handshake-burst', '300']);
const browser = await launchBrowser();
try {
  // Page load to connected.
  const first = [], again = [];
  for (let i = 0; i < RUNS; i++) {
    const ctx = await browser.newContext();
    let page = await ctx.newPage();
    let t0 = Date.now();
    await page.goto(`${server.url}/client_ui.html`);
    await page.fill('#name', `measure-${i}`);
    await page.click('#connect');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('connected as'), null, { timeout: 30000 });
    first.push(Date.now() - t0);
    await page.close();
    page = await ctx.newPage();
    t0 = Date.now();
    await page.goto(`${server.url}/client_ui.html`);
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('connected as'), null, { timeout: 30000 });
    again.push(Date.now() - t0);
    await ctx.close();
  }

  // Bytes per page.
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const sizes = [];
  page.on('requestfinished', async (req) => {
    if (req.method() !== 'GET') return;
    const res = await req.response();
    const s = await req.sizes();
    sizes.push({ url: new URL(req.url()).pathname, body: (await res.body()).length, wire: s.responseBodySize + s.responseHeadersSize, enc: res.headers()['content-encoding'] || 'identity' });
  });
  await page.goto(`${server.url}/client_ui.html`);
  await page.waitForSelector('#connect-view:not([hidden])');
  await page.waitForTimeout(300);

  // Send to shown at the peer.
  await page.fill('#name', 'measure-sender');
  await page.click('#connect');
  await page.waitForSelector('#main-view.on');
  await keepRecoveryCode(page);
  const ctxB = await browser.newContext();
  const peer = await ctxB.newPage();
  await peer.goto(`${server.url}/client_ui.html`);
  await peer.fill('#name', 'measure-reader');
  await peer.click('#connect');
  await peer.waitForSelector('#main-view.on');
  await keepRecoveryCode(peer);
  await page.fill('#search', 'measure-reader');
  await page.click('.result[data-peer="measure-reader"]');
  await peer.evaluate(() => {
    window.shownAt = {};
    new MutationObserver(() => {
      for (const el of document.querySelectorAll('#messages li.msg.in .body')) if (!(el.textContent in shownAt)) shownAt[el.textContent] = Date.now();
    }).observe(document.body, { childList: true, subtree: true });
  });
  // The first message opens the conversation state on both sides: not counted.
  const send = (text) => page.evaluate((t) => { document.getElementById('text').value = t; const at = Date.now(); document.getElementById('composer').requestSubmit(); return at; }, text);
  await send('warm-up');
  await peer.waitForSelector('.peer[data-peer="measure-sender"]', { timeout: 20000 });
  await peer.click('.peer[data-peer="measure-sender"]');
  await peer.waitForFunction(() => 'warm-up' in shownAt, null, { timeout: 20000 });
  const lat = [];
  for (let i = 1; i <= SENDS; i++) {
    const text = `latency ${i}`;
    const at = await send(text);
    await peer.waitForFunction((t) => t in shownAt, text, { timeout: 20000 });
    lat.push((await peer.evaluate((t) => shownAt[t], text)) - at);
  }

  const total = (k) => sizes.reduce((a, s) => a + s[k], 0);
  console.log(`page load to connected, first visit (sign-up, proof of work), ${RUNS} runs: median ${ms(median(first))} (min ${ms(Math.min(...first))}, max ${ms(Math.max(...first))})`);
  console.log(`page load to connected, returning visit (stored profile), ${RUNS} runs: median ${ms(median(again))} (min ${ms(Math.min(...again))}, max ${ms(Math.max(...again))})`);
  console.log(`send to shown at the peer, ${SENDS} messages: median ${ms(median(lat))}, p90 ${ms(pct(lat, 0.9))}, min ${ms(Math.min(...lat))}, max ${ms(Math.max(...lat))}`);
  for (const s of sizes) console.log(`  ${s.url}: ${s.body} bytes (${s.enc}), ${s.wire} bytes on the wire with headers`);
  console.log(`bytes per page (client_ui.html and what it loads): ${total('body')} bytes, ${total('wire')} on the wire`);
  await ctx.close(); await ctxB.close();
} finally {
  await browser.close();
  await server.stop();
}
