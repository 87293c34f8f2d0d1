// The client both pages use: directory, contacts, the outbox, the inbox (Rust: relay-client).

import { b64, fromB64, fromUtf8, hex } from './bytes.js';
import {
  canonicalName, chatKey, generateIdentity, identityShortFingerprint, safetyNumber, sha1,
} from './crypto.js';
import { Chat } from './chat.js';
import { Outbox } from './outbox.js';
import { RelayError, Session, handshake } from './session.js';
import {
  clearPendingRecoveryCode, deleteProfile, loadPendingRecoveryCode, loadProfile, packJson,
  savePendingRecoveryCode, saveProfileJson,
} from './store.js';

/** Most names in one exact `/peers` lookup (relay_core::api::MAX_LOOKUP_NAMES). */
export const MAX_LOOKUP_NAMES = 100;
/** Most entries in one `/peers` page (relay_core::api::MAX_PEERS_PAGE). */
export const MAX_PEERS_PAGE = 50;

/** An error that means "no answer": the relay was unreachable or unavailable (nothing was refused). */
function unanswered(e) { return !!e.transport || (e instanceof RelayError && e.status >= 500); }

/**
 * A relay client in the page. Events: 'message' {from, text, seq, delivery}, 'key_changed' {peer},
 * 'rejected' {from, reason, staleKey}, 'expired' {to, seq}, 'wire' (see Session.call), 'status' {state, detail},
 * 'busy' {seconds} (the relay answered rate_limited; the request is resent after that wait),
 * 'outbox' (a receipt: see `receipt`; also state 'stored' with mailboxSeq, or 'abandoned'),
 * 'ratchet_started' {peer, initiator (we started it), oneTimePrekey (false: started without one)},
 * 'e2e' {peer, outgoing, payload (base64, as on the wire), packet ('static' | 'ratchet' | 'start'),
 * seq, inSeq, randomId, sentAt, control, text}: the end-to-end layer of every packet sealed or
 * opened (the bench shows it; a ratchet packet's key is gone once used, so nothing else can).
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
export class RelayClient extends Outbox {
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
      // The ratchet conversations go in the same record: their state, the windows (chats) and
      // the kept messages are written together or not at all.
      const ratchet = this.conv ? this.conv.toRecord() : null;
      const json = packJson({ session: this.session.toJSON(), chats, peers: Object.fromEntries(this.peers), contacts: [...this.contacts],
        outbox: this.outbox, nextOutboxId: this.nextOutboxId, blocked: [...this.blocked], keptBlocked: Object.fromEntries(this.keptBlocked),
        identityPub: this.identity.pub, ratchet: ratchet ? ratchet.data : null });
      await saveProfileJson(this.name, this.identity, json, ratchet ? ratchet.keys : null);
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
    // The conversations under the double ratchet (loaded here, not imported at the top: ratchet.js
    // imports this module).
    const { Conversations } = await import('./conversations.js');
    c.conv = await Conversations.load(c, saved && saved.ratchet && saved.ratchetKeys ? { keys: saved.ratchetKeys, data: saved.ratchet } : null);
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
    // The prekeys: published now when the relay answers, else before the first poll that gets through (run()).
    if (!c.needPublish) await c.conv.maintain().catch(() => {});
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
    // The relay may have lost the prekeys too: published again by run() before its next poll.
    if (this.conv) this.conv.needPublish = true;
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
    // The ratchet conversations were with the old key: they go with the old window.
    this.conv.dropPeer(peer);
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
    await this.conv.resetIdentity();
    for (const k of this.peers.values()) k.verified = false;
    await this.call('/publish_key', { method: 'publish_key', identity_key: b64(this.identity.pub) });
    await this.save();
    await this.conv.maintain().catch(() => {});
  }
  /**
   * How the conversation with `peer` is protected (conversations.js security): {forwardSecret,
   * oneTimePrekey, initiator, noPrekeys}.
   */
  security(name) { return this.conv.security(canonicalName(name)); }
  /** Whether message `seq` from `peer` (under the current key) has not arrived yet. */
  stillMissing(name, seq) {
    const chat = this.chats.get(canonicalName(name));
    if (!chat) return false;
    if (seq < chat.recvLow) return chat.givenUp.some(([a, b]) => seq >= a && seq < b);
    return !chat.recvAbove.has(seq);
  }
  /** Whether `name` is one of the contacts. */
  isContact(name) { return this.contacts.has(name); }
  /** The contacts' names. */
  contactNames() { return [...this.contacts]; }
  /** Whether sending to `name` waits until the user accepts its new key (acceptPeerKey). */
  isBlocked(name) { return this.blocked.has(name); }
  /** Whether the user marked `name`'s current key as verified (setVerified). */
  isVerified(name) { return !!this.peers.get(name)?.verified; }
  /**
   * The keys the conversation with `peer` is numbered under, as a short tag: its seqs start
   * again whenever either side's identity key changes.
   */
  keyEpoch(peer) { return `${this.peers.get(peer)?.version ?? 0}:${Array.from(this.identity.pub.slice(0, 6)).join('.')}`; }
  /** The ids of the messages in the outbox (sending or refused, receipts included). */
  outboxIds() { return this.outbox.map((e) => e.id); }
  /** Seconds to add to this machine's clock for the relay's (learned from its notices). */
  clockOffset() { return this.session?.timeOffset || 0; }
  /** The static conversation with `name` (its chat key and receive window), or null: for tools that show the wire. */
  staticChat(name) { return this.chats.get(name) || null; }
  async fingerprint(peer) { return (await this.chatWith(peer)).fingerprint(); }
  async poll(waitMs) {
    // At most the relay's limit (--max-acks, 1024) per poll; the rest go with the next one.
    const ack = this.toAck.splice(0, 1024);
    let answer;
    try { answer = await this.call('/poll_messages', { method: 'poll_messages', ack, timeout_ms: waitMs }); } catch (e) { this.toAck.unshift(...ack); throw e; }
    // The relay has these acknowledgements: the copies kept of those entries go (saved below).
    this.conv.acked(ack.map((a) => a.seq));
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
      // Opened before and not acknowledged (a reload between hand-out and ack): the kept copy,
      // since a ratchet message's key is gone once used (docs/protocol.md §3.3, exactly once).
      let r = await this.conv.keptCopy(m);
      if (!r) {
        r = await this.conv.open(m.from, chat, fromB64(m.payload));
        await this.conv.keep(m, r);
      }
      this.toAck.push({ seq: m.seq, ts: m.timestamp_ms });
      this.emit('e2e', { peer: m.from, outgoing: false, payload: m.payload, packet: r.kind, seq: r.seq, inSeq: r.inSeq, randomId: hex(r.randomId),
        sentAt: r.sentAtMs, control: r.body[0] === 0, text: fromUtf8(r.body[0] === 0 ? r.body.slice(1) : r.body) });
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
      // The user accepted a new key for the sender while this was being opened (the accept runs
      // between our awaits): it may be sealed for that key. Not acknowledged, not reported: the
      // relay hands it out again with the next poll, and it opens under the accepted key.
      const replaced = () => this.chats.get(m.from) !== chat;
      if (replaced()) return null;
      const p = await this.lookupPeer(m.from);
      if (replaced()) return null;
      if (p && p.status === 'changed') { if (!this.held.has(m.seq)) { this.held.add(m.seq); this.emit('key_changed', { peer: m.from }); } return null; }
      this.toAck.push({ seq: m.seq, ts: m.timestamp_ms });
      // The key id in front of the packet is public: a packet sealed under another key than
      // this conversation's (the peer still had our previous key, from before a reset or a
      // recovery) says so without opening anything. `staleKey` tells the page which it was.
      let staleKey = false;
      try { staleKey = await this.conv.staleKey(m.from, fromB64(m.payload), chat); } catch { /* not even base64 */ }
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
        // Prekeys: published after a (re)connect, rotated, topped up (conversations.js). A failure
        // waits for the next round.
        await this.conv.maintain().catch(() => {});
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
