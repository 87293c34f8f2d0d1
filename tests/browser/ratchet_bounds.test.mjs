// The browser's double ratchet (ratchet.js) within its bounds, as Rust's: out-of-order and late
// delivery open every message once, skipping past the bounds, the skipped-key store's cap and
// expiry, the per-sender skip budget, and the remembered remote ratchet keys. Real Chromium,
// served by a real relay-server.
//   cd tests/browser && RELAY_BIN_DIR=$CARGO_TARGET_DIR/debug node --test ratchet_bounds.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer } from './helpers.mjs';
import { ratchetPage } from './ratchet_page.mjs';

let server, browser, page;

before(async () => {
  server = await startServer(['--engine', 'memory']);
  browser = await launchBrowser();
  page = await ratchetPage(browser, server);
});
after(async () => { await browser?.close(); await server?.stop(); });

test('out-of-order and late delivery within the bounds opens every message exactly once; replays are refused', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, prng, peers, code } = window;
    const rand = prng(15);
    const p = await peers(1);
    const { chat: a } = await initiate(p.alice, p.prekeys.bundle(p.one[0]), p.bob.pub);
    let b = null;
    const side = { a: { chat: a, inbox: [] }, b: { chat: null, inbox: [] } };
    const opened = new Map(); // text -> times opened
    const delivered = [];
    const errors = {};
    let now = Date.now(), sentCount = 0, replays = 0, replayRefused = 0;
    const deliver = async (to, item) => {
      now += Math.floor(rand() * 3600e3); // up to an hour between deliveries (late, within 30 days)
      let got;
      if (to === 'b' && !b) {
        const acc = await accept(p.bob, p.prekeys, item.packet, { nowMs: now });
        b = side.b.chat = acc.chat; got = acc.received;
      } else got = await side[to].chat.open(side[to].chat.w, item.packet, { nowMs: now });
      const text = m.fromUtf8(got.body);
      if (text !== item.text) throw new Error(`opened ${text} for ${item.text}`);
      opened.set(text, (opened.get(text) || 0) + 1);
      delivered.push([to, item]);
    };
    for (let round = 0; round < 40; round++) {
      const from = !b || rand() < 0.5 ? 'a' : 'b', to = from === 'a' ? 'b' : 'a';
      const burst = 1 + Math.floor(rand() * 8);
      for (let i = 0; i < burst; i++) {
        const text = `${from}${sentCount++}`;
        side[to].inbox.push({ text, packet: (await side[from].chat.seal(side[from].chat.w, m.utf8(text), { nowMs: now })).packet });
      }
      // Deliver a random part of what waits, in random order; keep the rest for later.
      for (const t of ['a', 'b']) {
        const box = side[t].inbox;
        for (let i = box.length - 1; i >= 0; i--) {
          if (t === 'a' && !b) break;
          if (rand() < 0.55) { const j = Math.floor(rand() * box.length); const [item] = box.splice(j, 1); await deliver(t, item); }
        }
      }
      // Now and then a replay of something already delivered.
      if (delivered.length && rand() < 0.5) {
        const [t, item] = delivered[Math.floor(rand() * delivered.length)];
        replays++;
        const c = await code(side[t].chat.open(side[t].chat.w, item.packet, { nowMs: now }));
        errors[c] = (errors[c] || 0) + 1;
        if (c !== 'ok') replayRefused++;
      }
    }
    for (const t of ['a', 'b']) {
      const box = side[t].inbox;
      while (box.length) { const [item] = box.splice(Math.floor(rand() * box.length), 1); await deliver(t, item); }
    }
    // Every packet again, once everything arrived: all refused.
    for (const [t, item] of delivered) { const c = await code(side[t].chat.open(side[t].chat.w, item.packet, { nowMs: now })); errors[c] = (errors[c] || 0) + 1; if (c !== 'ok') replayRefused++; replays++; }
    return { sent: sentCount, distinct: opened.size, onceEach: [...opened.values()].every((n) => n === 1), replays, replayRefused, errors,
      skippedLeft: a.ratchet.skippedCount() + b.ratchet.skippedCount() };
  });
  console.log(`  randomized interleaving (seed 15): ${out.sent} messages, ${out.replays} replays → ${JSON.stringify(out.errors)}`);
  assert.ok(out.sent > 80, `${out.sent} messages`);
  assert.equal(out.distinct, out.sent, 'every message opened');
  assert.equal(out.onceEach, true, 'each exactly once');
  assert.equal(out.replayRefused, out.replays, 'every replay refused');
  assert.deepEqual(Object.keys(out.errors), ['message_key_gone']);
  assert.equal(out.skippedLeft, 0, 'every skipped key was used');
});

test('beyond the bounds: too many skipped, evicted after 2000, expired after 30 days — each with its clear error, nothing changed', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, peers, code, snapshot } = window;
    const p = await peers(1);
    const o = {};
    const t0 = Date.now();
    const { chat: a } = await initiate(p.alice, p.prekeys.bundle(p.one[0]), p.bob.pub);
    // Chain 1: Alice seals 0..1001; Bob's first message is n = 1000 (1000 keys skipped, the most).
    const c1 = [];
    for (let i = 0; i <= 1001; i++) c1.push(await a.seal(a.w, m.utf8(`c1-${i}`), { nowMs: t0 }));
    const acc = await accept(p.bob, p.prekeys, c1[1000].packet, { nowMs: t0 });
    const b = acc.chat;
    o.firstSkipped = b.ratchet.skippedCount();
    // n = 1001 is the next in order: fine. A jump of 1001 within the chain is too many.
    await b.open(b.w, c1[1001].packet, { nowMs: t0 });
    const more = [];
    for (let i = 0; i < 1002; i++) more.push(await a.seal(a.w, m.utf8(`c1b-${i}`), { nowMs: t0 }));
    const s = snapshot(b);
    const e = await b.open(b.w, more[1001].packet, { nowMs: t0 }).catch((x) => x);
    o.tooMany = [e.code, e.skip, e.max];
    o.unchanged1 = snapshot(b) === s;
    // A forged header: a new ratchet key claiming n = 2^32 - 1, or a previous chain of pn = 5000 — refused
    // before any DH or chain work (one received packet costs at most 2 × 1000 HMACs, 3 X25519).
    const forge = (packet, f) => { const q = packet.slice(); const at = r.packetKind(q) === 'start' ? 74 : 1; f(q, at); return q; };
    const fresh = (await r.generateX25519()).pub;
    const t = performance.now();
    o.forgedN = await code(b.open(b.w, forge(more[0].packet, (q, at) => { q.set(fresh, at); q.set(m.u32le(0xFFFFFFFF), at + 36); }), { nowMs: t0 }));
    o.forgedPn = await code(b.open(b.w, forge(more[0].packet, (q, at) => { q.set(fresh, at); q.set(m.u32le(5000), at + 32); }), { nowMs: t0 }));
    o.forgedMs = performance.now() - t;
    o.unchanged2 = snapshot(b) === s;
    // Late, but within 30 days: opens from the store. Older than 30 days: gone.
    o.day29 = m.fromUtf8((await b.open(b.w, c1[0].packet, { nowMs: t0 + 29 * 86400e3 })).body);
    const s2 = snapshot(b);
    o.day31 = await code(b.open(b.w, c1[1].packet, { nowMs: t0 + 31 * 86400e3 }));
    o.unchanged3 = snapshot(b) === s2;
    // Opening at day 31 expires the store: 998 keys of chain 1 remain until something commits after day 30.
    await b.open(b.w, more[0].packet, { nowMs: t0 + 31 * 86400e3 });
    o.afterExpiry = b.ratchet.skippedCount();
    o.day31late = await code(b.open(b.w, c1[2].packet, { nowMs: t0 + 31 * 86400e3 }));
    return o;
  });
  assert.deepEqual(out.tooMany, ['too_many_skipped', 1001, 1000]);
  assert.equal(out.firstSkipped, 1000);
  assert.equal(out.unchanged1, true);
  assert.equal(out.forgedN, 'too_many_skipped');
  assert.equal(out.forgedPn, 'too_many_skipped');
  assert.ok(out.forgedMs < 2000, `forged headers refused in ${out.forgedMs} ms`);
  assert.equal(out.unchanged2, true);
  assert.equal(out.day29, 'c1-0');
  assert.equal(out.day31, 'message_key_gone');
  assert.equal(out.unchanged3, true);
  assert.equal(out.afterExpiry, 0, 'all the old keys expired; the open of more[0] used a chain step, nothing skipped');
  assert.equal(out.day31late, 'message_key_gone');
});

test('the skipped-key store holds at most 2000: the oldest are evicted and their messages are gone', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, peers, code } = window;
    const p = await peers(1);
    const { chat: a } = await initiate(p.alice, p.prekeys.bundle(p.one[0]), p.bob.pub);
    let b = null;
    const chains = [];
    const counts = [];
    const t0 = Date.now();
    for (let c = 0; c < 3; c++) {
      const sent = [];
      for (let i = 0; i <= 1000; i++) sent.push(await a.seal(a.w, m.utf8(`chain${c}-${i}`)));
      // An hour apart: two such jumps spend Alice's whole skip budget.
      const nowMs = t0 + c * r.SKIP_BUDGET_REFILL_SECS * 1000;
      if (!b) b = (await accept(p.bob, p.prekeys, sent[1000].packet, { nowMs })).chat;
      else await b.open(b.w, sent[1000].packet, { nowMs });
      counts.push(b.ratchet.skippedCount());
      chains.push(sent);
      // Bob answers, so that Alice's next messages come on a new chain.
      await a.open(a.w, (await b.seal(b.w, m.utf8('next'))).packet);
    }
    return {
      counts,
      evicted: [await code(b.open(b.w, chains[0][0].packet)), await code(b.open(b.w, chains[0][999].packet))],
      kept: [m.fromUtf8((await b.open(b.w, chains[1][0].packet)).body), m.fromUtf8((await b.open(b.w, chains[2][999].packet)).body)],
      after: b.ratchet.skippedCount(),
    };
  });
  assert.deepEqual(out, { counts: [1000, 2000, 2000], evicted: ['message_key_gone', 'message_key_gone'], kept: ['chain1-0', 'chain2-999'], after: 1998 });
});

test('the skip budget (as Rust): forged packets spend their sender\'s budget, then are refused before any step; a real sender that skips too much waits for the refill; messages in order cost nothing', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, pair, code, snapshot } = window;
    const o = {};
    const t0 = Date.now();
    {
      const { a, b } = await pair();
      const real = await a.seal(a.w, m.utf8('real'), { nowMs: t0 });
      // The real packet with its number raised to MAX_SKIP: the 1000 steps before it are walked,
      // then the frame fails.
      const forged = real.packet.slice();
      forged.set(m.u32le(r.MAX_SKIP), 37);
      const s = snapshot(b);
      o.forged = [];
      const t = performance.now();
      for (let i = 0; i < 5; i++) o.forged.push(await code(b.open(b.w, forged, { nowMs: t0 })));
      o.forgedMs = performance.now() - t;
      const e = await b.open(b.w, forged, { nowMs: t0 }).catch((x) => x);
      o.refused = [e.code, e.need, e.left];
      o.spentMs = performance.now() - t - o.forgedMs;
      o.unchanged = snapshot(b) === s;
      o.inOrder = m.fromUtf8((await b.open(b.w, real.packet, { nowMs: t0 })).body);
      o.quarter = b.w.skipBudget.left(t0 + r.SKIP_BUDGET_REFILL_SECS * 250);
      o.saved = 'skipBudget' in JSON.parse(JSON.stringify(b.w));
    }
    {
      const { a, b } = await pair();
      // Alice's messages are lost 999 at a time; the next is delivered: 2 × 999 steps a jump.
      const jump = async () => { let last; for (let i = 0; i < r.MAX_SKIP; i++) last = await a.seal(a.w, m.utf8(`${i}`), { nowMs: t0 }); return last; };
      const jumps = [await jump(), await jump(), await jump()];
      await b.open(b.w, jumps[0].packet, { nowMs: t0 });
      await b.open(b.w, jumps[1].packet, { nowMs: t0 });
      const stored = b.ratchet.skippedCount();
      const e = await b.open(b.w, jumps[2].packet, { nowMs: t0 }).catch((x) => x);
      o.third = [e.code, e.need];
      o.nothingStored = b.ratchet.skippedCount() === stored;
      const later = t0 + r.SKIP_BUDGET_REFILL_SECS * 1000;
      o.afterRefill = m.fromUtf8((await b.open(b.w, jumps[2].packet, { nowMs: later })).body);
      const left = b.w.skipBudget.left(later);
      await b.open(b.w, (await a.seal(a.w, m.utf8('in order'), { nowMs: t0 })).packet, { nowMs: later });
      o.inOrderFree = b.w.skipBudget.left(later) === left;
    }
    {
      // Spent while the clock was a day ahead; once it is set back the refill runs from now.
      const budget = new r.SkipBudget();
      budget.spend(r.SKIP_BUDGET, t0 + 86400e3);
      o.corrected = await code(Promise.resolve().then(() => budget.spend(1, t0)));
      o.refilled = budget.left(t0 + r.SKIP_BUDGET_REFILL_SECS * 1000);
      o.nan = await code(Promise.resolve().then(() => budget.spend(1, NaN)));
      o.afterNan = budget.left(t0 + r.SKIP_BUDGET_REFILL_SECS * 1000);
    }
    return o;
  });
  assert.deepEqual(out.forged, ['decrypt', 'decrypt', 'decrypt', 'decrypt', 'skip_budget'], 'four forged packets of 1000 steps spend 4000');
  assert.deepEqual(out.refused, ['skip_budget', 1000, 0]);
  assert.equal(out.unchanged, true, 'nothing but the budget changed');
  assert.equal(out.inOrder, 'real');
  assert.equal(out.quarter, 1000, 'a quarter of the budget back after a quarter of an hour');
  assert.equal(out.saved, false, 'the budget is not saved');
  assert.deepEqual(out.third, ['skip_budget', 999]);
  assert.equal(out.nothingStored, true);
  assert.equal(out.afterRefill, '999');
  assert.equal(out.inOrderFree, true, 'a message in order costs nothing');
  assert.equal(out.corrected, 'skip_budget');
  assert.equal(out.refilled, 4000, 'refilled an hour after the clock was set back');
  assert.equal(out.nan, 'protocol', 'an invalid time is refused');
  assert.equal(out.afterNan, 4000, 'and changes nothing');
  console.log(`# skip budget: 4 forged packets of 1000 steps took ${out.forgedMs.toFixed(0)} ms, refused ones ${out.spentMs.toFixed(1)} ms`);
});

test('dropOldestSkipped evicts the oldest skipped keys (zeroized): their messages are gone, the newer still open', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, pair, code } = window;
    const { a, b } = await pair();
    const held = [];
    for (let i = 1; i <= 10; i++) held.push(await a.seal(a.w, m.utf8(`m${i}`)));
    await b.open(b.w, (await a.seal(a.w, m.utf8('last'))).packet);
    const before = b.ratchet.skippedCount();
    const keys = [...b.ratchet.skipped.values()].slice(0, 4).map((s) => s.key);
    const dropped = b.ratchet.dropOldestSkipped(4);
    const zeroed = keys.every((k) => k.every((x) => x === 0));
    const gone = [];
    for (const h of held.slice(0, 4)) gone.push(await code(b.open(b.w, h.packet)));
    const kept = [];
    for (const h of held.slice(4).reverse()) kept.push(m.fromUtf8((await b.open(b.w, h.packet)).body));
    return { before, dropped, zeroed, gone, kept, after: b.ratchet.skippedCount(), none: b.ratchet.dropOldestSkipped(5), total: r.MAX_SKIPPED_KEYS_TOTAL };
  });
  assert.deepEqual(out, { before: 10, dropped: 4, zeroed: true, gone: Array(4).fill('message_key_gone'), kept: ['m10', 'm9', 'm8', 'm7', 'm6', 'm5'],
    after: 0, none: 0, total: 4000 });
});

test('bounded memory: 70 round trips remember the last 64 remote ratchet keys; an older replay is still refused', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, pair, code } = window;
    const { a, b } = await pair();
    const first = await a.seal(a.w, m.utf8('round 0'));
    await b.open(b.w, first.packet);
    const recent = [];
    for (let i = 1; i <= 70; i++) {
      await a.open(a.w, (await b.seal(b.w, m.utf8(`b${i}`))).packet);
      const s = await a.seal(a.w, m.utf8(`a${i}`));
      if (i === 66) recent.push(s);
      await b.open(b.w, s.packet);
    }
    const rec = b.toRecord();
    const big = b.toRecord();
    big.data.ratchet.previousRemote.push(big.data.ratchet.previousRemote[0]);
    return {
      remembered: rec.data.ratchet.previousRemote.length,
      recent: await code(b.open(b.w, recent[0].packet)),
      // Its chain fell out of the 64 remembered: taken for a new DH step, which cannot open it.
      oldest: await code(b.open(b.w, first.packet)),
      skipped: b.ratchet.skippedCount(),
      overBound: await code((async () => r.RatchetChat.fromRecord(big))()),
    };
  });
  assert.deepEqual(out, { remembered: 64, recent: 'message_key_gone', oldest: 'decrypt', skipped: 0, overBound: 'malformed' });
});
