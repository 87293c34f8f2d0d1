// client_ui.js, part: the open conversation: messages, the outbox's receipts, drafts, opening and leaving.
import { RelayError, canonicalName, refusalText, bidiBalanced } from './mtproto.js';
import { ui, $, OFFLINE_NOTE, awaiting, byOutbox, convs, dayKey, dayLabel, drafts, hm, info, looked, markRead, presence, remember, sayError, search, showError, showInfo, shownPart, trimHistory, unread } from './ui_state.js';
import { badgeFor, clearSearch, renderPeers } from './ui_people.js';
import { fitComposer, keptBlocked, popping, warnKeyChange } from './ui_actions.js';

// ---- the conversation ------------------------------------------------------------------------

/** Whether `seq` from `peer` (under the current key) has not arrived yet. */
const stillMissing = (peer, seq) => ui.client.stillMissing(peer, seq);

/**
 * What the key panel says about forward secrecy in the conversation with `peer`
 * (RelayClient.security), in plain words.
 */
export function forwardSecrecyText(peer) {
  const s = ui.client.security(peer);
  if (s.forwardSecret) {
    return `Forward secrecy: on. Every message has its own key, deleted once used: a key stolen later cannot open earlier messages.${
      s.oneTimePrekey ? '' : ' It started without a one-time key: the messages before the first reply are less protected (a later theft of the keys could reveal them); everything after is protected as usual.'}`;
  }
  if (s.noPrekeys) return `Forward secrecy: off. ${peer}'s app does not offer it yet, so all your messages with ${peer} use one key.`;
  return `Forward secrecy: not yet. It starts with your next message if ${peer}'s app offers it.`;
}

function noteFor(peer, m) {
  if (m.warn) return m.warn;
  if (m.delivery === 'recovered') return 'arrived late, after it had been counted lost';
  if (m.gap && m.epoch === epochOf(peer)) {
    for (let s = m.gap[0]; s <= m.gap[1] && s < m.gap[0] + 2048; s++) if (stillMissing(peer, s)) return 'earlier messages missing';
  }
  return '';
}

export function renderMessages() {
  const ul = $('messages');
  const atBottom = ul.scrollHeight - ul.scrollTop - ul.clientHeight < 40;
  const items = [];
  let day = null;
  for (const m of convs.get(ui.current) || []) {
    if (m.at && dayKey(m.at) !== day) {
      day = dayKey(m.at);
      const d = document.createElement('li'); d.className = 'day'; d.textContent = dayLabel(m.at);
      items.push(d);
    }
    const li = document.createElement('li');
    li.className = 'msg ' + m.dir + (m.warnLevel ? ' warn' : '');
    li.dataset.state = m.state || '';
    if (m.seq !== undefined && m.dir === 'in') li.dataset.seq = String(m.seq);
    if (m.mailboxSeq !== undefined) li.dataset.mailboxSeq = String(m.mailboxSeq);
    // dir=auto: a message in Arabic or Hebrew reads right to left, and its bidi controls (an
    // unclosed U+202E) stay inside it (the span is isolated) instead of reversing the time.
    const body = document.createElement('span'); body.className = 'body'; body.dir = 'auto';
    const part = shownPart(m.text || '');
    body.textContent = bidiBalanced(part === null ? m.text : `${part}…`);
    li.append(body);
    if (part !== null) {
      const more = document.createElement('span'); more.className = 'msg-actions long';
      const note = document.createElement('small');
      note.textContent = `a long message: ${m.text.length.toLocaleString()} characters, shown in part`;
      const copy = document.createElement('button'); copy.type = 'button'; copy.className = 'text copy-all'; copy.textContent = 'copy all';
      copy.addEventListener('click', () => navigator.clipboard.writeText(m.text).then(
        () => { copy.textContent = 'copied'; }, () => { copy.textContent = 'could not copy'; }));
      more.append(note, copy);
      li.append(more);
    }
    if (m.at && m.dir !== 'system') {
      const t = document.createElement('span'); t.className = 'time'; t.dataset.time = hm(m.at);
      t.title = new Date(m.at).toLocaleString();
      li.append(t);
    }
    const s = document.createElement('small');
    s.textContent = m.dir === 'out' ? (m.reason ? `${m.state}: ${m.reason}` : m.state) : m.dir === 'in' ? noteFor(ui.current, m) : '';
    if (m.dir === 'out' && m.state === 'sending…') {
      const spin = document.createElement('span'); spin.className = 'spinner'; spin.setAttribute('aria-hidden', 'true');
      s.prepend(spin);
      if (m.lastError) s.title = `waiting for the relay: ${m.lastError}`;
    }
    if (s.textContent) li.append(s);
    if (m.dir === 'out' && (m.state === 'not sent' || (m.state === 'possibly delivered' && byOutbox.has(m.id)))) {
      const actions = document.createElement('span'); actions.className = 'msg-actions';
      const retry = document.createElement('button'); retry.type = 'button'; retry.className = 'text retry'; retry.textContent = 'retry';
      retry.addEventListener('click', () => retryMessage(m));
      const discard = document.createElement('button'); discard.type = 'button'; discard.className = 'text discard'; discard.textContent = 'discard';
      discard.addEventListener('click', () => discardMessage(m));
      actions.append(retry, discard);
      li.append(actions);
    }
    items.push(li);
  }
  if (!items.length && ui.current) {
    const e = document.createElement('li'); e.className = 'empty'; e.textContent = 'No messages yet. Say hello — it is end-to-end encrypted.';
    items.push(e);
  }
  ul.replaceChildren(...items);
  if (atBottom || ul.dataset.peer !== ui.current) { ul.scrollTop = ul.scrollHeight; ui.newBelow = 0; }
  ul.dataset.peer = ui.current || '';
  renderNewBelow();
}

const nearBottom = (ul = $('messages')) => ul.scrollHeight - ul.scrollTop - ul.clientHeight < 40;
function renderNewBelow() {
  const b = $('new-below');
  b.hidden = !ui.newBelow;
  b.textContent = ui.newBelow === 1 ? '1 new message ↓' : `${ui.newBelow} new messages ↓`;
}
$('messages').addEventListener('scroll', () => { if (ui.newBelow && nearBottom()) { ui.newBelow = 0; renderNewBelow(); } });
$('new-below').addEventListener('click', () => {
  const ul = $('messages');
  ul.scrollTop = ul.scrollHeight;
  ui.newBelow = 0; renderNewBelow();
  (!$('text').disabled ? $('text') : ul).focus();
});

export function renderHead() {
  if (!ui.client) return;
  const p = info.get(ui.current);
  $('presence').textContent = ui.current ? presence(p).text : '';
  const badge = ui.current ? badgeFor(ui.current) : null;
  $('conv-badge').replaceChildren(...(badge ? [badge] : []));
  const blocked = !!ui.current && ui.client.isBlocked(ui.current);
  $('blocked-bar').hidden = !blocked;
  if (blocked) $('blocked-text').textContent = `${ui.current}'s security key changed. Nothing goes to or comes from them until you accept or verify the new key.`;
  // After our key reset: what we send waits with the relay until they accept the new key.
  const waits = !!ui.current && !blocked && awaiting.has(ui.current);
  $('await-bar').hidden = !waits;
  if (waits) $('await-bar').textContent = `Waiting for ${ui.current} to accept your new key. What you send now reaches them once they do.`;
  for (const id of ['text', 'send']) $(id).disabled = !ui.current || blocked;
  $('verify').disabled = !ui.current;
  const verified = !!ui.current && !blocked && ui.client.isVerified(ui.current);
  $('verify').classList.toggle('done', verified);
  if (verified) {
    const more = document.createElement('span'); more.className = 'wide'; more.textContent = ' — view safety number';
    $('verify').replaceChildren('Verified ✓', more);
    $('verify').title = `You verified ${ui.current}. Show the safety number again.`;
  } else { $('verify').textContent = 'Verify'; $('verify').title = ''; }
}

/** A message or receipt from `peer` opened under our current key: they accepted it. */
export function heardFrom(peer) { if (awaiting.delete(peer)) { remember(peer); rerender(peer); } }

export function rerender(peer) {
  if (peer === ui.current) { renderMessages(); renderHead(); }
  renderPeers();
}

/**
 * The key generation of the conversation with `peer`: seqs start again at 0 whenever either
 * side's key changes — the peer's (its directory version) or ours (a reset) — so both are in it.
 */
export const epochOf = (peer) => ui.client.keyEpoch(peer);

/** Adds a message: received ones in the sender's order (seq), the rest at the end. */
export function push(peer, m) {
  if (!convs.has(peer)) convs.set(peer, []);
  const list = convs.get(peer);
  m.at = m.at || Date.now();
  if (m.dir === 'in' && m.seq !== undefined) {
    m.epoch = epochOf(peer);
    let i = list.length;
    // Before the first message received after it from the same key (later seq): it was sent before them.
    for (let j = list.length - 1; j >= 0; j--) {
      const o = list[j];
      if (o.dir === 'in' && o.epoch === m.epoch && o.seq !== undefined && o.seq > m.seq) i = j;
      else if (o.dir === 'in' && o.epoch === m.epoch) break;
    }
    list.splice(i, 0, m);
  } else list.push(m);
  trimHistory(list);
  if (m.dir === 'in' && (peer !== ui.current || document.hidden)) unread.set(peer, (unread.get(peer) || 0) + 1);
  // Arrived below what the user is reading: said by "new messages ↓" instead of a jump.
  if (m.dir === 'in' && peer === ui.current && !nearBottom()) ui.newBelow += 1;
  remember(peer);
  rerender(peer);
}

export function system(peer, text, warn = false) { push(peer, { dir: 'system', text, warnLevel: warn }); }

/** Shows an outbox receipt on its message (made on the first receipt of a new outbox entry). */
export function showOutbox(r) {
  if (r.control) return;
  let m = byOutbox.get(r.id);
  if (r.state === 'abandoned') {
    byOutbox.delete(r.id);
    // A copy may have been stored: the message stays, said as it is (a receipt may still come).
    if (m && r.maybeStored) { m.state = 'possibly delivered'; m.reason = 'no longer retried; an earlier try may have reached them'; remember(r.to); rerender(r.to); return; }
    const list = convs.get(r.to) || [];
    if (m && list.includes(m)) list.splice(list.indexOf(m), 1);
    remember(r.to); rerender(r.to);
    return;
  }
  const fresh = !m;
  if (fresh) { m = { dir: 'out', text: r.text, id: r.id, at: r.sentAt || Date.now() }; byOutbox.set(r.id, m); }
  m.seq = r.seq; m.rid = r.randomId; m.reason = null; m.lastError = null; m.epoch = epochOf(r.to);
  if (r.state === 'sending') { m.state = 'sending…'; m.lastError = r.lastError; }
  else if (r.state === 'refused') {
    const why = sayError(new RelayError(0, { error: r.code, message: r.message || '' }), r.to) || refusalText(r);
    // An earlier try went out without an answer and may have been stored (F3): the refusal of
    // a later one does not mean it did not arrive.
    if (r.maybeStored) { m.state = 'possibly delivered'; m.reason = `an earlier try may have reached ${r.to}, then the relay refused a resend: ${why}`; }
    else { m.state = 'not sent'; m.reason = why; }
  }
  else if (r.state === 'stored') {
    m.mailboxSeq = r.mailboxSeq;
    if (!/^delivered/.test(m.state || '')) m.state = 'sent ✓';
  }
  if (fresh) push(r.to, m); else { remember(r.to); rerender(r.to); }
}

async function retryMessage(m) {
  if (m.id === undefined) {
    const list = convs.get(ui.current) || [];
    list.splice(list.indexOf(m), 1);
    remember(ui.current); renderMessages();
    await sendText(ui.current, m.text);
    return;
  }
  const peer = ui.current;
  try { await ui.client.retry(m.id); } catch (e) { if (e.keyChanged) await warnKeyChange(peer); else showError(sayError(e, peer)); }
}

async function discardMessage(m) {
  if (m.id === undefined) {
    const list = convs.get(ui.current) || [];
    list.splice(list.indexOf(m), 1);
    remember(ui.current); renderMessages();
    $('text').focus();
    return;
  }
  try { await ui.client.abandon(m.id); } catch (e) { showError(sayError(e, ui.current)); }
  $('text').focus();
}

export async function sendText(peer, text) {
  try {
    const r = await ui.client.send(peer, text);
    if (r && r.state === 'stored' && $('info').textContent === OFFLINE_NOTE) showInfo(ui.standingNotice);
  } catch (e) {
    if (e.keyChanged) {
      rerender(peer);
      // The text goes back to its own conversation's composer (never another's).
      if (peer === ui.current) { $('text').value = $('text').value || text; fitComposer(); setDraft(peer, $('text').value); } else if (!drafts.get(peer)) setDraft(peer, text);
      await warnKeyChange(peer);
      return;
    }
    push(peer, { dir: 'out', text, state: 'not sent', reason: sayError(e, peer) });
  }
}

/** One exact lookup of every contact: presence, key versions, fingerprints, key changes. */
let refreshing = null;
export function refreshContacts() {
  refreshing = refreshing || (async () => {
    await null; // `refreshing` is set before the body can clear it
    const names = ui.client.contactNames();
    try {
      const found = names.length ? await ui.client.lookupPeers(names) : [];
      info.clear(); looked.clear();
      for (const n of names) looked.add(n);
      for (const p of found) info.set(p.client_id, p);
    } catch (e) {
      if (ui.nameMovedAway) return; // said on the form
      if (!e.transport && !(e instanceof RelayError && e.status >= 500)) showError(`could not load your contacts: ${sayError(e)}`);
    } finally { refreshing = null; }
    if (!ui.client) return; // signed out meanwhile
    renderPeers(); renderHead();
  })();
  return refreshing;
}

/** Keeps `text` as `peer`'s draft (sealed with its history); an empty one goes. */
export function setDraft(peer, text) {
  if (!peer) return;
  if ((drafts.get(peer) || '') === text) return;
  if (text) drafts.set(peer, text); else drafts.delete(peer);
  remember(peer);
}
/** The composer shows `peer`'s own draft, and nobody else's. */
function showDraft(peer) {
  $('text').value = (peer && drafts.get(peer)) || '';
  fitComposer();
}

/** The one-pane layout (phone width): the list and a conversation are not on screen together. */
export const onePane = () => matchMedia('(max-width: 700px)').matches;

export async function openConversation(name, { fromHistory = false } = {}) {
  const peer = canonicalName(name);
  if (popping) await popping;
  // What was typed stays with the conversation it was typed in.
  if (ui.current && ui.current !== peer) setDraft(ui.current, $('text').value);
  ui.current = peer; markRead(peer);
  showDraft(peer);
  ui.newBelow = 0;
  $('conv-title').textContent = peer;
  $('main-view').classList.add('conv-open');
  // The title and the messages change together: never the last conversation under this name.
  renderMessages(); renderHead();
  // One pane: the browser's Back returns to the list (popstate), not away from the page.
  if (!fromHistory && onePane()) {
    if (history.state?.conv) history.replaceState({ conv: peer }, '');
    else history.pushState({ conv: peer }, '');
  }
  const added = await ui.client.addContact(peer);
  if (search.prefix) clearSearch();
  renderPeers(); renderHead();
  // The composer, or while the conversation is blocked the bar's Review button.
  (ui.client.isBlocked(peer) ? $('blocked-review') : $('text')).focus();
  if (added || !info.has(peer)) await refreshContacts();
  // Asked once per new key: after "Keep blocked" the bar and its Review button say it.
  if (ui.client.isBlocked(peer) && !keptBlocked(peer)) await warnKeyChange(peer);
}

export function backToList() {
  const was = ui.current;
  if (was) setDraft(was, $('text').value);
  // The conversation is out of sight: what arrives in it now is unread.
  ui.current = null;
  showDraft(null);
  $('main-view').classList.remove('conv-open');
  const row = was && document.querySelector(`.peer[data-peer="${CSS.escape(was)}"]`);
  (row || $('search')).focus();
}
