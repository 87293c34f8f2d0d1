// The cryptography of MTProto 2.0 in Web Crypto (Rust: mtproto-crypto): SHA, raw AES-256-CBC,
// the KDF and framing, the handshake's DH and pq, the proof of work, X25519 identities, account
// recovery, chat keys and safety numbers.
//
// Web Crypto has AES-CBC only with PKCS#7 padding; raw CBC is built on it (docs/crypto.md and
// ../shared/mtproto-notes.md §14):
//   raw encrypt = encrypt(...)[0:len]            (drop the padding block)
//   raw decrypt = decrypt(C ‖ E(0x10^16 ⊕ C_last)) where E(..) is the first block of
//                 encrypt(iv = C_last, 0x10^16): the appended block decrypts to a full padding block.
//
// BigInt arithmetic (DH, pq) is not constant-time in JavaScript. The browser's DH exponent is
// fresh for every handshake and used for one exponentiation pair, which limits what a timing
// observer in the same browser could learn; docs/crypto.md says so.

import {
  compareBytes, concat, equalBytes, fromB64, fromHex, hex, randomBytes, readU32, utf8,
} from './bytes.js';

export const subtle = globalThis.crypto.subtle;

export async function sha256(...parts) { return new Uint8Array(await subtle.digest('SHA-256', concat(...parts))); }
export async function sha1(...parts) { return new Uint8Array(await subtle.digest('SHA-1', concat(...parts))); }

async function aesKey(raw) { return subtle.importKey('raw', raw, 'AES-CBC', false, ['encrypt', 'decrypt']); }

/** Raw AES-256-CBC encryption (no padding): `data.length` must be a multiple of 16. */
export async function cbcEncrypt(key32, iv16, data) {
  if (data.length % 16) throw new Error('not block aligned');
  const k = await aesKey(key32);
  const out = new Uint8Array(await subtle.encrypt({ name: 'AES-CBC', iv: iv16 }, k, data));
  return out.slice(0, data.length);
}

/** Raw AES-256-CBC decryption (no padding). */
export async function cbcDecrypt(key32, iv16, data) {
  if (data.length % 16 || data.length === 0) throw new Error('not block aligned');
  const k = await aesKey(key32);
  const last = data.slice(data.length - 16);
  const pad = new Uint8Array(16).fill(16);
  const extra = new Uint8Array(await subtle.encrypt({ name: 'AES-CBC', iv: last }, k, pad)).slice(0, 16);
  return new Uint8Array(await subtle.decrypt({ name: 'AES-CBC', iv: iv16 }, k, concat(data, extra)));
}

// ---- MTProto 2.0 KDF and framing -----------------------------------------------------------

/** msg_key = SHA256(key[88+x..120+x] ‖ plaintext ‖ padding)[8..24]. */
export async function msgKey(key, x, plain) { return (await sha256(key.slice(88 + x, 120 + x), plain)).slice(8, 24); }

/** aes_key / aes_iv from the key and msg_key; the CBC IV is the first 16 bytes of aes_iv. */
export async function deriveAes(key, mk, x) {
  const a = await sha256(mk, key.slice(x, x + 36));
  const b = await sha256(key.slice(40 + x, 76 + x), mk);
  return {
    key: concat(a.slice(0, 8), b.slice(8, 24), a.slice(24, 32)),
    iv: concat(b.slice(0, 8), a.slice(8, 24), b.slice(24, 32)),
  };
}

export async function keyId(key) { return (await sha1(key)).slice(12, 20); }

export const LAYOUT_ENVELOPE = { lengthOffset: 28, dataOffset: 32 };
export const LAYOUT_E2E = { lengthOffset: 0, dataOffset: 4 };

/** Seals `payload` (its length field already written): key_id ‖ msg_key ‖ CBC(payload ‖ padding). */
export async function seal(key, x, payload, padding) {
  if (!padding) {
    const min = 12 + ((16 - ((payload.length + 12) % 16)) % 16);
    padding = randomBytes(min + 16 * (randomBytes(1)[0] % 4));
  }
  if (padding.length < 12 || padding.length > 1024 || (payload.length + padding.length) % 16) throw new Error('bad padding');
  const plain = concat(payload, padding);
  const mk = await msgKey(key, x, plain);
  const aes = await deriveAes(key, mk, x);
  return concat(await keyId(key), mk, await cbcEncrypt(aes.key, aes.iv.slice(0, 16), plain));
}

/** Opens a packet; returns the payload (header and data) or throws the one error 'decrypt'. */
export async function open(key, x, packet, layout) {
  const fail = () => { throw new Error('decrypt'); };
  if (packet.length < 40 || (packet.length - 24) % 16) fail();
  const idOk = equalBytes(packet.slice(0, 8), await keyId(key));
  const mk = packet.slice(8, 24);
  const aes = await deriveAes(key, mk, x);
  let plain;
  try { plain = await cbcDecrypt(aes.key, aes.iv.slice(0, 16), packet.slice(24)); } catch { fail(); }
  const macOk = equalBytes(await msgKey(key, x, plain), mk);
  if (!(idOk && macOk) || plain.length < layout.lengthOffset + 4) fail();
  const len = readU32(plain, layout.lengthOffset);
  const pad = plain.length - layout.dataOffset - len;
  if (len > plain.length || pad < 12 || pad > 1024) fail();
  return plain.slice(0, layout.dataOffset + len);
}

// ---- DH and the proof of work ----------------------------------------------------------------

export const DH_PRIME_HEX =
  'c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f48198a0aa7c14058229493d22530f4dbfa336f6e0ac925139543aed44cce7c3720fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f642477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4a4a695811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b';
export const P = BigInt('0x' + DH_PRIME_HEX);
const MARGIN = 1n << 1984n;

export function bigFromBytes(b) { return b.length ? BigInt('0x' + hex(b)) : 0n; }
export function bigToBytes(n, len) { return fromHex(n.toString(16).padStart(len * 2, '0')); }
export function modPow(base, exp, mod) {
  let r = 1n; base %= mod;
  while (exp > 0n) { if (exp & 1n) r = (r * base) % mod; base = (base * base) % mod; exp >>= 1n; }
  return r;
}
/** 2^(2048-64) < x < p - 2^(2048-64), which implies 1 < x < p-1. */
export function checkDhPublic(x) { if (!(x > MARGIN && x < P - MARGIN)) throw new Error('DH value out of range'); }

function gcd(a, b) { while (b) [a, b] = [b, a % b]; return a; }
function absDiff(a, b) { return a > b ? a - b : b - a; }
/** Pollard–Brent on a 64-bit pq; bounded, like the Rust client. */
export function factorPq(pq) {
  for (let c = 1n; c <= 16n; c++) {
    const f = (x) => (x * x + c) % pq;
    let y = 2n, r = 1n, q = 1n, g = 1n, x = 0n, ys = 0n, spent = 0;
    while (g === 1n && spent < 1 << 22) {
      x = y;
      for (let i = 0n; i < r; i++) y = f(y);
      for (let k = 0n; k < r && g === 1n; k += 128n) {
        ys = y;
        const m = r - k < 128n ? r - k : 128n;
        for (let i = 0n; i < m; i++) { y = f(y); q = (q * absDiff(x, y)) % pq; }
        g = gcd(q, pq); spent += 128;
      }
      r *= 2n;
    }
    if (g === pq) { for (let i = 0; i < 129; i++) { ys = f(ys); g = gcd(absDiff(x, ys), pq); if (g > 1n) break; } }
    if (g !== 1n && g !== pq) { const o = pq / g; return g < o ? [g, o] : [o, g]; }
  }
  throw new Error('cannot factor pq');
}
export function minimalBe(n) { let h = n.toString(16); if (h.length % 2) h = '0' + h; return h; }

/**
 * The canonical form of a name (docs/protocol.md §1, `client_id`): names are case-insensitive and
 * the relay keeps them in lower case, also inside the key-confirmation transcript. Throws on a
 * name the relay would refuse.
 */
export function canonicalName(name) {
  const n = String(name).trim().toLowerCase();
  if (!/^[a-z0-9_.-]{1,64}$/.test(n)) throw new Error('a name is 1 to 64 letters, digits, "_", "." or "-"');
  return n;
}

/** The most proof-of-work bits the page agrees to (mtproto_session::work::MAX_CLIENT_BITS). */
export const MAX_POW_BITS = 24;
const POW_LABEL = utf8('mtproto-relay/pow/v1');
const POW_BATCH = 256;

/** Leading zero bits of a digest, from the most significant bit of its first byte. */
export function leadingZeroBits(d) {
  let bits = 0;
  for (const byte of d) {
    if (byte === 0) { bits += 8; continue; }
    return bits + Math.clz32(byte) - 24;
  }
  return bits;
}

/**
 * The handshake's proof of work (crates/mtproto-session/src/work.rs): the first `pow_nonce`,
 * counting up from 0 as a big-endian u64, such that
 * SHA-256("mtproto-relay/pow/v1" ‖ nonce(16) ‖ server_nonce(16) ‖ pow_nonce(8)) has at least
 * `bits` leading zero bits — the same answer as the Rust client's `work::solve`. Web Crypto's
 * digest is asynchronous, so candidates are hashed `POW_BATCH` at a time. Returns
 * {powNonce (8 bytes), tries}.
 */
export async function solveWork(nonce, serverNonce, bits) {
  if (!Number.isInteger(bits) || bits < 0) throw new Error(`the relay asked for a malformed proof of work (${bits})`);
  if (bits > MAX_POW_BITS) {
    throw new Error(`the relay asks for ${bits} bits of proof of work, more than the ${MAX_POW_BITS} this page agrees to do: it is overloaded or misconfigured; try again later`);
  }
  const msg = concat(POW_LABEL, nonce, serverNonce, new Uint8Array(8));
  const view = new DataView(msg.buffer);
  const at = msg.length - 8;
  // Expected 2^bits tries; 2^(bits+8) fail with probability e^-256 (as the Rust client).
  const tries = 2 ** (bits + 8);
  for (let base = 0; base < tries; base += POW_BATCH) {
    const digests = await Promise.all(Array.from({ length: POW_BATCH }, (_, i) => {
      const m = msg.slice();
      new DataView(m.buffer).setBigUint64(at, BigInt(base + i), false);
      return subtle.digest('SHA-256', m);
    }));
    for (let i = 0; i < POW_BATCH; i++) {
      if (leadingZeroBits(new Uint8Array(digests[i])) >= bits) {
        view.setBigUint64(at, BigInt(base + i), false);
        return { powNonce: msg.slice(at), tries: base + i + 1 };
      }
    }
  }
  throw new Error('no proof of work found');
}

// ---- Server identity, X25519, HKDF, fingerprints ---------------------------------------------

export async function serverFingerprint(pk) { return hex((await sha256(pk)).slice(24, 32)); }

export async function ed25519Verify(pk, sig, msg) {
  const k = await subtle.importKey('raw', pk, { name: 'Ed25519' }, false, ['verify']);
  return subtle.verify({ name: 'Ed25519' }, k, sig, msg);
}

/** A new X25519 identity: the private key is non-extractable (it can still be stored in IndexedDB). */
export async function generateIdentity() {
  const pair = await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  const pub = new Uint8Array(await subtle.exportKey('raw', pair.publicKey));
  return { privateKey: pair.privateKey, pub };
}

// ---- Account recovery (docs/protocol.md §1 "Recovery", mtproto-crypto/src/recovery.rs) --------

const RECOVERY_SEED_LABEL = utf8('mtproto-relay/recovery/v1');
const RECOVERY_STATEMENT_LABEL = utf8('mtproto-relay/recover/v1');
/** PKCS#8 v1 around a 32-byte Ed25519 seed (RFC 8410 §7): this prefix ‖ seed. */
/** The PKCS#8 header of a raw Ed25519 private key (32-byte seed follows); ratchet.js uses it too. */
export const PKCS8_ED25519_PREFIX = fromHex('302e020100300506032b657004220420');

/** A new recovery code: 16 random bytes. The page shows it once and never stores it. */
export function newRecoveryCode() { return randomBytes(16); }

/** The code as the user writes it down, as Rust's `Display`: 8 groups of 4 lower-case hex digits joined by '-'. */
export function formatRecoveryCode(code) { return hex(code).match(/.{4}/g).join('-'); }

/**
 * A code as the user typed it (RecoveryCode::parse): 32 hex digits in any case, with any dashes
 * or spaces between them. Throws an error whose message is a sentence for people.
 */
export function parseRecoveryCode(text) {
  const digits = String(text).replace(/[-\s]/g, '').toLowerCase();
  if (!/^[0-9a-f]*$/.test(digits)) throw new Error('a recovery code has only the digits 0–9 and the letters a–f (with dashes between groups).');
  if (digits.length !== 32) throw new Error(`a recovery code has 32 digits and letters (8 groups of 4); this one has ${digits.length}.`);
  return fromHex(digits);
}

/** The Ed25519 key of a code: seed = SHA-256("mtproto-relay/recovery/v1" ‖ code). {privateKey, pub (32 bytes)}. */
async function recoveryKeyPair(code) {
  const seed = await sha256(RECOVERY_SEED_LABEL, code);
  const pkcs8 = concat(PKCS8_ED25519_PREFIX, seed);
  try {
    // Extractable only so that the public half can be read from the JWK (`x`); the key lives
    // for this call only.
    const privateKey = await subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, true, ['sign']);
    const jwk = await subtle.exportKey('jwk', privateKey);
    const pub = fromB64(jwk.x.replace(/-/g, '+').replace(/_/g, '/') + '=');
    return { privateKey, pub };
  } finally { seed.fill(0); pkcs8.fill(0); }
}

/** The public half the relay keeps (`recovery_key`, 32 bytes). */
export async function recoveryPublicKey(code) { return (await recoveryKeyPair(code)).pub; }

/**
 * `recovery_proof` (64 bytes): Ed25519 over "mtproto-relay/recover/v1" ‖ len(client_id) (1) ‖
 * client_id ‖ server_nonce (16) ‖ auth_key_id (8), naming this handshake's own auth key.
 */
export async function recoveryProof(code, clientId, serverNonce, authKeyId) {
  const { privateKey } = await recoveryKeyPair(code);
  const id = utf8(clientId);
  const statement = concat(RECOVERY_STATEMENT_LABEL, Uint8Array.of(id.length), id, serverNonce, authKeyId);
  return new Uint8Array(await subtle.sign({ name: 'Ed25519' }, privateKey, statement));
}

export async function identityShortFingerprint(pub) { return hex((await sha256(utf8('mtproto-relay/identity/v1'), pub)).slice(0, 8)); }

/** The 256-byte chat key: HKDF-SHA256 over X25519(own, peer), both public keys bound in order. */
export async function chatKey(identity, peerPub) {
  const peerKey = await subtle.importKey('raw', peerPub, { name: 'X25519' }, false, []);
  let shared;
  try {
    shared = new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: peerKey }, identity.privateKey, 256));
  } catch { throw new Error('peer identity key is a low-order point'); }
  if (shared.every((b) => b === 0)) throw new Error('peer identity key is a low-order point');
  const [lo, hi] = compareBytes(identity.pub, peerPub) <= 0 ? [identity.pub, peerPub] : [peerPub, identity.pub];
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
  const bits = await subtle.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: utf8('mtproto-relay/chat-key/v1'), info: concat(lo, hi) }, ikm, 2048);
  return new Uint8Array(bits);
}

/** 12 groups of 5 digits from SHA-256("mtproto-relay/fingerprint/v1" ‖ chat_key). */
export async function safetyNumber(chatKeyBytes) {
  const d = await sha256(utf8('mtproto-relay/fingerprint/v1'), chatKeyBytes);
  const groups = [];
  for (let i = 0; i < 6; i++) {
    const v = bigFromBytes(d.slice(5 * i, 5 * i + 5)) % 10000000000n;
    groups.push(String(v / 100000n).padStart(5, '0'), String(v % 100000n).padStart(5, '0'));
  }
  return [groups.slice(0, 4).join(' '), groups.slice(4, 8).join(' '), groups.slice(8).join(' ')].join('\n');
}
