// Issue 12 review, F3: a message the relay refused after an earlier envelope of it went out without
// an answer (it may have been stored: `maybeStored`) is "possibly delivered" with retry and
// discard, never "not sent". Real Chromium, real relay-server (`--sender-cap 1` makes the refusal);
// the lost answer is the network's (the request reaches the relay, its answer never the page).
// RECOVERY_TEST_PAGE_REV=<rev> runs it on that revision's page (pages.mjs, pageFromRevision).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer, until } from './helpers.mjs';
import { DESKTOP, connect, openPeer, say, mine, shoot, pageFromRevision } from './pages.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('a refusal after an unanswered try says "possibly delivered", with retry and discard; discarding keeps it shown', async () => {
  // One message of one sender may wait in a mailbox.
  const relay = await startServer(['--engine', 'memory', '--sender-cap', '1', '--pow-bits', '0']);
  const ctxA = await browser.newContext({ viewport: DESKTOP }), ctxB = await browser.newContext({ viewport: DESKTOP });
  await pageFromRevision(ctxA); await pageFromRevision(ctxB);
  try {
    const gus = await connect(ctxB, 'pd-gus', relay.url);
    await gus.close(); // offline: nothing he is sent is read
    const hal = await connect(ctxA, 'pd-hal', relay.url);
    await openPeer(hal, 'pd-gus');
    await say(hal, 'fills the cap');
    await until(async () => /^sent/.test(await mine(hal, 'fills the cap').getAttribute('data-state')), 'the first to be stored');
    // The next send reaches the relay, but its answer is lost: it may have been stored.
    let lost = false;
    await hal.route('**/secure_message', async (route) => {
      if (lost) { await route.continue(); return; }
      lost = true;
      await route.fetch();
      await route.abort('connectionreset');
    });
    await say(hal, 'answer lost');
    const m = mine(hal, 'answer lost');
    // Resent, the relay refuses it (the cap): the first try may still have been stored.
    await until(async () => (await m.getAttribute('data-state')) === 'possibly delivered', '"possibly delivered"', 30000);
    assert.match(await m.locator('small').textContent(), /^possibly delivered: an earlier try may have reached pd-gus/);
    assert.equal(await m.locator('button.retry').count(), 1);
    assert.equal(await m.locator('button.discard').count(), 1);
    await shoot(hal, 'client_ui_possibly_delivered');
    // Discarded: no more tries, but it stays on screen as what it may be.
    await m.locator('button.discard').click();
    await until(async () => (await m.locator('button.discard').count()) === 0, 'the actions to go');
    assert.equal(await m.getAttribute('data-state'), 'possibly delivered');
    assert.match(await m.locator('small').textContent(), /no longer retried/);
  } finally {
    await ctxA.close(); await ctxB.close(); await relay.stop();
  }
});
