// mtproto-relay in the browser: the same protocol as the Rust crates (mtproto-crypto,
// mtproto-session, relay-client), with every cryptographic operation done by the Web Crypto API.
// No other crypto library. Byte layouts: docs/protocol.md. Interop vectors: tests/browser.
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

const subtle = globalThis.crypto.subtle;
const te = new TextEncoder();
const td = new TextDecoder();

// ---- bytes ---------------------------------------------------------------------------------

export function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
export const utf8 = (s) => te.encode(s);
export const fromUtf8 = (b) => td.decode(b);
export function hex(b) { return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(''); }
export function fromHex(s) {
  if (s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error('bad hex');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}
export function b64(b) { let s = ''; for (const x of b) s += String.fromCharCode(x); return btoa(s); }
export function fromB64(s) { const bin = atob(s); return Uint8Array.from(bin, (c) => c.charCodeAt(0)); }
export function u32le(n) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n >>> 0, true); return b; }
export function u64le(n) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n), true); return b; }
export const readU32 = (b, o) => new DataView(b.buffer, b.byteOffset).getUint32(o, true);
export const readU64 = (b, o) => new DataView(b.buffer, b.byteOffset).getBigUint64(o, true);
export function randomBytes(n) { return globalThis.crypto.getRandomValues(new Uint8Array(n)); }
export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}
function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

// ---- hashes and AES ------------------------------------------------------------------------

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
const P = BigInt('0x' + DH_PRIME_HEX);
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
function minimalBe(n) { let h = n.toString(16); if (h.length % 2) h = '0' + h; return h; }

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

async function ed25519Verify(pk, sig, msg) {
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
const PKCS8_ED25519_PREFIX = fromHex('302e020100300506032b657004220420');

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

// ---- The end-to-end chat -----------------------------------------------------------------------

/**
 * How far below `recvLow` the random_ids of received seqs are kept (F2): a seq seen again with
 * another random_id there is a new message, below it a repeat is taken as a replay.
 */
export const KEEP_IDS_BELOW = 1024;
/** Most random_ids kept for one seq (one per distinct message that used it). */
const MAX_IDS_PER_SEQ = 4;
/** The most messages a peer may have received from us beyond what this profile remembers sending. */
export const MAX_AHEAD = 1 << 16;

/** One side of a conversation: data = random_id ‖ out_seq ‖ in_seq ‖ sent_at_ms ‖ body. */
export class Chat {
  constructor(state) {
    Object.assign(this, state);
    this.recvAbove = new Set(state.recvAbove || []);
    this.givenUp = (state.givenUp || []).map(([a, b]) => [a, b]);
    // seq -> the random_ids (hex) of the messages received under it.
    this.recvIds = new Map((state.recvIds || []).map(([seq, ids]) => [seq, [...ids]]));
  }
  static async create(identity, peerPub) {
    return new Chat({ key: await chatKey(identity, peerPub), own: identity.pub, peer: peerPub, sent: 0, recvLow: 0, recvAbove: [] });
  }
  toJSON() {
    return { key: this.key, own: this.own, peer: this.peer, sent: this.sent, recvLow: this.recvLow, recvAbove: [...this.recvAbove],
      givenUp: this.givenUp, recvIds: [...this.recvIds] };
  }
  /** Records the random_id of a message received under `seq`; forgets ids far below the window. */
  keepId(seq, rid) {
    const ids = this.recvIds.get(seq) || [];
    if (!ids.includes(rid)) ids.push(rid);
    this.recvIds.set(seq, ids.slice(-MAX_IDS_PER_SEQ));
    const floor = this.recvLow - KEEP_IDS_BELOW;
    if (floor > 0) for (const k of this.recvIds.keys()) if (k < floor) this.recvIds.delete(k);
  }
  get sendX() { return compareBytes(this.own, this.peer) <= 0 ? 0 : 8; }
  async fingerprint() { return safetyNumber(this.key); }
  async seal(body, padding) {
    const randomId = randomBytes(8);
    // The seq is taken before the first await: two seals at once never share one.
    const seq = this.sent;
    this.sent += 1;
    const data = concat(randomId, u32le(seq), u32le(this.recvLow), u64le(Date.now()), body);
    const packet = await seal(this.key, this.sendX, concat(u32le(data.length), data), padding);
    return { packet, randomId, seq };
  }
  /**
   * Gives back the seq of a message sealed but stored nowhere (refused, or abandoned before any
   * copy left), so the peer sees no hole: only the last one sealed (ChatState::release_unsent).
   * Call it only when no copy can ever reach the peer. Returns whether it was given back.
   */
  releaseUnsent(seq) {
    if (this.sent !== seq + 1) return false;
    this.sent = seq;
    return true;
  }
  async open(packet) {
    const payload = await open(this.key, 8 - this.sendX, packet, LAYOUT_E2E);
    return this.accept(payload.slice(4));
  }
  /**
   * The receive window (§3.1) for decrypted data `random_id ‖ out_seq ‖ in_seq ‖ sent_at_ms ‖
   * body`, shared with the double ratchet (ratchet.js). Synchronous, and it throws before it
   * changes anything: a refused message leaves the window as it was.
   */
  accept(d) {
    if (d.length < 24) throw new Error('decrypt');
    const seq = readU32(d, 8), inSeq = readU32(d, 12);
    const randomId = d.slice(0, 8), rid = hex(randomId);
    const base = { body: d.slice(24), seq, lost: [], randomId, sentAtMs: Number(readU64(d, 16)), ahead: 0 };
    // A seq below the window opens once if it was given up (it arrived after all); a seq seen
    // before is a replay when it carries a random_id seen under it (or one too old to be kept),
    // and a new message when it carries another one (F2: the sender's profile was restored from
    // an older copy and sealed it again). docs/protocol.md §3.1.
    const run = seq < this.recvLow ? this.givenUp.findIndex(([a, b]) => seq >= a && seq < b) : -1;
    const seen = (seq < this.recvLow && run < 0) || this.recvAbove.has(seq);
    if (seen) {
      const ids = this.recvIds.get(seq);
      if (!ids || ids.includes(rid)) { const e = new Error('replay'); e.replay = true; throw e; }
    }
    // in_seq above what we sent: this profile is older than the one that sent those messages (a
    // restored copy). Not the peer's fault and not a reason to drop its message: open it, say so,
    // and seal from in_seq on, so our next messages do not reuse numbers the peer already has.
    // A jump past MAX_AHEAD is no restored copy but a broken or hostile peer (it would wrap our
    // u32 seqs): refused, as before. (Checked after the replay test, as ChatState::accept does.)
    if (inSeq > this.sent + MAX_AHEAD) throw new Error('peer acknowledges messages never sent');
    if (inSeq > this.sent) { base.ahead = inSeq - this.sent; this.sent = inSeq; }
    if (seen) {
      this.keepId(seq, rid);
      return { ...base, delivery: 'reused' };
    }
    if (run >= 0) {
      const [a, b] = this.givenUp[run];
      this.givenUp.splice(run, 1, ...[[a, seq], [seq + 1, b]].filter(([x, y]) => x < y));
      this.keepId(seq, rid);
      return { ...base, delivery: 'recovered' };
    }
    const top = this.recvAbove.size ? Math.max(...this.recvAbove) + 1 : this.recvLow;
    const delivery = seq === top ? 'in_order' : seq > top ? `after_gap:${top}-${seq - 1}` : 'late';
    // Slide instead of refusing: no number of lost messages makes the chat unreadable. The
    // seqs the window passes without having received them are given up, reported once.
    const lost = [];
    if (seq - this.recvLow > 1024) {
      const low = seq - 1024;
      // Walk only what was received below `low` (≤ 1024 numbers), never every number passed:
      // a peer's packet may jump by billions.
      let from = this.recvLow;
      for (const s of [...this.recvAbove].filter((x) => x < low).sort((x, y) => x - y)) {
        this.recvAbove.delete(s);
        if (s > from) lost.push([from, s]);
        from = s + 1;
      }
      if (from < low) lost.push([from, low]);
      // Adjacent runs merge, as ChatState::slide_to does: 64 runs are 64 separate holes.
      for (const [a, b] of lost) {
        const last = this.givenUp[this.givenUp.length - 1];
        if (last && last[1] === a) last[1] = b; else this.givenUp.push([a, b]);
      }
      this.givenUp = this.givenUp.slice(-64);
      this.recvLow = low;
    }
    this.recvAbove.add(seq);
    while (this.recvAbove.has(this.recvLow)) { this.recvAbove.delete(this.recvLow); this.recvLow += 1; }
    this.keepId(seq, rid);
    return { ...base, delivery, lost };
  }
}

// ---- The session with the relay -----------------------------------------------------------------

export class RelayError extends Error {
  constructor(status, body, retryAfter = null) {
    super(`${body.error || status}: ${body.message || ''}`);
    this.status = status; this.code = body.error; this.body = body; this.retryAfter = retryAfter;
  }
}

/**
 * What a person should read for an error from the relay or the page (no raw codes). `peer` names
 * the recipient when the error is about a message.
 */
export function humanError(e, peer = 'they') {
  if (e.human) return e.human;
  if (!(e instanceof RelayError)) return e.message;
  switch (e.code) {
    case 'mailbox_full': return `${peer}'s mailbox is full: they have too many messages waiting. Try again once they have read them.`;
    case 'sender_quota': return `too many of your messages are already waiting for ${peer}. Try again once they have read some.`;
    case 'rate_limited': return 'the relay is busy and asked us to wait longer than we can. Try again in a minute.';
    case 'msg_id_reused': return 'this page made a mistake (a message id was used twice). Reload the page and send again.';
    case 'payload_too_large': return 'the message is too long.';
    case 'unknown_peer': return `${peer} is not known to the relay.`;
    case 'peer_key_changed': return `${peer}'s security key changed before this message reached the relay: nothing was stored. Accept or verify the new key, then retry.`;
    case 'client_id_taken': return 'this name belongs to someone else (another key). Pick another name.';
    case 'storage_unavailable': case 'busy': return 'the relay cannot store anything right now. Try again shortly.';
    case 'internal': return 'the relay failed (a bug on its side). Try again later.';
    default: return e.body.message || e.message;
  }
}

async function postJson(base, path, body) {
  let r;
  try {
    r = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  } catch (e) { const err = new Error(`relay unreachable: ${e.message}`); err.transport = true; throw err; }
  const text = await r.text();
  let json; try { json = JSON.parse(text); } catch { json = { error: 'http', message: text.slice(0, 200) }; }
  if (!r.ok) {
    const ra = Number.parseInt(r.headers.get('retry-after') || '', 10);
    throw new RelayError(r.status, json, Number.isFinite(ra) && ra >= 0 ? ra : null);
  }
  return json;
}

/** The longest the page waits, in all, on `rate_limited` answers to one request. */
export const RATE_LIMIT_BUDGET_SECS = 60;

/**
 * postJson, resending the same body:
 * - while the relay answers 503 (its storage is away, or it is busy): 0.25, 0.5, 1, 2 and 2 s
 *   apart, about 6 s in all;
 * - after a 429 `rate_limited`, once its `Retry-After` has passed, up to
 *   `RATE_LIMIT_BUDGET_SECS` of waiting in all; `onBusy(seconds)` is told before each wait.
 * Other refusals (429 `mailbox_full`, `sender_quota`) are not retried: waiting a few seconds does
 * not change them. Resending is safe: a refused handshake step stored nothing, and the relay
 * answers a resent envelope from its stored outcome and never runs it twice.
 */
async function postRetrying(base, path, body, onBusy = () => {}) {
  let waited = 0, unavailable = 0;
  for (;;) {
    try { return await postJson(base, path, body); } catch (e) {
      if (e instanceof RelayError && e.status === 429 && e.code === 'rate_limited') {
        const secs = Math.max(1, e.retryAfter ?? 1);
        if (waited + secs > RATE_LIMIT_BUDGET_SECS) {
          e.human = `the relay is busy (too many requests from your network) and asks to wait ${secs} s more; try again later.`;
          throw e;
        }
        onBusy(secs);
        await new Promise((r) => setTimeout(r, secs * 1000));
        waited += secs;
        continue;
      }
      if (!(e instanceof RelayError && e.status === 503) || unavailable >= 5) throw e;
      await new Promise((r) => setTimeout(r, Math.min(250 * 2 ** unavailable, 2000)));
      unavailable += 1;
    }
  }
}

/**
 * The handshake (docs/protocol.md §1). `trace(step, detail)` reports each step; `pin` is the
 * server fingerprint (hex) the page was served with.
 */
export async function handshake(base, clientId, pin, trace = () => {}, recovery = {}) {
  try { return await handshakeOnce(base, clientId, pin, trace, recovery); } catch (e) {
    // A long wait on a busy relay can outlive the pending handshake (60 s): start once more.
    if (!(e instanceof RelayError && (e.code === 'handshake_expired' || e.code === 'unknown_handshake'))) throw e;
    return handshakeOnce(base, clientId, pin, trace, recovery);
  }
}

/**
 * One handshake. Recovery (docs/protocol.md §1 "Recovery"): it registers a fresh code's public
 * half (`recovery_key`) and the returned session carries that code in `recoveryCode` (never saved:
 * Session.toJSON leaves it out) for the caller to show once. With `recovery.proveWith` (a code's
 * 16 bytes) it also sends `recovery_proof` for this handshake's key, taking the name over from a
 * lost device: the relay then keeps the fresh code's key instead, so the code just used no longer
 * works. `recovery.register === false` sends no `recovery_key`.
 */
async function handshakeOnce(base, name, pin, trace, { proveWith = null, register = true } = {}) {
  // The relay keeps names in lower case, and the key confirmation binds the name it kept.
  const clientId = canonicalName(name);
  const onBusy = (seconds) => trace('busy', { seconds });
  const nonce = randomBytes(16);
  trace('req_pq', { nonce: hex(nonce) });
  const res = await postRetrying(base, '/req_pq', { nonce: b64(nonce) }, onBusy);
  if (!equalBytes(fromB64(res.nonce), nonce)) throw new Error('nonce mismatch');
  if (pin && res.fingerprint !== pin) throw new Error(`untrusted server: ${res.fingerprint} is not the pinned ${pin}`);
  const pq = BigInt('0x' + res.pq);
  const [p, q] = factorPq(pq);
  trace('pq_factored', { pq: pq.toString(), p: p.toString(), q: q.toString() });
  const sn = fromB64(res.server_nonce);
  const step = { nonce: b64(nonce), server_nonce: b64(sn), p: minimalBe(p), q: minimalBe(q) };
  const bits = res.pow_bits ?? 0;
  if (bits !== 0) {
    trace('pow_working', { bits });
    const started = Date.now();
    const { powNonce, tries } = await solveWork(nonce, sn, bits);
    step.pow_nonce = hex(powNonce);
    trace('pow_solved', { bits, pow_nonce: step.pow_nonce, tries, ms: Date.now() - started });
  }
  const dh = await postRetrying(base, '/req_dh_params', step, onBusy);
  if (!equalBytes(fromB64(dh.nonce), nonce) || !equalBytes(fromB64(dh.server_nonce), sn)) throw new Error('nonce mismatch');
  const pk = fromB64(dh.server_public_key);
  if ((await serverFingerprint(pk)) !== res.fingerprint) throw new Error('server key does not match its fingerprint');
  const gBytes = u32le(dh.g), prime = fromHex(dh.dh_prime), gA = fromHex(dh.g_a);
  const transcript = concat(utf8('mtproto-relay/server-dh-params/v1'), nonce, sn, bigToBytes(pq, 8), gBytes, prime, gA,
    u64le(dh.server_time), pk);
  if (!(await ed25519Verify(pk, fromB64(dh.signature), transcript))) throw new Error('server signature over the handshake is invalid');
  if (dh.g !== 3 || dh.dh_prime.toLowerCase() !== DH_PRIME_HEX) throw new Error('unknown DH group');
  const ga = bigFromBytes(gA);
  checkDhPublic(ga);
  trace('dh_params_verified', { g: dh.g, g_a: hex(gA.slice(0, 16)) + '…', signature: 'ok' });
  const exp = bigFromBytes(randomBytes(32)) | (1n << 255n);
  const gb = modPow(3n, exp, P);
  checkDhPublic(gb);
  const authKey = bigToBytes(modPow(ga, exp, P), 256);
  const gbBytes = bigToBytes(gb, 256);
  const digest = await sha1(authKey);
  const setDh = { nonce: b64(nonce), server_nonce: b64(sn), g_b: hex(gbBytes), client_id: clientId };
  // The auth_key_id (SHA1(auth_key)[12..20]) is known before the relay answers: the proof names it.
  // A recovery registers a new code too: the one typed (perhaps seen by someone) stops working.
  const fresh = register ? newRecoveryCode() : null;
  if (fresh) setDh.recovery_key = b64(await recoveryPublicKey(fresh));
  if (proveWith) {
    setDh.recovery_proof = b64(await recoveryProof(proveWith, clientId, sn, digest.slice(12, 20)));
    trace('recovery_proved', { auth_key_id: hex(digest.slice(12, 20)) });
  }
  const done = await postRetrying(base, '/set_client_dh_params', setDh, onBusy);
  const sessionId = fromB64(done.session_id), salt = fromB64(done.salt);
  const id = utf8(clientId);
  const newNonce = await sha256(utf8('mtproto-relay/key-confirmation/v1'), nonce, sn, gA, gbBytes, Uint8Array.of(id.length), id, sessionId, salt);
  const aux = digest.slice(0, 8);
  const expected = (await sha1(newNonce, Uint8Array.of(1), aux)).slice(4, 20);
  const idOk = equalBytes(fromHex(done.auth_key_id), digest.slice(12, 20));
  if (!(equalBytes(expected, fromHex(done.key_confirmation)) && idOk)) throw new Error('key confirmation failed');
  trace('key_confirmed', { auth_key_id: done.auth_key_id, session_id: hex(sessionId) });
  const session = new Session({
    base, clientId, authKey, sessionId, salt, serverKey: pk,
    timeOffset: dh.server_time - Math.floor(Date.now() / 1000), lastMsgId: 0n, contentSent: 0, seen: [], sent: [],
  });
  session.recoveryCode = fresh;
  return session;
}

export class Session {
  constructor(s) { Object.assign(this, s); this.lastMsgId = BigInt(s.lastMsgId || 0); }
  toJSON() {
    return { clientId: this.clientId, authKey: this.authKey, sessionId: this.sessionId, salt: this.salt, serverKey: this.serverKey,
      timeOffset: this.timeOffset, lastMsgId: this.lastMsgId.toString(), contentSent: this.contentSent, seen: this.seen, sent: [] };
  }
  nextMsgId() {
    const ms = Date.now() + this.timeOffset * 1000;
    const secs = BigInt(Math.floor(ms / 1000));
    const nanos = BigInt((ms % 1000) * 1000000 + Math.floor(Math.random() * 1000000));
    let id = (secs << 32n) | ((nanos << 2n) & 0xfffffffcn);
    if ((id & 0xffffffffn) === 0n) id |= 4n;
    if (id <= this.lastMsgId) id = (this.lastMsgId | 3n) + 1n;
    this.lastMsgId = id;
    return id;
  }
  /** Seals a request body; returns {packet, msgId, seqNo}. */
  async encode(bodyBytes) {
    const msgId = this.nextMsgId();
    const seqNo = 2 * this.contentSent + 1;
    this.contentSent += 1;
    const payload = concat(this.salt, this.sessionId, u64le(msgId), u32le(seqNo), u32le(bodyBytes.length), bodyBytes);
    this.sent.push(msgId.toString()); if (this.sent.length > 256) this.sent.shift();
    return { packet: await seal(this.authKey, 0, payload), msgId, seqNo };
  }
  /** Opens a server envelope: session id, msg_id parity and duplicates. */
  async decode(packet) {
    const p = await open(this.authKey, 8, packet, LAYOUT_ENVELOPE);
    if (!equalBytes(p.slice(8, 16), this.sessionId)) throw new Error('wrong session');
    const msgId = readU64(p, 16);
    if (msgId % 4n !== 1n && msgId % 4n !== 3n) throw new Error('bad server msg_id');
    const key = msgId.toString();
    if (this.seen.includes(key)) throw new Error('duplicate server message');
    this.seen.push(key); if (this.seen.length > 128) this.seen.shift();
    return { msgId, seqNo: readU32(p, 24), body: p.slice(32) };
  }
  /** Applies a sealed bad_server_salt / bad_msg_notification; true if the request may be resent. */
  async applyNotice(noticeB64) {
    let inc; try { inc = await this.decode(fromB64(noticeB64)); } catch { return false; }
    // bad_msg_id is a 64-bit JSON number: JSON.parse would round it to a double (e.g.
    // 7597424670374048852 → 7597424670374049000) and no notice would ever match a request
    // sent. Read it as the digits it is.
    const text = fromUtf8(inc.body).replace(/"bad_msg_id"\s*:\s*(\d+)/, '"bad_msg_id":"$1"');
    const n = JSON.parse(text);
    if (!this.sent.includes(String(n.bad_msg_id))) return false;
    if (n._ === 'bad_server_salt') { this.salt = fromB64(n.new_server_salt); return true; }
    if (n.error_code === 16 || n.error_code === 17) {
      this.timeOffset = Number(inc.msgId >> 32n) - Math.floor(Date.now() / 1000); return true;
    }
    return false;
  }
  /**
   * One authenticated call. `onWire(info)` sees what crosses the wire and what it means.
   * Resends with a fresh msg_id after an authenticated salt/clock notice.
   */
  async call(path, call, onWire = () => {}) {
    const body = utf8(JSON.stringify(call));
    for (let attempt = 0; attempt < 3; attempt++) {
      const { packet, msgId, seqNo } = await this.encode(body);
      // Persist the counters before the request leaves, so a reload never reuses a seq_no.
      if (this.beforeSend) await this.beforeSend();
      onWire({ dir: 'out', path, msgId: msgId.toString(), seqNo, msgKey: hex(packet.slice(8, 24)), ciphertext: hex(packet.slice(24)), plaintext: call });
      let res;
      try { res = await postRetrying(this.base, path, { packet: b64(packet) }, this.onBusy); } catch (e) {
        if (e instanceof RelayError && e.body.notice && (await this.applyNotice(e.body.notice))) continue;
        throw e;
      }
      const packetIn = fromB64(res.packet);
      const inc = await this.decode(packetIn);
      const answer = JSON.parse(fromUtf8(inc.body));
      onWire({ dir: 'in', path, msgId: inc.msgId.toString(), seqNo: inc.seqNo, msgKey: hex(packetIn.slice(8, 24)), ciphertext: hex(packetIn.slice(24)), plaintext: answer });
      return answer;
    }
    throw new Error('refused repeatedly');
  }
}

// ---- Persistence (IndexedDB), encrypted at rest ---------------------------------------------------
//
// Everything the page keeps (profiles with their session and chat keys and the outbox, the
// conversations' history, the name last signed in) is sealed with AES-256-GCM under one key per
// origin: a Web Crypto key made non-extractable and stored as a CryptoKey object in the `vault`
// store. Script in the page can use it but never read its bytes; a copy of the browser's files
// holds only ciphertext beside an opaque key handle (docs/security.md, "The browser's storage").
// The identity private key is a non-extractable CryptoKey of its own, stored beside the record.
// Profiles written in clear by earlier releases are read once and written back sealed.

const STORES = ['profiles', 'vault', 'history'];
let dbOpen = null;
function idb() {
  dbOpen = dbOpen || new Promise((resolve, reject) => {
    const r = indexedDB.open('mtproto-relay', 2);
    r.onupgradeneeded = () => { for (const s of STORES) if (!r.result.objectStoreNames.contains(s)) r.result.createObjectStore(s); };
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => { dbOpen = null; reject(r.error); };
  });
  return dbOpen;
}
async function idbGet(store, key) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const r = db.transaction(store).objectStore(store).get(key);
    r.onsuccess = () => resolve(r.result ?? null);
    r.onerror = () => reject(r.error);
  });
}
async function idbPut(store, key, value) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(store, 'readwrite');
    if (value === undefined) tx.objectStore(store).delete(key); else tx.objectStore(store).put(value, key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}
async function idbKeys(store) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const r = db.transaction(store).objectStore(store).getAllKeys();
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

let vaultKey = null;
/** The origin's storage key: AES-256-GCM, non-extractable, made once and kept in IndexedDB. */
export async function storageKey() {
  if (vaultKey) return vaultKey;
  let k = await idbGet('vault', 'key');
  if (!k) {
    k = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
    await idbPut('vault', 'key', k);
    // Two tabs may have raced: keep the one stored first.
    k = (await idbGet('vault', 'key')) || k;
  }
  vaultKey = k;
  return k;
}

// JSON with byte arrays: a Uint8Array is {"$b": base64}.
const packJson = (v) => JSON.stringify(v, (_, x) => (x instanceof Uint8Array ? { $b: b64(x) } : x));
const unpackJson = (s) => JSON.parse(s, (_, x) => (x && typeof x === 'object' && typeof x.$b === 'string' && Object.keys(x).length === 1 ? fromB64(x.$b) : x));

/** Seals `value` (JSON with byte arrays) for storage: {iv, ct}; `label` binds it to its place. */
export async function sealRecord(value, label) { return sealJson(packJson(value), label); }
async function sealJson(json, label) {
  const iv = randomBytes(12);
  const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: utf8(label) }, await storageKey(), utf8(json)));
  return { iv, ct };
}
export async function openRecord(rec, label) {
  const pt = await subtle.decrypt({ name: 'AES-GCM', iv: rec.iv, additionalData: utf8(label) }, await storageKey(), rec.ct);
  return unpackJson(fromUtf8(new Uint8Array(pt)));
}

/** A stored profile: {identity: {privateKey, pub}, session, chats, peers, contacts, outbox, …} or null. */
export async function loadProfile(name) {
  const rec = await idbGet('profiles', name);
  if (!rec) return null;
  if (!rec.sealed) return rec; // written in clear by an earlier release: sealed at the next save
  const p = await openRecord(rec.sealed, `profile/${name}`);
  p.identity = { privateKey: rec.privateKey, pub: p.identityPub };
  return p;
}
/** Whether a profile of `name` is stored on this browser (without opening it). */
export async function hasProfile(name) { return (await idbGet('profiles', name)) !== null; }
export async function saveProfile(name, profile) {
  const { identity, ...rest } = profile;
  await saveProfileJson(name, identity, packJson({ ...rest, identityPub: identity.pub }));
}
/** saveProfile with the profile (less its identity) already serialized by packJson, with `identityPub`. */
async function saveProfileJson(name, identity, json) {
  const sealed = await sealJson(json, `profile/${name}`);
  await idbPut('profiles', name, { privateKey: identity.privateKey, sealed });
}

/** The name signed in last on this browser (to sign in again by itself), or null. */
export async function lastUser() {
  const rec = await idbGet('vault', 'last');
  if (!rec) return null;
  try { return (await openRecord(rec, 'last-user')).name; } catch { return null; }
}
export async function setLastUser(name) { await idbPut('vault', 'last', name ? await sealRecord({ name }, 'last-user') : undefined); }

/**
 * The history of `name`'s conversations: Map peer -> {items, unread}: what the page keeps of each
 * message, and how many of them the user has not seen. (Records of earlier releases are the
 * bare array of items: read with unread 0.)
 */
export async function loadHistory(name) {
  const out = new Map();
  const prefix = `${name}\u0000`;
  for (const k of await idbKeys('history')) {
    if (typeof k !== 'string' || !k.startsWith(prefix)) continue;
    try {
      const rec = await openRecord(await idbGet('history', k), `history/${k}`);
      out.set(k.slice(prefix.length), Array.isArray(rec) ? { items: rec, unread: 0, draft: '', awaiting: false }
        : { items: rec.items || [], unread: Number(rec.unread) || 0, draft: typeof rec.draft === 'string' ? rec.draft : '', awaiting: !!rec.awaiting });
    } catch { /* unreadable: skipped */ }
  }
  return out;
}
/**
 * Seals one conversation: its messages, unread count, the unsent draft of its composer, and
 * whether it waits for the peer to accept our new key (`awaiting`).
 */
export async function saveHistory(name, peer, items, { unread = 0, draft = '', awaiting = false } = {}) {
  const k = `${name}\u0000${peer}`;
  await idbPut('history', k, await sealRecord({ items, unread, draft, awaiting }, `history/${k}`));
}

/**
 * A new account's recovery code (16 bytes) waiting for the user to say it is written down: kept
 * sealed in the vault (`recovery/<name>`) so that a reload or a crash while it is on screen does
 * not lose it; deleted once confirmed (clearPendingRecoveryCode). docs/security.md.
 */
export async function savePendingRecoveryCode(name, code, reason = 'new') {
  await idbPut('vault', `recovery/${name}`, await sealRecord({ code, reason }, `recovery/${name}`));
}
/**
 * The code savePendingRecoveryCode kept for `name` and why it was made ('new': a new account,
 * 'recovered': a recovery replaced the old code, 'again': the relay lost its data): {code,
 * reason}, or null.
 */
export async function loadPendingRecoveryCode(name) {
  const rec = await idbGet('vault', `recovery/${name}`);
  if (!rec) return null;
  try { const r = await openRecord(rec, `recovery/${name}`); return r.code ? { code: r.code, reason: r.reason || 'new' } : null; } catch { return null; }
}
export async function clearPendingRecoveryCode(name) { await idbPut('vault', `recovery/${name}`, undefined); }

/**
 * Removes everything this browser keeps of `name` (sign out, "remove from this browser"): its
 * profile (identity private key, session and auth key, conversation keys, contacts, outbox),
 * every conversation's history, a pending recovery code, and the last-user record when it names
 * `name`. When no other profile is left (and no other tab is signing one in), every store is
 * emptied, the origin's storage key with it, so that a copy of a deleted record left behind by
 * the browser's storage engine can never be opened. The caller stops every writer first
 * (RelayClient.forget does).
 */
export async function deleteProfile(name) {
  const db = await idb();
  const last = await lastUser();
  const history = (await idbKeys('history')).filter((k) => typeof k === 'string' && k.startsWith(`${name}\u0000`));
  await new Promise((resolve, reject) => {
    const tx = db.transaction(STORES, 'readwrite');
    tx.objectStore('profiles').delete(name);
    for (const k of history) tx.objectStore('history').delete(k);
    tx.objectStore('vault').delete(`recovery/${name}`);
    if (last === name || last === null) tx.objectStore('vault').delete('last');
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
  // Another tab signing another name in holds its profile's Web Lock (client_ui's holdProfile)
  // and may not have stored its profile yet: the key stays for it.
  const others = navigator.locks ? (await navigator.locks.query()).held.filter((l) => l.name.startsWith('mtproto-relay/profile/') && l.name !== `mtproto-relay/profile/${name}`) : [];
  if ((await idbKeys('profiles')).length === 0 && others.length === 0) {
    await new Promise((resolve, reject) => {
      const tx = db.transaction(STORES, 'readwrite');
      for (const s of STORES) tx.objectStore(s).clear();
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
    vaultKey = null;
  }
}

// ---- The client: what both pages use ---------------------------------------------------------------

/** Most names in one exact `/peers` lookup (relay_core::api::MAX_LOOKUP_NAMES). */
export const MAX_LOOKUP_NAMES = 100;
/** Most entries in one `/peers` page (relay_core::api::MAX_PEERS_PAGE). */
export const MAX_PEERS_PAGE = 50;

/** Most messages waiting in the outbox, sending or refused (relay_client::MAX_OUTBOX). */
export const MAX_OUTBOX = 1000;
/**
 * A resend reuses the envelope while its msg_id is at most this old (server time): the relay's
 * msg_id window (MSG_ID_MAX_PAST_SECS = 300 s) less a minute, as the Rust client.
 */
export const REUSE_ENVELOPE_SECS = 3000; // the relay keeps outcomes 3,600 s and answers a resend from them
/** Refusals that settle a message (relay_client::outbox::is_final_refusal); others leave it sending. */
const FINAL_REFUSALS = new Set(['unknown_peer', 'mailbox_full', 'sender_quota', 'payload_too_large', 'invalid_field', 'peer_key_changed']);

/** The reason a person reads for a refused outbox receipt. */
export function refusalText(r) { return humanError(new RelayError(0, { error: r.code, message: r.message || '' }), r.to); }

/** An error that means "no answer": the relay was unreachable or unavailable (nothing was refused). */
function unanswered(e) { return !!e.transport || (e instanceof RelayError && e.status >= 500); }

/**
 * Forgets an outbox entry's envelope (a new one will be made), remembering whether a copy may
 * have been stored (relay_client OutboxEntry::drop_envelope).
 */
function dropEnvelope(entry) {
  if (entry.envelope) entry.maybeStored = entry.maybeStored || entry.envelope.uncertain;
  entry.envelope = null;
}

/**
 * A relay client in the page. Events: 'message' {from, text, seq, delivery}, 'key_changed' {peer},
 * 'rejected' {from, reason, staleKey}, 'expired' {to, seq}, 'wire' (see Session.call), 'status' {state, detail},
 * 'busy' {seconds} (the relay answered rate_limited; the request is resent after that wait),
 * 'outbox' (a receipt: see `receipt`; also state 'stored' with mailboxSeq, or 'abandoned').
 *
 * The outbox (docs/protocol.md §3.1, as relay-client's outbox.rs): a message is sealed end to
 * end once (its seq fixed), kept in `outbox` — saved with the profile — until the relay's answer
 * says stored or refused, and resent oldest first after failures, reloads and outages: the same
 * envelope while it belongs to the current session and is under REUSE_ENVELOPE_SECS old (the
 * relay answers it from its stored outcome), else a new envelope around the same packet (a
 * second copy is dropped by the recipient as an end-to-end replay).
 *
 * Names are canonical (lower case) everywhere: `name`, `contacts`, the keys of `chats` and `peers`.
 * `contacts` are the people this user wrote to, heard from or added; they are kept with the profile.
 */
export class RelayClient extends EventTarget {
  constructor(base, name, pin, persist) {
    super(); this.base = base; this.name = name; this.pin = pin; this.persist = persist;
    this.chats = new Map(); this.peers = new Map(); this.contacts = new Set();
    this.toAck = []; this.held = new Set(); this.stopped = false;
    // The outbox: {id, to, body, control, packet, seq, envelope, maybeStored, released, state,
    // code, message, lastError}; envelope: {msgId, sessionId, seqNo, packet, uncertain}.
    this.outbox = []; this.nextOutboxId = 1;
    this.flushing = Promise.resolve(); this.flushTimer = null; this.flushBackoff = 1000;
    this.needPublish = false;
    // One conversation state per peer, made once even when a send and a poll both ask at once
    // (defect 1 of issue 13: two states sealed two messages under one seq).
    this.chatPending = new Map();
    // Sends are sealed and queued one at a time, in the order asked (their seqs in that order).
    this.sealing = Promise.resolve();
    // Peers whose key changed and was neither accepted nor verified: nothing goes to them.
    this.blocked = new Set();
    // Blocked peers the user chose to keep blocked, with the key they were shown (base64): the
    // page does not ask again about that key, only about a newer one.
    this.keptBlocked = new Map();
    // Saves run one at a time, each writing the state as it is when it starts.
    this.saveChain = Promise.resolve(); this.saveWanted = false;
    // Awaited before receipts go out: the page keeps what it was given (its history) first.
    this.beforeReceipts = null;
    this.pollWaitMs = 10000;
  }
  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
  save() {
    if (!this.persist) return Promise.resolve();
    this.saveWanted = true;
    const run = this.saveChain.then(async () => {
      if (!this.saveWanted) return; // an earlier save already wrote this state
      this.saveWanted = false;
      const chats = {}; for (const [k, c] of this.chats) chats[k] = c.toJSON();
      // Serialized now (synchronously): what changes during the encryption waits for the next save.
      const json = packJson({ session: this.session.toJSON(), chats, peers: Object.fromEntries(this.peers), contacts: [...this.contacts],
        outbox: this.outbox, nextOutboxId: this.nextOutboxId, blocked: [...this.blocked], keptBlocked: Object.fromEntries(this.keptBlocked),
        identityPub: this.identity.pub });
      await saveProfileJson(this.name, this.identity, json);
    });
    this.saveChain = run.catch(() => {});
    return run;
  }
  /**
   * Opens `name`: its saved profile, or a new account (a handshake that registers a recovery
   * code: `takeRecoveryCode()` gives it once). With `recoveryCode` (the 16 bytes of
   * parseRecoveryCode) the handshake proves it and takes the name over from a lost device
   * (docs/protocol.md §1 "Recovery"); a saved profile of that name keeps its identity and
   * conversations. The typed code is used by this handshake only, and never stored. A code this
   * client registered is kept sealed until confirmRecoveryCode() (a reload before that gives it
   * again through takeRecoveryCode()).
   */
  static async connect({ base = '', name, pin, persist = true, trace = () => {}, recoveryCode = null }) {
    const c = new RelayClient(base, canonicalName(name), pin, persist);
    const saved = persist ? await loadProfile(c.name) : null;
    if (saved) {
      c.identity = saved.identity;
      c.session = recoveryCode ? null : new Session({ ...saved.session, base });
      for (const [k, v] of Object.entries(saved.chats || {})) c.chats.set(k, new Chat(v));
      for (const [k, v] of Object.entries(saved.peers || {})) c.peers.set(k, v);
      // Profiles from before contacts existed: everyone they had a key for.
      for (const k of saved.contacts || [...c.peers.keys(), ...c.chats.keys()]) c.contacts.add(k);
      c.outbox = saved.outbox || [];
      c.nextOutboxId = Math.max(saved.nextOutboxId || 1, ...c.outbox.map((e) => e.id + 1));
      for (const k of saved.blocked || []) c.blocked.add(k);
      for (const [k, key] of Object.entries(saved.keptBlocked || {})) c.keptBlocked.set(k, key);
      // A code registered before a reload (or a crash) and not yet confirmed written down.
      if (!recoveryCode) {
        const pending = await loadPendingRecoveryCode(c.name);
        if (pending) { c.recoveryCode = pending.code; c.recoveryCodeReason = pending.reason; }
      }
      if (c.session) trace('resumed', { auth_key_id: hex((await sha1(c.session.authKey)).slice(12, 20)) });
    } else {
      c.identity = await generateIdentity();
    }
    if (!c.session) {
      c.session = await handshake(base, c.name, pin, trace, { proveWith: recoveryCode });
      if (c.session.recoveryCode) await c.keepRecoveryCode(c.session.recoveryCode, recoveryCode ? 'recovered' : 'new');
      c.session.recoveryCode = null;
    }
    try { await c.call('/publish_key', { method: 'publish_key', identity_key: b64(c.identity.pub) }); } catch (e) {
      // A saved profile opens while the relay is away: its outbox is shown and waits; the key
      // is published again before the first poll that gets through (run()).
      if (!saved || !unanswered(e)) throw e;
      c.needPublish = true;
    }
    await c.save();
    // Receipts refused earlier are tried again (their seqs stay in use: docs/protocol.md §3.1).
    for (const e of c.outbox) if (e.control && e.state === 'refused') c.retryControlLater(e);
    return c;
  }
  attach(session) {
    session.beforeSend = () => this.save();
    session.onBusy = (seconds) => this.emit('busy', { seconds });
    return session;
  }
  async call(path, call) {
    const used = this.attach(this.session);
    const onWire = (w) => this.emit('wire', w);
    try { return await used.call(path, call, onWire); } catch (e) {
      if (e instanceof RelayError && e.code === 'unknown_auth_key') {
        await this.handshakeAgain(call.method !== 'publish_key', used);
        return this.session.call(path, call, onWire);
      }
      throw e;
    }
  }
  /**
   * The server lost our key (and perhaps all it knew of us): shake hands again and publish the
   * identity key again (unless `publish` is false), as the Rust client does.
   */
  async handshakeAgain(publish = true, failed = this.session) {
    if (this.nameMoved) throw new RelayError(409, { error: 'client_id_taken', message: 'the name moved to another key' });
    // One re-handshake at a time: a poll, a send and a lookup that all meet unknown_auth_key
    // share it (a second one would find the name just registered by the first and take that for
    // "the name moved to another device"); a caller whose session was already replaced retries.
    if (this.session !== failed) return;
    if (!this.rehandshaking) {
      this.rehandshaking = this.shakeHandsAgain(publish).finally(() => { this.rehandshaking = null; });
    }
    return this.rehandshaking;
  }
  async shakeHandsAgain(publish) {
    let session;
    try {
      session = await handshake(this.base, this.name, this.pin, (step, d) => { if (step === 'busy') this.emit('busy', d); });
    } catch (e) {
      // Our key is gone and the name is held by another key: it was moved to another device with
      // the recovery code (docs/protocol.md §1 "Recovery"). Nothing more can go out as us.
      if (e instanceof RelayError && e.code === 'client_id_taken' && !this.nameMoved) {
        this.nameMoved = true; this.stop(); this.emit('name_moved', { name: this.name });
      }
      throw e;
    }
    this.session = this.attach(session);
    if (session.recoveryCode) await this.keepRecoveryCode(session.recoveryCode, 'again');
    session.recoveryCode = null;
    await this.save();
    // The relay no longer knew our key: it lost its data (or was restored from an old backup).
    this.emit('relay_lost_data', {});
    // A new account, so a new recovery code: the one written down before no longer works.
    if (this.recoveryCode) this.emit('recovery_code', {});
    if (publish) {
      await this.session.call('/publish_key', { method: 'publish_key', identity_key: b64(this.identity.pub) }, (w) => this.emit('wire', w));
    }
  }
  /**
   * Holds a code the relay just registered for us, and keeps it sealed (when persisting) until
   * the user confirms it is written down: a new one replaces one not yet confirmed (which no
   * longer works).
   */
  async keepRecoveryCode(code, reason = 'new') {
    this.recoveryCode = code;
    this.recoveryCodeReason = reason;
    if (this.persist) await savePendingRecoveryCode(this.name, code, reason);
  }
  /**
   * The recovery code (16 bytes) registered and not yet confirmed, once per page: the page shows
   * it (`recoveryCodeReason` says why it was made). The sealed copy stays until
   * confirmRecoveryCode().
   */
  takeRecoveryCode() { const code = this.recoveryCode || null; this.recoveryCode = null; return code; }
  /** The user wrote the code down: the sealed copy is deleted (it cannot be shown again). */
  async confirmRecoveryCode() {
    this.recoveryCode = null;
    if (this.persist) await clearPendingRecoveryCode(this.name);
  }
  /**
   * Signs out for good on this browser: stops, lets the saves under way finish, then deletes
   * the profile, its history and any pending recovery code (deleteProfile). The relay keeps the
   * name: only the recovery code moves it to a new key.
   */
  async forget() {
    this.stop();
    const persisted = this.persist;
    this.persist = false;
    await this.saveChain;
    if (persisted) await deleteProfile(this.name);
  }
  async ownFingerprint() { return identityShortFingerprint(this.identity.pub); }
  /** A directory entry with `status`: no_key, new, known or changed (against the accepted key). */
  annotate(p) {
    const known = this.peers.get(p.client_id);
    const key = p.identity_key ? b64(fromB64(p.identity_key)) : null;
    const status = !key ? 'no_key' : !known ? 'new' : known.key === key ? 'known' : 'changed';
    return { ...p, status };
  }
  /**
   * Exact lookup of `names` (any number; asked MAX_LOOKUP_NAMES at a time). Unknown names are
   * absent. A contact found with a key other than the accepted one is blocked (`blocked`,
   * 'key_changed' once) until acceptPeerKey.
   */
  async lookupPeers(names) {
    const wanted = [...new Set(names.map(canonicalName))];
    const out = [];
    for (let i = 0; i < wanted.length; i += MAX_LOOKUP_NAMES) {
      const { peers } = await this.call('/peers', { method: 'list_peers', names: wanted.slice(i, i + MAX_LOOKUP_NAMES) });
      out.push(...peers.map((p) => this.annotate(p)));
    }
    for (const p of out) if (p.status === 'changed') await this.block(p.client_id);
    return out;
  }
  /**
   * Blocks `peer` (its key changed); emits 'key_changed' when it was not blocked yet. A
   * verification was of the old key: it no longer holds.
   */
  async block(peer) {
    if (this.blocked.has(peer)) return;
    this.blocked.add(peer);
    const known = this.peers.get(peer);
    if (known) known.verified = false;
    await this.save();
    this.emit('key_changed', { peer });
  }
  /** The safety number `peer`'s current key in the directory would give (to compare before accepting it). */
  async pendingFingerprint(name) { return (await this.pendingKey(name)).fingerprint; }
  /** `peer`'s current key in the directory: {key (base64), fingerprint (its safety number with us)}. */
  async pendingKey(name) {
    const p = await this.lookupPeer(canonicalName(name));
    if (!p || !p.identity_key) throw new Error(`${name} has no identity key`);
    const key = fromB64(p.identity_key);
    return { key: b64(key), fingerprint: await safetyNumber(await chatKey(this.identity, key)) };
  }
  /** The user keeps `peer` blocked after seeing its new key `key` (base64): kept with the profile. */
  async keepBlocked(name, key) {
    this.keptBlocked.set(canonicalName(name), b64(fromB64(key)));
    await this.save();
  }
  /** Whether the user chose to keep `peer` blocked when shown `key` (base64; null: any key). */
  isKeptBlocked(name, key = null) {
    const kept = this.keptBlocked.get(canonicalName(name));
    return !!kept && (key === null || kept === b64(fromB64(key)));
  }
  /** One directory entry, or null. */
  async lookupPeer(name) { return (await this.lookupPeers([name]))[0] || null; }
  /**
   * One page of the clients whose names start with `prefix`, after `after`: {peers, next};
   * `next`, when present, continues the listing.
   */
  async searchPeers(prefix = '', { after = null, limit = null } = {}) {
    const call = { method: 'list_peers' };
    const p = String(prefix).trim().toLowerCase();
    if (p) call.prefix = canonicalName(p);
    if (after) call.after = after;
    if (limit) call.limit = Math.min(limit, MAX_PEERS_PAGE);
    const { peers, next } = await this.call('/peers', call);
    return { peers: peers.map((x) => this.annotate(x)), next: next || null };
  }
  /** Adds `name` to the contacts (kept with the profile); true if it was new. */
  async addContact(name) {
    const n = canonicalName(name);
    if (n === this.name || this.contacts.has(n)) return false;
    this.contacts.add(n);
    await this.save();
    return true;
  }
  async chatWith(name) {
    const peer = canonicalName(name);
    if (this.chats.has(peer)) return this.chats.get(peer);
    // Whoever asks while the state is being made waits for that same state.
    if (!this.chatPending.has(peer)) {
      const making = this.makeChat(peer).finally(() => this.chatPending.delete(peer));
      this.chatPending.set(peer, making);
    }
    return this.chatPending.get(peer);
  }
  async makeChat(peer) {
    const p = await this.lookupPeer(peer);
    if (!p || !p.identity_key) throw new Error(`${peer} has no identity key`);
    const known = this.peers.get(peer);
    if (known && known.key !== p.identity_key) {
      await this.block(peer);
      const e = new Error(`${peer}'s identity key CHANGED`); e.keyChanged = true; throw e;
    }
    if (!known) this.peers.set(peer, { key: p.identity_key, version: p.key_version, verified: false });
    const chat = await Chat.create(this.identity, fromB64(p.identity_key));
    this.chats.set(peer, chat);
    this.contacts.add(peer);
    await this.save();
    return chat;
  }
  async acceptPeerKey(name) {
    const peer = canonicalName(name);
    const p = await this.lookupPeer(peer);
    if (!p || !p.identity_key) throw new Error(`${peer} has no identity key`);
    this.peers.set(peer, { key: p.identity_key, version: p.key_version, verified: false });
    this.chats.set(peer, await Chat.create(this.identity, fromB64(p.identity_key)));
    this.blocked.delete(peer);
    this.keptBlocked.delete(peer);
    this.held.clear();
    await this.save();
  }
  /** Marks `peer`'s key as verified (the safety numbers matched), or not; kept with the profile. */
  async setVerified(name, verified = true) {
    const k = this.peers.get(canonicalName(name));
    if (!k) return;
    k.verified = verified;
    await this.save();
  }
  /**
   * A new identity key, published. Every safety number changes with it: verifications no longer
   * hold (each contact's `verified` is cleared).
   */
  async rotateIdentity() {
    this.identity = await generateIdentity();
    this.chats.clear();
    for (const k of this.peers.values()) k.verified = false;
    await this.call('/publish_key', { method: 'publish_key', identity_key: b64(this.identity.pub) });
    await this.save();
  }
  async fingerprint(peer) { return (await this.chatWith(peer)).fingerprint(); }
  /**
   * Seals `text` for `peer` into the outbox and sends it (after every older message still
   * sending). Resolves to its receipt: state 'stored' (with mailboxSeq), 'sending' (no answer
   * yet: it is resent by itself) or 'refused' (code, message: see retry/abandon). Throws only
   * before sealing (no key for the peer, a changed key, a full outbox).
   */
  async send(peer, text) { return this.sendBody(canonicalName(peer), utf8(text)); }
  /**
   * A control message inside the end-to-end layer: 0x00 ‖ JSON (docs/protocol.md §3). It goes
   * through the outbox (after the messages before it), is not awaited, and a refused one is
   * dropped.
   */
  async sendControl(peer, obj) { return this.sendBody(peer, concat(Uint8Array.of(0), utf8(JSON.stringify(obj))), { control: true }); }
  async sendBody(peer, body, { control = false } = {}) {
    // Sealed and queued one send at a time, in the order asked: two quick sends can never
    // overtake each other between sealing and the outbox (defect 7 of issue 13).
    const queued = this.sealing.then(async () => {
      if (this.blocked.has(peer)) {
        const e = new Error(`${peer}'s identity key CHANGED`); e.keyChanged = true;
        e.human = `${peer}'s security key changed. Accept or verify the new key to write to them again.`;
        throw e;
      }
      const chat = await this.chatWith(peer);
      if (this.outbox.length >= MAX_OUTBOX) {
        const e = new Error('outbox full');
        e.human = `${MAX_OUTBOX} messages are already waiting to be sent. Wait until the relay is back, or discard some.`;
        throw e;
      }
      const e = await this.sealEntry(this.nextOutboxId++, chat, peer, body, control);
      this.outbox.push(e);
      await this.save();
      this.emit('outbox', this.receipt(e));
      return e;
    });
    this.sealing = queued.catch(() => {});
    const e = await queued;
    if (control) { this.flushOutbox().catch(() => {}); return this.receipt(e); }
    return this.flushOutbox(e.id);
  }
  async sealEntry(id, chat, to, body, control) {
    const sealed = await chat.seal(body);
    // The recipient's key version it is sealed for: the relay refuses it (peer_key_changed)
    // once they have another key, instead of storing what they can never read.
    const version = this.peers.get(to)?.version;
    return { id, to, body, control, packet: sealed.packet, seq: sealed.seq, randomId: hex(sealed.randomId), sentAt: Date.now(), envelope: null,
      keyVersion: Number.isSafeInteger(version) ? version : null,
      maybeStored: false, released: false, state: 'sending', code: null, message: null, lastError: null };
  }
  /** What the page shows of an outbox entry: {id, to, seq, randomId, control, text, state, code, message, lastError, sentAt}. */
  receipt(e) {
    return { id: e.id, to: e.to, seq: e.seq, randomId: e.randomId || null, control: !!e.control, text: e.control ? null : fromUtf8(e.body), state: e.state,
      code: e.code, message: e.message, lastError: e.lastError, sentAt: e.sentAt || null, maybeStored: !!e.maybeStored };
  }
  /**
   * A refused receipt is not dropped when its seq stays in use (the peer would count it missing
   * for good, F5): it is sent again later, re-sealed if its seq was given back, every 5 s
   * doubling to 80 s, 12 times at most; then it is dropped and the peer is told it was lost.
   */
  retryControlLater(entry) {
    if (this.stopped) return;
    entry.retries = (entry.retries || 0) + 1;
    if (entry.retries > 12) {
      this.outbox.splice(this.outbox.indexOf(entry), 1);
      this.save().catch(() => {});
      return;
    }
    setTimeout(() => { if (this.outbox.includes(entry)) this.retry(entry.id).catch(() => {}); }, Math.min(5000 * 2 ** (entry.retries - 1), 80000));
  }
  /** The messages waiting (sending or refused), oldest first, as receipts; controls left out. */
  waiting() { return this.outbox.filter((e) => !e.control).map((e) => this.receipt(e)); }
  /** Runs `fn` after every flush, retry or abandon already started (one at a time, in order). */
  exclusive(fn) {
    const run = this.flushing.then(fn);
    this.flushing = run.catch(() => {});
    return run;
  }
  /**
   * Resends every message still sending, oldest first, and stops at the first that stays
   * sending (the relay is unreachable: the rest would fail too); then tries again later by
   * itself. With `only`, stops after that one and resolves to its receipt.
   */
  flushOutbox(only = null) { return this.exclusive(() => this.flushOnce(only)); }
  async flushOnce(only) {
    let mine = null, stuck = false;
    for (const id of this.outbox.filter((e) => e.state === 'sending').map((e) => e.id)) {
      let r;
      try { r = await this.transmit(id); } catch (e) { r = await this.leaveSending(this.outbox.find((x) => x.id === id), humanError(e)); }
      if (r && r.id === only) mine = r;
      if (r && r.state === 'sending') { stuck = true; break; }
      if (id === only) break;
    }
    if (only !== null && !mine) { const e = this.outbox.find((x) => x.id === only); mine = e ? this.receipt(e) : null; }
    if (stuck) this.scheduleFlush(); else this.flushBackoff = 1000;
    return mine;
  }
  /** Another flush after a backoff (1 s, doubling to 8 s) while something stays sending. */
  scheduleFlush() {
    if (this.flushTimer || this.stopped) return;
    const wait = this.flushBackoff;
    this.flushBackoff = Math.min(this.flushBackoff * 2, 8000);
    this.flushTimer = setTimeout(() => { this.flushTimer = null; this.flushOutbox().catch(() => {}); }, wait);
  }
  async leaveSending(entry, why) {
    if (!entry) return null;
    entry.state = 'sending'; entry.lastError = why;
    await this.save();
    const r = this.receipt(entry);
    this.emit('outbox', r);
    return r;
  }
  /** Posts one outbox entry and records the answer; returns its receipt (null if it is gone). */
  async transmit(id) {
    const onWire = (w) => this.emit('wire', w);
    // A handful of fresh envelopes at most: a stale salt or clock, a new handshake.
    for (let attempt = 0; attempt < 4; attempt++) {
      const entry = this.outbox.find((e) => e.id === id);
      if (!entry) return null;
      const s = this.attach(this.session);
      const call = { method: 'send_message', target_peer: entry.to, payload: b64(entry.packet) };
      if (Number.isSafeInteger(entry.keyVersion)) call.key_version = entry.keyVersion;
      // docs/protocol.md §3.1: the same envelope while the relay can still recognise its msg_id
      // (same session, within the msg_id window with a minute to spare), else a new envelope
      // around the same end-to-end packet.
      const serverNow = Math.floor(Date.now() / 1000) + s.timeOffset;
      const env = entry.envelope;
      const reusable = env && equalBytes(env.sessionId, s.sessionId) && Number(BigInt(env.msgId) >> 32n) + REUSE_ENVELOPE_SECS >= serverNow;
      if (!reusable) {
        dropEnvelope(entry);
        const out = await s.encode(utf8(JSON.stringify(call)));
        entry.envelope = { msgId: out.msgId.toString(), sessionId: s.sessionId, seqNo: out.seqNo, packet: out.packet, uncertain: false };
      } else if (!s.sent.includes(env.msgId)) {
        s.sent.push(env.msgId); // after a reload: a notice about it is believed
      }
      const envelope = entry.envelope;
      // Saved before it leaves (with the session's counters), and counted as possibly stored
      // until an answer says otherwise: a reload mid-request resends these very bytes.
      const wasUncertain = envelope.uncertain;
      envelope.uncertain = true;
      await this.save();
      onWire({ dir: 'out', path: '/secure_message', msgId: envelope.msgId, seqNo: envelope.seqNo, msgKey: hex(envelope.packet.slice(8, 24)),
        ciphertext: hex(envelope.packet.slice(24)), plaintext: call, resend: reusable });
      let answer = null, err = null;
      try {
        const res = await postRetrying(this.base, '/secure_message', { packet: b64(envelope.packet) }, this.session.onBusy);
        const packetIn = fromB64(res.packet);
        const inc = await s.decode(packetIn);
        answer = JSON.parse(fromUtf8(inc.body));
        onWire({ dir: 'in', path: '/secure_message', msgId: inc.msgId.toString(), seqNo: inc.seqNo, msgKey: hex(packetIn.slice(8, 24)), ciphertext: hex(packetIn.slice(24)), plaintext: answer });
      } catch (e) { err = e; }
      if (!this.outbox.includes(entry)) return null;
      if (!err) {
        this.outbox.splice(this.outbox.indexOf(entry), 1);
        await this.save();
        const r = { ...this.receipt(entry), state: 'stored', mailboxSeq: answer.mailbox_seq, timestamp: answer.timestamp, msgId: answer.msg_id };
        this.emit('outbox', r);
        return r;
      }
      if (err instanceof RelayError) {
        if (err.body.notice) {
          // A stale salt or clock, checked before anything is stored: a new envelope.
          envelope.uncertain = wasUncertain;
          if (await s.applyNotice(err.body.notice)) { dropEnvelope(entry); continue; }
          return this.leaveSending(entry, humanError(err, entry.to));
        }
        if (err.code === 'unknown_auth_key') {
          envelope.uncertain = wasUncertain;
          await this.handshakeAgain(true, s);
          continue;
        }
        if (err.code === 'bad_msg' || err.code === 'msg_id_reused') {
          // The relay cannot tell whether it saw this envelope: a new one, and the first may
          // have been stored (then the peer drops the copy as a replay).
          dropEnvelope(entry);
          continue;
        }
        if (FINAL_REFUSALS.has(err.code)) {
          // This envelope stored nothing; if no earlier one may have either and nothing was
          // sealed after it, its seq is given back (the peer sees no hole).
          envelope.uncertain = wasUncertain;
          dropEnvelope(entry);
          const chat = this.chats.get(entry.to);
          if (!entry.maybeStored && chat) entry.released = chat.releaseUnsent(entry.seq);
          Object.assign(entry, { state: 'refused', code: err.code, message: err.body.message || '', lastError: null });
          const keyChanged = err.code === 'peer_key_changed';
          // A receipt whose seq was given back leaves no hole, and one sealed for a key the peer
          // has replaced can never be read (the conversation starts again under the new key):
          // dropped. Otherwise it goes again later.
          if (entry.control && (entry.released || keyChanged)) this.outbox.splice(this.outbox.indexOf(entry), 1);
          else if (entry.control) this.retryControlLater(entry);
          await this.save();
          const r = this.receipt(entry);
          this.emit('outbox', r);
          // The recipient has another key now: the lookup blocks them ('key_changed'), so the
          // user is asked to accept or verify it before anything else goes to them.
          if (keyChanged) await this.lookupPeer(entry.to).catch(() => {});
          return r;
        }
      }
      // No answer (unreachable, 503, 5xx, rate_limited past patience, an unreadable answer):
      // it stays sending, the envelope possibly stored.
      return this.leaveSending(entry, humanError(err, entry.to));
    }
    return this.leaveSending(this.outbox.find((e) => e.id === id), 'the relay refused it repeatedly');
  }
  /**
   * Sends a waiting message again now: a refused one whose seq was given back is sealed again
   * under a new seq; otherwise the same packet goes again. Resolves to its receipt.
   */
  async retry(id) {
    await this.exclusive(async () => {
      const entry = this.outbox.find((e) => e.id === id);
      if (!entry || entry.state !== 'refused') return;
      if (this.blocked.has(entry.to)) {
        const e = new Error(`${entry.to}'s identity key CHANGED`); e.keyChanged = true;
        e.human = `${entry.to}'s security key changed. Accept or verify the new key, then retry.`;
        throw e;
      }
      // Sealed for a key the user has replaced since (by accepting the new one): sealed again
      // under the conversation with the accepted key, as is a message whose seq was given back.
      const version = this.peers.get(entry.to)?.version;
      const staleKey = Number.isSafeInteger(entry.keyVersion) && entry.keyVersion !== version;
      if (entry.released || staleKey) {
        const chat = await this.chatWith(entry.to);
        const fresh = await this.sealEntry(entry.id, chat, entry.to, entry.body, entry.control);
        Object.assign(entry, { packet: fresh.packet, seq: fresh.seq, keyVersion: fresh.keyVersion, envelope: null, maybeStored: false, released: false });
      }
      Object.assign(entry, { state: 'sending', code: null, message: null, lastError: null });
      await this.save();
      this.emit('outbox', this.receipt(entry));
    });
    return this.flushOutbox(id);
  }
  /**
   * Stops sending a waiting message and removes it. Its seq is given back when no copy of it
   * can have been stored and it is the last one sealed for the peer; otherwise the peer will
   * see a hole. A message posted without an answer may have been stored anyway: abandoning it
   * does not unsend it.
   */
  abandon(id) {
    return this.exclusive(async () => {
      const i = this.outbox.findIndex((e) => e.id === id);
      if (i < 0) return null;
      const [entry] = this.outbox.splice(i, 1);
      dropEnvelope(entry);
      const chat = this.chats.get(entry.to);
      if (!entry.maybeStored && !entry.released && chat) entry.released = chat.releaseUnsent(entry.seq);
      await this.save();
      const r = { ...this.receipt(entry), state: 'abandoned' };
      this.emit('outbox', r);
      return r;
    });
  }
  async poll(waitMs) {
    // At most the relay's limit (--max-acks, 1024) per poll; the rest go with the next one.
    const ack = this.toAck.splice(0, 1024);
    let answer;
    try { answer = await this.call('/poll_messages', { method: 'poll_messages', ack, timeout_ms: waitMs }); } catch (e) { this.toAck.unshift(...ack); throw e; }
    const receipts = new Map();
    for (const m of answer.messages) {
      if (m.kind === 'expired') { this.emit('expired', { to: m.to, seq: m.message_seq }); this.toAck.push({ seq: m.seq, ts: m.timestamp_ms }); continue; }
      const got = await this.openEntry(m);
      if (got) {
        if (!receipts.has(m.from)) receipts.set(m.from, { receipt: [], ids: [] });
        receipts.get(m.from).receipt.push(got.seq); receipts.get(m.from).ids.push(got.rid);
      }
    }
    await this.save();
    // "Delivered" means kept: the page stores what it showed before the receipts leave.
    if (receipts.size && this.beforeReceipts) await this.beforeReceipts();
    for (const [peer, r] of receipts) {
      // Through the outbox, after anything still waiting for this peer. `ids` (the random_ids)
      // name exactly which message each seq was: a sender never takes another for delivered.
      try { await this.sendControl(peer, r); } catch { /* a lost receipt only delays "delivered" */ }
    }
    return answer.messages.length;
  }
  /** Opens one mailbox entry; returns {seq, rid} of a message to acknowledge with a receipt, or null. */
  async openEntry(m) {
    let chat;
    try { chat = await this.chatWith(m.from); } catch (e) {
      if (e.keyChanged && !this.held.has(m.seq)) { this.held.add(m.seq); }
      return null;
    }
    try {
      const r = await chat.open(fromB64(m.payload));
      this.toAck.push({ seq: m.seq, ts: m.timestamp_ms });
      // Given-up runs are told once, before the message that gave them up (docs/protocol.md §3.1).
      if (r.lost.length) this.emit('lost', { from: m.from, runs: r.lost });
      if (r.ahead) this.emit('restored_profile', { peer: m.from, ahead: r.ahead });
      if (r.body[0] === 0) {
        let ctl = {}; try { ctl = JSON.parse(fromUtf8(r.body.slice(1))); } catch { /* unknown control: ignored */ }
        if (Array.isArray(ctl.receipt)) this.emit('delivered', { from: m.from, seqs: ctl.receipt, ids: Array.isArray(ctl.ids) ? ctl.ids : null });
        this.emit('control', { from: m.from, seq: r.seq });
        return null;
      }
      const rid = hex(r.randomId);
      this.emit('message', { from: m.from, text: fromUtf8(r.body), seq: r.seq, rid, delivery: r.delivery, at: m.timestamp_ms, sentAt: r.sentAtMs });
      return { seq: r.seq, rid };
    } catch (e) {
      if (e.replay) { this.toAck.push({ seq: m.seq, ts: m.timestamp_ms }); return null; }
      const p = await this.lookupPeer(m.from);
      if (p && p.status === 'changed') { if (!this.held.has(m.seq)) { this.held.add(m.seq); this.emit('key_changed', { peer: m.from }); } return null; }
      this.toAck.push({ seq: m.seq, ts: m.timestamp_ms });
      // The key id in front of the packet is public: a packet sealed under another key than
      // this conversation's (the peer still had our previous key, from before a reset or a
      // recovery) says so without opening anything. `staleKey` tells the page which it was.
      let staleKey = false;
      try { staleKey = !equalBytes(fromB64(m.payload).slice(0, 8), await keyId(chat.key)); } catch { /* not even a key id */ }
      this.emit('rejected', { from: m.from, reason: e.message, staleKey });
      return null;
    }
  }
  /** Long-polls until stop(); reports 'status' changes and reconnects with backoff. */
  async run() {
    let backoff = 500, offline = false;
    while (!this.stopped) {
      try {
        // After a failure the first poll does not wait: the page says it is back as soon as the
        // relay answers, not when a long-poll ends.
        if (this.needPublish) {
          await this.call('/publish_key', { method: 'publish_key', identity_key: b64(this.identity.pub) });
          this.needPublish = false;
        }
        // The outbox first (as the Rust client's poll): what waited goes out in order.
        await this.flushOutbox();
        // 10 s long-polls: the relay counts each as presence, so a closed page looks away within
        // seconds (client_ui's ONLINE_SECS), at one request per 10 s per idle page.
        const n = await this.poll(offline ? 0 : this.pollWaitMs);
        if (offline) { offline = false; this.emit('status', { state: 'online' }); this.flushOutbox().catch(() => {}); }
        backoff = 500;
        if (n && this.held.size >= n) await new Promise((r) => setTimeout(r, 1000));
      } catch (e) {
        offline = true;
        this.emit('status', { state: 'offline', detail: e.message });
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 8000);
      }
    }
  }
  stop() { this.stopped = true; clearTimeout(this.flushTimer); this.flushTimer = null; }
}
