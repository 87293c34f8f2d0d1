// The browser module against the Rust crates' bytes: published KDF/CBC vectors and the interop
// vectors the Rust tests commit (tests/browser/interop_vectors.json).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { launchBrowser, startServer, root } from './helpers.mjs';

let server, browser, page;
before(async () => {
  server = await startServer(['--engine', 'memory']);
  browser = await launchBrowser();
  page = await browser.newPage();
  await page.goto(server.url + '/');
});
after(async () => { await browser?.close(); await server?.stop(); });

const interop = JSON.parse(readFileSync(join(root, 'tests/browser/interop_vectors.json'), 'utf8'));
const published = JSON.parse(readFileSync(join(root, 'crates/mtproto-crypto/tests/data/mtproto_vectors.json'), 'utf8')).vectors;

test('KDF and AES-256-CBC match the published vectors', async () => {
  const kdf = published.filter((v) => v.category === 'kdf');
  const cbc = published.filter((v) => v.name === 'nist_sp800_38a_f25_cbc_aes256' || v.name.startsWith('tdlib_aes256_cbc_len') && v.inputs.key);
  const out = await page.evaluate(async ({ kdf, cbc }) => {
    const m = await import('/js/mtproto.js');
    const r = { kdf: [], cbc: [] };
    for (const v of kdf) {
      const a = await m.deriveAes(m.fromHex(v.inputs.auth_key), m.fromHex(v.inputs.msg_key), v.inputs.x);
      r.kdf.push([m.hex(a.key), m.hex(a.iv)]);
    }
    for (const v of cbc) {
      const ct = await m.cbcEncrypt(m.fromHex(v.inputs.key), m.fromHex(v.inputs.iv), m.fromHex(v.inputs.plaintext));
      const pt = await m.cbcDecrypt(m.fromHex(v.inputs.key), m.fromHex(v.inputs.iv), ct);
      r.cbc.push([m.hex(ct), m.hex(pt)]);
    }
    return r;
  }, { kdf, cbc });
  assert.equal(out.kdf.length, kdf.length);
  kdf.forEach((v, i) => assert.deepEqual(out.kdf[i], [v.outputs.aes_key, v.outputs.aes_iv], v.name));
  assert.ok(cbc.length >= 2);
  cbc.forEach((v, i) => assert.deepEqual(out.cbc[i], [v.outputs.ciphertext, v.inputs.plaintext.toLowerCase()], v.name));
});

test('envelopes, end-to-end packets, key confirmation and fingerprints are byte-identical to Rust', async () => {
  const out = await page.evaluate(async (v) => {
    const m = await import('/js/mtproto.js');
    const key = m.fromHex(v.auth_key), chat = m.fromHex(v.chat_key);
    const r = {};
    r.auth_key_id = m.hex(await m.keyId(key));
    r.x0 = m.hex(await m.seal(key, 0, m.fromHex(v.envelope_payload), m.fromHex(v.envelope_padding)));
    r.x8 = m.hex(await m.seal(key, 8, m.fromHex(v.envelope_payload), m.fromHex(v.envelope_padding)));
    r.opened = m.hex(await m.open(key, 0, m.fromHex(v.envelope_packet_x0), m.LAYOUT_ENVELOPE));
    r.e2e = m.hex(await m.seal(chat, 8, m.fromHex(v.e2e_payload), m.fromHex(v.e2e_padding)));
    r.e2e_opened = m.hex(await m.open(chat, 8, m.fromHex(v.e2e_packet_x8), m.LAYOUT_E2E));
    r.fingerprint = await m.safetyNumber(chat);
    const c = v.confirmation_inputs, id = m.utf8(c.client_id);
    const nn = await m.sha256(m.utf8('mtproto-relay/key-confirmation/v1'), m.fromHex(c.nonce), m.fromHex(c.server_nonce),
      m.fromHex(c.g_a), m.fromHex(c.g_b), Uint8Array.of(id.length), id, m.fromHex(c.session_id), m.fromHex(c.salt));
    const aux = (await m.sha1(key)).slice(0, 8);
    r.confirmation = m.hex((await m.sha1(nn, Uint8Array.of(1), aux)).slice(4, 20));
    // Every single-bit flip of a packet is refused with the one opaque error.
    const pk = m.fromHex(v.envelope_packet_x0);
    r.flips = [];
    for (let bit = 0; bit < pk.length * 8; bit += 13) {
      const bad = pk.slice(); bad[bit >> 3] ^= 1 << (bit & 7);
      try { await m.open(key, 0, bad, m.LAYOUT_ENVELOPE); r.flips.push('accepted'); } catch (e) { r.flips.push(e.message); }
    }
    return r;
  }, interop);
  assert.equal(out.auth_key_id, interop.auth_key_id);
  assert.equal(out.x0, interop.envelope_packet_x0);
  assert.equal(out.x8, interop.envelope_packet_x8);
  assert.equal(out.opened, interop.envelope_payload);
  assert.equal(out.e2e, interop.e2e_packet_x8);
  assert.equal(out.e2e_opened, interop.e2e_payload);
  assert.equal(out.fingerprint, interop.fingerprint);
  assert.equal(out.confirmation, interop.key_confirmation);
  assert.ok(out.flips.length > 50);
  assert.ok(out.flips.every((f) => f === 'decrypt'), `a flipped packet was not refused opaquely: ${[...new Set(out.flips)]}`);
});

test('X25519 chat keys agree, low-order keys are refused, pq is factored', async () => {
  const out = await page.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    const a = await m.generateIdentity(), b = await m.generateIdentity();
    const k1 = await m.chatKey(a, b.pub), k2 = await m.chatKey(b, a.pub);
    let lowOrder = 'accepted';
    try { await m.chatKey(a, new Uint8Array(32)); } catch (e) { lowOrder = e.message; }
    const [p, q] = m.factorPq(1468428376148703121n);
    return { same: m.hex(k1) === m.hex(k2), len: k1.length, lowOrder, p: p.toString(), q: q.toString() };
  });
  assert.deepEqual(out, { same: true, len: 256, lowOrder: 'peer identity key is a low-order point', p: '1008949199', q: '1455403679' });
});

test('account recovery: the code, its public key and a proof are byte-identical to Rust (mtproto-crypto recovery.rs)', async () => {
  const v = interop.recovery;
  const out = await page.evaluate(async (v) => {
    const m = await import('/js/mtproto.js');
    const code = m.parseRecoveryCode(v.code);
    const r = {
      bytes: m.hex(code),
      shown: m.formatRecoveryCode(code),
      // Any case, dashes or spaces, as RecoveryCode::parse.
      typed: m.hex(m.parseRecoveryCode(` ${v.code_bytes.toUpperCase().match(/.{4}/g).join(' ')} `)),
      pub: m.hex(await m.recoveryPublicKey(code)),
      proof: m.hex(await m.recoveryProof(code, v.client_id, m.fromHex(v.server_nonce), m.fromHex(v.auth_key_id))),
      refused: [],
    };
    for (const bad of [v.code.slice(0, -1), v.code.replace(/^./, 'g'), v.code + '0']) {
      try { m.parseRecoveryCode(bad); r.refused.push('accepted'); } catch (e) { r.refused.push(e.message); }
    }
    // A new code: 16 random bytes, shown as 8 groups of 4 lower-case hex digits.
    const fresh = m.newRecoveryCode();
    r.fresh = m.formatRecoveryCode(fresh);
    r.freshBack = m.hex(m.parseRecoveryCode(r.fresh)) === m.hex(fresh);
    // The proof verifies under the public key, and not for another auth key.
    const pk = await crypto.subtle.importKey('raw', m.fromHex(r.pub), { name: 'Ed25519' }, false, ['verify']);
    const statement = (keyId) => m.concat(m.utf8('mtproto-relay/recover/v1'), Uint8Array.of(v.client_id.length), m.utf8(v.client_id), m.fromHex(v.server_nonce), keyId);
    r.verifies = await crypto.subtle.verify({ name: 'Ed25519' }, pk, m.fromHex(r.proof), statement(m.fromHex(v.auth_key_id)));
    const other = m.fromHex(v.auth_key_id); other[0] ^= 1;
    r.otherKey = await crypto.subtle.verify({ name: 'Ed25519' }, pk, m.fromHex(r.proof), statement(other));
    return r;
  }, v);
  assert.equal(out.bytes, v.code_bytes);
  assert.equal(out.shown, v.code, 'the display form is Rust\'s Display');
  assert.match(v.code, /^[0-9a-f]{4}(-[0-9a-f]{4}){7}$/);
  assert.equal(out.typed, v.code_bytes);
  assert.equal(out.pub, v.public_key);
  assert.equal(out.proof, v.proof);
  assert.equal(out.verifies, true);
  assert.equal(out.otherKey, false);
  assert.ok(out.refused.every((e) => e !== 'accepted' && /^a recovery code has/.test(e)), `refusals: ${out.refused}`);
  assert.match(out.fresh, /^[0-9a-f]{4}(-[0-9a-f]{4}){7}$/);
  assert.equal(out.freshBack, true);
});

/** The spec of the proof of work (crates/mtproto-session/src/work.rs), brute-forced here with
 * Node's own SHA-256: the smallest big-endian u64 counter with at least `bits` leading zero bits. */
function smallestWork(nonce, serverNonce, bits) {
  for (let c = 0n; ; c++) {
    const pow = Buffer.alloc(8); pow.writeBigUInt64BE(c);
    const d = createHash('sha256').update('mtproto-relay/pow/v1').update(nonce).update(serverNonce).update(pow).digest();
    let z = 0;
    for (const b of d) { if (b === 0) { z += 8; continue; } z += Math.clz32(b) - 24; break; }
    if (z >= bits) return { hex: pow.toString('hex'), digest: d.toString('hex') };
  }
}

test('the proof of work matches the Rust client: known answer, the check, refusal above 24 bits, speed', async () => {
  const nonce = Buffer.alloc(16, 0x07), serverNonce = Buffer.alloc(16, 0x09);
  // Known answer for nonce = 16×0x07, server_nonce = 16×0x09, 12 bits: the counter 1780
  // (0x6f4), digest 000cd18b…, the same as mtproto_session::work::solve (which counts up from 0
  // the same way) and as this file's brute force below.
  const KNOWN = '00000000000006f4';
  const brute = smallestWork(nonce, serverNonce, 12);
  assert.equal(brute.hex, KNOWN);
  assert.ok(brute.digest.startsWith('000'), 'the digest has 12 leading zero bits');
  const out = await page.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    const n = new Uint8Array(16).fill(7), s = new Uint8Array(16).fill(9);
    const r = {};
    const w = await m.solveWork(n, s, 12);
    r.found = m.hex(w.powNonce); r.tries = w.tries;
    r.zero = m.hex(await m.solveWork(n, s, 0).then((x) => x.powNonce));
    r.digestBits = m.leadingZeroBits(await m.sha256(m.utf8('mtproto-relay/pow/v1'), n, s, w.powNonce));
    r.lzb = [m.leadingZeroBits(Uint8Array.of(0x80)), m.leadingZeroBits(Uint8Array.of(0, 0x01)), m.leadingZeroBits(Uint8Array.of(0, 0))];
    try { await m.solveWork(n, s, 25); r.over = 'solved'; } catch (e) { r.over = e.message; }
    // Speed: 12 bits (the default server's ask) for fresh random nonces.
    const t0 = performance.now();
    for (let i = 0; i < 8; i++) await m.solveWork(m.randomBytes(16), m.randomBytes(16), 12);
    r.msPerSolve = (performance.now() - t0) / 8;
    r.names = ['Alice', ' BOB ', 'carol.Z-9_'].map(m.canonicalName);
    try { m.canonicalName('no spaces'); r.badName = 'accepted'; } catch (e) { r.badName = e.message; }
    return r;
  });
  assert.equal(out.found, KNOWN);
  assert.equal(out.tries, 1781);
  assert.equal(out.zero, '0000000000000000', 'no work asked: the first counter');
  assert.ok(out.digestBits >= 12);
  assert.deepEqual(out.lzb, [0, 15, 16]);
  assert.match(out.over, /asks for 25 bits of proof of work, more than the 24/);
  console.log(`# proof of work, 12 bits: ${out.msPerSolve.toFixed(0)} ms per solve in Chromium (mean of 8)`);
  assert.ok(out.msPerSolve < 1000, `12 bits took ${out.msPerSolve} ms on average`);
  assert.deepEqual(out.names, ['alice', 'bob', 'carol.z-9_']);
  assert.match(out.badName, /a name is 1 to 64/);
});

test('one lost message never makes a conversation unreadable: the window slides, the lost run is reported once, a late one opens once', async () => {
  const out = await page.evaluate(async () => {
    const m = await import('/js/mtproto.js');
    const [a, b] = [await m.generateIdentity(), await m.generateIdentity()];
    const alice = await m.Chat.create(a, b.pub), bob = await m.Chat.create(b, a.pub);
    const sealed = [];
    for (let i = 0; i < 1200; i += 1) sealed.push((await alice.seal(m.utf8(`m${i}`))).packet);
    let opened = 0; const lost = []; let error = null;
    for (let i = 1; i < 1200; i += 1) { // message 0 is lost on the way
      try { const r = await bob.open(sealed[i]); opened += 1; lost.push(...r.lost); } catch (e) { error = e.message; break; }
    }
    // A peer's packet that jumps by billions is accepted at once (no walk over every number).
    const far = await m.Chat.create(a, b.pub); far.sent = 4_000_000_000;
    const jump = await bob.open((await far.seal(m.utf8('far'))).packet);
    const late = await bob.open(sealed[0]);
    let again = null; try { await bob.open(sealed[0]); } catch (e) { again = e.replay === true; }
    return { opened, lost, error, late: [late.delivery, m.fromUtf8(late.body)], again, above: bob.recvAbove.size, jump: [m.fromUtf8(jump.body), jump.lost.length] };
  });
  assert.equal(out.error, null);
  assert.equal(out.opened, 1199);
  assert.deepEqual(out.lost, [[0, 1]]);
  assert.deepEqual(out.late, ['recovered', 'm0']);
  assert.equal(out.again, true);
  assert.ok(out.above <= 1024);
  assert.deepEqual(out.jump, ['far', 1]);
});
