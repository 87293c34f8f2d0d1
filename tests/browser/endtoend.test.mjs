// The end-to-end layer's exactly-once leftovers (review of issue 12): F2 a seq seen again with
// another random_id is a new message (the sender's profile was restored from an older copy), and
// an in_seq above what we sent is not a reason to drop the peer's message; F5 a refused delivery
// receipt whose seq stays in use is sent again, never dropped (no false "earlier messages
// missing" at the peer); F7 given-up runs merge and the page shows them, once.
//
// The module tests drive mtproto.js's Chat directly in Chromium; the page tests put a scripted
// client (mtproto.js's RelayClient in a blank page, polled by hand) in front of client_ui.html,
// both against the real relay-server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer, until } from './helpers.mjs';
import { DESKTOP, connect, openPeer, burst, received, mine, shoot, scripted } from './pages.mjs';

let server, browser, lab;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
  lab = await browser.newPage();
  await lab.goto(server.url + '/');
});
after(async () => { await browser?.close(); await server?.stop(); });

const poll = (page) => page.evaluate(() => c.poll(0));

test('module: a seq seen again with another random_id opens (F2), the same one is a replay', async () => {
  const out = await lab.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    const ia = await m.generateIdentity(), ib = await m.generateIdentity();
    const a = await m.Chat.create(ia, ib.pub), b = await m.Chat.create(ib, ia.pub);
    const older = new m.Chat(structuredClone(a.toJSON())); // a's profile before it sent anything
    const r = {};
    const one = await a.seal(m.utf8('one'));
    r.first = (await b.open(one.packet)).delivery;
    try { await b.open(one.packet); r.again = 'opened'; } catch (e) { r.again = e.replay ? 'replay' : e.message; }
    const restored = await older.seal(m.utf8('one, from a restored copy')); // seq 0 again, another random_id
    try { const x = await b.open(restored.packet); r.restored = [x.delivery, m.fromUtf8(x.body), x.seq]; } catch (e) { r.restored = e.message; }
    try { await b.open(restored.packet); r.restoredAgain = 'opened'; } catch (e) { r.restoredAgain = e.replay ? 'replay' : e.message; }
    // The ids survive a save.
    const saved = new m.Chat(structuredClone(b.toJSON()));
    try { await saved.open(restored.packet); r.afterSave = 'opened'; } catch (e) { r.afterSave = e.replay ? 'replay' : e.message; }
    return r;
  });
  assert.deepEqual(out, { first: 'in_order', again: 'replay', restored: ['reused', 'one, from a restored copy', 0], restoredAgain: 'replay', afterSave: 'replay' });
});

test('module: in_seq above what we sent opens the message and seals on from in_seq (F2)', async () => {
  const out = await lab.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    const ia = await m.generateIdentity(), ib = await m.generateIdentity();
    const a = await m.Chat.create(ia, ib.pub), b = await m.Chat.create(ib, ia.pub);
    const bOlder = new m.Chat(structuredClone(b.toJSON()));
    await a.open((await b.seal(m.utf8('from b'))).packet); // a has received b's seq 0: a's in_seq is 1
    const two = await a.seal(m.utf8('to b'));
    const r = {};
    try { const x = await bOlder.open(two.packet); r.opened = [m.fromUtf8(x.body), x.ahead]; } catch (e) { r.opened = e.message; }
    r.nextSeq = (await bOlder.seal(m.utf8('next'))).seq;
    // Far more than a restored copy can lag (it would wrap the u32 seqs): still refused.
    const far = await m.Chat.create(ia, ib.pub);
    far.recvLow = m.MAX_AHEAD + 5;
    try { await (await m.Chat.create(ib, ia.pub)).open((await far.seal(m.utf8('x'))).packet); r.far = 'opened'; } catch (e) { r.far = e.message; }
    return r;
  });
  assert.deepEqual(out, { opened: ['to b', 1], nextSeq: 1, far: 'peer acknowledges messages never sent' });
});

test('module: given-up runs merge as e2e.rs merges them (F7)', async () => {
  const out = await lab.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    const ia = await m.generateIdentity(), ib = await m.generateIdentity();
    const a = await m.Chat.create(ia, ib.pub), b = await m.Chat.create(ib, ia.pub);
    const lost = [];
    for (const seq of [2000, 4000]) { a.sent = seq; lost.push((await b.open((await a.seal(m.utf8(`#${seq}`))).packet)).lost); }
    return { lost, givenUp: b.givenUp, recvLow: b.recvLow };
  });
  assert.deepEqual(out.lost, [[[0, 976]], [[976, 2000], [2001, 2976]]]);
  assert.deepEqual(out.givenUp, [[0, 2000], [2001, 2976]], 'adjacent runs are one run');
  assert.equal(out.recvLow, 2976);
});

test('page: a message sealed again under a used seq (a restored sender) is shown, with a warning (F2)', async () => {
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const g = await scripted(browser, server, 'restorer');
  try {
    const page = await connect(ctx, 'restored-peer', server.url);
    await g.evaluate(async () => {
      await c.chatWith('restored-peer');
      window.older = new m.Chat(structuredClone(c.chats.get('restored-peer').toJSON()));
      await c.send('restored-peer', 'first, before the backup');
      c.chats.set('restored-peer', older); // the profile comes back from the older copy
      await c.send('restored-peer', 'second, after the restore');
    });
    await openPeer(page, 'restorer');
    await until(async () => (await received(page)).length === 2, 'both messages to show', 20000);
    assert.deepEqual(await received(page), ['first, before the backup', 'second, after the restore']);
    const note = await page.locator('#messages li.msg.in:has-text("second, after the restore") small').textContent();
    assert.match(note, /reuses the number of an earlier one/);
    await shoot(page, 'client_ui_reused_seq');
  } finally { await ctx.close(); await g.close(); }
});

test('page: messages given up as lost are shown once, as lost (F7)', async () => {
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const g = await scripted(browser, server, 'skipper');
  try {
    let page = await connect(ctx, 'lost-peer', server.url);
    await g.evaluate(async () => {
      await c.send('lost-peer', 'before the loss');
      c.chats.get('lost-peer').sent += 1100; // 1100 messages that never reach the relay
      await c.send('lost-peer', 'after the loss');
    });
    await openPeer(page, 'skipper');
    await until(async () => (await received(page)).length === 2, 'both messages to show', 20000);
    const lostNote = page.locator('#messages li.msg.system:has-text("counted lost")');
    await until(async () => (await lostNote.count()) === 1, 'the lost messages to be told');
    assert.match(await lostNote.textContent(), /^76 messages from skipper never arrived/);
    await shoot(page, 'client_ui_lost');
    // Once: a reload shows the same single notice from the history, not a second one.
    await page.close();
    page = await connect(ctx, 'lost-peer', server.url);
    await openPeer(page, 'skipper');
    await until(async () => (await received(page)).length === 2, 'the history to come back');
    assert.equal(await page.locator('#messages li.msg.system:has-text("counted lost")').count(), 1);
  } finally { await ctx.close(); await g.close(); }
});

test('page: a refused receipt whose seq stays in use is sent again: the peer sees no hole (F5)', async () => {
  // One message of one sender may wait in a mailbox.
  const relay = await startServer(['--engine', 'memory', '--sender-cap', '1']);
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const g = await scripted(browser, relay, 'quiet');
  try {
    const page = await connect(ctx, 'talker', relay.url);
    await openPeer(page, 'quiet');
    await burst(page, ['b1']); // talker's one place in quiet's mailbox (quiet does not poll yet)
    await until(async () => /^sent/.test(await mine(page, 'b1').getAttribute('data-state')), 'b1 to be stored');
    // talker's next requests wait at the door until b2 is sealed: the receipt for a1 is sealed
    // (seq 1) and posted first, b2 (seq 2) after it; both are refused by the sender cap.
    const held = [];
    let open = false;
    await page.route('**/secure_message', (route) => (open ? route.continue() : held.push(route)));
    await g.evaluate(() => c.send('talker', 'a1'));
    await until(async () => (await received(page)).includes('a1'), 'a1 to show');
    await until(() => held.length >= 1, 'the receipt to be posted');
    await burst(page, ['b2']);
    open = true;
    for (const r of held) await r.continue();
    await until(async () => (await mine(page, 'b2').getAttribute('data-state')) === 'not sent', 'b2 to be refused');
    // quiet reads (and acknowledges) what waits, talker retries b2, and quiet keeps reading.
    await until(async () => {
      await poll(g);
      const two = mine(page, 'b2');
      if ((await two.getAttribute('data-state')) === 'not sent') await two.locator('button.retry').click();
      const chat = await g.evaluate(() => { const ch = c.chats.get('talker'); return ch ? { low: ch.recvLow, above: [...ch.recvAbove] } : null; });
      // seq 0 b1, seq 1 the receipt, seq 2 b2: all arrived, nothing missing.
      return chat && chat.low >= 3;
    }, 'quiet to have every seq from talker, the refused receipt included', 60000);
    const texts = await g.evaluate(() => got.map((x) => [x.text, x.delivery]));
    assert.deepEqual(texts.map(([t]) => t), ['b1', 'b2']);
  } finally { await ctx.close(); await g.close(); await relay.stop(); }
});

test('a bad_server_salt notice is applied and the call resent (its 64-bit bad_msg_id read exactly)', async () => {
  const out = await lab.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    const s = await m.handshake('', 'saltie', null);
    s.salt = new Uint8Array(8); // a salt the relay never gave: the next call gets 48 and a notice
    const answer = await s.call('/peers', { method: 'list_peers', names: ['saltie'] });
    return { peers: answer.peers.length, salt: Array.from(s.salt).some((b) => b !== 0) };
  });
  assert.deepEqual(out, { peers: 1, salt: true });
});

