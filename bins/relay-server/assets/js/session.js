// The session with the relay: errors, HTTP, the handshake, sealed calls (Rust: mtproto-session
// session, relay-client connection).

import {
  b64, concat, equalBytes, fromB64, fromHex, fromUtf8, hex, randomBytes, readU32, readU64, u32le,
  u64le, utf8,
} from './bytes.js';
import {
  DH_PRIME_HEX, LAYOUT_ENVELOPE, P, bigFromBytes, bigToBytes, canonicalName, checkDhPublic,
  ed25519Verify, factorPq, minimalBe, modPow, msgKey, newRecoveryCode, open, recoveryProof,
  recoveryPublicKey, seal, serverFingerprint, sha1, sha256, solveWork,
} from './crypto.js';

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
/** How far above every accepted seq_no the relay takes one (Rust mtproto_session::MAX_SEQ_NO_STEP). */
export const MAX_SEQ_NO_STEP = 4096;

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
export async function postRetrying(base, path, body, onBusy = () => {}) {
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
    this.sent.push([msgId.toString(), seqNo]); if (this.sent.length > 256) this.sent.shift();
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
    const sent = this.sent.find((e) => e[0] === String(n.bad_msg_id));
    if (!sent) return false;
    if (n._ === 'bad_server_salt') { this.salt = fromB64(n.new_server_salt); return true; }
    if (n.error_code === 16 || n.error_code === 17) {
      this.timeOffset = Number(inc.msgId >> 32n) - Math.floor(Date.now() / 1000); return true;
    }
    // It must name the seq_no we sent with that msg_id: another one is not about our message, and
    // one such notice would push the counter to the top for good (Rust handle_notice).
    if (n.error_code === 32 && n.bad_msg_seqno === sent[1]) {
      // Our seq_no went back (a profile restored from an older copy): the relay holds a higher
      // one, at least bad_msg_seqno, and takes up to MAX_SEQ_NO_STEP above it; a jump to
      // bad_msg_seqno + MAX_SEQ_NO_STEP is never too high, and never back (Rust SeqNoGen::skip_to).
      // A copy far behind takes one refusal per MAX_SEQ_NO_STEP (docs/protocol.md §3.2, limits).
      const maxNext = Math.min(n.bad_msg_seqno + MAX_SEQ_NO_STEP, 0xffffffff);
      this.contentSent = Math.max(this.contentSent, Math.floor((maxNext - 1) / 2));
      return true;
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
