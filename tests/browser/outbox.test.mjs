// The browser's outbox (docs/protocol.md §3.1), in real Chromium against the real relay-server:
// a message is sealed once, kept in the page's profile until the relay says stored or refused,
// and resent after outages and reloads — the same envelope while the relay can recognise it,
// so the recipient sees every message once, in order. Screenshots go to test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer, until, freePort } from './helpers.mjs';
import { openPeer, say, shoot, keepRecoveryCode, scripted } from './pages.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const DESKTOP = { viewport: { width: 1280, height: 800 } };

/** Signs in, or lets the page resume the profile this browser signed in last. */
async function signIn(page, name) {
  await page.waitForSelector('#connect-view:not([hidden]), #main-view.on', { timeout: 20000 });
  if (!(await page.locator('#main-view.on').count())) {
    await page.fill('#name', name);
    await page.click('#connect');
  }
  await page.waitForSelector('#main-view.on', { timeout: 20000 });
  await keepRecoveryCode(page);
}

async function connect(context, name, base) {
  const page = await context.newPage();
  await page.goto(`${base}/client_ui.html`);
  await signIn(page, name);
  return page;
}

const mine = (page, text) => page.locator(`#messages li.msg.out:has-text("${text}")`);
const inbound = (page, text) => page.waitForSelector(`#messages li.msg.in:has-text("${text}")`, { timeout: 30000 });
/** The texts of the messages `page` received in the open conversation, in order, with their notes. */
const received = (page) => page.locator('#messages li.msg.in').evaluateAll((l) => l.map((li) => li.textContent));

/** `a` and `b` connect; `a` writes `text` to `b`, who reads it. */
async function meet(ctxA, a, ctxB, b, text, base) {
  const pageA = await connect(ctxA, a, base);
  const pageB = await connect(ctxB, b, base);
  await openPeer(pageA, b);
  await say(pageA, text);
  await openPeer(pageB, a);
  await inbound(pageB, text);
  await until(async () => /^(sent|delivered)/.test(await mine(pageA, text).getAttribute('data-state')), 'the first message to be sent');
  return [pageA, pageB];
}

/**
 * Serves the page and its scripts from the last copy fetched while the relay is away, as a
 * browser's cache would: the relay serves the page, and a reload during an outage must still
 * find it. The relay's API (POSTs) is never served from here.
 */
async function cachePage(context) {
  const cache = new Map();
  await context.route(/\.(html|js)(\?.*)?$/, async (route) => {
    const url = route.request().url();
    try {
      const res = await route.fetch();
      cache.set(url, { status: res.status(), headers: res.headers(), body: await res.body() });
      await route.fulfill({ response: res });
    } catch (e) {
      const hit = cache.get(url);
      if (hit) await route.fulfill(hit); else await route.abort();
    }
  });
}

test('relay down: two messages wait as "sending…", survive a reload, and arrive once and in order when the relay is back', async () => {
  const port = await freePort();
  const bind = `127.0.0.1:${port}`;
  let relay = await startServer([], { bind });
  const ctxA = await browser.newContext(DESKTOP), ctxB = await browser.newContext(DESKTOP);
  try {
    await cachePage(ctxA);
    const [alice, bob] = await meet(ctxA, 'alice', ctxB, 'bob', 'before the outage', relay.url);

    await relay.halt();
    await until(async () => (await alice.textContent('#status')).includes('reconnecting'), 'alice to notice the relay is gone');
    await say(alice, 'outage one');
    await say(alice, 'outage two');
    for (const t of ['outage one', 'outage two']) {
      await until(async () => (await mine(alice, t).getAttribute('data-state')) === 'sending…', `"${t}" to show sending`);
      assert.equal(await mine(alice, t).locator('small').textContent(), 'sending…');
      assert.equal(await mine(alice, t).locator('.spinner').count(), 1, 'a spinner while sending');
    }
    await shoot(alice, 'client_ui_outbox_sending');

    // A reload while the relay is still away: the outbox comes back from the stored profile.
    await alice.reload();
    await signIn(alice, 'alice');
    await openPeer(alice, 'bob');
    // The history comes back too (issue 13): the message from before the outage, then the two waiting.
    const shown = await alice.locator('#messages li.msg.out').evaluateAll((l) => l.map((li) => [li.firstChild.textContent, li.dataset.state]));
    assert.equal(shown.length, 3, JSON.stringify(shown));
    assert.equal(shown[0][0], 'before the outage');
    assert.deepEqual(shown.slice(1), [['outage one', 'sending…'], ['outage two', 'sending…']], 'both wait, in order, after the reload');
    await shoot(alice, 'client_ui_outbox_sending_reloaded');

    // The relay comes back on the same data and port.
    relay = await startServer([], { bind, dataDir: relay.dir });
    for (const t of ['outage one', 'outage two']) {
      await until(async () => /^(sent|delivered)/.test(await mine(alice, t).getAttribute('data-state')), `"${t}" to be sent`, 40000);
    }
    await inbound(bob, 'outage two');
    await new Promise((r) => setTimeout(r, 1500)); // time for any second copy to show
    assert.deepEqual(await received(bob), ['before the outage', 'outage one', 'outage two'], 'once each, in order, no notes');
    // Both, and the one from before the outage (kept in the history).
    await until(async () => (await alice.locator('#messages li.msg.out[data-state^="delivered"]').count()) === 3, 'both delivered');
    await shoot(alice, 'client_ui_outbox_sent');
  } finally {
    await ctxA.close(); await ctxB.close(); await relay.stop();
  }
});

test('an answer lost on the way back: the same envelope is resent and answered from the stored outcome', async () => {
  const relay = await startServer([]);
  const ctxA = await browser.newContext(DESKTOP), ctxB = await browser.newContext(DESKTOP);
  try {
    const [carl, dana] = await meet(ctxA, 'carl', ctxB, 'dana', 'first', relay.url);
    const first = Number(await mine(carl, 'first').getAttribute('data-mailbox-seq'));
    assert.ok(first >= 1, 'the first message shows its mailbox seq');
    // The next send reaches the relay (which stores it), but its answer never reaches the page.
    const bodies = [];
    let lost = false;
    await carl.route('**/secure_message', async (route) => {
      bodies.push(route.request().postData());
      if (lost) { await route.continue(); return; }
      lost = true;
      await route.fetch();
      await route.abort('connectionreset');
    });
    await say(carl, 'the answer was lost');
    const m = mine(carl, 'the answer was lost');
    // (dana's receipt may say "delivered" before the resend is answered: wait for the answer.)
    await until(async () => await m.getAttribute('data-mailbox-seq'), 'the resend to be answered');
    assert.match(await m.getAttribute('data-state'), /^(sent|delivered)/);
    assert.ok(bodies.length >= 2, 'it was resent');
    assert.equal(bodies[1], bodies[0], 'the resend is the same envelope, byte for byte');
    // Stored once: the relay answered the resend from its outcome (a second store would be #first+2).
    assert.equal(Number(await m.getAttribute('data-mailbox-seq')), first + 1, 'the mailbox seq of the one copy');
    await inbound(dana, 'the answer was lost');
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(await received(dana), ['first', 'the answer was lost']);
  } finally {
    await ctxA.close(); await ctxB.close(); await relay.stop();
  }
});

test('a message whose envelope fell below the relay\'s replay window (resent after 135 other calls) goes in a new envelope, once', async () => {
  // Found by a review (both clients): the relay refuses it with code 20 and a notice nothing
  // applies to, and the same envelope was resent, refused the same way, for up to 3,000 s (and
  // everything queued behind it with it).
  const relay = await startServer(['--engine', 'memory', '--pow-bits', '0']);
  const a = await scripted(browser, relay, 'rw-a'), b = await scripted(browser, relay, 'rw-b');
  const read = () => b.evaluate(async () => { await c.poll(0); return got.map((g) => g.text); });
  try {
    await a.evaluate(() => c.send('rw-b', 'hello'));
    await until(async () => (await read()).includes('hello'), 'hello');
    // The next send never reaches the relay: it waits, its envelope kept.
    await a.route('**/secure_message', (route) => route.abort('connectionrefused'));
    assert.equal(await a.evaluate(() => c.send('rw-b', 'held back').then((r) => r.state)), 'sending');
    await a.unroute('**/secure_message');
    // 135 committed calls meanwhile: that envelope's msg_id is below the relay's 128-entry window.
    await a.evaluate(async () => {
      const { b64 } = await import('/js/bytes.js');
      for (let i = 0; i < 135; i++) await c.call('/publish_key', { method: 'publish_key', identity_key: b64(c.identity.pub) });
    });
    await a.evaluate(() => c.flushOutbox());
    assert.deepEqual(await a.evaluate(() => c.waiting().map((w) => [w.text, w.state, w.code])), [], 'stored');
    await until(async () => (await read()).includes('held back'), 'held back');
    assert.deepEqual(await read(), ['hello', 'held back'], 'once');
  } finally { await a.close(); await b.close(); await relay.stop(); }
});

test('an envelope refused with a salt or clock notice stays possibly stored: a later final refusal gives no number back, and a retry is not shown twice', async () => {
  // Found by a review: the page counted such an envelope as stored nowhere (relay-client does
  // not). A relay that stores it and answers with a notice, then refuses the next envelope for
  // good, got the page to give its number back; the retry re-sealed under that number and the
  // peer showed the message twice (the second as "reused").
  const relay = await startServer(['--engine', 'memory', '--pow-bits', '0']);
  const a = await scripted(browser, relay, 'hn-a'), b = await scripted(browser, relay, 'hn-b');
  const read = () => b.evaluate(async () => { await c.poll(0); return got.map((g) => [g.text, g.delivery]); });
  try {
    await a.evaluate(() => c.send('hn-b', 'hello'));
    await until(async () => (await read()).length === 1, 'hello');
    // A genuine sealed notice for a request of a's session: one sent 400 s in the past (16).
    const refusal = await a.evaluate(async () => {
      const s = c.attach(c.session);
      const [offset, last] = [s.timeOffset, s.lastMsgId];
      s.timeOffset -= 400; s.lastMsgId = 0n;
      const call = { method: 'publish_key', identity_key: m.b64(c.identity.pub) };
      const { packet } = await s.encode(m.utf8(JSON.stringify(call)));
      s.timeOffset = offset; s.lastMsgId = last;
      const res = await fetch('/publish_key', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ packet: m.b64(packet) }) });
      return { status: res.status, body: await res.json() };
    });
    assert.equal(refusal.status, 400);
    assert.equal(refusal.body.mtproto_code, 16);
    assert.ok(refusal.body.notice, 'the relay sealed a notice');
    // The relay stores the next message but answers with that notice; then refuses for good.
    let posts = 0;
    await a.route('**/secure_message', async (route) => {
      posts += 1;
      if (posts === 1) {
        await route.fetch();
        await route.fulfill({ status: 400, contentType: 'application/json', body: JSON.stringify(refusal.body) });
      } else {
        await route.fulfill({ status: 404, contentType: 'application/json', body: JSON.stringify({ error: 'unknown_peer', message: 'no such client' }) });
      }
    });
    const r = await a.evaluate(() => c.send('hn-b', 'stored, then refused'));
    assert.equal(posts, 2);
    assert.equal(r.state, 'refused');
    assert.equal(r.maybeStored, true, 'the first envelope may have been stored');
    await a.unroute('**/secure_message');
    const again = await a.evaluate((id) => c.retry(id), r.id);
    assert.equal(again.state, 'stored');
    await until(async () => (await read()).length >= 2, 'the message');
    await new Promise((resolve) => setTimeout(resolve, 500));
    const texts = (await read()).map((g) => g[0]);
    assert.deepEqual(texts, ['hello', 'stored, then refused'], 'shown once, not again under a reused number');
  } finally { await a.close(); await b.close(); await relay.stop(); }
});

test('a refused message says why, offers retry and discard, and a retry after the peer read goes through once with no gap', async () => {
  // One message of one sender may wait in a mailbox.
  const relay = await startServer(['--sender-cap', '1']);
  const ctxA = await browser.newContext(DESKTOP), ctxB = await browser.newContext(DESKTOP);
  try {
    let fay = await connect(ctxB, 'fay', relay.url);
    await fay.close(); // offline: nothing she is sent is read
    const eli = await connect(ctxA, 'eli', relay.url);
    await openPeer(eli, 'fay');
    await say(eli, 'cap one');
    await until(async () => /^sent/.test(await mine(eli, 'cap one').getAttribute('data-state')), 'the first to be stored');
    await say(eli, 'cap two');
    await say(eli, 'cap three');
    for (const t of ['cap two', 'cap three']) {
      await until(async () => (await mine(eli, t).getAttribute('data-state')) === 'not sent', `"${t}" to be refused`);
      assert.match(await mine(eli, t).locator('small').textContent(), /^not sent: too many of your messages are already waiting for fay/);
      assert.equal(await mine(eli, t).locator('button.retry').count(), 1);
      assert.equal(await mine(eli, t).locator('button.discard').count(), 1);
    }
    assert.equal(await eli.textContent('#error'), '', 'the reason is on the message, not a page error');
    await shoot(eli, 'client_ui_outbox_refused');
    // Discarded: it goes from the page and from the outbox (it never reaches fay).
    await mine(eli, 'cap three').locator('button.discard').click();
    await until(async () => (await mine(eli, 'cap three').count()) === 0, 'the discarded message to go');

    // Fay reads the first; then a retry of the refused one goes through.
    fay = await connect(ctxB, 'fay', relay.url);
    await openPeer(fay, 'eli');
    await inbound(fay, 'cap one');
    await until(async () => (await mine(eli, 'cap one').getAttribute('data-state')).startsWith('delivered'), 'the first to be delivered');
    const two = mine(eli, 'cap two');
    await until(async () => {
      const state = await two.getAttribute('data-state');
      if (state === 'not sent') await two.locator('button.retry').click(); // fay's ack rides on her next poll
      return /^(sent|delivered)/.test(await two.getAttribute('data-state'));
    }, 'the retry to be stored', 30000);
    await inbound(fay, 'cap two');
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(await received(fay), ['cap one', 'cap two'], 'once each, no "earlier messages missing", never the discarded one');
    await shoot(eli, 'client_ui_outbox_retried');
  } finally {
    await ctxA.close(); await ctxB.close(); await relay.stop();
  }
});
