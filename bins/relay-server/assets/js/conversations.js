// The page's conversations under the double ratchet (issue 15): which conversation sends, where a
// received packet goes, prekeys on the relay, and exactly-once across reloads. The rules are the
// ones both clients follow (Rust relay-client and this page; docs/protocol.md
// §3.3 "Conversations"):
//
// - one receive window per peer: the static conversation (mtproto.js `Chat`, RelayClient.chats)
//   numbers and checks every message to or from the peer, static or ratchet (spec §1);
// - per peer at most two ratchet conversations, `ours` (we started it) and `theirs` (the peer
//   did); with both, the one whose initiator has the lower identity key sends, so both sides
//   choose the same one after simultaneous starts — unless ours was retired by a new start of
//   the peer after ours had heard back (openStart: theirs), or ours has heard back (ours); with none, the peer's bundle is fetched and a
//   start made; a peer without prekeys (404 no_prekeys: an older client) gets static messages
//   and is asked again after 10 minutes; never static once a ratchet conversation exists (§2);
// - received packets by their kind: static → the static conversation; ratchet → the conversation
//   that knows its ratchet key, else the sending one, then the other (openOrder); start → theirs
//   when it is the same start (EK_A), else accepted into a new theirs (§3);
// - a peer's signing key pinned by the first start with its identity key: a bundle signed by
//   another one starts nothing (trust on first use, docs/crypto.md);
// - prekeys: an Ed25519 signing key made once per profile, the signed prekey published on
//   connect and rotated after 7 days, one-time prekeys topped up to 100 when the relay may hold
//   fewer than 50; every accepted start makes the page ask the relay at its next upkeep (one
//   without a one-time prekey says the relay ran out) (§4);
// - skipped message keys: at most MAX_SKIPPED_KEYS_TOTAL (4000) across all conversations, so that
//   many peers (an attacker with many accounts) cannot grow the saved record without bound: after
//   every open and on load, while over, the oldest keys of the conversation holding the most go;
// - every opened message kept with its mailbox entry until the relay has its acknowledgement,
//   and handed out again from that copy if the relay delivers the entry again: a ratchet
//   message's key is deleted once used (§5).
//
// Private keys (signing key, prekeys, ratchet keys) are non-extractable CryptoKeys stored by
// structured clone beside the profile record; everything else is inside the profile's sealed
// record (mtproto.js saveProfile: AES-256-GCM under the origin's non-extractable storage key).
// Nothing here logs anything.

import { b64, fromB64, hex, equalBytes } from './bytes.js';
import { sha256, keyId } from './crypto.js';
import { RelayError } from './session.js';
import {
  Prekeys, RatchetError, generateSigningKey, bundleFromJson, MAX_ONE_TIME_PREKEYS,
  MAX_SKIPPED_KEYS_TOTAL,
} from './ratchet.js';
import { RatchetChat, packetKind } from './ratchet_chat.js';

/** One-time prekeys the relay is topped up to (spec §4). */
export const PREKEY_TARGET = 100;
/** Below this many (as far as the page knows), the relay is topped up. */
export const PREKEY_LOW = 50;
/** Most one-time prekeys in one publish (the relay's MAX_PREKEYS_PER_PUBLISH). */
export const MAX_PREKEYS_PER_PUBLISH = 100;
/** The signed prekey is rotated once it is older than this. */
export const SIGNED_PREKEY_MAX_AGE_SECS = 7 * 24 * 3600;
/** How long a peer without prekeys gets static messages before the page asks again. */
export const NO_PREKEYS_RETRY_MS = 10 * 60 * 1000;
/** Most opened messages kept while their mailbox entries wait for an acknowledgement. */
export const MAX_KEPT = 4096;

/** Compares byte strings as Rust's `[u8]` Ord (lexicographically, then by length). */
function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}
/** The one error every packet that does not open gives (nothing says why). */
const notOpened = () => new RatchetError('decrypt');
/** A copy of a message this side opened before (its key is used): acknowledged, never shown. */
const replayOf = () => new RatchetError('replay', { replay: true }, 'replay');

export class Conversations {
  /**
   * `client` is the RelayClient (its identity, `call`, `save`, `emit`, `lookupPeers`). Use
   * Conversations.load, which makes the signing key and prekeys of a profile that has none.
   */
  constructor(client, { signing, prekeys }) {
    this.client = client;
    this.signing = signing; // {privateKey (non-extractable Ed25519), pub}
    this.prekeys = prekeys; // ratchet.js Prekeys
    // peer -> {ours, theirs}; each null or {chat (RatchetChat), oneTimePrekey (bool), startedAt (ms)}.
    this.peers = new Map();
    this.noPrekeysUntil = new Map(); // peer -> ms
    // mailbox seq -> {from, digest (of the payload), opened: what Chat.accept returned, less `lost`}
    this.kept = new Map();
    // How many one-time prekeys the relay may hold (its last answer less the starts accepted
    // since); null: not asked yet.
    this.relayOneTime = null;
    // The relay has to be told (again): on connect, after a rotation, after a re-handshake.
    this.needPublish = true;
    // Peers whose ratchet conversations went with our previous identity key (a reset): a
    // ratchet packet from them that opens under nothing was most likely sealed for that key.
    this.orphaned = new Set();
    this.locks = new Map();
    this.maintaining = null;
    this.needTopUp = false;
    // Ask the relay how many one-time prekeys it holds at the next upkeep (an empty publish):
    // set by a start accepted without one — the relay ran out, perhaps drained by others.
    this.needCount = false;
  }

  /**
   * The conversations of a saved profile ({keys, data} as toRecord made them), or new ones:
   * a new Ed25519 signing key and prekeys with a first signed prekey.
   */
  static async load(client, saved = null) {
    if (saved && saved.keys && saved.data && saved.data.v === 1) {
      try { return Conversations.fromRecord(client, saved); } catch { /* unreadable: made anew below */ }
    }
    const signing = await generateSigningKey();
    const prekeys = await Prekeys.create(client.identity.pub, signing, Math.floor(Date.now() / 1000));
    return new Conversations(client, { signing, prekeys });
  }

  /** Runs `fn` alone for `peer`: a choice, a start, an open or an accept never interleave. */
  lock(peer, fn) {
    const prev = this.locks.get(peer) || Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => {});
    this.locks.set(peer, tail);
    tail.then(() => { if (this.locks.get(peer) === tail) this.locks.delete(peer); });
    return run;
  }

  slot(peer) {
    if (!this.peers.has(peer)) this.peers.set(peer, { ours: null, theirs: null, oursRetired: false });
    return this.peers.get(peer);
  }

  /** The conversation that sends to `peer` now (spec §2), or null (none yet). */
  sending(peer) {
    const p = this.peers.get(peer);
    if (!p) return null;
    if (p.ours && p.theirs) {
      // Retired (a new start from the peer after ours had heard back, openStart): theirs.
      if (p.oursRetired) return p.theirs;
      // Ours has heard back: the peer sends in it. After simultaneous starts only the lower
      // initiator's does (no change there); after a retirement at the peer, both converge on one
      // conversation, so each DH step answers the other's (Rust PeerRatchets::ours_sends).
      if (!p.ours.chat.startPending) return p.ours;
      // Ours was started by us, theirs by the peer: the lower initiator identity key wins.
      return compareBytes(this.client.identity.pub, p.ours.chat.peer) < 0 ? p.ours : p.theirs;
    }
    return p.ours || p.theirs || null;
  }

  /**
   * What the page says about the conversation with `peer`: {forwardSecret (a ratchet
   * conversation exists: messages go under it), oneTimePrekey (whether its start had a one-time
   * prekey; null without one), initiator ('us' | 'them' | null), noPrekeys (the peer published
   * none when last asked: static messages)}.
   */
  security(peer) {
    const c = this.sending(peer);
    const until = this.noPrekeysUntil.get(peer);
    return {
      forwardSecret: !!c,
      oneTimePrekey: c ? c.oneTimePrekey : null,
      initiator: c ? (c.chat.initiator ? 'us' : 'them') : null,
      noPrekeys: !c && until !== undefined,
    };
  }

  /**
   * Seals `body` for `peer` under `window` (the static conversation): with the sending
   * conversation, after a start when there is none and the peer has prekeys, else static.
   * → {packet, randomId, seq, kind: 'static' | 'ratchet' | 'start', inSeq}.
   * Throws before anything is sealed when the bundle cannot be fetched (nothing is numbered).
   */
  seal(peer, window, body) {
    return this.lock(peer, async () => {
      const conv = await this.choose(peer, window);
      const inSeq = window.recvLow;
      const sealed = conv ? await conv.chat.seal(window, body) : await window.seal(body);
      return { ...sealed, inSeq, kind: packetKind(sealed.packet) };
    });
  }

  async choose(peer, window) {
    const c = this.sending(peer);
    if (c) return c;
    const until = this.noPrekeysUntil.get(peer);
    if (until !== undefined && Date.now() < until) return null;
    let answer;
    try {
      answer = await this.client.call('/prekey_bundle', { method: 'prekey_bundle', peer });
    } catch (e) {
      if (e instanceof RelayError && e.code === 'no_prekeys') {
        this.noPrekeysUntil.set(peer, Date.now() + NO_PREKEYS_RETRY_MS);
        return null;
      }
      if (!(e instanceof RelayError) || e.status >= 500) {
        e.human = `could not reach the relay to start a secure conversation with ${peer}: nothing was sent. Try again when you are back online.`;
      }
      throw e;
    }
    let started, bundle;
    try {
      bundle = bundleFromJson(answer.bundle);
      started = await RatchetChat.initiate(this.client.identity, bundle, window.peer);
    } catch (e) {
      if (e.code === 'peer_identity_mismatch') {
        // The relay hands out prekeys of another identity key than the one accepted: the key
        // changed (the lookup blocks the peer and asks the user), or the relay lies.
        await this.client.lookupPeers([peer]).catch(() => {});
        const err = new Error(`${peer}'s identity key CHANGED`); err.keyChanged = true;
        err.human = `${peer}'s security key changed. Accept or verify the new key to write to them again.`;
        throw err;
      }
      const err = new Error(`${peer}'s prekeys are not valid (${e.code || e.message})`);
      err.human = `${peer}'s keys on the relay are not correctly signed, so no secure conversation was started and nothing was sent.`;
      throw err;
    }
    // Trust on first use (Rust ClientError::SigningKeyChanged, docs/crypto.md): the signing key
    // of the first bundle a start used with this identity key is pinned (saved with the profile;
    // a new identity key starts without one). A page makes one per profile and a new profile has
    // a new identity key, so another one is the relay (or someone) substituting prekeys: the
    // start just made is dropped, nothing was sealed.
    const known = this.client.peers.get(peer);
    const signingKey = b64(bundle.signingKey);
    if (known?.signingKey && known.signingKey !== signingKey) {
      const err = new Error(`the relay handed out prekeys for ${peer} signed by another signing key than before`);
      err.code = 'signing_key_changed';
      err.human = `The relay handed out keys for ${peer} signed by another key than before, although ${peer}'s security key is the same: nothing was sent. Compare safety numbers with ${peer}; if they match, the relay may be tampering.`;
      throw err;
    }
    if (known) known.signingKey = signingKey;
    const conv = { chat: started.chat, oneTimePrekey: started.oneTimePrekey !== null, startedAt: Date.now() };
    const slot = this.slot(peer);
    slot.ours = conv; slot.oursRetired = false;
    this.noPrekeysUntil.delete(peer);
    this.client.emit('ratchet_started', { peer, initiator: true, oneTimePrekey: conv.oneTimePrekey });
    return conv;
  }

  /**
   * Opens `packet` from `peer` under `window` by its kind (spec §3). → what Chat.accept returns,
   * with `kind`. Every failure is the one RatchetError 'decrypt', except a replay ('replay',
   * `replay: true`: the window has that message already).
   */
  open(peer, window, packet) {
    return this.lock(peer, async () => {
      const kind = packetKind(packet);
      if (kind === 'ratchet' || kind === 'start') {
        const got = kind === 'ratchet' ? await this.openRatchet(peer, window, packet) : await this.openStart(peer, window, packet);
        this.orphaned.delete(peer);
        this.capSkipped();
        return { ...got, kind };
      }
      // Static (or not even that: the static open refuses it): always accepted, the peer may be an older client.
      let got;
      try { got = await window.open(packet); } catch (e) { throw e.replay ? e : notOpened(); }
      return { ...got, kind: 'static' };
    });
  }

  /**
   * The conversations to try a ratchet packet in, in order (Rust PeerRatchets::open_order,
   * docs/protocol.md §3.3): only the one that knows the packet's ratchet key, if one does (the
   * other cannot own a fresh random key, and trying it there would charge a copy or a late
   * message as a new chain); for a new ratchet key, the sending one (both sides converge on it),
   * then the other. So in the flows the tests cover an honest peer's packets do not pay the wrong
   * conversation's chain steps.
   */
  openOrder(peer, packet) {
    const p = this.peers.get(peer);
    if (!p) return [];
    const knows = (c) => !!c && c.chat.recognizes(packet);
    if (knows(p.theirs)) return [p.theirs];
    if (knows(p.ours)) return [p.ours];
    return p.ours && this.sending(peer) === p.ours ? [p.ours, p.theirs] : [p.theirs, p.ours];
  }

  async openRatchet(peer, window, packet) {
    let gone = false;
    for (const conv of this.openOrder(peer, packet)) {
      if (!conv) continue;
      try { return await conv.chat.open(window, packet); } catch (e) {
        // It opened under this conversation and the window has it: a replay. Anything else: the next one.
        if (e.replay) throw e;
        if (e.code === 'message_key_gone') gone = true;
      }
    }
    // Its header names a key this side used already: a copy of a message received before (the
    // sender's outbox resent the same packet in a new envelope, §3.1), acknowledged and not shown,
    // as the Rust client does.
    if (gone) throw replayOf();
    throw notOpened();
  }

  async openStart(peer, window, packet) {
    const identity = RatchetChat.startIdentityOf(packet);
    // A start from another identity key than the one accepted for the sender: the key-changed path.
    if (!identity || !equalBytes(identity, window.peer)) throw notOpened();
    // The peer's slot is made only once a start opened (a forged one leaves nothing behind).
    const theirs = this.peers.get(peer)?.theirs;
    const ephemeral = RatchetChat.startEphemeralOf(packet);
    if (theirs && equalBytes(theirs.chat.startEphemeral, ephemeral)) {
      // The initiator repeats its start until it hears back.
      try { return await theirs.chat.open(window, packet); } catch (e) {
        if (e.code === 'message_key_gone') throw replayOf();
        throw e.replay ? e : notOpened();
      }
    }
    let acc;
    try { acc = await RatchetChat.accept(this.client.identity, this.prekeys, window, packet); } catch (e) {
      // A replayed start without a one-time prekey re-opens an old message: the window refuses it
      // and nothing is replaced.
      throw e.replay ? e : notOpened();
    }
    const usedOpk = acc.oneTimePrekey !== null;
    // A new start while ours has heard back: the peer may no longer have ours (its profile came
    // back from an older copy), or this is a late copy of a start it made before it saw ours (it
    // then still has ours). Ours sends no more, so the answer goes where the peer surely reads; it
    // stays to open what the peer sends in it (docs/protocol.md §3.3). While ours is still a
    // pending start the two crossed (simultaneous starts): the peer will accept ours, the usual rule.
    const slot = this.slot(peer);
    if (slot.ours && !slot.ours.chat.startPending) slot.oursRetired = true;
    slot.theirs = { chat: acc.chat, oneTimePrekey: usedOpk, startedAt: Date.now() };
    if (usedOpk && this.relayOneTime !== null) this.relayOneTime = Math.max(0, this.relayOneTime - 1);
    // Without one, the relay has none left (drained?): ask it at the next upkeep, top up if low.
    if (!usedOpk) this.needCount = true;
    this.client.emit('ratchet_started', { peer, initiator: false, oneTimePrekey: usedOpk });
    return acc.received;
  }

  /**
   * Holds the skipped message keys of all conversations to MAX_SKIPPED_KEYS_TOTAL (Rust
   * relay-client cap_skipped_keys): while over, the oldest keys of the conversation holding the
   * most are evicted (zeroized) — the largest levelled down together, ties in peer order, ours
   * before theirs. Synchronous: runs between two operations. → how many keys went.
   */
  capSkipped() {
    const convs = [];
    for (const peer of [...this.peers.keys()].sort()) {
      const p = this.peers.get(peer);
      for (const c of [p.ours, p.theirs]) if (c) convs.push(c.chat.ratchet);
    }
    const counts = convs.map((r) => r.skippedCount());
    let total = counts.reduce((a, b) => a + b, 0), dropped = 0;
    while (total > MAX_SKIPPED_KEYS_TOTAL) {
      const most = Math.max(...counts);
      if (most === 0) break;
      const next = Math.max(0, ...counts.filter((c) => c < most));
      const holders = counts.filter((c) => c === most).length;
      // Each holder down towards the next largest, the excess shared among them.
      const per = Math.min(most - next, Math.ceil((total - MAX_SKIPPED_KEYS_TOTAL) / holders));
      for (let i = 0; i < convs.length && total > MAX_SKIPPED_KEYS_TOTAL; i++) {
        if (counts[i] !== most) continue;
        const n = convs[i].dropOldestSkipped(Math.min(per, total - MAX_SKIPPED_KEYS_TOTAL));
        counts[i] -= n; total -= n; dropped += n;
      }
    }
    return dropped;
  }

  /** Forgets `peer`'s ratchet conversations (their key changed and the user accepted the new one). */
  dropPeer(peer) {
    this.peers.delete(peer);
    this.noPrekeysUntil.delete(peer);
  }

  /**
   * Our identity key changed (a reset): every conversation goes, and prekeys are made for the new
   * key (the signature binds the identity key; the relay drops the old ones at the next publish).
   */
  async resetIdentity() {
    for (const peer of this.peers.keys()) this.orphaned.add(peer);
    this.peers.clear();
    this.noPrekeysUntil.clear();
    this.prekeys = await Prekeys.create(this.client.identity.pub, this.signing, Math.floor(Date.now() / 1000));
    this.relayOneTime = null;
    this.needPublish = true;
  }

  /**
   * Whether a packet from `peer` that did not open was most likely sealed for a key this side no
   * longer has: a static packet whose key id (public, in front) is not `window`'s, or a ratchet or
   * start packet from a peer whose conversations went with our reset.
   */
  async staleKey(peer, packet, window) {
    const kind = packetKind(packet);
    if (kind === 'static') return !equalBytes(packet.slice(0, 8), await keyId(window.key));
    return (kind === 'ratchet' || kind === 'start') && this.orphaned.has(peer);
  }

  // ---- exactly once (spec §5) -------------------------------------------------------------------

  static async digest(payloadB64) { return hex((await sha256(fromB64(payloadB64))).slice(0, 16)); }

  /** The copy kept of mailbox entry `m` ({seq, from, payload}) when it was opened before, or null. */
  async keptCopy(m) {
    const k = this.kept.get(m.seq);
    if (!k || k.from !== m.from || k.digest !== (await Conversations.digest(m.payload))) return null;
    return { ...k.opened, lost: [], ahead: 0 };
  }
  /** Keeps what mailbox entry `m` opened to, until the relay has its acknowledgement. */
  async keep(m, opened) {
    const { lost, ...rest } = opened;
    this.kept.set(m.seq, { from: m.from, digest: await Conversations.digest(m.payload), opened: rest });
    for (const k of this.kept.keys()) { if (this.kept.size <= MAX_KEPT) break; this.kept.delete(k); }
  }
  /** The relay took the acknowledgements of these mailbox seqs: their copies go. */
  acked(seqs) { for (const s of seqs) this.kept.delete(s); }

  // ---- prekeys on the relay (spec §4) -------------------------------------------------------------

  /**
   * Publishes what the relay should have: the signed prekey (rotated when older than 7 days) on
   * connect and after a rotation, then one-time prekeys up to 100 when it may hold fewer than 50.
   * After a start accepted without a one-time prekey it asks the relay first (an empty publish).
   * One at a time; errors are thrown (the caller tries again later).
   */
  maintain() {
    if (!this.maintaining) this.maintaining = this.maintainOnce().finally(() => { this.maintaining = null; });
    return this.maintaining;
  }
  async maintainOnce() {
    const now = Math.floor(Date.now() / 1000);
    const created = this.prekeys.signedPrekeyCreated();
    if (created === null || now - created > SIGNED_PREKEY_MAX_AGE_SECS || created > now + 86400) {
      await this.prekeys.rotateSignedPrekey(this.signing, now);
      this.needPublish = true;
      await this.client.save();
    }
    if (this.needPublish || this.needCount) {
      // An empty list asks how many the relay holds (and replaces the signed prekey).
      const connect = this.needPublish;
      await this.publish(0);
      this.needPublish = false;
      this.needCount = false;
      // On connect the relay is topped up to 100 (not only below 50).
      if (connect) this.needTopUp = true;
    }
    if (this.relayOneTime !== null && this.relayOneTime < (this.needTopUp ? PREKEY_TARGET : PREKEY_LOW)) {
      this.needTopUp = false;
      await this.publish(Math.min(PREKEY_TARGET - this.relayOneTime, MAX_PREKEYS_PER_PUBLISH));
    }
  }
  /** One publish with `fresh` new one-time prekeys (saved before they leave). */
  async publish(fresh) {
    let made = [];
    if (fresh > 0) {
      // At most 200 held here: the oldest go first.
      this.prekeys.dropOldestOneTime(this.prekeys.oneTimeCount() + fresh - MAX_ONE_TIME_PREKEYS);
      made = await this.prekeys.generateOneTime(fresh);
      // Their private keys are stored before the relay can hand them out.
      await this.client.save();
    }
    const sp = this.prekeys.signedPrekey();
    let answer;
    try {
      answer = await this.client.call('/publish_prekeys', {
        method: 'publish_prekeys', signing_key: b64(this.signing.pub),
        signed_prekey: { id: sp.id, public: b64(sp.public), signature: b64(sp.signature) },
        one_time_prekeys: made.map((o) => ({ id: o.id, public: b64(o.public) })),
      });
    } catch (e) {
      // More than 200 would be held: ask again how many there are before the next top-up.
      if (e instanceof RelayError && e.code === 'prekey_quota') this.needPublish = true;
      throw e;
    }
    this.relayOneTime = Number.isInteger(answer.one_time_prekeys) ? answer.one_time_prekeys : 0;
  }

  // ---- persistence --------------------------------------------------------------------------------

  /**
   * {keys (CryptoKeys only, stored by structured clone beside the profile record), data (the rest,
   * secrets included: inside the profile's sealed record)}. Synchronous: taken between operations.
   */
  toRecord() {
    const pk = this.prekeys.toRecord();
    const keys = { signing: this.signing.privateKey, prekeys: pk.keys, convs: {} };
    const convs = {};
    for (const [peer, p] of this.peers) {
      const one = (c) => { if (!c) return [null, null]; const r = c.chat.toRecord(); return [r.keys, { chat: r.data, oneTimePrekey: c.oneTimePrekey, startedAt: c.startedAt }]; };
      const [ok, od] = one(p.ours), [tk, td] = one(p.theirs);
      keys.convs[peer] = { ours: ok, theirs: tk };
      convs[peer] = { ours: od, theirs: td, ...(p.oursRetired ? { oursRetired: true } : {}) };
    }
    return {
      keys,
      data: { v: 1, signingPub: this.signing.pub.slice(), prekeys: pk.data, convs,
        noPrekeysUntil: Object.fromEntries(this.noPrekeysUntil), kept: [...this.kept], orphaned: [...this.orphaned],
        relayOneTime: this.relayOneTime },
    };
  }
  static fromRecord(client, { keys, data }) {
    if (!(keys.signing instanceof CryptoKey) || !(data.signingPub instanceof Uint8Array) || data.signingPub.length !== 32) throw new Error('malformed conversations');
    const prekeys = Prekeys.fromRecord({ keys: keys.prekeys, data: data.prekeys });
    if (!equalBytes(prekeys.identity, client.identity.pub)) throw new Error('prekeys of another identity key');
    const c = new Conversations(client, { signing: { privateKey: keys.signing, pub: data.signingPub }, prekeys });
    for (const [peer, d] of Object.entries(data.convs || {})) {
      const k = keys.convs?.[peer] || {};
      const one = (rec, key) => (rec && key ? { chat: RatchetChat.fromRecord({ keys: key, data: rec.chat }), oneTimePrekey: !!rec.oneTimePrekey, startedAt: rec.startedAt || 0 } : null);
      const slot = { ours: one(d.ours, k.ours), theirs: one(d.theirs, k.theirs), oursRetired: d.oursRetired === true };
      if (slot.ours || slot.theirs) c.peers.set(peer, slot);
    }
    for (const [peer, until] of Object.entries(data.noPrekeysUntil || {})) if (Number.isFinite(until)) c.noPrekeysUntil.set(peer, until);
    for (const [seq, k] of (data.kept || []).slice(-MAX_KEPT)) c.kept.set(seq, k);
    c.relayOneTime = Number.isInteger(data.relayOneTime) ? data.relayOneTime : null;
    for (const peer of (data.orphaned || []).slice(0, 10000)) if (typeof peer === 'string') c.orphaned.add(peer);
    // A record over the client-wide bound (an older version's) is trimmed, not refused.
    c.capSkipped();
    return c;
  }
}
