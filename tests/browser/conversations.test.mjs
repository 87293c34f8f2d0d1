// The page's conversations under the double ratchet (issue 15; conversations.js, the rules of
// docs/protocol.md §3.3), in real Chromium against the real relay-server: what the relay stores
// are start and ratchet packets, a peer without prekeys gets static messages, simultaneous starts
// converge (the edge cases of which conversation sends: conversations_edges.test.mjs),
// out-of-order delivery, a reload in the middle of a conversation, a start without a
// one-time prekey said in the conversation and in the key panel, exactly once across a reload
// between hand-out and acknowledgement, at most 4000 skipped keys across all conversations, and a
// start without a one-time prekey making the page check and top up the relay's.
//   cd tests/browser && RELAY_BIN_DIR=$CARGO_TARGET_DIR/debug node --test conversations.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { launchBrowser, startServer, until, artifacts } from './helpers.mjs';
import { DESKTOP, PHONE, connect, openPeer, say, inbound, received, mine, scripted, shoot, signIn, sleep, storedText, pollNow as poll, sendNow as send, gotTexts as texts, wireOf } from './pages.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

/** A scripted client (pages.mjs: it records `got`, `wire`, `starts`, `rejected`). */
const client = (name, relay = server, opts = {}) => scripted(browser, relay, name, opts);

test('two users converse under the ratchet: the relay stores their starts, then ratchet packets, receipts included; nothing static', async () => {
  const a = await client('fs-ann'), b = await client('fs-ben');
  try {
    // Prekeys were published on connect: 100 one-time prekeys on the relay.
    assert.equal(await b.evaluate(() => c.conv.relayOneTime), 100);
    assert.equal(await send(a, 'fs-ben', 'a1'), 'stored');
    assert.equal(await send(a, 'fs-ben', 'a2'), 'stored');
    await until(async () => { await poll(b); return (await texts(b)).length === 2; }, 'ben to read a1, a2');
    assert.equal(await send(b, 'fs-ann', 'b1'), 'stored');
    await until(async () => { await poll(a); return (await texts(a)).includes('b1'); }, 'ann to read b1');
    assert.equal(await send(a, 'fs-ben', 'a3'), 'stored');
    await until(async () => { await poll(b); return (await texts(b)).includes('a3'); }, 'ben to read a3');
    await poll(a); await poll(b);
    // What ben received is what the relay stored for him (the payloads of his polls).
    const inB = (await wireOf(b)).filter((w) => !w.out);
    const inA = (await wireOf(a)).filter((w) => !w.out);
    assert.deepEqual(inB.filter((w) => !w.control).map((w) => [w.text, w.kind, w.seq]), [['a1', 'start', 0], ['a2', 'start', 1], ['a3', 'ratchet', 3]],
      'ann repeats her start until she hears from ben, then plain ratchet packets; one numbering (seq 2 was her receipt for b1)');
    assert.ok(inA.length >= 2 && inA.every((w) => w.kind === 'ratchet'), `ben answers under ann's conversation (receipts too): ${JSON.stringify(inA)}`);
    assert.ok(inB.every((w) => w.kind !== 'static') && inA.every((w) => w.kind !== 'static'), 'nothing under the static key');
    assert.deepEqual(await a.evaluate(() => starts), [{ peer: 'fs-ben', initiator: true, oneTimePrekey: true }]);
    assert.deepEqual(await b.evaluate(() => starts), [{ peer: 'fs-ann', initiator: false, oneTimePrekey: true }]);
    assert.deepEqual(await a.evaluate(() => c.security('fs-ben')), { forwardSecret: true, oneTimePrekey: true, initiator: 'us', noPrekeys: false });
    assert.deepEqual(await b.evaluate(() => c.security('FS-Ann')), { forwardSecret: true, oneTimePrekey: true, initiator: 'them', noPrekeys: false });
    // The one-time prekey ann's start used is gone from ben's store; the relay gets more when low.
    assert.equal(await b.evaluate(() => c.conv.relayOneTime), 99);

    // A key change the user accepts drops the ratchet conversations with the old key; the next
    // message starts a new one with the new key.
    await b.evaluate(() => c.rotateIdentity());
    await a.evaluate(() => c.lookupPeer('fs-ben'));
    assert.equal(await a.evaluate(() => c.blocked.has('fs-ben')), true);
    await a.evaluate(() => c.acceptPeerKey('fs-ben'));
    assert.equal(await a.evaluate(() => c.security('fs-ben').forwardSecret), false);
    assert.equal(await send(a, 'fs-ben', 'after the new key'), 'stored');
    await until(async () => { await poll(b); return (await texts(b)).includes('after the new key'); }, 'ben to read it under his new key');
    const last = (await wireOf(b)).filter((w) => !w.out && w.text === 'after the new key');
    assert.equal(last[0].kind, 'start', 'a new start for the new key');
    assert.deepEqual(await b.evaluate(() => rejected), []);
  } finally { await a.close(); await b.close(); }
});

test('a peer without prekeys (an older client) gets static messages, asked again after 10 minutes; its static messages open', async () => {
  // The older client publishes no prekeys and finds none (the relay's answer to an older client's
  // peers, 404 no_prekeys): it seals static only.
  const old = await client('fs-old', server, { beforeConnect: async (p) => {
    await p.route('**/publish_prekeys', (r) => r.abort());
    await p.route('**/prekey_bundle', (r) => r.fulfill({ status: 404, contentType: 'application/json', body: JSON.stringify({ error: 'no_prekeys', message: 'no prekeys' }) }));
  } });
  const a = await client('fs-new');
  const fetches = [];
  a.on('request', (r) => { if (r.url().endsWith('/prekey_bundle')) fetches.push(r.url()); });
  try {
    assert.equal(await send(a, 'fs-old', 'n1'), 'stored');
    assert.equal(await send(a, 'fs-old', 'n2'), 'stored');
    assert.equal(fetches.length, 1, 'asked once, then remembered');
    assert.deepEqual(await a.evaluate(() => c.security('fs-old')), { forwardSecret: false, oneTimePrekey: null, initiator: null, noPrekeys: true });
    await until(async () => { await poll(old); return (await texts(old)).length === 2; }, 'the old client to read both');
    assert.deepEqual((await wireOf(old)).filter((w) => !w.out).map((w) => w.kind), ['static', 'static']);
    assert.equal(await send(old, 'fs-new', 'o1'), 'stored');
    await until(async () => { await poll(a); return (await texts(a)).includes('o1'); }, 'a static message from the old client to open');
    // Ten minutes later (the deadline moved back) the page asks again: the peer has prekeys now.
    await old.unroute('**/publish_prekeys');
    await old.unroute('**/prekey_bundle');
    await old.evaluate(() => { c.conv.needPublish = true; return c.conv.maintain(); });
    await a.evaluate(() => { for (const k of c.conv.noPrekeysUntil.keys()) c.conv.noPrekeysUntil.set(k, Date.now() - 1); });
    assert.equal(await send(a, 'fs-old', 'n3'), 'stored');
    assert.equal(fetches.length, 2, 'asked again');
    await until(async () => { await poll(old); return (await texts(old)).includes('n3'); }, 'n3 to open');
    const n3 = (await wireOf(old)).find((w) => w.text === 'n3');
    assert.deepEqual([n3.kind, n3.seq], ['start', 3], 'a start, numbered after the static messages (and the receipt for o1)');
    // Never static again once a ratchet conversation exists: the answer goes under it.
    assert.equal(await send(old, 'fs-new', 'o2'), 'stored');
    await until(async () => { await poll(a); return (await texts(a)).includes('o2'); }, 'o2');
    assert.equal((await wireOf(a)).find((w) => w.text === 'o2').kind, 'ratchet');
  } finally { await a.close(); await old.close(); }
});

test('simultaneous starts converge: both send under the conversation started by the lower identity key', async () => {
  const a = await client('fs-sim-a'), b = await client('fs-sim-b');
  try {
    // Both write first, before either reads: two starts, two conversations each.
    await Promise.all([send(a, 'fs-sim-b', 'from a'), send(b, 'fs-sim-a', 'from b')]);
    await until(async () => { await poll(a); await poll(b); return (await texts(a)).includes('from b') && (await texts(b)).includes('from a'); }, 'both starts to open');
    const lower = await a.evaluate(async () => {
      const mine = c.identity.pub, theirs = c.conv.peers.get('fs-sim-b').ours.chat.peer;
      for (let i = 0; i < 32; i++) if (mine[i] !== theirs[i]) return mine[i] < theirs[i] ? 'a' : 'b';
      return 'equal';
    });
    const sa = await a.evaluate(() => c.security('fs-sim-b')), sb = await b.evaluate(() => c.security('fs-sim-a'));
    // The same conversation on both sides: started by whoever has the lower key.
    assert.deepEqual([sa.initiator, sb.initiator], lower === 'a' ? ['us', 'them'] : ['them', 'us']);
    for (let i = 0; i < 3; i++) {
      await send(a, 'fs-sim-b', `a${i}`); await send(b, 'fs-sim-a', `b${i}`);
    }
    await until(async () => { await poll(a); await poll(b); return (await texts(a)).includes('b2') && (await texts(b)).includes('a2'); }, 'all to open');
    assert.deepEqual(await texts(a), ['from b', 'b0', 'b1', 'b2']);
    assert.deepEqual(await texts(b), ['from a', 'a0', 'a1', 'a2']);
    assert.deepEqual([await a.evaluate(() => rejected), await b.evaluate(() => rejected)], [[], []]);
    // Once each has read the other's messages under the common conversation, nothing is a start any more.
    assert.equal(await send(a, 'fs-sim-b', 'a last'), 'stored');
    assert.equal(await send(b, 'fs-sim-a', 'b last'), 'stored');
    const lastKind = async (p, t) => (await wireOf(p)).find((w) => w.out && w.text === t).kind;
    assert.deepEqual([await lastKind(a, 'a last'), await lastKind(b, 'b last')], ['ratchet', 'ratchet']);
    await until(async () => { await poll(a); await poll(b); return (await texts(a)).includes('b last') && (await texts(b)).includes('a last'); }, 'the last ones to open');
  } finally { await a.close(); await b.close(); }
});

test('after simultaneous starts, a long burst, a copy of each packet, and then 60 reversed packets: all open once, nothing refused; honest packets never pay the other conversation\'s chain steps from the skip budget', async () => {
  // Review finding: each packet was tried first in the conversation that did not send it, as a
  // new chain; a burst of ~90 spent the sender's whole budget and reordered packets were refused.
  const a = await client('fs-burst-a'), b = await client('fs-burst-b');
  try {
    await Promise.all([send(a, 'fs-burst-b', 'from a'), send(b, 'fs-burst-a', 'from b')]);
    await until(async () => { await poll(a); await poll(b); return (await texts(a)).length === 1 && (await texts(b)).length === 1; }, 'both starts to open');
    const aLower = await a.evaluate(() => {
      const mine = c.identity.pub, theirs = c.conv.peers.get('fs-burst-b').ours.chat.peer;
      for (let i = 0; i < 32; i++) if (mine[i] !== theirs[i]) return mine[i] < theirs[i];
      return false;
    });
    const [low, high, lowName] = aLower ? [a, b, 'fs-burst-a'] : [b, a, 'fs-burst-b'];
    assert.deepEqual(await low.evaluate((p) => { const s = c.conv.peers.get(p); return [!!s.ours, !!s.theirs]; }, aLower ? 'fs-burst-b' : 'fs-burst-a'), [true, true], 'two conversations');
    // 150 in a row, then a copy of each (as an outbox resends a packet in a new envelope, §3.1):
    // the copies are acknowledged and not shown, and cost nothing (a second review found each
    // copy charged as a new chain in the other conversation).
    await high.evaluate(async (to) => {
      const w = await c.chatWith(to);
      const packets = [];
      for (let i = 0; i < 150; i++) packets.push((await c.conv.seal(to, w, m.utf8(`burst ${i}`))).packet);
      for (const p of [...packets, ...packets]) await c.call('/secure_message', { method: 'send_message', target_peer: to, payload: m.b64(p) });
    }, lowName);
    let handled = 0;
    await until(async () => { handled += await poll(low); return handled >= 300; }, 'the burst and its copies', 60000);
    assert.equal((await texts(low)).length, 151, 'the copies are not shown');
    // 60 more, sealed in order and posted in reverse: the first to arrive walks 59 steps and
    // stores 59 keys (the burst had left 84 of 4000 before the fix).
    await high.evaluate(async (to) => {
      const w = await c.chatWith(to);
      const packets = [];
      for (let i = 0; i < 60; i++) packets.push((await c.conv.seal(to, w, m.utf8(`late ${i}`))).packet);
      for (const p of packets.reverse()) await c.call('/secure_message', { method: 'send_message', target_peer: to, payload: m.b64(p) });
    }, lowName);
    await until(async () => { await poll(low); return (await texts(low)).length + (await low.evaluate(() => rejected.length)) >= 211; }, 'the reversed packets', 60000);
    assert.deepEqual(await low.evaluate(() => rejected), [], 'nothing refused');
    const got = await texts(low);
    assert.deepEqual(got.slice(1, 151), Array.from({ length: 150 }, (_, i) => `burst ${i}`));
    assert.deepEqual(got.slice(151), Array.from({ length: 60 }, (_, i) => `late ${59 - i}`));
  } finally { await a.close(); await b.close(); }
});

test('out of order: ratchet packets the relay stores in another order (across a chain change) all show, once, in the sender\'s order', async () => {
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const g = await client('fs-shuffler');
  try {
    const page = await connect(ctx, 'fs-reader', server.url);
    await send(g, 'fs-reader', 'hello');
    await openPeer(page, 'fs-shuffler');
    await inbound(page, 'hello');
    await say(page, 'hi back');
    await until(async () => { await poll(g); return (await texts(g)).includes('hi back'); }, 'the answer');
    // Sealed in order (one chain, then a new chain after the reader's next answer), posted shuffled.
    const seal = (texts) => g.evaluate(async (texts) => {
      const w = await c.chatWith('fs-reader');
      const out = [];
      for (const t of texts) out.push({ t, s: await c.conv.seal('fs-reader', w, m.utf8(t)) });
      return out.map(({ t, s }) => ({ t, kind: s.kind, payload: m.b64(s.packet) }));
    }, texts);
    const post = (items) => g.evaluate(async (items) => {
      for (const i of items) await c.call('/secure_message', { method: 'send_message', target_peer: 'fs-reader', payload: i.payload });
    }, items);
    const first = await seal(['one', 'two', 'three']);
    assert.deepEqual(first.map((x) => x.kind), ['ratchet', 'ratchet', 'ratchet']);
    await post([first[2], first[0]]);
    await inbound(page, 'three');
    await inbound(page, 'one');
    await say(page, 'turn');
    await until(async () => { await poll(g); return (await texts(g)).includes('turn'); }, 'the reader\'s turn (a new chain follows)');
    const second = await seal(['four', 'five']);
    await post([second[1], first[1], second[0]]);
    await inbound(page, 'two');
    await inbound(page, 'four');
    await sleep(1500); // time for any second copy or error to show
    assert.deepEqual(await received(page), ['hello', 'one', 'two', 'three', 'four', 'five']);
    assert.equal(await page.locator('#messages li.msg.system:has-text("could not be opened")').count(), 0);
    assert.equal(await page.locator('#messages li:has-text("earlier messages missing")').count(), 0, 'no hole left');
  } finally { await ctx.close(); await g.close(); }
});

test('a copy of a delivered start or ratchet packet (the outbox resends the same packet in a new envelope) is acknowledged, not shown, no warning', async () => {
  const ctx = await browser.newContext({ viewport: PHONE });
  const g = await client('fs-copier');
  try {
    const page = await connect(ctx, 'fs-copied', server.url);
    const resend = (text) => g.evaluate(async (text) => {
      const w = wire.find((x) => x.out && x.text === text);
      await c.call('/secure_message', { method: 'send_message', target_peer: 'fs-copied', payload: w.payload });
      return w.kind;
    }, text);
    await send(g, 'fs-copied', 'first (a start)');
    await openPeer(page, 'fs-copier');
    await inbound(page, 'first (a start)');
    assert.equal(await resend('first (a start)'), 'start');
    await say(page, 'hello back');
    await until(async () => { await poll(g); return (await texts(g)).includes('hello back'); }, 'the answer');
    await send(g, 'fs-copied', 'second (ratchet)');
    await inbound(page, 'second (ratchet)');
    assert.equal(await resend('second (ratchet)'), 'ratchet');
    await send(g, 'fs-copied', 'third');
    await inbound(page, 'third');
    await sleep(1500); // time for any second copy or warning to show
    assert.deepEqual(await received(page), ['first (a start)', 'second (ratchet)', 'third']);
    assert.equal(await page.locator('#messages li.msg.system:has-text("could not be opened")').count(), 0, 'no damaged-message warning');
    await shoot(page, 'client_ui_resent_copy');
  } finally { await ctx.close(); await g.close(); }
});

test('a reload in the middle of a conversation continues it: the ratchet state is kept, sealed, its private keys non-extractable', async () => {
  const ctxA = await browser.newContext({ viewport: DESKTOP }), ctxB = await browser.newContext({ viewport: DESKTOP });
  try {
    const ann = await connect(ctxA, 'fs-rl-ann', server.url);
    let bob = await connect(ctxB, 'fs-rl-bob', server.url);
    await openPeer(ann, 'fs-rl-bob');
    await say(ann, 'before the reloads');
    await openPeer(bob, 'fs-rl-ann');
    await inbound(bob, 'before the reloads');
    await say(bob, 'answer before');
    await inbound(ann, 'answer before');
    await say(ann, 'one more before');
    await inbound(bob, 'one more before');
    // Bob reloads while Ann writes on under the conversation she has.
    await bob.reload();
    await signIn(bob, 'fs-rl-bob');
    await say(ann, 'during the reload');
    await openPeer(bob, 'fs-rl-ann');
    await inbound(bob, 'during the reload');
    await say(bob, 'after my reload');
    await inbound(ann, 'after my reload');
    await ann.reload();
    await signIn(ann, 'fs-rl-ann');
    await openPeer(ann, 'fs-rl-bob');
    await say(ann, 'after hers');
    await inbound(bob, 'after hers');
    await inbound(ann, 'after my reload');
    assert.deepEqual(await received(bob), ['before the reloads', 'one more before', 'during the reload', 'after hers']);
    assert.equal(await bob.locator('#messages li.msg.system').count(), 0, 'no note: nothing failed, no new start without a one-time key');
    // What is kept: the ratchet's private keys are CryptoKeys that cannot be exported; the rest
    // is sealed (no message text in clear).
    const keys = await bob.evaluate(async () => {
      const db = await new Promise((res, rej) => { const r = indexedDB.open('mtproto-relay'); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
      const rec = await new Promise((res) => { const r = db.transaction('profiles').objectStore('profiles').get('fs-rl-bob'); r.onsuccess = () => res(r.result); });
      db.close();
      const all = [];
      const walk = (v) => { if (v instanceof CryptoKey) all.push(v); else if (v && typeof v === 'object') Object.values(v).forEach(walk); };
      walk(rec.ratchetKeys);
      return { n: all.length, extractable: all.filter((k) => k.extractable).length, algs: [...new Set(all.map((k) => k.algorithm.name))].sort(),
        conv: Object.keys(rec.ratchetKeys.convs) };
    });
    assert.ok(keys.n >= 100, `signing key, prekeys, ratchet keys: ${keys.n}`);
    assert.equal(keys.extractable, 0);
    assert.deepEqual(keys.algs, ['Ed25519', 'X25519']);
    assert.deepEqual(keys.conv, ['fs-rl-ann']);
    const stored = await storedText(bob);
    for (const t of ['before the reloads', 'during the reload', 'after hers']) assert.ok(!stored.includes(t), `"${t}" is not stored in clear`);
    // The key panel says it.
    await bob.click('#verify');
    await until(async () => /Forward secrecy: on/.test(await bob.textContent('#forward-secrecy')), 'the key panel');
    await bob.setViewportSize(PHONE);
    await bob.screenshot({ path: join(artifacts, 'conversations_forward_secret_phone.png') });
    await bob.click('#verify-close');
  } finally { await ctxA.close(); await ctxB.close(); }
});

test('a start without a one-time prekey (the relay hands none out) is said in the conversation on both sides and in the key panel', async () => {
  const relay = await startServer(['--engine', 'memory', '--pow-bits', '0', '--prekey-handouts-per-hour', '0']);
  const ctxA = await browser.newContext({ viewport: PHONE }), ctxB = await browser.newContext({ viewport: DESKTOP });
  try {
    const ann = await connect(ctxA, 'nopk-ann', relay.url);
    const bob = await connect(ctxB, 'nopk-bob', relay.url);
    await openPeer(ann, 'nopk-bob');
    await say(ann, 'first words');
    const noteA = ann.locator('#messages li.msg.system:has-text("without a one-time key")');
    await until(async () => (await noteA.count()) === 1, 'the note at the initiator');
    assert.match(await noteA.textContent(), /Started without a one-time key \(the relay had none left for nopk-bob\): your first messages are less protected until nopk-bob replies — someone who later steals nopk-bob's device keys could read them\./);
    await openPeer(bob, 'nopk-ann');
    await inbound(bob, 'first words');
    const noteB = bob.locator('#messages li.msg.system:has-text("without a one-time key")');
    await until(async () => (await noteB.count()) === 1, 'the note at the responder');
    assert.match(await noteB.textContent(), /nopk-ann started this conversation without a one-time key/);
    await ann.click('#verify');
    await until(async () => /without a one-time key/.test(await ann.textContent('#forward-secrecy')), 'the key panel says it');
    assert.match(await ann.textContent('#forward-secrecy'), /^Forward secrecy: on\./);
    // Readable at phone width: the dialog fits the screen.
    const box = await ann.locator('#verify-dialog').boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= PHONE.width, `the dialog fits: ${JSON.stringify(box)}`);
    await ann.screenshot({ path: join(artifacts, 'conversations_no_one_time_key_panel_phone.png') });
    await ann.click('#verify-close');
    await shoot(ann, 'conversations_no_one_time_key');
    // The note stays once: a reload does not add another.
    await ann.reload();
    await signIn(ann, 'nopk-ann');
    await openPeer(ann, 'nopk-bob');
    await sleep(500);
    assert.equal(await ann.locator('#messages li.msg.system:has-text("without a one-time key")').count(), 1);
  } finally { await ctxA.close(); await ctxB.close(); await relay.stop(); }
});

test('exactly once across a reload between hand-out and acknowledgement: the kept copy is shown once, nothing is refused', async () => {
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const g = await client('fs-once-peer');
  try {
    // Polls go through until one brings a message (an answer far longer than an empty one); from
    // then on every poll fails: the acknowledgement never reaches the relay.
    let block = false, refused = 0;
    await ctx.route('**/poll_messages', async (r) => {
      if (block) { refused += 1; await r.abort('connectionreset'); return; }
      const res = await r.fetch();
      const body = await res.text();
      if (body.length > 500) block = true;
      await r.fulfill({ response: res, body });
    });
    let page = await connect(ctx, 'fs-once', server.url);
    await openPeer(page, 'fs-once-peer');
    await send(g, 'fs-once', 'opened, not acknowledged');
    await inbound(page, 'opened, not acknowledged');
    await until(() => refused >= 1, 'a poll carrying the acknowledgement to fail');
    await until(async () => { await poll(g); return g.evaluate(() => wire.some((w) => !w.out && w.control)); }, 'the receipt to reach the sender');
    // The reload: the relay still holds the entry and delivers it again.
    await ctx.unroute('**/poll_messages');
    let answered = 0;
    page.on('response', (r) => { if (r.url().endsWith('/poll_messages') && r.status() === 200) answered += 1; });
    await page.reload();
    await signIn(page, 'fs-once');
    await openPeer(page, 'fs-once-peer');
    await until(() => answered >= 3, 'three polls after the reload (the entry delivered again, then acknowledged)', 40000);
    assert.deepEqual(await received(page), ['opened, not acknowledged'], 'shown once');
    assert.equal(await page.locator('#messages li.msg.system').count(), 0, 'no "could not be opened"');
    // And the conversation goes on under the ratchet.
    await send(g, 'fs-once', 'and on');
    await inbound(page, 'and on');
    assert.deepEqual(await received(page), ['opened, not acknowledged', 'and on']);
  } finally { await ctx.close(); await g.close(); }
});

/** Skipped message keys the page holds, in all its conversations. */
const skippedTotal = (p) => p.evaluate(() => {
  let t = 0;
  for (const s of c.conv.peers.values()) for (const x of [s.ours, s.theirs]) if (x) t += x.chat.ratchet.skippedCount();
  return t;
});

test('skipped keys across many peers stay under 4000 in all, the newest conversations still open their overtaken messages, and a record over it is trimmed on load', async () => {
  const v = await client('sk-vic');
  const mals = [];
  try {
    let most = 0;
    for (let k = 0; k < 5; k++) {
      const name = `sk-mal${k}`;
      const mal = await client(name);
      mals.push(mal);
      assert.equal(await send(mal, 'sk-vic', 'start'), 'stored');
      const from = () => v.evaluate((n) => got.filter((g) => g.from === n).map((g) => g.text), name);
      await until(async () => { await poll(v); return (await from()).length === 1; }, 'the start');
      // 999 keys ahead, 998 more, then a message and the one that overtakes it: 1997 keys skipped.
      const payloads = await mal.evaluate(async (name) => {
        const w = await c.chatWith('sk-vic');
        const r = c.conv.sending('sk-vic').chat.ratchet;
        const seal = async (t) => m.b64((await c.conv.seal('sk-vic', w, m.utf8(t))).packet);
        for (let i = 0; i < 999; i++) (await r.nextSend()).mk.fill(0);
        const ahead = await seal('ahead');
        for (let i = 0; i < 998; i++) (await r.nextSend()).mk.fill(0);
        const late = await seal(`late from ${name}`);
        return [ahead, await seal('further ahead'), late];
      }, name);
      await mal.evaluate(async (payloads) => {
        for (const payload of payloads) await c.call('/secure_message', { method: 'send_message', target_peer: 'sk-vic', payload });
      }, payloads);
      await until(async () => { await poll(v); return (await from()).length === 4; }, `the three from ${name}`);
      assert.deepEqual(await from(), ['start', 'ahead', 'further ahead', `late from ${name}`], 'the newest conversation opens its overtaken message');
      const total = await skippedTotal(v);
      assert.ok(total <= 4000, `after ${k + 1} peers: ${total} skipped keys held`);
      most = Math.max(most, total);
    }
    assert.ok(most > 3000, `the cap was reached: ${most}`);
    assert.equal(await v.evaluate(() => rejected.length), 0);
    // A record over the cap (an older version's) is trimmed on load, not refused.
    const trimmed = await v.evaluate(async () => {
      const { Conversations } = await import('/js/conversations.js');
      const rec = c.conv.toRecord();
      for (const peer of Object.keys(rec.data.convs)) {
        rec.data.convs[`copy-${peer}`] = rec.data.convs[peer];
        rec.keys.convs[`copy-${peer}`] = rec.keys.convs[peer];
      }
      let before = 0;
      for (const d of Object.values(rec.data.convs)) for (const x of [d.ours, d.theirs]) if (x) before += x.chat.ratchet.skipped.length;
      const loaded = Conversations.fromRecord(c, rec);
      let after = 0;
      for (const s of loaded.peers.values()) for (const x of [s.ours, s.theirs]) if (x) after += x.chat.ratchet.skippedCount();
      return { before, after, peers: loaded.peers.size };
    });
    assert.ok(trimmed.before > 4000, JSON.stringify(trimmed));
    assert.ok(trimmed.after <= 4000 && trimmed.after > 3000, JSON.stringify(trimmed));
    assert.equal(trimmed.peers, 10);
  } finally { await v.close(); for (const p of mals) await p.close(); }
});

test('a drain of one-time prekeys lasts only until the next start: one accepted without a one-time prekey makes the page ask the relay and top up', async () => {
  const relay = await startServer(['--engine', 'memory', '--pow-bits', '0', '--prekey-handouts-per-hour', '100000', '--prekey-target-handouts-per-hour', '100000']);
  const v = await client('dr-vic', relay), d = await client('dr-drain', relay), p = await client('dr-peer', relay);
  try {
    assert.equal(await v.evaluate(() => c.conv.relayOneTime), 100);
    const fetch = () => d.evaluate(async () => !!(await c.call('/prekey_bundle', { method: 'prekey_bundle', peer: 'dr-vic' })).bundle.one_time_prekey);
    let drained = 0;
    while (await fetch()) drained++;
    assert.equal(drained, 100);
    // The victim stays connected (no reconnect publishes again); a peer starts without a one-time prekey.
    assert.equal(await send(p, 'dr-vic', 'after the drain'), 'stored');
    await until(async () => { await poll(v); return (await texts(v)).includes('after the drain'); }, 'the start');
    assert.deepEqual(await v.evaluate(() => starts), [{ peer: 'dr-peer', initiator: false, oneTimePrekey: false }]);
    // What the run loop does between polls.
    await v.evaluate(() => c.conv.maintain());
    assert.equal(await v.evaluate(() => c.conv.relayOneTime), 100, 'asked the relay, then topped up');
    assert.equal(await fetch(), true, 'the relay hands out one-time prekeys again');
  } finally { await v.close(); await d.close(); await p.close(); await relay.stop(); }
});
