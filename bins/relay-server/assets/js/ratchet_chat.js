// A conversation under the double ratchet, in MTProto 2.0 packets (Rust: mtproto-session
// ratchet_chat): the packet kinds and prefixes, RatchetChat (start, seal, open, the receive
// window shared with the static chat), and the sealed records that persist it. The keys, X3DH
// and the ratchet itself are in ratchet.js.

import { concat, hex, u32le, u64le, readU32, equalBytes } from './bytes.js';
import { sha256, seal as sealFrame, open as openFrame, LAYOUT_E2E } from './crypto.js';
import { sealRecord, openRecord } from './store.js';
import {
  MAX_DATA_LEN, HEADER_LEN, KIND_RATCHET, KIND_START, RATCHET_PREFIX_LEN, START_PREFIX_LEN,
  INNER_HEADER, FRAME_HEAD, RatchetError, decryptError, malformed, systemRandom, packetKey,
  bytesOf, Prekeys, x3dhInitiate, x3dhRespond, encodeHeader, decodeHeader, SkipBudget,
  planSkippedLen, Ratchet,
} from './ratchet.js';

/** 'static', 'ratchet', 'start' or null, from the length and first byte alone (nothing decrypted). */
export function packetKind(packet) {
  const framed = (prefix) => { const rest = packet.length - prefix - FRAME_HEAD; return rest >= 16 && rest % 16 === 0; };
  if (framed(0)) return 'static';
  if (packet[0] === KIND_RATCHET && framed(RATCHET_PREFIX_LEN)) return 'ratchet';
  if (packet[0] === KIND_START && framed(START_PREFIX_LEN)) return 'start';
  return null;
}

function encodePrefix(start, header) {
  if (!start) return concat(Uint8Array.of(KIND_RATCHET), encodeHeader(header));
  const has = start.oneTimePrekeyId !== null;
  return concat(Uint8Array.of(KIND_START), start.identity, start.ephemeral, u32le(start.signedPrekeyId),
    Uint8Array.of(has ? 1 : 0), u32le(has ? start.oneTimePrekeyId : 0), encodeHeader(header));
}

/** {start|null, header, len}; anything malformed is the opaque 'decrypt' (attacker-controlled input). */
function decodePrefix(packet) {
  let start = null, at = 1;
  if (packet[0] === KIND_START) {
    if (packet.length < START_PREFIX_LEN) throw decryptError();
    const has = packet[69], opk = readU32(packet, 70);
    if (!(has === 1 || (has === 0 && opk === 0))) throw decryptError();
    start = { identity: packet.slice(1, 33), ephemeral: packet.slice(33, 65), signedPrekeyId: readU32(packet, 65), oneTimePrekeyId: has ? opk : null };
    at = 74;
  } else if (packet[0] !== KIND_RATCHET || packet.length < RATCHET_PREFIX_LEN) throw decryptError();
  return { start, header: decodeHeader(packet.slice(at, at + HEADER_LEN)), len: at + HEADER_LEN };
}

/**
 * One side of a conversation under the double ratchet (Rust `RatchetChat`): X3DH start, ratchet
 * keys and the MTProto 2.0 framing of mtproto.js under each message's key. It owns no receive
 * window: every message to or from the peer, static or ratchet, in any conversation, is numbered
 * by and checked against the pair's one window, the static conversation (mtproto.js `Chat`),
 * passed to seal, open and accept (docs/protocol.md §3.3). seal and
 * open run one at a time (a chain step must never be read twice).
 */
export class RatchetChat {
  constructor({ ratchet, own, peer, initiator, pendingStart, startEphemeral }) {
    Object.assign(this, { ratchet, own, peer, initiator, pendingStart: pendingStart || null, startEphemeral });
    this.queue = Promise.resolve();
  }
  exclusive(fn) {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * Starts a conversation from the peer's bundle (X3DH, then RatchetInitAlice). `identity` is
   * {privateKey, pub}; `expectedPeer` the identity key known for that contact. Draws the ephemeral
   * key, then the first ratchet key. → {chat, oneTimePrekey: id | null (started without one)}.
   */
  static async initiate(identity, bundle, expectedPeer, { rng = systemRandom } = {}) {
    const ephemeral = await rng.keyPair();
    const ratchetKey = await rng.keyPair();
    const a = await x3dhInitiate(identity, bundle, expectedPeer, ephemeral);
    const ratchet = await Ratchet.initInitiator(a.sharedSecret, a.signedPrekey, ratchetKey);
    a.sharedSecret.fill(0);
    const chat = new RatchetChat({ ratchet, own: identity.pub, peer: expectedPeer, initiator: true, pendingStart: a.start,
      startEphemeral: a.start.ephemeral.slice() });
    return { chat, oneTimePrekey: a.oneTimePrekey };
  }

  /**
   * Opens a start message (X3DH responder, RatchetInitBob, then the message) under `window`, the
   * pair's static conversation: a start whose identity is not `window.peer` is refused
   * ('peer_identity_mismatch'). The one-time prekey is deleted from `prekeys` once the message
   * opened; nothing changes on error (neither the prekeys nor the window).
   * → {chat, peer (their identity key), oneTimePrekey: id | null, received}.
   */
  static async accept(identity, prekeys, window, packet, { nowMs = Date.now(), rng = systemRandom } = {}) {
    const prefix = decodePrefix(packet);
    if (!prefix.start) throw new RatchetError('protocol', { reason: 'not a start message' });
    const start = prefix.start;
    if (!equalBytes(start.identity, window.peer) || !equalBytes(identity.pub, window.own)) throw new RatchetError('peer_identity_mismatch');
    const a = await x3dhRespond(identity, prekeys, start);
    const chat = new RatchetChat({ ratchet: Ratchet.initResponder(a.sharedSecret, prekeys.signedPair(start.signedPrekeyId)),
      own: identity.pub, peer: start.identity, initiator: false, pendingStart: null, startEphemeral: start.ephemeral.slice() });
    a.sharedSecret.fill(0);
    const received = await chat.open(window, packet, { nowMs, rng });
    if (start.oneTimePrekeyId !== null) prekeys.consumeOneTime(start.oneTimePrekeyId);
    return { chat, peer: start.identity, oneTimePrekey: start.oneTimePrekeyId, received };
  }

  /** The start's ephemeral key (EK_A) of a start packet, or null: how a client recognises a repeated start. */
  static startEphemeralOf(packet) {
    try { const p = decodePrefix(packet); return p.start ? p.start.ephemeral : null; } catch { return null; }
  }
  /** The identity key (IK_A) a start packet names, or null (not a well-formed start). */
  static startIdentityOf(packet) {
    try { const p = decodePrefix(packet); return p.start ? p.start.identity : null; } catch { return null; }
  }

  /**
   * Whether `packet` belongs to a chain this conversation has seen (Rust RatchetChat::recognizes):
   * a client with two conversations with one peer tries that one first; false for anything that
   * is not a ratchet packet.
   */
  recognizes(packet, nowMs = Date.now()) {
    let p;
    try { p = decodePrefix(packet); } catch { return false; }
    return this.ratchet.recognizes(p.header, Math.floor(nowMs / 1000));
  }

  get ad() { return this.initiator ? concat(this.own, this.peer) : concat(this.peer, this.own); }
  get startPending() { return this.pendingStart !== null; }
  /** Whether `window` is this pair's (the same two identity keys). */
  checkWindow(window) {
    if (!window || !equalBytes(window.own, this.own) || !equalBytes(window.peer, this.peer)) throw new RatchetError('peer_identity_mismatch');
  }

  /**
   * Seals `body` (bytes) as the next message, numbered by `window` (its out counter): one chain
   * step, its key used once. Draws the random_id (8 bytes) then the padding (76), as Rust.
   * → {packet, randomId, seq}.
   */
  seal(window, body, { nowMs = Date.now(), rng = systemRandom } = {}) {
    return this.exclusive(async () => {
      this.checkWindow(window);
      const prefixLen = this.pendingStart ? START_PREFIX_LEN : RATCHET_PREFIX_LEN;
      const dataLen = prefixLen + INNER_HEADER + body.length;
      if (dataLen > MAX_DATA_LEN) throw new RatchetError('limit', { what: 'message', max: MAX_DATA_LEN });
      const randomId = await rng.bytes(8);
      const { header, mk } = await this.ratchet.nextSend();
      // The seq is taken with the chain step, before any other await: a static seal or another
      // conversation's seal under the same window never gets the same number.
      const seq = window.sent;
      window.sent = seq + 1;
      try {
        const prefix = encodePrefix(this.pendingStart, header);
        const key = await packetKey(mk, this.ad);
        mk.fill(0);
        const payload = concat(u32le(dataLen), prefix, randomId, u32le(seq), u32le(window.recvLow), u64le(Math.floor(nowMs)), body);
        // Padding as mtproto_crypto's Framing::seal: one draw of 76 bytes, the first picks 0..3 extra blocks.
        const r = await rng.bytes(76);
        const min = 12 + ((16 - ((payload.length + 12) % 16)) % 16);
        const frame = await sealFrame(key, window.sendX, payload, r.slice(1, 1 + min + 16 * (r[0] % 4)));
        key.fill(0); payload.fill(0);
        return { packet: concat(prefix, frame), randomId, seq };
      } catch (e) { window.releaseUnsent(seq); throw e; }
    });
  }

  /**
   * Opens a packet from the peer: finds the key (skipped store, chain steps, or a DH step drawing
   * a new ratchet key), opens the frame, checks the encrypted copy of the prefix, then `window`'s
   * receive window; only then does anything change. → what Chat.accept returns ({body, seq,
   * inSeq, delivery, lost, randomId, sentAtMs, ahead}). Errors: RatchetError ('decrypt',
   * 'message_key_gone', 'too_many_skipped', 'skip_budget', 'replay', 'protocol', 'dh'); none
   * changes anything, except that the steps derived stay paid from the window's skip budget (a
   * forged packet costs its sender's budget what it cost us).
   */
  open(window, packet, { nowMs = Date.now(), rng = systemRandom } = {}) {
    return this.exclusive(async () => {
      this.checkWindow(window);
      const nowSecs = Math.floor(nowMs / 1000);
      const prefix = decodePrefix(packet);
      const clear = packet.subarray(0, prefix.len);
      // The steps walked before the packet can be authenticated are paid first, forged or not.
      const budget = window.skipBudget ??= new SkipBudget();
      budget.spend(this.ratchet.walkCost(prefix.header, nowSecs), nowMs);
      const plan = await this.ratchet.planOpen(prefix.header, nowSecs, rng);
      const key = await packetKey(plan.key, this.ad);
      let data;
      try { data = (await openFrame(key, 8 - window.sendX, packet.subarray(prefix.len), LAYOUT_E2E)).subarray(4); } catch { throw decryptError(); } finally { key.fill(0); }
      if (data.length < prefix.len + INNER_HEADER || !equalBytes(data.subarray(0, prefix.len), clear)) throw decryptError();
      // Authenticated: the skipped keys on the way are paid, then derived (still nothing else
      // changed; a budget that cannot pay refuses the message).
      budget.spend(planSkippedLen(plan), nowMs);
      await this.ratchet.finishPlan(plan);
      let received;
      try { received = window.accept(data.slice(prefix.len)); } catch (e) {
        if (e.replay) throw new RatchetError('replay', { seq: readU32(data, prefix.len + 8), replay: true }, 'replay');
        if (e.message === 'decrypt') throw decryptError();
        throw new RatchetError('protocol', { reason: e.message }, e.message);
      }
      this.ratchet.commit(plan, nowSecs);
      // The responder has the conversation: stop repeating the start.
      this.pendingStart = null;
      return received;
    });
  }

  /**
   * The state to persist: {keys, data}. `keys` holds the ratchet's private key as a
   * non-extractable CryptoKey (store it by structured clone); `data` holds everything else,
   * secrets included (root, chains, skipped keys): seal it (sealChatRecord does both). The window
   * is the static conversation's, stored with it. Taken between two operations, never during one.
   */
  toRecord() {
    const r = this.ratchet.toRecord();
    return {
      keys: r.keys,
      data: { v: 2, ratchet: r.data, initiator: this.initiator, own: this.own.slice(), peer: this.peer.slice(),
        pendingStart: this.pendingStart && { ...this.pendingStart }, startEphemeral: this.startEphemeral.slice() },
    };
  }
  static fromRecord({ keys, data }) {
    if (data?.v !== 2 || typeof data.initiator !== 'boolean') throw malformed('ratchet chat');
    const own = bytesOf(data.own, 32, 'own'), peer = bytesOf(data.peer, 32, 'peer');
    const ps = data.pendingStart;
    return new RatchetChat({ ratchet: Ratchet.fromRecord({ keys, data: data.ratchet }), own, peer, initiator: data.initiator,
      startEphemeral: bytesOf(data.startEphemeral, 32, 'start').slice(),
      pendingStart: ps ? { ...ps, identity: bytesOf(ps.identity, 32, 'start'), ephemeral: bytesOf(ps.ephemeral, 32, 'start') } : null });
  }
}

/**
 * The record the page stores for a conversation: {keys (CryptoKeys, non-extractable), sealed
 * (the rest, AES-256-GCM under the origin's non-extractable storage key, bound to `label`)}.
 * Both halves go into IndexedDB by structured clone.
 */
export async function sealChatRecord(chat, label) {
  const { keys, data } = chat.toRecord();
  return { keys, sealed: await sealRecord(data, label) };
}
export async function openChatRecord(rec, label) {
  return RatchetChat.fromRecord({ keys: rec.keys, data: await openRecord(rec.sealed, label) });
}
/** The same for the prekey store. */
export async function sealPrekeysRecord(prekeys, label) {
  const { keys, data } = prekeys.toRecord();
  return { keys, sealed: await sealRecord(data, label) };
}
export async function openPrekeysRecord(rec, label) {
  return Prekeys.fromRecord({ keys: rec.keys, data: await openRecord(rec.sealed, label) });
}

/** The SHA-256 of bytes, hex (for tests and logs: never of a secret shown to a user). */
export async function digestHex(b) { return hex(await sha256(b)); }
