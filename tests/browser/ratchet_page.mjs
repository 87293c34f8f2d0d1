// The page the ratchet tests run in: the modules and the tests' helpers on `window`
// (ratchet.test.mjs, ratchet_bounds.test.mjs).

/** A page of `server` with the helpers installed. */
export async function ratchetPage(browser, server) {
  const page = await browser.newPage();
  await page.goto(server.url + '/');
  await installHelpers(page);
  return page;
}

/**
 * Puts the modules and the test helpers on `page`'s window (page.evaluate is not subject to the
 * page's CSP); again after a reload.
 */
export async function installHelpers(page) {
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
