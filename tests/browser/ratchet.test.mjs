// The browser's X3DH and double ratchet (bins/relay-server/assets/js/ratchet.js) in real Chromium,
// served by a real relay-server: byte-identical with the Rust crate's known answers
// (crates/mtproto-session/tests/vectors/ratchet.json, read from there: one copy), forward secrecy,
// post-compromise security, out-of-order and late delivery within Rust's bounds, replays, starts
// without a one-time prekey, nothing changed by a refused packet, persistence with the private
// keys non-extractable, and a measurement (printed, not asserted) of the per-message cost against
// the static chat's (docs/benchmarks.md).
//   cd tests/browser && RELAY_BIN_DIR=$CARGO_TARGET_DIR/debug node --test ratchet.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { launchBrowser, startServer, root } from './helpers.mjs';

const vectors = JSON.parse(readFileSync(join(root, 'crates/mtproto-session/tests/vectors/ratchet.json'), 'utf8'));

let server, browser, page;

/** Puts the modules and the test helpers on `window` (page.evaluate is not subject to the page's CSP). */
async function setup() {
  await page.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    // ratchet.js (keys, X3DH, the ratchet) and ratchet_chat.js (packets, RatchetChat), as one namespace.
    const r = { ...(await import('/js/ratchet.js')), ...(await import('/js/ratchet_chat.js')) };
    // The Rust tests' deterministic stream (mtproto-session/tests/common): block i =
    // SHA-256("mtproto-relay/test-rng/v1" ‖ seed ‖ i as u64 LE), bytes handed out in order.
    class TestRng {
      constructor(seed) { this.seed = m.utf8(seed); this.counter = 0n; this.buf = new Uint8Array(0); this.at = 0; }
      async bytes(n) {
        const out = new Uint8Array(n);
        for (let i = 0; i < n; i++) {
          if (this.at >= this.buf.length) {
            this.buf = await m.sha256(m.utf8('mtproto-relay/test-rng/v1'), this.seed, m.u64le(this.counter));
            this.counter += 1n; this.at = 0;
          }
          out[i] = this.buf[this.at++];
        }
        return out;
      }
      async keyPair() { return r.importX25519Secret(await this.bytes(32)); }
    }
    // A seeded PRNG for orderings (mulberry32).
    const prng = (seed) => () => { seed |= 0; seed = (seed + 0x6D2B79F5) | 0; let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t; return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
    // A conversation owns no window (spec §1): the pair's static Chat is it. The tests keep it on
    // the conversation object as `.w` (a client keeps it in its map of static conversations).
    async function initiate(identity, bundle, expectedPeer, opts) {
      const res = await r.RatchetChat.initiate(identity, bundle, expectedPeer, opts);
      res.chat.w = await m.Chat.create(identity, expectedPeer);
      return res;
    }
    /** accept under a fresh window for the identity the start names (or `w` when given). */
    async function accept(identity, prekeys, packet, opts, w = null) {
      const win = w || await m.Chat.create(identity, r.RatchetChat.startIdentityOf(packet) || new Uint8Array(32).fill(9));
      const res = await r.RatchetChat.accept(identity, prekeys, win, packet, opts);
      res.chat.w = win;
      return res;
    }
    /** Alice and Bob with fresh keys; Bob's prekeys with `opks` one-time prekeys. */
    async function peers(opks = 1) {
      const alice = await m.generateIdentity(), bob = await m.generateIdentity();
      const bobSigning = await r.generateSigningKey();
      const prekeys = await r.Prekeys.create(bob.pub, bobSigning, Math.floor(Date.now() / 1000));
      const one = await prekeys.generateOneTime(opks);
      return { alice, bob, bobSigning, prekeys, one };
    }
    /** A conversation where both sides have a sending chain: a → b (start), b → a. */
    async function pair({ opk = true } = {}) {
      const p = await peers(1);
      const { chat: a } = await initiate(p.alice, p.prekeys.bundle(opk ? p.one[0] : null), p.bob.pub);
      const { chat: b } = await accept(p.bob, p.prekeys, (await a.seal(a.w, m.utf8('hello'))).packet);
      await a.open(a.w, (await b.seal(b.w, m.utf8('hi'))).packet);
      return { ...p, a, b };
    }
    /** The error code of a rejected promise ('ok' if it resolved). */
    const code = (pr) => pr.then(() => 'ok', (e) => (typeof e.code === 'string' ? e.code : e.name && e.name !== 'Error' ? e.name : e.message));
    /** The state as comparable JSON (the CryptoKey by identity). */
    const snapshot = (c) => { const rec = c.toRecord(); return JSON.stringify([rec.data, c.w.toJSON()], (_, x) => (x instanceof Uint8Array ? m.hex(x) : x)); };
    /** A copy of the conversation and of its window, as a saved profile would bring them back. */
    const restore = (c) => Object.assign(r.RatchetChat.fromRecord(c.toRecord()), { w: new m.Chat(structuredClone(c.w.toJSON())) });
    /** `c.open` under its own window. */
    const openIn = (c, packet, opts) => c.open(c.w, packet, opts);
    Object.assign(window, { m, r, TestRng, prng, peers, pair, code, snapshot, restore, openIn, initiate, accept });
  });
}

before(async () => {
  server = await startServer(['--engine', 'memory']);
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(server.url + '/');
  await setup();
});
after(async () => { await browser?.close(); await server?.stop(); });

test('the module is served like mtproto.js: same headers, CSP, cache validators', async () => {
  const [a, b] = await Promise.all(['/js/mtproto.js', '/js/ratchet.js'].map((p) => fetch(server.url + p)));
  assert.equal(b.status, 200);
  for (const h of ['content-type', 'cache-control', 'vary', 'content-security-policy', 'x-content-type-options', 'referrer-policy']) {
    assert.equal(b.headers.get(h), a.headers.get(h), h);
  }
  assert.match(b.headers.get('etag'), /^"[0-9a-f]{32}(-gzip)?"$/);
});

test('X3DH and the double ratchet are byte-identical to Rust (tests/vectors/ratchet.json)', async () => {
  const out = await page.evaluate(async (v) => {
    const { m, r, TestRng } = window;
    const H = m.fromHex, X = m.hex, inp = v.inputs, now = inp.time_base_secs;
    const alice = await r.importX25519Secret(H(inp.alice_identity_secret));
    const bob = await r.importX25519Secret(H(inp.bob_identity_secret));
    const bobSigning = await r.importSigningSeed(H(inp.bob_signing_seed));
    const prng = new TestRng('bob prekeys');
    const prekeys = await r.Prekeys.create(bob.pub, bobSigning, now, prng);
    const [opk] = await prekeys.generateOneTime(1, prng);
    const bundle = prekeys.bundle(opk);
    const o = { bundle: r.bundleToJson(bundle) };
    // The test stream gives the secrets the file names.
    o.spkFromSecret = X((await r.importX25519Secret(H(inp.bob_signed_prekey_secret))).pub) === X(bundle.signedPrekey.public);
    o.opkFromSecret = X((await r.importX25519Secret(H(inp.bob_one_time_prekey_secret))).pub) === X(opk.public);
    await r.verifyBundle(r.bundleFromJson(v.bundle));

    const eph = await r.importX25519Secret(H(inp.alice_ephemeral_secret));
    const ra0 = await r.importX25519Secret(H(inp.alice_first_ratchet_secret));
    const spk = bundle.signedPrekey.public;
    const agreed = await r.x3dhInitiate(alice, bundle, bob.pub, eph);
    const answered = await r.x3dhRespond(bob, prekeys, agreed.start);
    o.x3dh = {
      alice_identity_public: X(alice.pub), bob_identity_public: X(bob.pub), bob_signing_public: X(bobSigning.pub),
      signed_prekey_public: X(spk), signed_prekey_signature: X(bundle.signedPrekey.signature), one_time_prekey_public: X(opk.public),
      ephemeral_public: X(eph.pub),
      dh1: X(await r.x25519(alice.privateKey, spk)), dh2: X(await r.x25519(eph.privateKey, bob.pub)),
      dh3: X(await r.x25519(eph.privateKey, spk)), dh4: X(await r.x25519(eph.privateKey, opk.public)),
      shared_secret: X(agreed.sharedSecret), ad: X(agreed.ad),
    };
    o.responderAgrees = X(answered.sharedSecret) === X(agreed.sharedSecret) && X(answered.ad) === X(agreed.ad);

    const given = [eph, ra0];
    const { chat: a, oneTimePrekey } = await initiate(alice, bundle, bob.pub, { rng: { keyPair: async () => given.shift() } });
    o.started = oneTimePrekey;
    const keys = (c) => { const d = c.toRecord().data.ratchet; const h = (b) => (b ? X(b) : null);
      return { root: h(d.root), send_chain: h(d.send), recv_chain: h(d.recv), ratchet_public: h(d.dhSelfPub), ns: d.ns, nr: d.nr, pn: d.pn }; };
    o.alice_after_init = keys(a);

    const arng = new TestRng('alice'), brng = new TestRng('bob');
    const t = (s) => (now + s) * 1000;
    const body = (s) => m.utf8(s);
    const steps = [];
    const [, mk] = await r.kdfCk(a.toRecord().data.ratchet.send);
    const K = await r.packetKey(mk, agreed.ad);
    const m0 = await a.seal(a.w, body('hello Bob'), { nowMs: t(0), rng: arng });
    const acc = await accept(bob, prekeys, m0.packet, { nowMs: t(1), rng: brng });
    const b = acc.chat;
    o.accepted = { body: m.fromUtf8(acc.received.body), peer: X(acc.peer), oneTimePrekey: acc.oneTimePrekey, left: prekeys.oneTimeCount() };
    steps.push({ from: 'alice', body: X(body('hello Bob')), sent_at: now, opened_at: now + 1, message_key: X(mk),
      packet_key_sha256: X(await m.sha256(K)), packet: X(m0.packet), alice: keys(a), bob: keys(b) });
    const m1 = await a.seal(a.w, body('second'), { nowMs: t(2), rng: arng });
    const r0 = await b.seal(b.w, body('hi Alice'), { nowMs: t(3), rng: brng });
    const got = [m.fromUtf8((await a.open(a.w, r0.packet, { nowMs: t(4), rng: arng })).body)];
    steps.push({ from: 'bob', body: X(body('hi Alice')), sent_at: now + 3, opened_at: now + 4, packet: X(r0.packet), alice: keys(a), bob: keys(b) });
    const m2 = await a.seal(a.w, body('third, new chain'), { nowMs: t(5), rng: arng });
    got.push(m.fromUtf8((await b.open(b.w, m2.packet, { nowMs: t(6), rng: brng })).body));
    steps.push({ from: 'alice', body: X(body('third, new chain')), sent_at: now + 5, opened_at: now + 6, packet: X(m2.packet),
      alice: keys(a), bob: keys(b), bob_skipped_keys: b.ratchet.skippedCount() });
    const late = await b.open(b.w, m1.packet, { nowMs: t(7), rng: brng });
    got.push(m.fromUtf8(late.body), late.delivery);
    steps.push({ from: 'alice', body: X(body('second')), sent_at: now + 2, opened_at: now + 7, packet: X(m1.packet),
      alice: keys(a), bob: keys(b), bob_skipped_keys: b.ratchet.skippedCount() });
    o.steps = steps;
    o.got = got;
    o.kinds = [m0, m1, r0].map((s) => r.packetKind(s.packet));
    return o;
  }, vectors);
  assert.deepEqual(out.bundle, vectors.bundle, 'the bundle (prekeys from the test stream, the Ed25519 signature)');
  assert.equal(out.spkFromSecret, true);
  assert.equal(out.opkFromSecret, true);
  assert.deepEqual(out.x3dh, vectors.x3dh);
  assert.equal(out.responderAgrees, true);
  assert.equal(out.started, vectors.bundle.one_time_prekey.id);
  assert.deepEqual(out.alice_after_init, vectors.alice_after_init);
  assert.equal(out.steps.length, vectors.steps.length);
  out.steps.forEach((s, i) => {
    const { note, ...want } = vectors.steps[i];
    assert.deepEqual(s, want, `step ${i + 1}`);
  });
  assert.deepEqual(out.accepted, { body: 'hello Bob', peer: vectors.x3dh.alice_identity_public, oneTimePrekey: vectors.bundle.one_time_prekey.id, left: 0 });
  assert.deepEqual(out.got, ['hi Alice', 'third, new chain', 'second', 'late']);
  assert.deepEqual(out.kinds, ['start', 'start', 'ratchet']);
});

test('a flipped bit anywhere in the first packet is refused, the frame opaquely, and burns no one-time prekey', async () => {
  const out = await page.evaluate(async (v) => {
    const { m, r, TestRng } = window;
    const H = m.fromHex, inp = v.inputs;
    const bob = await r.importX25519Secret(H(inp.bob_identity_secret));
    const bobSigning = await r.importSigningSeed(H(inp.bob_signing_seed));
    const packet = H(v.steps[0].packet);
    const res = { prefix: new Set(), frame: new Set(), burnt: 0, accepted: 0, tried: 0 };
    for (let bit = 0; bit < packet.length * 8; bit += 37) {
      const prng = new TestRng('bob prekeys');
      const prekeys = await r.Prekeys.create(bob.pub, bobSigning, inp.time_base_secs, prng);
      await prekeys.generateOneTime(1, prng);
      const bad = packet.slice(); bad[bit >> 3] ^= 1 << (bit & 7);
      res.tried += 1;
      try { await accept(bob, prekeys, bad, { nowMs: inp.time_base_secs * 1000, rng: new TestRng('bob') }); res.accepted += 1; } catch (e) {
        (bit >> 3 < r.START_PREFIX_LEN ? res.prefix : res.frame).add(e.code);
      }
      if (prekeys.oneTimeCount() !== 1) res.burnt += 1;
    }
    return { ...res, prefix: [...res.prefix].sort(), frame: [...res.frame] };
  }, vectors);
  assert.ok(out.tried > 50);
  assert.equal(out.accepted, 0);
  assert.equal(out.burnt, 0, 'a refused start must not burn the one-time prekey');
  assert.deepEqual(out.frame, ['decrypt'], 'every flip in the encrypted frame gives the one opaque error');
  // The clear prefix is checked in order, as in Rust: which prekey, the header's bounds, then the frame.
  assert.ok(out.prefix.every((c) => ['decrypt', 'unknown_prekey', 'too_many_skipped', 'dh'].includes(c)), `prefix flips: ${out.prefix}`);
});

test('bundles: signature, identity binding, JSON round trip; prekeys keep 3 signed and at most 200 one-time', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, peers, code } = window;
    const p = await peers(2);
    const bundle = p.prekeys.bundle(p.one[0]);
    const o = {};
    o.roundTrip = JSON.stringify(r.bundleToJson(r.bundleFromJson(JSON.parse(JSON.stringify(r.bundleToJson(bundle)))))) === JSON.stringify(r.bundleToJson(bundle));
    o.wrongPeer = await code(initiate(p.alice, bundle, p.alice.pub));
    const forged = { ...bundle, signedPrekey: { ...bundle.signedPrekey, id: bundle.signedPrekey.id + 1 } };
    o.movedId = await code(initiate(p.alice, forged, p.bob.pub));
    const other = await r.generateSigningKey();
    o.otherSigner = await code(initiate(p.alice, { ...bundle, signingKey: other.pub }, p.bob.pub));
    o.lowOrder = await code(initiate(p.alice, { ...bundle, oneTimePrekey: { id: 9, public: new Uint8Array(32) } }, p.bob.pub));
    o.badJson = await code((async () => r.bundleFromJson({ ...r.bundleToJson(bundle), identity: 'AAAA' }))());
    // Rotation keeps the current signed prekey and two older ones; a start naming a dropped one is refused.
    const first = p.prekeys.signedPrekey().id;
    const { chat: early } = await initiate(p.alice, p.prekeys.bundle(null), p.bob.pub);
    const earlyStart = (await early.seal(early.w, m.utf8('late start'))).packet;
    for (let i = 0; i < 3; i++) await p.prekeys.rotateSignedPrekey(p.bobSigning, 0);
    o.signedKept = p.prekeys.signed.map((s) => s.id);
    o.first = first;
    o.droppedPrekey = await code(accept(p.bob, p.prekeys, earlyStart));
    o.extractable = [p.prekeys.signed[0].pair.privateKey.extractable, p.prekeys.oneTime.get(p.one[0].id).privateKey.extractable, p.bobSigning.privateKey.extractable];
    await p.prekeys.generateOneTime(198);
    o.full = p.prekeys.oneTimeCount();
    o.over = await code(p.prekeys.generateOneTime(1));
    o.consume = [p.prekeys.consumeOneTime(p.one[1].id), p.prekeys.consumeOneTime(p.one[1].id), p.prekeys.oneTimeCount()];
    return o;
  });
  assert.deepEqual(out, {
    roundTrip: true, wrongPeer: 'peer_identity_mismatch', movedId: 'bad_prekey_signature', otherSigner: 'bad_prekey_signature',
    lowOrder: 'dh', badJson: 'malformed', signedKept: [4, 5, 6], first: 1,
    droppedPrekey: 'unknown_prekey', extractable: [false, false, false], full: 200, over: 'limit', consume: [true, false, 199],
  });
});

test('a start without a one-time prekey works and says so; a replayed start with one is refused', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, peers, code } = window;
    const p = await peers(1);
    const { chat: a, oneTimePrekey } = await initiate(p.alice, p.prekeys.bundle(null), p.bob.pub);
    const first = await a.seal(a.w, m.utf8('no one-time prekey left'));
    const acc = await accept(p.bob, p.prekeys, first.packet);
    const reply = await acc.chat.seal(acc.chat.w, m.utf8('fine'));
    const o = { started: oneTimePrekey, accepted: acc.oneTimePrekey, body: m.fromUtf8(acc.received.body), left: p.prekeys.oneTimeCount(),
      reply: m.fromUtf8((await a.open(a.w, reply.packet)).body), pending: a.startPending, same: (await a.w.fingerprint()) === (await acc.chat.w.fingerprint()) };
    // X3DH §4.2: without a one-time prekey a start can be replayed to the responder, which must
    // keep one conversation per peer (the page's job once wired).
    o.replayNoOpk = (await code(accept(p.bob, p.prekeys, first.packet)));
    // With one: consumed once the first message opened, so a replayed start is refused.
    const { chat: a2, oneTimePrekey: used } = await initiate(p.alice, p.prekeys.bundle(p.one[0]), p.bob.pub);
    const start = await a2.seal(a2.w, m.utf8('with one'));
    const acc2 = await accept(p.bob, p.prekeys, start.packet);
    o.withOpk = [used === p.one[0].id, acc2.oneTimePrekey === p.one[0].id, p.prekeys.oneTimeCount()];
    o.replayOpk = await code(accept(p.bob, p.prekeys, start.packet));
    // Alice repeats the start prefix until Bob answers; Bob opens the repeats as ordinary messages.
    const again = await a2.seal(a2.w, m.utf8('still a start'));
    o.repeat = [r.packetKind(again.packet), m.fromUtf8((await acc2.chat.open(acc2.chat.w, again.packet)).body)];
    const ans = await acc2.chat.seal(acc2.chat.w, m.utf8('answer'));
    await a2.open(a2.w, ans.packet);
    o.after = r.packetKind((await a2.seal(a2.w, m.utf8('plain now'))).packet);
    o.notStart = await code(accept(p.bob, p.prekeys, ans.packet));
    return o;
  });
  assert.deepEqual(out, {
    started: null, accepted: null, body: 'no one-time prekey left', left: 1, reply: 'fine', pending: false, same: true,
    replayNoOpk: 'ok', withOpk: [true, true, 0], replayOpk: 'unknown_prekey', repeat: ['start', 'still a start'], after: 'ratchet', notStart: 'protocol',
  });
});

test('one window per pair: static and ratchet messages to the same peer share one numbering; a start for another pair is refused, nothing changed', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, peers, code } = window;
    const p = await peers(2);
    // The pair's static conversations are the windows (a client's map of chats).
    const wa = await m.Chat.create(p.alice, p.bob.pub), wb = await m.Chat.create(p.bob, p.alice.pub);
    const seen = [];
    const got = (x) => seen.push([x.seq, x.delivery, m.fromUtf8(x.body)]);
    got(await wb.open((await wa.seal(m.utf8('static 0'))).packet));
    const { chat: a } = await r.RatchetChat.initiate(p.alice, p.prekeys.bundle(p.one[0]), p.bob.pub);
    const start = await a.seal(wa, m.utf8('ratchet 1'));
    // A start under another pair's window (Bob and Carol) is refused before anything is touched.
    const carol = await m.generateIdentity();
    const wrong = await m.Chat.create(p.bob, carol.pub);
    const o = { wrongWindow: await code(r.RatchetChat.accept(p.bob, p.prekeys, wrong, start.packet)), left: p.prekeys.oneTimeCount() };
    const acc = await r.RatchetChat.accept(p.bob, p.prekeys, wb, start.packet);
    got(acc.received);
    const b = acc.chat;
    o.ephemeral = [m.hex(a.startEphemeral) === m.hex(b.startEphemeral), m.hex(r.RatchetChat.startEphemeralOf(start.packet)) === m.hex(a.startEphemeral),
      m.hex(r.RatchetChat.fromRecord(b.toRecord()).startEphemeral) === m.hex(b.startEphemeral), 'window' in b.toRecord().data];
    // Static and ratchet interleaved both ways: one counter per direction.
    const s2 = await wa.seal(m.utf8('static 2'));
    const r3 = await a.seal(wa, m.utf8('ratchet 3'));
    got(await b.open(wb, r3.packet)); // 3 before 2: a gap, then the late static one fills it
    got(await wb.open(s2.packet));
    got(await a.open(wa, (await b.seal(wb, m.utf8('ratchet back 0'))).packet));
    got(await wa.open((await wb.seal(m.utf8('static back 1'))).packet));
    // A ratchet message replayed, and a static packet under a used number: the one window refuses both.
    o.replays = [await code(b.open(wb, r3.packet)), await code(wb.open(s2.packet))];
    o.seqs = [start.seq, s2.seq, r3.seq, wa.sent, wb.sent, wb.recvLow, wa.recvLow];
    o.seen = seen;
    o.wrongUntouched = [wrong.sent, wrong.recvLow, wrong.recvAbove.size];
    return o;
  });
  assert.deepEqual(out, {
    wrongWindow: 'peer_identity_mismatch', left: 2, ephemeral: [true, true, true, false],
    replays: ['message_key_gone', 'replay'], seqs: [1, 2, 3, 4, 2, 4, 2], wrongUntouched: [0, 0, 0],
    seen: [[0, 'in_order', 'static 0'], [1, 'in_order', 'ratchet 1'], [3, 'after_gap:2-2', 'ratchet 3'], [2, 'late', 'static 2'],
      [0, 'in_order', 'ratchet back 0'], [1, 'in_order', 'static back 1']],
  });
});

test('forward secrecy: once a message opened and the chain moved on, no saved state can open it again', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, pair, code, restore } = window;
    const { a, b } = await pair();
    const o = {};
    // Every 32-byte secret a saved state holds, and whether any of them leads to `mk` by up to
    // `steps` KDF_CK steps (chain keys only go forward: an older chain key would).
    const secrets = (c) => { const d = c.toRecord().data; const rt = d.ratchet;
      return [rt.root, rt.send, rt.recv, ...rt.skipped.map((s) => s[2])].filter(Boolean); };
    const derives = async (c, mk, steps = 12) => {
      for (let s of secrets(c)) {
        if (m.equalBytes(s, mk)) return true;
        for (let i = 0; i < steps; i++) { const [next, k] = await r.kdfCk(s); if (m.equalBytes(k, mk)) return true; s = next; }
      }
      return false;
    };
    // Messages 0..5 from Alice on one chain; the key of message 3 noted from her chain before sealing it.
    const sent = [];
    let mk3, aliceBefore3;
    for (let i = 0; i < 6; i++) {
      if (i === 3) { aliceBefore3 = restore(a); [, mk3] = await r.kdfCk(a.toRecord().data.ratchet.send); }
      sent.push(await a.seal(a.w, m.utf8(`m${i}`)));
    }
    for (let i = 0; i < 3; i++) await b.open(b.w, sent[i].packet);
    // Controls: a copy of Bob saved before message 3 opened leads to its key and opens it, and so
    // does Alice's state before she sealed it: the check below can find a key when it is there.
    const before3 = restore(b);
    o.controls = [await derives(before3, mk3), await derives(aliceBefore3, mk3)];
    for (let i = 3; i < 6; i++) await b.open(b.w, sent[i].packet);
    o.control = m.fromUtf8((await before3.open(before3.w, sent[3].packet)).body);
    // The recipient's whole saved state afterwards cannot open it, and holds nothing that leads to its key.
    o.recipient = await code(openIn(restore(b), sent[3].packet));
    o.recipientDerives = await derives(b, mk3, 50);
    o.recipientHasIt = JSON.stringify(b.toRecord().data, (_, x) => (x instanceof Uint8Array ? m.hex(x) : x)).includes(m.hex(mk3));
    // The sender: once sealed, its chain moved on; after Bob answered and Alice's ratchet stepped
    // (a new root and sending chain), still nothing in her state leads to the key.
    o.senderAfterSeal = await derives(a, mk3, 50);
    await a.open(a.w, (await b.seal(b.w, m.utf8('answer'))).packet);
    o.senderAfterStep = await derives(a, mk3, 50);
    // And Bob after his own DH steps (he answered, then received from Alice's new chain): his
    // saved state refuses the old message and holds nothing that leads to it.
    await b.open(b.w, (await a.seal(a.w, m.utf8('new chain'))).packet);
    o.recipientAfterStep = [await code(openIn(restore(b), sent[3].packet)), await derives(b, mk3, 50)];
    return o;
  });
  assert.deepEqual(out, {
    controls: [true, true], control: 'm3', recipient: 'message_key_gone', recipientDerives: false, recipientHasIt: false,
    senderAfterSeal: false, senderAfterStep: false, recipientAfterStep: ['message_key_gone', false],
  });
});

test('post-compromise security: a stolen full state opens nothing once each side sent one message', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, pair, code, restore } = window;
    const { a, b } = await pair();
    // Alice spoke last before the theft; Bob opened it (his ratchet stepped).
    await b.open(b.w, (await a.seal(a.w, m.utf8('before the theft'))).packet);
    // The thief copies both whole states, CryptoKeys included, and sees every later packet.
    const thiefA = restore(a), thiefB = restore(b);
    const rows = [];
    const say = async (from, to, thief, text) => {
      const s = await from.seal(from.w, m.utf8(text));
      const real = m.fromUtf8((await to.open(to.w, s.packet)).body);
      rows.push([text, real === text, await code(thief.open(thief.w, s.packet))]);
    };
    await say(b, a, thiefA, 'b1 (sent after the theft)');
    await say(a, b, thiefB, 'a1 (sent after the theft)');
    for (let i = 2; i <= 4; i++) {
      await say(b, a, thiefA, `b${i}`);
      await say(a, b, thiefB, `a${i}`);
    }
    // A burst in one direction, too.
    for (let i = 5; i <= 7; i++) await say(a, b, thiefB, `a${i}`);
    return rows;
  });
  assert.deepEqual(out, [
    ['b1 (sent after the theft)', true, 'ok'],
    ['a1 (sent after the theft)', true, 'ok'],
    ['b2', true, 'decrypt'], ['a2', true, 'decrypt'],
    ['b3', true, 'decrypt'], ['a3', true, 'decrypt'],
    ['b4', true, 'decrypt'], ['a4', true, 'decrypt'],
    ['a5', true, 'decrypt'], ['a6', true, 'decrypt'], ['a7', true, 'decrypt'],
  ]);
});

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

test('plan then commit: a forged, corrupted, reflected or replayed packet changes nothing and the real one still opens', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, pair, code, snapshot } = window;
    const { a, b } = await pair();
    const o = { codes: [], unchanged: [] };
    const try1 = async (packet) => { const s = snapshot(b); o.codes.push(await code(b.open(b.w, packet))); o.unchanged.push(snapshot(b) === s); };
    const msgs = [];
    for (let i = 0; i < 3; i++) msgs.push(await a.seal(a.w, m.utf8(`x${i}`)));
    // A DH step in the plan (Bob answered, Alice's next message is under a new ratchet key).
    await b.open(b.w, msgs[0].packet);
    await a.open(a.w, (await b.seal(b.w, m.utf8('turn'))).packet);
    const next = await a.seal(a.w, m.utf8('after the step'));
    const flip = (pk, at) => { const q = pk.slice(); q[at] ^= 1; return q; };
    await try1(flip(next.packet, next.packet.length - 1)); // frame corrupted (after a would-be DH step)
    await try1(flip(next.packet, 10)); // header's ratchet key changed: another DH, wrong keys
    await try1(flip(next.packet, 40)); // header n's top byte changed: 0 → 2^24: too many skipped
    const clearCopy = next.packet.slice(); clearCopy[33] ^= 1; // pn changed in clear only: the encrypted copy differs
    await try1(clearCopy);
    await try1(msgs[0].packet); // replay
    await try1((await b.seal(b.w, m.utf8('reflected'))).packet); // Bob's own packet sent back to him
    await try1(next.packet.slice(0, next.packet.length - 16)); // truncated
    await try1(new Uint8Array(0));
    o.real = m.fromUtf8((await b.open(b.w, next.packet)).body);
    o.late = [m.fromUtf8((await b.open(b.w, msgs[2].packet)).body), m.fromUtf8((await b.open(b.w, msgs[1].packet)).body)];
    return o;
  });
  assert.deepEqual(out.codes, ['decrypt', 'decrypt', 'too_many_skipped', 'decrypt', 'message_key_gone', 'decrypt', 'decrypt', 'decrypt']);
  assert.ok(out.unchanged.every(Boolean), `state changed by a refused packet: ${out.unchanged}`);
  assert.equal(out.real, 'after the step');
  assert.deepEqual(out.late, ['x2', 'x1']);
});

test('seals and opens asked at once run one at a time: no chain key is used twice', async () => {
  const out = await page.evaluate(async () => {
    const { m, pair } = window;
    const { a, b } = await pair();
    const sealed = await Promise.all(Array.from({ length: 20 }, (_, i) => a.seal(a.w, m.utf8(`c${i}`))));
    const opened = await Promise.all(sealed.map((s) => b.open(b.w, s.packet)));
    return { seqs: sealed.map((s) => s.seq), bodies: opened.map((x) => m.fromUtf8(x.body)), headers: new Set(sealed.map((s) => m.hex(s.packet.slice(37, 41)))).size };
  });
  assert.deepEqual(out.bodies, Array.from({ length: 20 }, (_, i) => `c${i}`));
  assert.deepEqual(out.seqs, Array.from({ length: 20 }, (_, i) => i + 1));
  assert.equal(out.headers, 20, 'twenty distinct message numbers');
});

test('persistence: sealed in IndexedDB with the private keys non-extractable, reopened after a reload, the conversation goes on', async () => {
  const saved = await page.evaluate(async () => {
    const { m, r, pair } = window;
    const { a, b, prekeys, bob } = await pair();
    await b.open(b.w, (await a.seal(a.w, m.utf8('before saving'))).packet);
    const pending = await a.seal(a.w, m.utf8('in flight while Bob reloads'));
    const recs = { a: await r.sealChatRecord(a, 'ratchet/alice/bob'), b: await r.sealChatRecord(b, 'ratchet/bob/alice'),
      prekeys: await r.sealPrekeysRecord(prekeys, 'prekeys/bob'), bob };
    const secrets = [a.ratchet.root, a.ratchet.send, b.ratchet.root, b.ratchet.recv].map(m.hex);
    const db = await new Promise((res, rej) => { const q = indexedDB.open('ratchet-test', 1); q.onupgradeneeded = () => q.result.createObjectStore('s'); q.onsuccess = () => res(q.result); q.onerror = () => rej(q.error); });
    await new Promise((res, rej) => { const tx = db.transaction('s', 'readwrite'); tx.objectStore('s').put({ ...recs, pending: pending.packet, aw: a.w.toJSON(), bw: b.w.toJSON() }, 'x'); tx.oncomplete = res; tx.onerror = () => rej(tx.error); });
    db.close();
    // What is stored: CryptoKeys, and ciphertext that holds none of the secrets in clear.
    const ct = m.hex(recs.b.sealed.ct) + m.hex(recs.a.sealed.ct);
    return { keysOnly: Object.values(recs.b.keys).every((k) => k instanceof CryptoKey), inClear: secrets.some((s) => ct.includes(s)) };
  });
  assert.deepEqual(saved, { keysOnly: true, inClear: false });
  await page.reload();
  await setup();
  const out = await page.evaluate(async () => {
    const { m, r, code } = window;
    const db = await new Promise((res, rej) => { const q = indexedDB.open('ratchet-test', 1); q.onsuccess = () => res(q.result); q.onerror = () => rej(q.error); });
    const rec = await new Promise((res, rej) => { const q = db.transaction('s').objectStore('s').get('x'); q.onsuccess = () => res(q.result); q.onerror = () => rej(q.error); });
    db.close();
    const a = await r.openChatRecord(rec.a, 'ratchet/alice/bob');
    const b = await r.openChatRecord(rec.b, 'ratchet/bob/alice');
    a.w = new m.Chat(rec.aw); b.w = new m.Chat(rec.bw); // the windows come back from the static conversations' records
    const prekeys = await r.openPrekeysRecord(rec.prekeys, 'prekeys/bob');
    const o = {};
    o.extractable = [b.ratchet.dhSelf.privateKey.extractable, prekeys.signed[0].pair.privateKey.extractable, rec.bob.privateKey.extractable];
    o.export = await code(crypto.subtle.exportKey('pkcs8', b.ratchet.dhSelf.privateKey));
    o.wrongLabel = await code(r.openChatRecord(rec.b, 'ratchet/bob/mallory'));
    o.pending = m.fromUtf8((await b.open(b.w, rec.pending)).body);
    const reply = await b.seal(b.w, m.utf8('after the reload'));
    o.reply = m.fromUtf8((await a.open(a.w, reply.packet)).body);
    o.back = m.fromUtf8((await b.open(b.w, (await a.seal(a.w, m.utf8('and back'))).packet)).body);
    o.same = (await a.w.fingerprint()) === (await b.w.fingerprint());
    // A record over the bounds is refused.
    const big = b.toRecord();
    big.data.ratchet.skipped = Array.from({ length: 2001 }, (_, i) => [new Uint8Array(32), i, new Uint8Array(32), 0]);
    o.overBound = await code((async () => r.RatchetChat.fromRecord(big))());
    return o;
  });
  assert.deepEqual(out, {
    extractable: [false, false, false], export: 'InvalidAccessError', wrongLabel: 'OperationError',
    pending: 'in flight while Bob reloads', reply: 'after the reload', back: 'and back', same: true, overBound: 'malformed',
  });
});

test('measurement (printed, not asserted): per-message seal + open, ratchet vs the static chat', async () => {
  const out = await page.evaluate(async () => {
    const { m, r, pair, peers } = window;
    const body = m.utf8('x'.repeat(100));
    const N = 300, ROUNDS = 5;
    const per = async (fn, n) => { const t = performance.now(); await fn(); return ((performance.now() - t) / n) * 1000; };
    const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
    const rows = { static: [], oneWay: [], pingPong: [], start: [] };
    for (let round = 0; round < ROUNDS; round++) {
      const ia = await m.generateIdentity(), ib = await m.generateIdentity();
      const sa = await m.Chat.create(ia, ib.pub), sb = await m.Chat.create(ib, ia.pub);
      rows.static.push(await per(async () => { for (let i = 0; i < N; i++) await sb.open((await sa.seal(body)).packet); }, N));
      const { a, b } = await pair();
      rows.oneWay.push(await per(async () => { for (let i = 0; i < N; i++) await b.open(b.w, (await a.seal(a.w, body)).packet); }, N));
      rows.pingPong.push(await per(async () => {
        for (let i = 0; i < N / 10; i++) { await b.open(b.w, (await a.seal(a.w, body)).packet); await a.open(a.w, (await b.seal(b.w, body)).packet); }
      }, (N / 10) * 2));
      const p = await peers(20);
      rows.start.push(await per(async () => {
        for (let i = 0; i < 20; i++) {
          const { chat } = await initiate(p.alice, p.prekeys.bundle(p.one[i]), p.bob.pub);
          await accept(p.bob, p.prekeys, (await chat.seal(chat.w, body)).packet);
        }
      }, 20));
    }
    return Object.fromEntries(Object.entries(rows).map(([k, v]) => [k, { median: median(v), min: Math.min(...v), max: Math.max(...v) }]));
  });
  const us = (x) => `${x.median.toFixed(0)} µs (${x.min.toFixed(0)}–${x.max.toFixed(0)})`;
  console.log('  Chromium, 100-byte body, median of 5 rounds of 300 messages (min–max):');
  console.log(`    static chat key, seal + open:                          ${us(out.static)}`);
  console.log(`    ratchet one way (a chain step per message), seal + open: ${us(out.oneWay)}`);
  console.log(`    ratchet ping-pong (a DH step on every message):          ${us(out.pingPong)}`);
  console.log(`    whole start: initiate + seal + accept (20 per round):    ${us(out.start)}`);
  assert.ok(out.oneWay.median > 0);
});
