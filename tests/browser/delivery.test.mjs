// Nothing lost, nothing misordered (issue 13, defects 1 and 7): quick sends to a contact never
// written to before, bursts from both sides at once, both sides writing first at the same moment.
// "Delivered ✓✓" must mean the peer's page opened the message and shows it. Real Chromium, real
// relay-server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer, until } from './helpers.mjs';
import { DESKTOP, connect, openPeer, burst, received, sentStates, shoot } from './pages.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

const newContext = () => browser.newContext({ viewport: DESKTOP });
const settle = () => new Promise((r) => setTimeout(r, 1500)); // time for a stray copy or receipt to show

test('Enter, Enter to a contact never written to: both arrive, once, in order, and only then "delivered" (5 fresh contacts)', async () => {
  const ctxR = await newContext();
  const reader = await connect(ctxR, 'reader', server.url);
  const writers = [1, 2, 3, 4, 5];
  const ctxs = await Promise.all(writers.map(() => newContext()));
  try {
    // Five people who never wrote to the reader each send two messages back to back, all at once.
    const pages = await Promise.all(writers.map((i) => connect(ctxs[i - 1], `writer${i}`, server.url)));
    await Promise.all(pages.map((p) => openPeer(p, 'reader')));
    await Promise.all(pages.map((p, k) => burst(p, [`first ${k + 1}`, `second ${k + 1}`])));
    for (const [k, writer] of pages.entries()) {
      await until(async () => { const s = await sentStates(writer); return s.length === 2 && s.every((x) => /^delivered/.test(x)); },
        `writer${k + 1}'s two messages to be delivered`);
    }
    // Delivered means shown at the peer: both are there, once each, in the order written.
    await settle();
    for (const i of writers) {
      await openPeer(reader, `writer${i}`);
      assert.deepEqual(await received(reader), [`first ${i}`, `second ${i}`], `writer${i}'s messages at the reader`);
    }
  } finally { await ctxR.close(); await Promise.all(ctxs.map((c) => c.close())); }
});

test('bursts of 50 from both sides at once to a new contact: all arrive once, in the sender\'s order, all delivered', async () => {
  const ctxA = await newContext(), ctxB = await newContext();
  try {
    const a = await connect(ctxA, 'burst-a', server.url);
    const b = await connect(ctxB, 'burst-b', server.url);
    await openPeer(a, 'burst-b');
    await openPeer(b, 'burst-a');
    const texts = (who) => Array.from({ length: 50 }, (_, i) => `${who} ${String(i + 1).padStart(2, '0')}`);
    await Promise.all([burst(a, texts('from a')), burst(b, texts('from b'))]);
    for (const [page, other] of [[a, 'from b'], [b, 'from a']]) {
      await until(async () => (await received(page)).length >= 50, `all 50 "${other}" to show`, 90000);
    }
    await settle();
    assert.deepEqual(await received(b), texts('from a'), 'b shows a\'s 50 once each, in a\'s order');
    assert.deepEqual(await received(a), texts('from b'), 'a shows b\'s 50 once each, in b\'s order');
    for (const page of [a, b]) {
      await until(async () => { const s = await sentStates(page); return s.length === 50 && s.every((x) => /^delivered/.test(x)); },
        'all 50 sent to be delivered', 60000);
    }
    // No note on any of them: nothing was missing, nothing late.
    assert.equal(await a.locator('#messages li.msg.in small').count(), 0);
    await shoot(a, 'client_ui_burst');
  } finally { await ctxA.close(); await ctxB.close(); }
});

test('both write their first message at the same moment: each arrives and each sender sees "delivered"', async () => {
  const ctxA = await newContext(), ctxB = await newContext();
  try {
    const a = await connect(ctxA, 'same-a', server.url);
    const b = await connect(ctxB, 'same-b', server.url);
    await openPeer(a, 'same-b');
    await openPeer(b, 'same-a');
    // a's directory lookups are slow (a distant relay): a's own first send and b's first
    // message, arriving meanwhile, both need the conversation's key from the directory at once.
    await a.route('**/peers', async (route) => { await new Promise((r) => setTimeout(r, 1500)); await route.continue(); });
    await Promise.all([burst(a, ['hi b']), burst(b, ['hi a'])]);
    await until(async () => (await received(a)).length === 1 && (await received(b)).length === 1, 'both messages to arrive');
    for (const page of [a, b]) {
      await until(async () => /^delivered/.test((await sentStates(page))[0] || ''), 'the first message to be delivered');
    }
    await settle();
    assert.deepEqual(await received(a), ['hi a']);
    assert.deepEqual(await received(b), ['hi b']);
  } finally { await ctxA.close(); await ctxB.close(); }
});
