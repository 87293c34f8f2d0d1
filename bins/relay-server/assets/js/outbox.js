// The outbox of the page's client (Rust: relay-client's outbox.rs and sending.rs): a message is
// sealed end to end once and kept, saved with the profile, until the relay's answer says stored
// or refused; resent oldest first, one flush at a time (docs/protocol.md §3.1). `Outbox` is the
// base class of RelayClient (client.js), which supplies the session, the chats and `save`.

import { b64, concat, equalBytes, fromB64, fromUtf8, hex, utf8 } from './bytes.js';
import { canonicalName, msgKey } from './crypto.js';
import { RelayError, humanError, postRetrying } from './session.js';

/** Most messages waiting in the outbox, sending or refused (relay_client::MAX_OUTBOX). */
export const MAX_OUTBOX = 1000;
/**
 * A resend reuses the envelope while its msg_id is at most this old (server time): the relay
 * keeps a committed request's outcome 3,600 s and answers a resend from it; ten minutes less,
 * as the Rust client (OUTCOME_TTL_SECS - 600).
 */
export const REUSE_ENVELOPE_SECS = 3000;
/** Refusals that settle a message (relay_client::outbox::is_final_refusal); others leave it sending. */
const FINAL_REFUSALS = new Set(['unknown_peer', 'mailbox_full', 'sender_quota', 'payload_too_large', 'invalid_field', 'peer_key_changed']);

/** The reason a person reads for a refused outbox receipt. */
export function refusalText(r) { return humanError(new RelayError(0, { error: r.code, message: r.message || '' }), r.to); }

/**
 * Forgets an outbox entry's envelope (a new one will be made), remembering whether a copy may
 * have been stored (relay_client OutboxEntry::drop_envelope).
 */
function dropEnvelope(entry) {
  if (entry.envelope) entry.maybeStored = entry.maybeStored || entry.envelope.uncertain;
  entry.envelope = null;
}

/** RelayClient's outbox methods (see RelayClient for the outbox's rules and events). */
export class Outbox extends EventTarget {
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
    // Under the conversation conversations.js chooses (ratchet, or static for a peer without prekeys).
    const sealed = await this.conv.seal(to, chat, body);
    this.emit('e2e', { peer: to, outgoing: true, payload: b64(sealed.packet), packet: sealed.kind, seq: sealed.seq, inSeq: sealed.inSeq,
      randomId: hex(sealed.randomId), sentAt: Date.now(), control: !!control, text: fromUtf8(control ? body.slice(1) : body) });
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
      } else if (!s.sent.some((e) => e[0] === env.msgId)) {
        s.sent.push([env.msgId, env.seqNo]); // after a reload: a notice about it is believed
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
        // After a notice, unknown_auth_key or a bad_msg the envelope stays counted as possibly
        // stored (as in relay-client): an honest relay checks salt, clock and key before it stores
        // anything, but a relay that stored it anyway and refused must never get its number given
        // back (the retry would reuse it).
        if (err.body.notice) {
          // A stale salt or clock: a new envelope.
          if (await s.applyNotice(err.body.notice)) { dropEnvelope(entry); continue; }
          if (err.code !== 'bad_msg') return this.leaveSending(entry, humanError(err, entry.to));
          // A bad_msg notice with nothing to apply (20: this envelope fell below the relay's
          // replay window, e.g. resent after many other calls): as below, a new envelope —
          // resending this one would be refused the same way every time.
        }
        if (err.code === 'unknown_auth_key') {
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
}
