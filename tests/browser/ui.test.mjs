// The two pages in real Chromium against a real relay-server: chat both ways, offline delivery,
// reload keeps identity and keys, Rust client interop, key-change warning, the multi-user bench,
// a server that lost its data, and no plaintext in what the pages send. Screenshots go to
// test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { launchBrowser, startServer, startRedis, recordTraffic, until, artifacts, binDir, freePort } from './helpers.mjs';

let server, browser;
const traffic = [];
before(async () => { server = await startServer(); browser = await launchBrowser(); });
after(async () => { await browser?.close(); await server?.stop(); });

async function connect(context, name, base = server.url) {
  const page = await context.newPage();
  recordTraffic(page, traffic);
  await page.goto(`${base}/client_ui.html`);
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForSelector('#main-view.on', { timeout: 20000 });
  return page;
}

async function openPeer(page, peer) {
  await until(async () => (await page.locator(`.peer[data-peer="${peer}"]`).count()) > 0 || (await page.evaluate(() => document.getElementById('peers').children.length, null)) < 0, `${peer} in the list`);
  await page.click(`.peer[data-peer="${peer}"]`);
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

const inbound = (page, text) => page.waitForSelector(`#messages li.msg.in:has-text("${text}")`, { timeout: 20000 });

/** Users `a` and `b` connect on `base`, and `a` writes `text` to `b`, who reads it. */
async function meet(ctxA, a, ctxB, b, text, base = server.url) {
  const pageA = await connect(ctxA, a, base);
  const pageB = await connect(ctxB, b, base);
  // Peer lists refresh every 10 s; reload a's list by reconnecting after b registered.
  await pageA.reload(); await pageA.fill('#name', a); await pageA.click('#connect'); await pageA.waitForSelector('#main-view.on');
  await openPeer(pageA, b);
  await say(pageA, text);
  await openPeer(pageB, a);
  await inbound(pageB, text);
  return [pageA, pageB];
}

test('two browser users chat both ways; offline delivery; reload keeps identity and keys', async () => {
  const ctxA = await browser.newContext(), ctxB = await browser.newContext();
  const [alice, firstBob] = await meet(ctxA, 'alice', ctxB, 'bob', 'Hello Bob, plaintext-canary-one');
  let bob = firstBob; // reconnected below
  await say(bob, 'Hi Alice, plaintext-canary-two');
  await inbound(alice, 'plaintext-canary-two');
  // Sent, then delivered (a receipt from bob's client, end to end).
  await alice.waitForSelector('#messages li.msg.out[data-state^="delivered"]', { timeout: 20000 });
  // The fingerprints both see are identical.
  await alice.click('#verify');
  const fpA = await alice.textContent('#safety-number');
  await alice.click('#verify-close');
  await bob.click('#verify');
  const fpB = await bob.textContent('#safety-number');
  await bob.screenshot({ path: join(artifacts, 'client_ui_verify.png') });
  await bob.click('#verify-close');
  assert.equal(fpA, fpB);
  assert.match(fpA, /^(\d{5} ){3}\d{5}\n/);
  const ownFpBefore = await bob.textContent('#own-fp');

  // Bob goes offline; alice writes; bob reconnects (same browser profile) and receives it.
  await bob.close();
  await say(alice, 'while you were away plaintext-canary-three');
  await alice.waitForSelector('#messages li.msg.out:has-text("canary-three")[data-state^="sent"]');
  bob = await connect(ctxB, 'bob');
  assert.equal(await bob.textContent('#own-fp'), ownFpBefore, 'the identity key survives a reload');
  await openPeer(bob, 'alice');
  await inbound(bob, 'plaintext-canary-three');
  await bob.click('#verify');
  assert.equal(await bob.textContent('#safety-number'), fpA, 'the conversation key survives a reload');
  await bob.click('#verify-close');
  await alice.screenshot({ path: join(artifacts, 'client_ui.png') });
  // Phone width stays usable.
  await alice.setViewportSize({ width: 390, height: 780 });
  assert.ok(await alice.isVisible('#composer'));
  await alice.screenshot({ path: join(artifacts, 'client_ui_phone.png') });
  await ctxA.close(); await ctxB.close();
});

test('a browser user and a Rust relay-client user chat both ways', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'relay-chat-'));
  const rust = spawn(join(binDir, 'relay-chat'), ['--server', server.url, '--name', 'rusty', '--pin', server.fingerprint, '--profile', join(dir, 'p.json')],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = [];
  createInterface({ input: rust.stdout }).on('line', (l) => lines.push(l));
  await until(() => lines.some((l) => l.includes('connected as rusty')), 'the Rust client to connect');
  const ctx = await browser.newContext();
  const page = await connect(ctx, 'carol');
  rust.stdin.write('/open carol\nhello carol, from rust plaintext-canary-four\n');
  await until(() => lines.some((l) => l.startsWith('sent #')), 'the Rust client to send');
  await openPeer(page, 'rusty');
  await inbound(page, 'plaintext-canary-four');
  await say(page, 'hello rusty, from the browser plaintext-canary-five');
  await until(() => lines.some((l) => l.includes('[carol] hello rusty, from the browser plaintext-canary-five')), 'the Rust client to receive');
  // Both sides show the same safety number.
  await page.click('#verify');
  const fpBrowser = (await page.textContent('#safety-number')).split('\n').map((l) => l.trim());
  await page.click('#verify-close');
  rust.stdin.write('/fp carol\n');
  await until(() => lines.filter((l) => l.startsWith('  ')).length >= 3, 'the Rust fingerprint');
  const fpRust = lines.filter((l) => l.startsWith('  ')).slice(-3).map((l) => l.trim());
  assert.deepEqual(fpRust, fpBrowser);
  rust.stdin.write('/quit\n');
  await new Promise((r) => rust.once('exit', r));
  await ctx.close();
});

test('a changed peer key raises a blocking warning', async () => {
  const ctxA = await browser.newContext(), ctxB = await browser.newContext();
  const [dave, erin] = await meet(ctxA, 'dave', ctxB, 'erin', 'first contact');
  // Erin resets her identity key and writes again.
  const before = await erin.textContent('#own-fp');
  await erin.click('#rotate');
  await until(async () => (await erin.textContent('#own-fp')) !== before, 'the new identity key');
  await erin.reload(); await erin.fill('#name', 'erin'); await erin.click('#connect'); await erin.waitForSelector('#main-view.on');
  await openPeer(erin, 'dave');
  await say(erin, 'from my new key');
  await dave.waitForSelector('#keychange-dialog[open]', { timeout: 20000 });
  assert.equal(await dave.textContent('#keychange-peer'), 'erin');
  await dave.screenshot({ path: join(artifacts, 'client_ui_key_changed.png') });
  // Nothing from the new key was shown before the user decided.
  assert.equal(await dave.locator('#messages li.msg.in:has-text("from my new key")').count(), 0);
  await dave.click('#keychange-accept');
  await inbound(dave, 'from my new key');
  await ctxA.close(); await ctxB.close();
});

test('the multi-user bench completes three handshakes and shows ciphertext beside plaintext', async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  recordTraffic(page, traffic);
  await page.goto(`${server.url}/chat_ui_multiuser.html?user=u1&user=u2&user=u3`);
  for (const u of ['u1', 'u2', 'u3']) {
    await page.waitForSelector(`.user[data-user="${u}"][data-connected="true"]`, { timeout: 30000 });
    // A resumed profile would skip the steps: these users are in memory only, so all four show.
    assert.equal(await page.locator(`.user[data-user="${u}"] .steps li`).count(), 4, `${u} handshake steps`);
    assert.ok(await page.locator(`.user[data-user="${u}"] .steps li[data-step="key_confirmed"]`).count());
  }
  const u1 = page.locator('.user[data-user="u1"]');
  const peers = u1.locator('.peer');
  await until(async () => (await peers.locator('option').count()) >= 2, 'u1 peers');
  // u3 is never the first in the list (u2 sorts before it): a refresh must not change the choice,
  // or the message would go to someone else.
  await peers.selectOption('u3');
  const refreshes = Number(await peers.getAttribute('data-refreshes'));
  await u1.locator('.refresh').click();
  await until(async () => Number(await peers.getAttribute('data-refreshes')) > refreshes, 'the peer list to refresh');
  assert.equal(await peers.inputValue(), 'u3');
  await u1.locator('.text').fill('bench plaintext-canary-six');
  await u1.locator('.send').click();
  await page.waitForSelector('.user[data-user="u3"] .inbox:has-text("plaintext-canary-six")', { timeout: 20000 });
  const out = u1.locator('.wire[data-dir="out"][data-path="/secure_message"]').first();
  const ct = await out.locator('.ct').textContent();
  const pt = await out.locator('.pt').textContent();
  const meta = await out.locator('.meta').textContent();
  assert.match(ct, /^[0-9a-f]{64,}/);
  assert.match(meta, /msg_id=\d+ seq_no=\d+ msg_key=[0-9a-f]{32}/);
  assert.match(pt, /"target_peer":"u3"/);
  await page.screenshot({ path: join(artifacts, 'chat_ui_multiuser.png'), fullPage: true });
  await ctx.close();
});

test('after the server loses its data, open pages shake hands again, republish keys and chat on', async () => {
  // Same origin and same server key file, new empty data directory: what a restore from an old
  // backup or a lost disk looks like to the pages.
  const port = await freePort();
  const keyDir = mkdtempSync(join(tmpdir(), 'relay-key-'));
  const keyArgs = ['--key-file', join(keyDir, 'server_key')];
  let lost = await startServer(keyArgs, { bind: `127.0.0.1:${port}` });
  const ctxA = await browser.newContext(), ctxB = await browser.newContext(), ctxC = await browser.newContext();
  try {
    const [frank, grace] = await meet(ctxA, 'frank', ctxB, 'grace', 'before the loss', lost.url);
    const fpBefore = await grace.textContent('#own-fp');

    await lost.stop();
    for (const page of [frank, grace]) {
      await until(async () => (await page.textContent('#status')).includes('reconnecting'), 'the page to notice the server is gone');
    }
    lost = await startServer(keyArgs, { bind: `127.0.0.1:${port}` });
    // Each page's poll meets unknown_auth_key, shakes hands again and publishes its key again.
    for (const [page, name] of [[frank, 'frank'], [grace, 'grace']]) {
      await until(async () => (await page.textContent('#status')) === `connected as ${name}`, `${name} to reconnect`, 30000);
    }
    await say(frank, 'after the loss plaintext-canary-seven');
    await inbound(grace, 'after the loss plaintext-canary-seven');
    await say(grace, 'still here');
    await inbound(frank, 'still here');
    // A newcomer can write to frank: frank's identity key is in the new server's directory again
    // (the newcomer has no other way to learn it).
    const henry = await connect(ctxC, 'henry', lost.url);
    await openPeer(henry, 'frank');
    await say(henry, 'hello frank, I am new');
    await openPeer(frank, 'henry');
    await inbound(frank, 'hello frank, I am new');
    // Same identity, same conversation key, and no key-change warning on either side.
    assert.equal(await grace.textContent('#own-fp'), fpBefore);
    assert.equal(await frank.locator('#keychange-dialog[open]').count(), 0);
    assert.equal(await grace.locator('#keychange-dialog[open]').count(), 0);
  } finally {
    await ctxA.close(); await ctxB.close(); await ctxC.close();
    await lost.stop();
  }
});

async function unavailableAnswers(url) {
  return (await (await fetch(`${url}/healthz`)).json()).unavailable_answers;
}

test('while Redis is away a page retries its send, which arrives once Redis is back', async () => {
  const redis = await startRedis();
  const relay = await startServer(['--engine', 'redis', '--redis-url', redis.url]);
  const ctxA = await browser.newContext(), ctxB = await browser.newContext();
  try {
    const [ivy, jack] = await meet(ctxA, 'ivy', ctxB, 'jack', 'before the outage', relay.url);
    await redis.kill();
    const refused = await unavailableAnswers(relay.url);
    await say(ivy, 'during the outage plaintext-canary-eight');
    // The relay answered the send 503 storage_unavailable at least once; the page resends the
    // same envelope, and Redis comes back meanwhile.
    await until(async () => (await unavailableAnswers(relay.url)) > refused, 'the relay to refuse the send');
    await redis.restart();
    await inbound(jack, 'plaintext-canary-eight');
    const mine = ivy.locator('#messages li.msg.out:has-text("plaintext-canary-eight")');
    await until(async () => /^(sent|delivered)/.test(await mine.locator('small').textContent()), 'the send to be answered');
    assert.equal(await jack.locator('#messages li.msg.in:has-text("plaintext-canary-eight")').count(), 1);
  } finally {
    await ctxA.close(); await ctxB.close();
    await relay.stop(); await redis.stop();
  }
});

test('no plaintext crossed the wire', () => {
  assert.ok(traffic.length > 20, 'traffic was recorded');
  const all = traffic.join('\n');
  for (const n of ['one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight']) {
    assert.ok(!all.includes(`plaintext-canary-${n}`), `plaintext-canary-${n} was sent in clear`);
  }
  assert.ok(!all.includes('first contact') && !all.includes('from my new key'));
});
