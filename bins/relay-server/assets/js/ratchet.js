// Forward secrecy in the browser: X3DH and the double ratchet, byte-identical with the Rust crate
// (mtproto-session/src/{x3dh,ratchet}.rs; docs/protocol.md §3.2, docs/crypto.md). Web Crypto
// only: X25519 (deriveBits), Ed25519 (sign/verify), HKDF-SHA256, HMAC-SHA256. ratchet_chat.js
// puts each message's key under crypto.js's MTProto 2.0 framing (msg_key, AES-256-CBC).
//
// What stays where (docs/crypto.md "The browser and the double ratchet"):
// - every private key (identity, Ed25519 signing key, signed and one-time prekeys, ephemeral and
//   ratchet keys) is a non-extractable CryptoKey, made with generateKey; page script can use it,
//   never read it. Persisted by structured clone in IndexedDB beside the sealed record.
// - the root key, chain keys and skipped message keys are bytes in JS memory: HKDF and HMAC give
//   bytes (deriveBits, sign), and the next step needs them as input, so Web Crypto cannot keep
//   them as keys. Persisted inside the record sealed with the origin's non-extractable AES-GCM
//   storage key (mtproto.js sealRecord). Replaced keys are overwritten with zeros (best effort:
//   the engine may have copied them).
//
// Nothing here talks to the relay; conversations.js wires it into RelayClient.

import { concat, utf8, hex, b64, fromB64, u32le, readU32, randomBytes, equalBytes } from './bytes.js';
import { subtle, PKCS8_ED25519_PREFIX } from './crypto.js';

// ---- constants (the Rust crate's names) ---------------------------------------------------------

/** Most message keys one received message may skip in one chain (Signal's MAX_SKIP). */
export const MAX_SKIP = 1000;
/** Most skipped message keys a conversation stores; beyond, the oldest are evicted. */
export const MAX_SKIPPED_KEYS = 2000;
/**
 * Most skipped message keys a client stores across ALL its conversations (Rust
 * MAX_SKIPPED_KEYS_TOTAL; docs/protocol.md §3.3): without it an attacker with N accounts gives a
 * victim N conversations of 2000 keys each (~250 KB each in the page's record, rewritten at every
 * save). 4000 is two conversations' worth: one may still use its whole store, and the saved keys
 * stay near 500 KB however many accounts write. conversations.js enforces it after every open
 * and on load: while over, the oldest keys of the conversation holding the most are evicted.
 */
export const MAX_SKIPPED_KEYS_TOTAL = 4000;
/**
 * The skip budget (Rust skip_budget; docs/protocol.md §3.3): chain steps one peer may make this
 * client derive at once and per SKIP_BUDGET_REFILL_SECS, refilled continuously. Before a packet
 * authenticates, the steps walked to its key are paid (Ratchet.walkCost); after, the skipped keys
 * it stores (planSkippedLen). A packet the budget cannot pay is refused ('skip_budget') before any
 * of them is derived. Messages in order cost nothing.
 */
export const SKIP_BUDGET = 4000;
export const SKIP_BUDGET_REFILL_SECS = 3600;
/** Skipped message keys older than this (30 days) are deleted. */
export const MAX_SKIPPED_AGE_SECS = 30 * 24 * 3600;
/** Earlier remote ratchet keys remembered (a replay of an old chain is MessageKeyGone). */
export const MAX_PREVIOUS_CHAINS = 64;
/** Most one-time prekeys a client holds secrets for. */
export const MAX_ONE_TIME_PREKEYS = 200;
/** Signed prekeys kept: the current one and two older ones. */
export const MAX_SIGNED_PREKEYS = 3;
/** MTProto's most data bytes in one frame (mtproto_crypto::MAX_DATA_LEN). */
export const MAX_DATA_LEN = 1 << 24;
export const HEADER_LEN = 40;
export const KIND_RATCHET = 0x01;
export const KIND_START = 0x02;
export const RATCHET_PREFIX_LEN = 1 + HEADER_LEN;
export const START_PREFIX_LEN = 1 + 32 + 32 + 4 + 1 + 4 + HEADER_LEN;
export const INNER_HEADER = 24;
export const FRAME_HEAD = 24;

const X3DH_INFO = utf8('mtproto-relay/x3dh/v1');
const SIGNED_PREKEY_LABEL = utf8('mtproto-relay/signed-prekey/v1');
const ROOT_INFO = utf8('mtproto-relay/ratchet/root/v1');
const PACKET_KEY_LABEL = utf8('mtproto-relay/ratchet/packet-key/v1');
const PKCS8_X25519_PREFIX = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);
const BASE_POINT = (() => { const b = new Uint8Array(32); b[0] = 9; return b; })();

// ---- errors -------------------------------------------------------------------------------------

/**
 * The errors, as Rust's `Error` variants: `code` is one of
 * 'decrypt' (forged, corrupted, reflected or malformed: one opaque error, no oracle),
 * 'message_key_gone' {n} (a replay, or a message whose key was used, evicted or expired),
 * 'too_many_skipped' {skip, max}, 'skip_budget' {need, left}, 'replay' {seq} (the receive window), 'dh' (a low-order key),
 * 'unknown_prekey' {which, id}, 'bad_prekey_signature', 'peer_identity_mismatch',
 * 'protocol' {reason}, 'limit' {what, max}, 'malformed' {field}.
 */
export class RatchetError extends Error {
  constructor(code, fields = {}, message = code) {
    super(message);
    this.name = 'RatchetError';
    this.code = code;
    Object.assign(this, fields);
  }
}
export const decryptError = () => new RatchetError('decrypt');
export const malformed = (field) => new RatchetError('malformed', { field }, `malformed ${field}`);

// ---- keys ---------------------------------------------------------------------------------------

/** A new X25519 key pair: {privateKey (non-extractable CryptoKey), pub (32 bytes)}. */
export async function generateX25519() {
  const pair = await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  return { privateKey: pair.privateKey, pub: new Uint8Array(await subtle.exportKey('raw', pair.publicKey)) };
}

/** A new Ed25519 identity signing key: {privateKey (non-extractable), pub (32 bytes)}. */
export async function generateSigningKey() {
  const pair = await subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  return { privateKey: pair.privateKey, pub: new Uint8Array(await subtle.exportKey('raw', pair.publicKey)) };
}

/** X25519(private, public) → 32 bytes; a low-order public key (all-zero output) is 'dh'. */
export async function x25519(privateKey, pub) {
  let out;
  try {
    const k = await subtle.importKey('raw', pub, { name: 'X25519' }, false, []);
    out = new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: k }, privateKey, 256));
  } catch { throw new RatchetError('dh', {}, 'low-order X25519 key'); }
  // Chromium refuses the all-zero result itself (OperationError); checked again for engines that do not.
  if (out.every((b) => b === 0)) throw new RatchetError('dh', {}, 'low-order X25519 key');
  return out;
}

/**
 * The X25519 key pair of a known 32-byte secret, the private key non-extractable. For known-answer
 * tests (and restores of secrets that already exist as bytes); production keys come from
 * generateX25519. The public key is X25519(secret, 9), computed by Web Crypto.
 */
export async function importX25519Secret(secret) {
  const pkcs8 = concat(PKCS8_X25519_PREFIX, secret);
  try {
    const privateKey = await subtle.importKey('pkcs8', pkcs8, { name: 'X25519' }, false, ['deriveBits']);
    const base = await subtle.importKey('raw', BASE_POINT, { name: 'X25519' }, false, []);
    return { privateKey, pub: new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: base }, privateKey, 256)) };
  } finally { pkcs8.fill(0); }
}

/**
 * The Ed25519 signing key of a 32-byte seed (RFC 8410 PKCS#8), for known-answer tests. The public
 * half is read from a short-lived extractable copy; the key returned is non-extractable.
 */
export async function importSigningSeed(seed) {
  const pkcs8 = concat(PKCS8_ED25519_PREFIX, seed);
  try {
    const tmp = await subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, true, ['sign']);
    const { x } = await subtle.exportKey('jwk', tmp);
    const pub = fromB64(x.replace(/-/g, '+').replace(/_/g, '/') + '=');
    const privateKey = await subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
    return { privateKey, pub };
  } finally { pkcs8.fill(0); }
}

/** Randomness: `bytes(n)` and `keyPair()` (an X25519 pair). Tests pass a deterministic one. */
export const systemRandom = {
  async bytes(n) { return randomBytes(n); },
  keyPair: generateX25519,
};

// ---- KDFs ---------------------------------------------------------------------------------------

async function hkdf(salt, ikm, info, bytes) {
  const k = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info }, k, bytes * 8));
}

/** KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = ROOT_INFO, 64) → [rk', ck]. */
export async function kdfRk(rk, dh) {
  const out = await hkdf(rk, dh, ROOT_INFO, 64);
  const r = [out.slice(0, 32), out.slice(32)];
  out.fill(0);
  return r;
}

/** KDF_CK(ck) → [ck' = HMAC-SHA256(ck, 0x02), mk = HMAC-SHA256(ck, 0x01)]. */
/** HMAC-SHA256(ck, 0x02): the next chain key only. */
export async function kdfCkNext(ck) {
  const k = await subtle.importKey('raw', ck, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return new Uint8Array(await subtle.sign('HMAC', k, Uint8Array.of(2)));
}
export async function kdfCk(ck) {
  const k = await subtle.importKey('raw', ck, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const [next, mk] = await Promise.all([subtle.sign('HMAC', k, Uint8Array.of(2)), subtle.sign('HMAC', k, Uint8Array.of(1))]);
  return [new Uint8Array(next), new Uint8Array(mk)];
}

/** K = HKDF-SHA256(salt = "mtproto-relay/ratchet/packet-key/v1", ikm = mk, info = AD, 256): the frame's key. */
export async function packetKey(mk, ad) { return hkdf(PACKET_KEY_LABEL, mk, ad, 256); }

// ---- prekeys and bundles ------------------------------------------------------------------------

/** "mtproto-relay/signed-prekey/v1" ‖ IK (32) ‖ id (4, LE) ‖ SPK (32): what the signature covers. */
export function signedPrekeyStatement(identity, id, pub) { return concat(SIGNED_PREKEY_LABEL, identity, u32le(id), pub); }

/** Checks the bundle's signed prekey signature under its signing key ('bad_prekey_signature'). */
export async function verifyBundle(bundle) {
  let ok = false;
  try {
    const k = await subtle.importKey('raw', bundle.signingKey, { name: 'Ed25519' }, false, ['verify']);
    const sp = bundle.signedPrekey;
    ok = await subtle.verify({ name: 'Ed25519' }, k, sp.signature, signedPrekeyStatement(bundle.identity, sp.id, sp.public));
  } catch { ok = false; }
  if (!ok) throw new RatchetError('bad_prekey_signature');
}

const isU32 = (v) => Number.isInteger(v) && v >= 0 && v <= 0xFFFFFFFF;
export function bytesOf(v, len, field) {
  let b;
  try { b = typeof v === 'string' ? fromB64(v) : v; } catch { throw malformed(field); }
  if (!(b instanceof Uint8Array) || b.length !== len) throw malformed(field);
  return b;
}

/** A bundle as the relay hands it out (JSON, binary fields base64, docs/protocol.md §3.2) → its object form. */
export function bundleFromJson(j) {
  if (!j || typeof j !== 'object' || !j.signed_prekey || !isU32(j.signed_prekey.id)) throw malformed('bundle');
  const o = j.one_time_prekey;
  if (o !== null && o !== undefined && !isU32(o.id)) throw malformed('one_time_prekey');
  return {
    identity: bytesOf(j.identity, 32, 'identity'),
    signingKey: bytesOf(j.signing_key, 32, 'signing_key'),
    signedPrekey: { id: j.signed_prekey.id, public: bytesOf(j.signed_prekey.public, 32, 'signed_prekey'),
      signature: bytesOf(j.signed_prekey.signature, 64, 'signature') },
    oneTimePrekey: o ? { id: o.id, public: bytesOf(o.public, 32, 'one_time_prekey') } : null,
  };
}

/** The JSON form of a bundle (as Rust's serde writes it). */
export function bundleToJson(b) {
  return {
    identity: b64(b.identity), signing_key: b64(b.signingKey),
    signed_prekey: { id: b.signedPrekey.id, public: b64(b.signedPrekey.public), signature: b64(b.signedPrekey.signature) },
    one_time_prekey: b.oneTimePrekey ? { id: b.oneTimePrekey.id, public: b64(b.oneTimePrekey.public) } : null,
  };
}

/**
 * The prekey secrets a client keeps (Rust `x3dh::Prekeys`): its signed prekeys (the current one
 * last, MAX_SIGNED_PREKEYS kept) and its unused one-time prekeys, every private key a
 * non-extractable CryptoKey. Ids are never reused.
 */
export class Prekeys {
  constructor({ identity, signingKey, signed = [], oneTime = [], nextId = 1 }) {
    this.identity = identity;
    this.signingKey = signingKey;
    this.signed = signed; // [{id, pair: {privateKey, pub}, signature, created}]
    this.oneTime = new Map(oneTime); // id -> {privateKey, pub}
    this.nextId = nextId;
  }
  /** Prekeys for the identity public key `identity` with a first signed prekey, signed by `signing` ({privateKey, pub}). */
  static async create(identity, signing, nowSecs, rng = systemRandom) {
    const p = new Prekeys({ identity, signingKey: signing.pub });
    await p.rotateSignedPrekey(signing, nowSecs, rng);
    return p;
  }
  takeId() { const id = this.nextId; this.nextId = Math.min(this.nextId + 1, 0xFFFFFFFF); return id; }
  /** Makes a new signed prekey current and returns its public form; the oldest beyond 3 are deleted. */
  async rotateSignedPrekey(signing, nowSecs, rng = systemRandom) {
    const pair = await rng.keyPair();
    const id = this.takeId();
    const signature = new Uint8Array(await subtle.sign({ name: 'Ed25519' }, signing.privateKey, signedPrekeyStatement(this.identity, id, pair.pub)));
    this.signed.push({ id, pair, signature, created: nowSecs });
    if (this.signed.length > MAX_SIGNED_PREKEYS) this.signed.splice(0, this.signed.length - MAX_SIGNED_PREKEYS);
    return this.signedPrekey();
  }
  /** The current signed prekey: {id, public, signature}. */
  signedPrekey() { const s = this.signed[this.signed.length - 1]; return { id: s.id, public: s.pair.pub, signature: s.signature }; }
  signedPrekeyCreated() { return this.signed.length ? this.signed[this.signed.length - 1].created : null; }
  /** Makes `count` one-time prekeys and returns their public forms ('limit' beyond 200 held: nothing made). */
  async generateOneTime(count, rng = systemRandom) {
    if (this.oneTime.size + count > MAX_ONE_TIME_PREKEYS) throw new RatchetError('limit', { what: 'one-time prekeys', max: MAX_ONE_TIME_PREKEYS });
    const made = [];
    for (let i = 0; i < count; i++) made.push(await rng.keyPair());
    return made.map((pair) => { const id = this.takeId(); this.oneTime.set(id, pair); return { id, public: pair.pub }; });
  }
  oneTimeCount() { return this.oneTime.size; }
  /** Deletes the `n` oldest one-time prekeys (to make room for new ones: at most 200 are held). */
  dropOldestOneTime(n) {
    for (const id of [...this.oneTime.keys()].slice(0, Math.max(0, n))) this.oneTime.delete(id);
  }
  /** Deletes a one-time prekey once the start that used it opened; whether it was held. */
  consumeOneTime(id) { return this.oneTime.delete(id); }
  /** A bundle as the relay would hand it out, with the current signed prekey. */
  bundle(oneTimePrekey = null) {
    return { identity: this.identity, signingKey: this.signingKey, signedPrekey: this.signedPrekey(), oneTimePrekey };
  }
  signedPair(id) {
    const s = this.signed.find((x) => x.id === id);
    if (!s) throw new RatchetError('unknown_prekey', { which: 'signed', id });
    return s.pair;
  }
  oneTimePair(id) {
    const p = this.oneTime.get(id);
    if (!p) throw new RatchetError('unknown_prekey', { which: 'one-time', id });
    return p;
  }
  /** {keys (CryptoKeys only: IndexedDB, structured clone), data (bytes and numbers: seal it)}. */
  toRecord() {
    return {
      keys: { signed: this.signed.map((s) => s.pair.privateKey), oneTime: [...this.oneTime].map(([id, p]) => [id, p.privateKey]) },
      data: { v: 1, identity: this.identity, signingKey: this.signingKey, nextId: this.nextId,
        signed: this.signed.map((s) => ({ id: s.id, pub: s.pair.pub, signature: s.signature, created: s.created })),
        oneTime: [...this.oneTime].map(([id, p]) => [id, p.pub]) },
    };
  }
  static fromRecord({ keys, data }) {
    if (data?.v !== 1 || !isU32(data.nextId) || data.signed.length !== keys.signed.length || data.signed.length > MAX_SIGNED_PREKEYS || data.signed.length === 0
      || data.oneTime.length !== keys.oneTime.length || data.oneTime.length > MAX_ONE_TIME_PREKEYS) throw malformed('prekeys');
    return new Prekeys({
      identity: bytesOf(data.identity, 32, 'identity'), signingKey: bytesOf(data.signingKey, 32, 'signing key'), nextId: data.nextId,
      signed: data.signed.map((s, i) => ({ id: s.id, pair: { privateKey: keys.signed[i], pub: bytesOf(s.pub, 32, 'prekey') }, signature: bytesOf(s.signature, 64, 'signature'), created: s.created })),
      oneTime: data.oneTime.map(([id, pub], i) => {
        if (keys.oneTime[i][0] !== id) throw malformed('prekeys');
        return [id, { privateKey: keys.oneTime[i][1], pub: bytesOf(pub, 32, 'prekey') }];
      }),
    });
  }
}

// ---- X3DH ---------------------------------------------------------------------------------------

async function x3dhKdf(dhs) {
  const ikm = concat(new Uint8Array(32).fill(0xFF), ...dhs);
  try { return await hkdf(new Uint8Array(32), ikm, X3DH_INFO, 32); } finally { ikm.fill(0); for (const d of dhs) d.fill(0); }
}

/**
 * The initiator's side (X3DH §3.3): checks that the bundle is for `expectedPeer` (the identity
 * known for that contact) and its signature, then agrees with the ephemeral pair `ephemeral`.
 * → {sharedSecret (32 bytes), ad (64), start: {identity, ephemeral, signedPrekeyId,
 * oneTimePrekeyId|null}, signedPrekey (32), oneTimePrekey (id|null)}.
 */
export async function x3dhInitiate(identity, bundle, expectedPeer, ephemeral) {
  if (!equalBytes(bundle.identity, expectedPeer)) throw new RatchetError('peer_identity_mismatch');
  await verifyBundle(bundle);
  const spk = bundle.signedPrekey.public;
  const dhs = [await x25519(identity.privateKey, spk), await x25519(ephemeral.privateKey, bundle.identity), await x25519(ephemeral.privateKey, spk)];
  if (bundle.oneTimePrekey) dhs.push(await x25519(ephemeral.privateKey, bundle.oneTimePrekey.public));
  const opk = bundle.oneTimePrekey ? bundle.oneTimePrekey.id : null;
  return {
    sharedSecret: await x3dhKdf(dhs), ad: concat(identity.pub, bundle.identity),
    start: { identity: identity.pub, ephemeral: ephemeral.pub, signedPrekeyId: bundle.signedPrekey.id, oneTimePrekeyId: opk },
    signedPrekey: spk, oneTimePrekey: opk,
  };
}

/**
 * The responder's side (X3DH §3.4). It does not delete the one-time prekey (consumeOneTime once
 * the first message opened: an unauthenticated start must not burn it).
 */
export async function x3dhRespond(identity, prekeys, start) {
  const spk = prekeys.signedPair(start.signedPrekeyId);
  const opk = start.oneTimePrekeyId === null ? null : prekeys.oneTimePair(start.oneTimePrekeyId);
  const dhs = [await x25519(spk.privateKey, start.identity), await x25519(identity.privateKey, start.ephemeral), await x25519(spk.privateKey, start.ephemeral)];
  if (opk) dhs.push(await x25519(opk.privateKey, start.ephemeral));
  return {
    sharedSecret: await x3dhKdf(dhs), ad: concat(start.identity, identity.pub), start,
    signedPrekey: spk.pub, oneTimePrekey: start.oneTimePrekeyId,
  };
}

// ---- the double ratchet (keys only) -------------------------------------------------------------

/** dh (32) ‖ pn (4, LE) ‖ n (4, LE). */
export function encodeHeader(h) { return concat(h.dh, u32le(h.pn), u32le(h.n)); }
export function decodeHeader(b) { return { dh: b.slice(0, 32), pn: readU32(b, 32), n: readU32(b, 36) }; }

const skipId = (dhHex, n) => `${dhHex}:${n}`;

const REFILL_MS = SKIP_BUDGET_REFILL_SECS * 1000;
/**
 * One peer's skip budget (Rust skip_budget::SkipBudget), kept on its Chat (the receive window),
 * never saved. Counted in units: a chain step is REFILL_MS units, a millisecond adds SKIP_BUDGET
 * (exact in a double: at most 1.44e10).
 */
export class SkipBudget {
  constructor() { this.units = 0; this.atMs = 0; }
  unitsAt(nowMs) {
    return Math.min(SKIP_BUDGET * REFILL_MS, this.units + Math.max(0, Math.floor(nowMs - this.atMs)) * SKIP_BUDGET);
  }
  left(nowMs) { return Math.floor(this.unitsAt(nowMs) / REFILL_MS); }
  /** Pays `steps` chain steps, or throws RatchetError 'skip_budget' {need, left} changing nothing. */
  spend(steps, nowMs) {
    if (steps === 0) return;
    if (!Number.isFinite(nowMs)) throw new RatchetError('protocol', { reason: 'no valid time' });
    // The clock went back (a correction): refill from now, not from a future instant.
    if (nowMs < this.atMs) this.atMs = nowMs;
    const units = this.unitsAt(nowMs);
    if (steps * REFILL_MS > units) {
      throw new RatchetError('skip_budget', { need: steps, left: Math.floor(units / REFILL_MS) },
        `the sender's skip budget is spent: ${steps} chain steps needed, ${Math.floor(units / REFILL_MS)} left`);
    }
    this.units = units - steps * REFILL_MS;
    this.atMs = nowMs;
  }
}
/** The skipped keys a plan stores once finished: the budget's charge after authentication. */
export const planSkippedLen = (plan) => plan.deferred.reduce((n, d) => n + Math.max(0, d.to - d.from), 0);

function checkSkip(from, to) {
  const count = Math.max(0, to - from);
  if (count > MAX_SKIP) throw new RatchetError('too_many_skipped', { skip: count, max: MAX_SKIP }, `too many skipped messages (${count} > ${MAX_SKIP})`);
}

/** The keys `from..to` of chain `ck` pushed to `out` as [dh, n, mk]; the chain key at `to`. */
async function skip(ck, dh, from, to, out) {
  checkSkip(from, to);
  for (let n = from; n < to; n++) {
    const [next, mk] = await kdfCk(ck);
    out.push([dh, n, mk]);
    ck = next;
  }
  return ck;
}

/**
 * The chain key at `to` of chain `ck` (at `from`): chain steps only, no message keys. What a
 * packet needs before it can be authenticated; the skipped message keys on the way are derived
 * once it did (Ratchet.finishPlan), so a forged packet costs one HMAC per step, not two, and
 * nothing for the rest of the previous chain (docs/protocol.md §3.2, the cost of a forged packet).
 */
async function walk(ck, from, to) {
  checkSkip(from, to);
  for (let n = from; n < to; n++) ck = await kdfCkNext(ck);
  return ck;
}

/**
 * One side's double-ratchet state (Rust `ratchet::Ratchet`). planOpen computes without changing
 * anything; commit applies once the packet authenticated.
 */
export class Ratchet {
  constructor(s) {
    this.root = s.root;
    this.dhSelf = s.dhSelf; // {privateKey, pub}
    this.dhRemote = s.dhRemote ?? null;
    this.send = s.send ?? null;
    this.recv = s.recv ?? null;
    this.ns = s.ns ?? 0;
    this.nr = s.nr ?? 0;
    this.pn = s.pn ?? 0;
    // "dhHex:n" -> {dh, n, key, storedAt}; Map order is insertion order (oldest first).
    this.skipped = new Map();
    for (const [dh, n, key, storedAt] of s.skipped || []) this.skipped.set(skipId(hex(dh), n), { dh, n, key, storedAt });
    this.previousRemote = [...(s.previousRemote || [])].map(hex); // hex, newest last
  }
  /** RatchetInitAlice: the responder's signed prekey is the first remote key. */
  static async initInitiator(sk, remote, dhSelf) {
    const [root, send] = await kdfRk(sk, await x25519(dhSelf.privateKey, remote));
    return new Ratchet({ root, dhSelf, dhRemote: remote, send });
  }
  /** RatchetInitBob: the signed prekey pair is the first ratchet pair; no sending chain yet. */
  static initResponder(sk, signedPrekey) { return new Ratchet({ root: sk.slice(), dhSelf: signedPrekey }); }
  get publicKey() { return this.dhSelf.pub; }
  skippedCount() { return this.skipped.size; }

  /** The header and key of the next message (one chain step). */
  async nextSend() {
    if (!this.send) throw new RatchetError('protocol', { reason: 'no sending chain before the first received message' });
    if (this.ns >= 0xFFFFFFFF) throw new RatchetError('limit', { what: 'messages in one sending chain', max: 0xFFFFFFFF });
    const n = this.ns;
    const [next, mk] = await kdfCk(this.send);
    this.send.fill(0);
    this.send = next;
    this.ns = n + 1;
    return { header: { dh: this.dhSelf.pub, pn: this.pn, n }, mk };
  }

  findSkipped(dhHex, n, nowSecs) {
    const s = this.skipped.get(skipId(dhHex, n));
    return s && nowSecs - s.storedAt <= MAX_SKIPPED_AGE_SECS ? s : null;
  }

  /**
   * Whether a message with `header` belongs to a chain this state has seen (Rust
   * Ratchet::recognizes): the current receiving chain, an earlier one, or a stored skipped key.
   */
  recognizes(header, nowSecs) {
    const dhHex = hex(header.dh);
    return (this.dhRemote !== null && equalBytes(this.dhRemote, header.dh)) || this.previousRemote.includes(dhHex)
      || !!this.findSkipped(dhHex, header.n, nowSecs);
  }

  /**
   * The chain steps opening a message with `header` walks before its packet can be authenticated
   * (Rust Ratchet::walk_cost): the numbers before it in its chain; none for a key in the store,
   * a message in order, or a header planOpen refuses before any step.
   */
  walkCost(header, nowSecs) {
    const dhHex = hex(header.dh);
    if (this.findSkipped(dhHex, header.n, nowSecs) || this.previousRemote.includes(dhHex)) return 0;
    const same = this.dhRemote !== null && equalBytes(this.dhRemote, header.dh);
    if (same && !this.recv) return 0;
    const steps = Math.max(0, header.n - (same ? this.nr : 0));
    return steps > MAX_SKIP ? 0 : steps;
  }

  /**
   * What opening a message with `header` needs (§3.5 RatchetDecrypt): the message key, and the
   * skipped keys on the way as chains still to derive (`deferred`, by finishPlan once the packet
   * authenticated). Changes nothing.
   */
  async planOpen(header, nowSecs, rng = systemRandom) {
    const dhHex = hex(header.dh);
    const s = this.findSkipped(dhHex, header.n, nowSecs);
    // A copy: the stored key may be evicted (zeroized) by the client-wide bound while this plan waits.
    if (s) return { key: s.key.slice(), skippedUsed: skipId(dhHex, header.n), newlySkipped: [], deferred: [], next: null };
    const gone = () => new RatchetError('message_key_gone', { n: header.n }, `the key of message ${header.n} is gone (used, evicted or expired)`);
    if (this.previousRemote.includes(dhHex)) throw gone();
    const deferred = [];
    const same = this.dhRemote !== null && equalBytes(this.dhRemote, header.dh);
    if (same && this.recv) {
      if (header.n < this.nr) throw gone();
      const ck = await walk(this.recv, this.nr, header.n);
      deferred.push({ ck: this.recv, dh: header.dh, from: this.nr, to: header.n });
      const [recv, mk] = await kdfCk(ck);
      return { key: mk, skippedUsed: null, newlySkipped: [], deferred, next: {
        root: this.root, dhSelf: this.dhSelf, dhRemote: header.dh, send: this.send, recv,
        ns: this.ns, nr: Math.min(header.n + 1, 0xFFFFFFFF), pn: this.pn } };
    }
    // The initiator's first remote key is the responder's signed prekey, which never carries messages.
    if (same) throw new RatchetError('protocol', { reason: 'message under the signed prekey' });
    // The new chain's bound before any derivation or DH work.
    if (header.n > MAX_SKIP) throw new RatchetError('too_many_skipped', { skip: header.n, max: MAX_SKIP }, `too many skipped messages (${header.n} > ${MAX_SKIP})`);
    // §3.5: skip the rest of the previous receiving chain (derived once authenticated), then DHRatchet.
    if (this.recv && this.dhRemote) {
      const to = Math.max(header.pn, this.nr);
      checkSkip(this.nr, to);
      deferred.push({ ck: this.recv, dh: this.dhRemote, from: this.nr, to });
    }
    const [root1, recv0] = await kdfRk(this.root, await x25519(this.dhSelf.privateKey, header.dh));
    const dhSelf = await rng.keyPair();
    const [root, send] = await kdfRk(root1, await x25519(dhSelf.privateKey, header.dh));
    const ck = await walk(recv0, 0, header.n);
    deferred.push({ ck: recv0, dh: header.dh, from: 0, to: header.n });
    const [recv, mk] = await kdfCk(ck);
    return { key: mk, skippedUsed: null, newlySkipped: [], deferred, next: {
      root, dhSelf, dhRemote: header.dh, send, recv, ns: 0, nr: Math.min(header.n + 1, 0xFFFFFFFF), pn: this.ns } };
  }

  /**
   * Derives the skipped message keys a plan deferred (its packet authenticated). Changes only
   * the plan: the state changes in commit.
   */
  async finishPlan(plan) {
    for (const d of plan.deferred) await skip(d.ck, d.dh, d.from, d.to, plan.newlySkipped);
    plan.deferred = [];
  }

  /** Applies a plan once its message authenticated: used key deleted, skipped keys stored, old ones expired. */
  commit(plan, nowSecs) {
    if (plan.deferred.length) throw new RatchetError('protocol', { reason: 'commit before finishPlan' });
    if (plan.skippedUsed) {
      const used = this.skipped.get(plan.skippedUsed);
      this.skipped.delete(plan.skippedUsed);
      used?.key.fill(0);
    }
    for (const [dh, n, key] of plan.newlySkipped) this.skipped.set(skipId(hex(dh), n), { dh, n, key, storedAt: nowSecs });
    this.expire(nowSecs);
    const next = plan.next;
    if (next) {
      if (this.dhRemote && !equalBytes(this.dhRemote, next.dhRemote)) {
        this.previousRemote.push(hex(this.dhRemote));
        if (this.previousRemote.length > MAX_PREVIOUS_CHAINS) this.previousRemote.shift();
      }
      for (const k of ['root', 'send', 'recv']) if (this[k] && this[k] !== next[k]) this[k].fill(0);
      Object.assign(this, { root: next.root, dhSelf: next.dhSelf, dhRemote: next.dhRemote, send: next.send,
        recv: next.recv, ns: next.ns, nr: next.nr, pn: next.pn });
    }
    plan.key.fill(0);
  }

  /** Deletes skipped keys older than 30 days and the oldest beyond MAX_SKIPPED_KEYS. */
  expire(nowSecs) {
    for (const [id, s] of this.skipped) if (nowSecs - s.storedAt > MAX_SKIPPED_AGE_SECS) { s.key.fill(0); this.skipped.delete(id); }
    for (const [id, s] of this.skipped) {
      if (this.skipped.size <= MAX_SKIPPED_KEYS) break;
      s.key.fill(0);
      this.skipped.delete(id);
    }
  }

  /**
   * Evicts (zeroizes) the `n` oldest skipped keys, or all when fewer are stored; returns how many
   * went (Rust Ratchet::drop_oldest_skipped). Their messages then fail with 'message_key_gone'.
   */
  dropOldestSkipped(n) {
    let dropped = 0;
    for (const [id, s] of this.skipped) {
      if (dropped >= n) break;
      s.key.fill(0);
      this.skipped.delete(id);
      dropped++;
    }
    return dropped;
  }

  /** {keys: {dhSelf: CryptoKey}, data} — copies, so the record does not alias the live state. */
  toRecord() {
    const c = (b) => (b ? b.slice() : null);
    return {
      keys: { dhSelf: this.dhSelf.privateKey },
      data: { root: c(this.root), dhSelfPub: c(this.dhSelf.pub), dhRemote: c(this.dhRemote), send: c(this.send), recv: c(this.recv),
        ns: this.ns, nr: this.nr, pn: this.pn,
        skipped: [...this.skipped.values()].map((s) => [s.dh.slice(), s.n, s.key.slice(), s.storedAt]),
        previousRemote: [...this.previousRemote] },
    };
  }
  /** Restores a saved state; one over a bound, or malformed, is refused ('malformed'). */
  static fromRecord({ keys, data }) {
    const d = data;
    if (!d || !Array.isArray(d.skipped) || !Array.isArray(d.previousRemote)
      || d.skipped.length > MAX_SKIPPED_KEYS || d.previousRemote.length > MAX_PREVIOUS_CHAINS
      || ![d.ns, d.nr, d.pn].every(isU32) || !(keys?.dhSelf instanceof CryptoKey)) throw malformed('ratchet');
    const opt = (b, f) => (b === null || b === undefined ? null : bytesOf(b, 32, f).slice());
    return new Ratchet({
      root: bytesOf(d.root, 32, 'root').slice(), dhSelf: { privateKey: keys.dhSelf, pub: bytesOf(d.dhSelfPub, 32, 'ratchet key').slice() },
      dhRemote: opt(d.dhRemote, 'remote key'), send: opt(d.send, 'send chain'), recv: opt(d.recv, 'receive chain'),
      ns: d.ns, nr: d.nr, pn: d.pn,
      skipped: d.skipped.map(([dh, n, key, at]) => {
        if (!isU32(n) || !Number.isFinite(at)) throw malformed('skipped key');
        return [bytesOf(dh, 32, 'skipped key').slice(), n, bytesOf(key, 32, 'skipped key').slice(), at];
      }),
      previousRemote: d.previousRemote.map((h) => { if (!/^[0-9a-f]{64}$/.test(h)) throw malformed('previous key'); return Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16)); }),
    });
  }
}
