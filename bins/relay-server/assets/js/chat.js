// The static end-to-end chat and its receive window (Rust: mtproto-session e2e).

import { compareBytes, concat, hex, randomBytes, readU32, readU64, u32le, u64le } from './bytes.js';
import { LAYOUT_E2E, chatKey, open, safetyNumber, seal } from './crypto.js';

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
    // What the peer may still make us derive for ratchet messages (ratchet.js SkipBudget, made
    // on first use); not saved (toJSON), like Rust's ChatState::skip_budget.
    this.skipBudget = null;
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
    const base = { body: d.slice(24), seq, inSeq, lost: [], randomId, sentAtMs: Number(readU64(d, 16)), ahead: 0 };
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
