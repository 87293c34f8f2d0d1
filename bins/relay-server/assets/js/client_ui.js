// client_ui.html: the everyday client. All crypto happens in mtproto.js (Web Crypto).
//
// People: the contacts (whom this user wrote to, heard from or added; kept with the profile),
// refreshed with one exact directory lookup every few seconds (presence, key changes), and a
// prefix search of the directory, a page at a time. `?search_limit=N` sets the page size.
//
// Outgoing messages live in the client's outbox (mtproto.js) until the relay stored or refused
// them: "sending…" (a spinner), "sent ✓", "delivered ✓✓" (the peer's page opened and kept it), or
// "not sent: <reason>" with retry and discard.
//
// History: every conversation is kept in IndexedDB, sealed under the origin's non-extractable
// AES-GCM key (mtproto.js, saveHistory), with its unread count and the profile; the last user is
// signed in again by itself on the next visit. Received messages are shown in the sender's order
// (their seq), and a note "earlier messages missing" stays only while a number before them is
// still missing.
//
// Signing out either keeps the profile in this browser (anyone here can open it again by typing
// the name) or removes it (RelayClient.forget: profile, keys, history, nothing left to read);
// after a removal only the recovery code gives the name back.
//
// Notices: errors in the red banner (role alert), what needs no action in a neutral one (role
// status); both can be dismissed.
//
// Drafts: what is typed and not sent belongs to its conversation (kept sealed with its history);
// switching conversations never carries it to another person.
//
// Phone width (one pane): opening a conversation pushes a history entry, so the browser's Back
// returns to the chat list instead of leaving the page.
import {
  RelayClient, RelayError, canonicalName, humanError, refusalText, MAX_PEERS_PAGE,
  loadHistory, saveHistory, lastUser, setLastUser, hasProfile, formatRecoveryCode, parseRecoveryCode, bidiBalanced,
} from './mtproto.js';

const $ = (id) => document.getElementById(id);
const pin = document.querySelector('meta[name=relay-fingerprint]').content;
const SEARCH_LIMIT = Math.min(Math.max(Number(new URLSearchParams(location.search).get('search_limit')) || 20, 1), MAX_PEERS_PAGE);
/** A contact is "online" while its last request is at most this old (it long-polls every 10 s). */
const ONLINE_SECS = 15;
/** Contacts (presence, key changes) are looked up again this often. */
const REFRESH_MS = 4000;
/** Most messages kept per conversation. */
const KEEP_MESSAGES = 2000;
/**
 * Most text kept per conversation, in characters (about 2 MB): besides the count, so that a
 * stranger's large messages cannot grow the stored history and the page's memory without bound.
 */
const KEEP_CHARS = 1_000_000;
/**
 * What a bubble shows of a long message: the rest is offered to copy, never laid out (a 60,000-
 * character message without spaces took 15 s to lay out on every render — review 13b).
 */
const SHOW_CHARS = 2000, SHOW_LINES = 40;

/** The part of `text` a bubble shows, or null when it shows all of it. */
function shownPart(text) {
  let cut = Math.min(text.length, SHOW_CHARS);
  let at = -1;
  for (let n = 0; n < SHOW_LINES; n++) {
    at = text.indexOf('\n', at + 1);
    if (at === -1 || at >= cut) { at = -1; break; }
  }
  if (at !== -1) cut = at;
  return cut < text.length ? text.slice(0, cut) : null;
}

/** Drops a conversation's oldest messages beyond KEEP_MESSAGES or KEEP_CHARS. */
function trimHistory(list) {
  if (list.length > KEEP_MESSAGES + 100) list.splice(0, list.length - KEEP_MESSAGES);
  let chars = 0, keep = list.length;
  while (keep > 0 && chars + (list[keep - 1].text?.length || 0) <= KEEP_CHARS) chars += list[--keep].text?.length || 0;
  if (keep > 0) list.splice(0, keep);
}

let client = null;
let current = null;
let connected = false; // our own link to the relay: presence is unknown while it is down
const convs = new Map(); // peer -> [message]; message: {dir, text, at, seq, rid, state, reason, id, mailboxSeq, gap, delivery, epoch}
const byOutbox = new Map(); // outbox id -> its message in convs
const unread = new Map();
const info = new Map(); // contact -> its directory entry from the last lookup (with `status`)
const looked = new Set(); // the names that lookup asked for (a contact asked and absent is gone)
const search = { prefix: '', next: null, results: [], asked: 0, timer: null, self: false };
const drafts = new Map(); // peer -> the unsent text of its composer (sealed with its history)
/** Contacts that have not yet accepted our new key (after "Reset my key"), until a word from them. */
const awaiting = new Set();
/** Counts sign-ins in this page: the listeners of a signed-out client no longer act. */
let generation = 0;

// ---- words for people ------------------------------------------------------------------------

const OFFLINE_NOTE = 'The relay cannot be reached. Messages you write wait here and go out, in order, when it is back.';
/** An error as a sentence for people: no codes, no parser positions. */
function sayError(e, peer) {
  if (e && e.transport) return 'the relay cannot be reached. Check your connection; this page keeps trying.';
  if (e instanceof SyntaxError) return 'the relay sent an answer this page cannot read. Try again in a moment.';
  if (e instanceof RelayError && e.code === 'client_id_taken') return 'this name is registered to someone else’s key.';
  if (e instanceof RelayError && e.code === 'recovery_refused') return 'that recovery code does not match this name. Check what you wrote down and try again; nothing was changed.';
  // Not the relay's own answer (a proxy's error page), or the relay failing: nothing a person can act on but waiting.
  if (e instanceof RelayError && (e.code === 'http' || e.code === undefined || (e.status >= 500 && e.code !== 'storage_unavailable' && e.code !== 'busy'))) {
    return 'the relay is not answering properly right now (it may be restarting). Try again in a moment.';
  }
  const text = humanError(e, peer);
  if (/^(untrusted server|server key does not match|server signature|key confirmation failed|nonce mismatch|unknown DH group)/.test(text)) {
    return 'the relay could not prove it is the one this page came from. Reload the page; if it happens again, do not use this relay.';
  }
  return text.replace(/\s*\(?\b[a-z]+(_[a-z]+)+\b\)?:?/g, ' ').replace(/\s+/g, ' ').trim() || 'something went wrong. Try again.';
}
function showError(msg) { $('error').textContent = msg; $('error').classList.toggle('on', !!msg); $('error-bar').hidden = !msg; }
/** A notice that asks nothing of the user (the link is down, the name moved here, a key reset). */
function showInfo(msg) { $('info').textContent = msg; $('info-bar').hidden = !msg; }
/** The info notice that stays until dismissed (a status change shows it again after OFFLINE_NOTE). */
let standingNotice = '';
/** After a banner is dismissed the focus goes where the user works. */
function focusWork() {
  if ($('main-view').classList.contains('on')) (current && !$('text').disabled ? $('text') : $('search')).focus();
  else $('name').focus();
}
$('error-dismiss').addEventListener('click', () => { showError(''); focusWork(); });
$('info-dismiss').addEventListener('click', () => {
  if ($('info').textContent === standingNotice) standingNotice = '';
  showInfo(''); focusWork();
});
/** The status chip; a long name is cut with "…" on screen, so the whole text is its title too. */
function setStatus(text, offline) { $('status').textContent = text; $('status').title = text; $('status').classList.toggle('offline', !!offline); }

let countdown = null;
function showBusy(el, seconds, after) {
  clearInterval(countdown);
  let left = seconds;
  const tick = () => {
    if (left <= 0) { clearInterval(countdown); el.textContent = after; return; }
    el.textContent = `the relay is busy, retrying in ${left} s`;
    left -= 1;
  };
  tick();
  countdown = setInterval(tick, 1000);
}

// ---- times -------------------------------------------------------------------------------------

const hm = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
function dayKey(ms) { const d = new Date(ms); return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`; }
function dayLabel(ms) {
  const now = new Date();
  if (dayKey(ms) === dayKey(now.getTime())) return 'Today';
  if (dayKey(ms) === dayKey(now.getTime() - 86400000)) return 'Yesterday';
  return new Date(ms).toLocaleDateString([], { weekday: 'long', day: 'numeric', month: 'long', year: now.getFullYear() === new Date(ms).getFullYear() ? undefined : 'numeric' });
}
function shortWhen(ms) { return dayKey(ms) === dayKey(Date.now()) ? hm(ms) : new Date(ms).toLocaleDateString([], { day: 'numeric', month: 'short' }); }
const serverNow = () => Date.now() / 1000 + (client?.session?.timeOffset || 0);
/** {online, text} for a directory entry: unknown while our own link is down. */
function presence(p) {
  if (!p || !p.last_seen) return { online: false, text: '' };
  if (!connected) return { online: false, text: `last seen ${ago(p.last_seen)} (you are offline)` };
  if (serverNow() - p.last_seen <= ONLINE_SECS) return { online: true, text: 'online' };
  return { online: false, text: `last seen ${ago(p.last_seen)}` };
}
function ago(secs) {
  const d = Math.max(0, serverNow() - secs);
  if (d < 60) return 'just now';
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  const ms = (secs - (client?.session?.timeOffset || 0)) * 1000;
  if (d < 86400 && dayKey(ms) === dayKey(Date.now())) return `today at ${hm(ms)}`;
  return `${dayLabel(ms).toLowerCase()} at ${hm(ms)}`;
}

// ---- history ---------------------------------------------------------------------------------

const dirty = new Set();
let saveTimer = null;
/** Set once the profile is being removed: nothing may be written again. */
let forgetting = false;
function remember(peer) { if (forgetting) return; dirty.add(peer); clearTimeout(saveTimer); saveTimer = setTimeout(flushHistory, 300); }
/** The history writes, one after another (a removal waits for the last). */
let historyWrites = Promise.resolve();
/** Writes every changed conversation (sealed), with its unread count. Resolves when they are stored. */
function flushHistory() {
  clearTimeout(saveTimer);
  const run = historyWrites.then(async () => {
    if (forgetting) return;
    const peers = [...dirty]; dirty.clear();
    for (const peer of peers) {
      const list = (convs.get(peer) || []).slice(-KEEP_MESSAGES).map(({ dir, text, at, seq, rid, state, reason, id, mailboxSeq, gap, delivery, epoch, warn, warnLevel }) =>
        ({ dir, text, at, seq, rid, state, reason, id, mailboxSeq, gap, delivery, epoch, warn, warnLevel }));
      try { await saveHistory(client.name, peer, list, { unread: unread.get(peer) || 0, draft: drafts.get(peer) || '', awaiting: awaiting.has(peer) }); } catch { dirty.add(peer); }
    }
  });
  historyWrites = run.catch(() => {});
  return run;
}
/** `peer`'s conversation is seen: its unread count goes (and is stored so). */
function markRead(peer) {
  if (!unread.has(peer)) return;
  unread.delete(peer);
  remember(peer);
}

// ---- the people list -------------------------------------------------------------------------

function last(peer) { const l = (convs.get(peer) || []).filter((m) => m.dir !== 'system'); return l[l.length - 1]; }

function peerRow(cls, name, extra = []) {
  const li = document.createElement('li');
  const b = document.createElement('button');
  b.className = cls; b.dataset.peer = name; b.type = 'button';
  const p = info.get(name);
  const pres = presence(p);
  const dot = document.createElement('span'); dot.className = 'dot' + (pres.online ? ' online' : ''); dot.setAttribute('aria-hidden', 'true');
  const who = document.createElement('span'); who.className = 'who';
  const nm = document.createElement('span'); nm.className = 'name'; nm.textContent = name;
  who.append(nm);
  if (pres.text) { const s = document.createElement('span'); s.className = 'sr-only'; s.textContent = `, ${pres.text}`; who.append(s); }
  b.append(dot, who, ...extra);
  b.addEventListener('click', () => openConversation(name));
  li.append(b);
  return { li, b, who };
}

function badgeFor(name) {
  const p = info.get(name);
  if (client.blocked.has(name) || (p && p.status === 'changed')) { const w = document.createElement('span'); w.className = 'badge changed'; w.textContent = 'key changed'; return w; }
  // Verified means: the safety number of this key and ours was compared. A key change on either
  // side clears it (RelayClient.block, rotateIdentity).
  if (client.peers.get(name)?.verified) { const v = document.createElement('span'); v.className = 'badge verified'; v.textContent = '✓ verified'; v.title = 'You compared safety numbers'; return v; }
  return null;
}

/**
 * The contact rows, one per name, kept from one render to the next: a poll that re-renders the list
 * while a finger is on a row must not swallow the tap (a click needs the same element under the
 * press and the release), nor take the keyboard focus off the row.
 */
const peerRows = new Map();

/** Puts `fresh` (a row just built) in the kept row for `name`, touching only what changed. */
function keepRow(name, fresh) {
  const kept = peerRows.get(name);
  if (!kept) { peerRows.set(name, fresh); return fresh.li; }
  const b = kept.b, f = fresh.b;
  if (b.innerHTML !== f.innerHTML) b.replaceChildren(...f.childNodes);
  for (const a of ['class', 'title', 'aria-current']) {
    if (f.getAttribute(a) === null) b.removeAttribute(a);
    else if (b.getAttribute(a) !== f.getAttribute(a)) b.setAttribute(a, f.getAttribute(a));
  }
  return kept.li;
}

/** Makes `ul`'s children `rows`, in order, moving only the rows that moved. */
function placeRows(ul, rows) {
  const had = document.activeElement;
  rows.forEach((li, i) => { if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null); });
  while (ul.children.length > rows.length) ul.lastElementChild.remove();
  // A moved row loses the focus (the DOM blurs what it moves): give it back.
  if (had && had !== document.activeElement && ul.contains(had)) had.focus({ preventScroll: true });
}

function renderPeers() {
  if (!client) return;
  const names = [...client.contacts];
  for (const n of peerRows.keys()) if (!client.contacts.has(n)) peerRows.delete(n);
  // Most recent conversation first; then by name.
  names.sort((a, b) => ((last(b)?.at || 0) - (last(a)?.at || 0)) || a.localeCompare(b));
  placeRows($('peers'), names.map((name) => {
    const side = document.createElement('span'); side.className = 'side';
    const m = last(name);
    if (m) { const w = document.createElement('span'); w.className = 'when'; w.textContent = shortWhen(m.at); side.append(w); }
    const u = document.createElement('span'); u.className = 'unread'; u.textContent = unread.get(name) || '';
    if (unread.get(name)) u.setAttribute('aria-label', `${unread.get(name)} unread`);
    side.append(u);
    const badge = badgeFor(name);
    const { li, b, who } = peerRow('peer', name, badge ? [badge, side] : [side]);
    if (m) { const pv = document.createElement('span'); pv.className = 'preview'; pv.dir = 'auto'; pv.textContent = (m.dir === 'out' ? 'You: ' : '') + bidiBalanced((m.text || '').slice(0, 200)); who.append(pv); }
    b.setAttribute('aria-current', String(name === current));
    if (looked.has(name) && !info.has(name)) { b.classList.add('gone'); b.title = 'not on the relay any more'; }
    else if (badge?.title) b.title = badge.title;
    return keepRow(name, { li, b });
  }));
  $('contacts-empty').hidden = names.length > 0;
  const total = [...unread.values()].reduce((a, n) => a + n, 0);
  document.title = total ? `(${total}) mtproto-relay` : 'mtproto-relay';
}

function renderSearch() {
  $('search-box').hidden = !search.prefix;
  $('search-results').replaceChildren(...search.results.map((p) => {
    const tag = document.createElement('span'); tag.className = 'tag';
    tag.textContent = client.contacts.has(p.client_id) ? 'contact' : 'add';
    info.set(p.client_id, info.get(p.client_id) || p);
    return peerRow('result', p.client_id, [tag]).li;
  }));
  $('search-more').hidden = !search.next;
}

function searchNote(text) { $('search-note').textContent = text; $('search-note').hidden = !text; }

async function runSearch(more = false) {
  const prefix = more ? search.prefix : $('search').value.trim().toLowerCase();
  if (!more) { search.prefix = prefix; search.next = null; search.results = []; search.self = false; }
  searchNote('');
  if (!prefix) { renderSearch(); return; }
  try { canonicalName(prefix); } catch { renderSearch(); searchNote('Names use only letters, digits, "_", "." and "-".'); return; }
  const asked = ++search.asked;
  $('search-more').disabled = true;
  try {
    const page = await client.searchPeers(prefix, { after: more ? search.next : null, limit: SEARCH_LIMIT });
    if (asked !== search.asked) return;
    if (page.peers.some((p) => p.client_id === client.name)) search.self = true;
    search.results.push(...page.peers.filter((p) => p.client_id !== client.name));
    search.next = page.next;
    renderSearch();
    if (!search.results.length && !search.next) {
      // Our own name is never a result: said so, rather than "nobody".
      searchNote(!search.self ? `Nobody's name starts with “${prefix}”.`
        : prefix === client.name ? `“${prefix}” is you. Nobody else's name starts with it.`
          : `Only you (${client.name}) have a name that starts with “${prefix}”.`);
    }
  } catch (e) {
    if (asked === search.asked) searchNote(`Search failed: ${sayError(e)}`);
  } finally { $('search-more').disabled = false; }
}

function clearSearch() { $('search').value = ''; search.prefix = ''; search.next = null; search.results = []; searchNote(''); renderSearch(); }

// ---- the conversation ------------------------------------------------------------------------

/** Whether `seq` from `peer` (under the current key) has not arrived yet. */
const stillMissing = (peer, seq) => client.stillMissing(peer, seq);

/**
 * What the key panel says about forward secrecy in the conversation with `peer`
 * (RelayClient.security), in plain words.
 */
function forwardSecrecyText(peer) {
  const s = client.security(peer);
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

function renderMessages() {
  const ul = $('messages');
  const atBottom = ul.scrollHeight - ul.scrollTop - ul.clientHeight < 40;
  const items = [];
  let day = null;
  for (const m of convs.get(current) || []) {
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
    s.textContent = m.dir === 'out' ? (m.reason ? `${m.state}: ${m.reason}` : m.state) : m.dir === 'in' ? noteFor(current, m) : '';
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
  if (!items.length && current) {
    const e = document.createElement('li'); e.className = 'empty'; e.textContent = 'No messages yet. Say hello — it is end-to-end encrypted.';
    items.push(e);
  }
  ul.replaceChildren(...items);
  if (atBottom || ul.dataset.peer !== current) { ul.scrollTop = ul.scrollHeight; newBelow = 0; }
  ul.dataset.peer = current || '';
  renderNewBelow();
}

/** Messages that arrived in the open conversation while the user was scrolled up. */
let newBelow = 0;
const nearBottom = (ul = $('messages')) => ul.scrollHeight - ul.scrollTop - ul.clientHeight < 40;
function renderNewBelow() {
  const b = $('new-below');
  b.hidden = !newBelow;
  b.textContent = newBelow === 1 ? '1 new message ↓' : `${newBelow} new messages ↓`;
}
$('messages').addEventListener('scroll', () => { if (newBelow && nearBottom()) { newBelow = 0; renderNewBelow(); } });
$('new-below').addEventListener('click', () => {
  const ul = $('messages');
  ul.scrollTop = ul.scrollHeight;
  newBelow = 0; renderNewBelow();
  (!$('text').disabled ? $('text') : ul).focus();
});

function renderHead() {
  if (!client) return;
  const p = info.get(current);
  $('presence').textContent = current ? presence(p).text : '';
  const badge = current ? badgeFor(current) : null;
  $('conv-badge').replaceChildren(...(badge ? [badge] : []));
  const blocked = !!current && client.blocked.has(current);
  $('blocked-bar').hidden = !blocked;
  if (blocked) $('blocked-text').textContent = `${current}'s security key changed. Nothing goes to or comes from them until you accept or verify the new key.`;
  // After our key reset: what we send waits with the relay until they accept the new key.
  const waits = !!current && !blocked && awaiting.has(current);
  $('await-bar').hidden = !waits;
  if (waits) $('await-bar').textContent = `Waiting for ${current} to accept your new key. What you send now reaches them once they do.`;
  for (const id of ['text', 'send']) $(id).disabled = !current || blocked;
  $('verify').disabled = !current;
  const verified = !!current && !blocked && !!client.peers.get(current)?.verified;
  $('verify').classList.toggle('done', verified);
  if (verified) {
    const more = document.createElement('span'); more.className = 'wide'; more.textContent = ' — view safety number';
    $('verify').replaceChildren('Verified ✓', more);
    $('verify').title = `You verified ${current}. Show the safety number again.`;
  } else { $('verify').textContent = 'Verify'; $('verify').title = ''; }
}

/** A message or receipt from `peer` opened under our current key: they accepted it. */
function heardFrom(peer) { if (awaiting.delete(peer)) { remember(peer); rerender(peer); } }

function rerender(peer) {
  if (peer === current) { renderMessages(); renderHead(); }
  renderPeers();
}

/**
 * The key generation of the conversation with `peer`: seqs start again at 0 whenever either
 * side's key changes — the peer's (its directory version) or ours (a reset) — so both are in it.
 */
const epochOf = (peer) => `${client.peers.get(peer)?.version ?? 0}:${Array.from(client.identity.pub.slice(0, 6)).join('.')}`;

/** Adds a message: received ones in the sender's order (seq), the rest at the end. */
function push(peer, m) {
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
  if (m.dir === 'in' && (peer !== current || document.hidden)) unread.set(peer, (unread.get(peer) || 0) + 1);
  // Arrived below what the user is reading: said by "new messages ↓" instead of a jump.
  if (m.dir === 'in' && peer === current && !nearBottom()) newBelow += 1;
  remember(peer);
  rerender(peer);
}

function system(peer, text, warn = false) { push(peer, { dir: 'system', text, warnLevel: warn }); }

/** Shows an outbox receipt on its message (made on the first receipt of a new outbox entry). */
function showOutbox(r) {
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
    const list = convs.get(current) || [];
    list.splice(list.indexOf(m), 1);
    remember(current); renderMessages();
    await sendText(current, m.text);
    return;
  }
  const peer = current;
  try { await client.retry(m.id); } catch (e) { if (e.keyChanged) await warnKeyChange(peer); else showError(sayError(e, peer)); }
}

async function discardMessage(m) {
  if (m.id === undefined) {
    const list = convs.get(current) || [];
    list.splice(list.indexOf(m), 1);
    remember(current); renderMessages();
    $('text').focus();
    return;
  }
  try { await client.abandon(m.id); } catch (e) { showError(sayError(e, current)); }
  $('text').focus();
}

async function sendText(peer, text) {
  try {
    const r = await client.send(peer, text);
    if (r && r.state === 'stored' && $('info').textContent === OFFLINE_NOTE) showInfo(standingNotice);
  } catch (e) {
    if (e.keyChanged) {
      rerender(peer);
      // The text goes back to its own conversation's composer (never another's).
      if (peer === current) { $('text').value = $('text').value || text; fitComposer(); setDraft(peer, $('text').value); } else if (!drafts.get(peer)) setDraft(peer, text);
      await warnKeyChange(peer);
      return;
    }
    push(peer, { dir: 'out', text, state: 'not sent', reason: sayError(e, peer) });
  }
}

/** One exact lookup of every contact: presence, key versions, fingerprints, key changes. */
let refreshing = null;
function refreshContacts() {
  refreshing = refreshing || (async () => {
    await null; // `refreshing` is set before the body can clear it
    const names = [...client.contacts];
    try {
      const found = names.length ? await client.lookupPeers(names) : [];
      info.clear(); looked.clear();
      for (const n of names) looked.add(n);
      for (const p of found) info.set(p.client_id, p);
    } catch (e) {
      if (nameMovedAway) return; // said on the form
      if (!e.transport && !(e instanceof RelayError && e.status >= 500)) showError(`could not load your contacts: ${sayError(e)}`);
    } finally { refreshing = null; }
    if (!client) return; // signed out meanwhile
    renderPeers(); renderHead();
  })();
  return refreshing;
}

/** Keeps `text` as `peer`'s draft (sealed with its history); an empty one goes. */
function setDraft(peer, text) {
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
const onePane = () => matchMedia('(max-width: 700px)').matches;

async function openConversation(name, { fromHistory = false } = {}) {
  const peer = canonicalName(name);
  if (popping) await popping;
  // What was typed stays with the conversation it was typed in.
  if (current && current !== peer) setDraft(current, $('text').value);
  current = peer; markRead(peer);
  showDraft(peer);
  newBelow = 0;
  $('conv-title').textContent = peer;
  $('main-view').classList.add('conv-open');
  // One pane: the browser's Back returns to the list (popstate), not away from the page.
  if (!fromHistory && onePane()) {
    if (history.state?.conv) history.replaceState({ conv: peer }, '');
    else history.pushState({ conv: peer }, '');
  }
  const added = await client.addContact(peer);
  if (search.prefix) clearSearch();
  renderPeers(); renderMessages(); renderHead();
  // The composer, or while the conversation is blocked the bar's Review button.
  (client.blocked.has(peer) ? $('blocked-review') : $('text')).focus();
  if (added || !info.has(peer)) await refreshContacts();
  // Asked once per new key: after "Keep blocked" the bar and its Review button say it.
  if (client.blocked.has(peer) && !keptBlocked(peer)) await warnKeyChange(peer);
}

function backToList() {
  const was = current;
  if (was) setDraft(was, $('text').value);
  // The conversation is out of sight: what arrives in it now is unread.
  current = null;
  showDraft(null);
  $('main-view').classList.remove('conv-open');
  const row = was && document.querySelector(`.peer[data-peer="${CSS.escape(was)}"]`);
  (row || $('search')).focus();
}

/**
 * Whether the user chose "Keep blocked" for `peer`'s key as the directory has it now (a newer key
 * asks again). Before the first lookup of this page, the key kept is taken as current.
 */
function keptBlocked(peer) {
  const key = info.get(peer)?.identity_key;
  return client.isKeptBlocked(peer, key || null);
}

/** The key the warning shows (base64), for "Keep blocked" to remember. */
let warnedKey = null;
async function warnKeyChange(peer) {
  const d = $('keychange-dialog');
  if (d.open && $('keychange-peer').textContent === peer) return;
  $('keychange-peer').textContent = peer; $('keychange-peer2').textContent = peer;
  $('keychange-fp').textContent = '…';
  warnedKey = null;
  if (!d.open) d.showModal();
  $('keychange-cancel').focus();
  try {
    const { key, fingerprint } = await client.pendingKey(peer);
    if ($('keychange-peer').textContent !== peer) return;
    warnedKey = key; $('keychange-fp').textContent = fingerprint;
  } catch (e) { $('keychange-fp').textContent = `(cannot compute it now: ${sayError(e, peer)})`; }
}
/** "Keep blocked" (or Escape): not asked again about this key; the bar offers Review. */
async function keepBlocked() {
  const peer = $('keychange-peer').textContent;
  const key = warnedKey || info.get(peer)?.identity_key;
  if (key) await client.keepBlocked(peer, key);
}

async function acceptKey(verified) {
  const peer = $('keychange-peer').textContent;
  $('keychange-dialog').close();
  try {
    await client.acceptPeerKey(peer);
    if (verified) await client.setVerified(peer, true);
    system(peer, verified ? `You verified ${peer}'s new key.` : `You accepted ${peer}'s new key. Verify it when you can.`);
    await refreshContacts();
  } catch (e) { showError(sayError(e, peer)); }
  if (peer === current) $('text').focus();
}
$('keychange-accept').addEventListener('click', () => acceptKey(false));
// Marking verified is a separate, deliberate step: it says the numbers were compared.
$('keychange-verify').addEventListener('click', () => acceptKey(true));
$('keychange-cancel').addEventListener('click', () => { keepBlocked(); $('keychange-dialog').close(); });
$('keychange-dialog').addEventListener('cancel', () => { keepBlocked(); }); // Escape
$('keychange-dialog').addEventListener('close', () => { rerender(current); if (current) $('blocked-review').focus(); });
$('blocked-review').addEventListener('click', () => warnKeyChange(current));

$('verify').addEventListener('click', async () => {
  if (client.blocked.has(current)) { await warnKeyChange(current); return; }
  try {
    $('verify-peer').textContent = current;
    $('safety-number').textContent = await client.fingerprint(current);
    $('forward-secrecy').textContent = forwardSecrecyText(current);
    $('verify-dialog').showModal();
  } catch (e) { if (e.keyChanged) await warnKeyChange(current); else showError(sayError(e, current)); }
});
$('verify-close').addEventListener('click', () => $('verify-dialog').close());
$('verify-ok').addEventListener('click', async () => {
  const peer = current;
  $('verify-dialog').close();
  await client.setVerified(peer, true);
  system(peer, `You verified ${peer}.`);
});
$('verify-dialog').addEventListener('close', () => $('text').focus());

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  // After a tap on Send the focus goes back to the message box, for the next one.
  if (!$('text').disabled) $('text').focus();
  if (!text || !current) return;
  $('text').value = '';
  setDraft(current, '');
  fitComposer();
  // What the user sends is shown: the list goes to the end.
  $('messages').scrollTop = $('messages').scrollHeight;
  sendText(current, text);
});
// Enter sends; Shift+Enter starts a new line (and Enter that ends an IME composition does neither).
$('text').addEventListener('keydown', (ev) => {
  if (ev.key !== 'Enter' || ev.shiftKey || ev.isComposing || ev.keyCode === 229) return;
  ev.preventDefault();
  $('composer').requestSubmit();
});
/** The message box grows with its lines, up to its max-height (then it scrolls). */
function fitComposer() {
  const t = $('text');
  t.style.height = '';
  if (t.scrollHeight > t.clientHeight) t.style.height = `${t.scrollHeight + 2}px`;
}
$('text').addEventListener('input', () => { fitComposer(); setDraft(current, $('text').value); });

$('search').addEventListener('input', () => { clearTimeout(search.timer); search.timer = setTimeout(() => runSearch(false), 250); });
// Enter in the search box opens the first match.
$('search-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearTimeout(search.timer);
  await runSearch(false);
  const first = document.querySelector('#search-results .result');
  if (first) await openConversation(first.dataset.peer);
});
$('search-more').addEventListener('click', () => runSearch(true));
// Back to the list at once, and out of the history entry the conversation pushed, if it did. A
// conversation opened before that entry is left waits for it (`popping`): its own entry must not
// be the one left.
let popping = null, popped = null;
$('back').addEventListener('click', () => {
  const pushed = !!history.state?.conv;
  backToList();
  if (!pushed) return;
  popping = new Promise((resolve) => {
    const done = () => { if (popped === done) { popped = null; popping = null; } resolve(); };
    popped = done;
    setTimeout(done, 1000);
  });
  history.back();
});
addEventListener('popstate', (ev) => {
  if (popped) { popped(); return; } // the ← Chats above
  if (!$('main-view').classList.contains('on')) return;
  const conv = ev.state?.conv;
  if (conv && conv !== current && client.contacts.has(conv)) openConversation(conv, { fromHistory: true });
  else if (!conv && current) backToList();
});

$('rotate').addEventListener('click', () => $('rotate-dialog').showModal());
$('rotate-cancel').addEventListener('click', () => $('rotate-dialog').close());
$('rotate-ok').addEventListener('click', async () => {
  $('rotate-dialog').close();
  try {
    await client.rotateIdentity();
    const fp = await client.ownFingerprint();
    $('own-fp').textContent = `key ${fp}`;
    $('me').textContent = `You are ${client.name} · key ${fp}`;
    showError('');
    showInfo(standingNotice = `Your key was reset: your new key is ${fp}. Your contacts are asked to accept it before you can talk again, and your safety numbers changed: compare them again with the people you had verified.`);
    // Each conversation says it waits for them, until a word (a message, a receipt) under the new key.
    for (const peer of client.contacts) { awaiting.add(peer); remember(peer); }
    renderPeers(); renderHead();
  } catch (e) { showError(`could not reset your key: ${sayError(e)}`); }
});
$('rotate-dialog').addEventListener('close', () => $('rotate').focus());
$('signout').addEventListener('click', () => {
  $('signout-name').textContent = client.name;
  const waiting = client.waiting().length;
  $('signout-outbox').hidden = !waiting;
  $('signout-outbox').textContent = waiting ? `${waiting === 1 ? '1 message has' : `${waiting} messages have`} not been sent yet: removing the profile discards ${waiting === 1 ? 'it' : 'them'}.` : '';
  $('signout-dialog').showModal();
});
$('signout-cancel').addEventListener('click', () => $('signout-dialog').close());
$('signout-dialog').addEventListener('close', () => { if (!forgetting && !leaving) $('signout').focus(); });
let leaving = false;
// Sign out, keep the profile: this browser forgets who signed in last; typing the name opens it again.
$('signout-keep').addEventListener('click', async () => {
  leaving = true;
  $('signout-dialog').close();
  await flushHistory();
  await setLastUser(null);
  client.stop();
  reloadSaying('kept');
});
// Sign out and remove: nothing of the profile stays in this browser (RelayClient.forget).
$('signout-remove').addEventListener('click', async () => {
  forgetting = true;
  $('signout-dialog').close();
  clearTimeout(saveTimer); clearInterval(refreshTimer); dirty.clear();
  setStatus('removing your profile…', true);
  try {
    await historyWrites;
    await client.forget();
  } catch (e) {
    showError(`could not remove everything from this browser: ${sayError(e)}. Reload the page and try again.`);
    return;
  }
  letGo();
  reloadSaying('removed');
});
/**
 * Starts the page again, empty; the fragment (not storage) says what just happened. While the
 * relay (which serves this page) cannot be reached a reload would end on the browser's own error
 * page: the page is emptied in place instead.
 */
async function reloadSaying(what) {
  let up = false;
  try { up = (await fetch(`${location.pathname}${location.search}`, { method: 'HEAD', cache: 'no-store', signal: AbortSignal.timeout(4000) })).ok; } catch { up = false; }
  if (up) {
    location.replace(`${location.pathname}${location.search}#signed-out-${what}`);
    location.reload();
    return;
  }
  signedOutInPlace(what);
}
/** The signed-out page without a reload: nothing of the last user stays on screen or in memory. */
function signedOutInPlace(what) {
  generation += 1; // the old client's events no longer reach the page
  client.stop();
  clearInterval(refreshTimer); clearTimeout(saveTimer); clearInterval(countdown); clearTimeout(search.timer);
  for (const m of [convs, byOutbox, unread, info, drafts]) m.clear();
  for (const x of [looked, awaiting, dirty]) x.clear();
  current = null; newBelow = 0; standingNotice = '';
  clearSearch();
  $('text').value = ''; fitComposer();
  $('peers').replaceChildren(); peerRows.clear(); $('messages').replaceChildren(); $('messages').dataset.peer = '';
  $('conv-title').textContent = 'Select someone to talk to';
  $('own-fp').textContent = ''; $('me').textContent = '';
  delete document.body.dataset.user;
  document.title = 'mtproto-relay';
  $('main-view').classList.remove('on', 'conv-open');
  if (history.state?.conv) history.replaceState(null, '');
  letGo();
  client = null;
  forgetting = false; leaving = false;
  $('connect-view').hidden = false;
  $('name').value = ''; $('handshake-log').textContent = '';
  $('connect').disabled = false; $('recover').disabled = false;
  setStatus('not connected', true);
  showError('');
  showInfo(`${SIGNED_OUT[what]} (The relay cannot be reached right now.)`);
  $('name').focus();
}
const SIGNED_OUT = {
  kept: 'You signed out. Your profile stays in this browser: type your name to open it again.',
  removed: 'You signed out, and your profile was removed from this browser.',
};

// ---- signing in --------------------------------------------------------------------------------

const STEP_TEXT = {
  req_pq: 'asking the relay…', pq_factored: 'pq factored', pow_solved: 'proof of work done',
  dh_params_verified: 'relay signature verified', key_confirmed: 'key confirmed', resumed: 'opening your saved profile…',
};

/**
 * Holds `name`'s profile for as long as this page lives (Web Locks): two tabs of one profile
 * would both seal under the same conversation counters. Waits up to 3 s (a reloading tab lets go
 * as it unloads); false if another tab keeps it.
 */
let letGo = () => {};
function holdProfile(name) {
  letGo();
  if (!navigator.locks) return Promise.resolve(true);
  return new Promise((resolve) => {
    navigator.locks.request(`mtproto-relay/profile/${name}`, { signal: AbortSignal.timeout(3000) }, () => {
      resolve(true);
      return new Promise((done) => { letGo = done; }); // held until the page goes (or signs in as another)
    }).catch(() => resolve(false));
  });
}

/**
 * Signs `rawName` in: its saved profile, or a new account (whose recovery code is then shown
 * once), or with `recoveryCode` (16 bytes) the name taken over from a lost device.
 */
const CONNECT_TITLE = 'Sign in or create an account';

/**
 * A sign-in the relay did not answer (unreachable, or failing with a 5xx) is tried again by
 * itself, after 2, 4, 8, 15, 15… s, SIGNIN_TRIES times in all; the form says when. Editing it
 * stops the waiting; Connect tries at once.
 */
const SIGNIN_TRIES = 8;
const signInRetry = { timer: null, tries: 0 };
const unansweredSignIn = (e) => !!(e && e.transport) || (e instanceof RelayError && (e.status >= 500 || e.code === 'http'));
function stopSignInRetry() {
  const waiting = !!signInRetry.timer;
  clearInterval(signInRetry.timer); signInRetry.timer = null;
  return waiting;
}
function retrySignInLater(rawName, recoveryCode) {
  signInRetry.tries += 1;
  const log = $('handshake-log');
  if (signInRetry.tries >= SIGNIN_TRIES) {
    signInRetry.tries = 0;
    log.textContent = `Tried ${SIGNIN_TRIES} times without an answer. Check your connection, then press Connect to try again.`;
    return false;
  }
  let left = Math.min(2 ** signInRetry.tries, 15);
  const tick = () => {
    if (left <= 0) { stopSignInRetry(); log.textContent = 'trying again…'; signIn(rawName, recoveryCode, { retrying: true }); return; }
    log.textContent = `Trying again in ${left} s (try ${signInRetry.tries + 1} of ${SIGNIN_TRIES}). Changing the name stops this.`;
    left -= 1;
  };
  tick();
  signInRetry.timer = setInterval(tick, 1000);
  return true;
}
// Editing the form ends the waiting: the next try is the user's.
for (const id of ['name', 'recovery-code']) {
  $(id).addEventListener('input', () => {
    signInRetry.tries = 0;
    if (stopSignInRetry()) { $('handshake-log').textContent = ''; showError(''); }
  });
}

async function signIn(rawName, recoveryCode = null, { retrying = false } = {}) {
  stopSignInRetry();
  if (!retrying) signInRetry.tries = 0;
  let name;
  try { name = canonicalName(rawName); } catch (e) { showError(e.message); $('name').focus(); return; }
  $('connect').disabled = true; $('recover').disabled = true;
  if (!(await holdProfile(name))) {
    $('connect-view').hidden = false; $('connect').disabled = false; $('recover').disabled = false;
    setStatus('not connected', true);
    showError(`${name} is already open in another tab or window of this browser. Use that one: two at once would mix up your messages.`);
    $('name').focus();
    return;
  }
  if (!recoveryCode) $('recovery').hidden = true;
  $('recovery-error').textContent = '';
  setStatus('connecting…');
  const log = $('handshake-log');
  const trace = (step, d) => {
    if (step === 'busy') { showBusy(log, d.seconds, 'handshake: retrying…'); return; }
    clearInterval(countdown);
    log.textContent = step === 'pow_working' ? `handshake: working… (proof of work, ${d.bits} bits)` : `handshake: ${STEP_TEXT[step] || step}`;
  };
  try {
    client = await RelayClient.connect({ name, pin, trace, recoveryCode });
  } catch (e) {
    clearInterval(countdown);
    $('connect-view').hidden = false;
    $('connect').disabled = false; $('recover').disabled = false; setStatus('not connected', true);
    log.textContent = '';
    letGo();
    // Not answered: tried again by itself (bounded), said on the form.
    const again = unansweredSignIn(e) && retrySignInLater(rawName, recoveryCode);
    const said = unansweredSignIn(e) && !again && e.transport
      ? 'the relay cannot be reached. Check your connection, then press Connect to try again.' : sayError(e);
    if (recoveryCode) {
      // The error goes beside the code; the form stays as it was.
      $('recovery-error').textContent = e instanceof RelayError && e.code === 'client_id_taken'
        ? `${name} has no recovery code on this relay (it was registered before recovery codes existed), so it cannot be moved. Choose another name.`
        : `Could not use the code: ${said}`;
      if (!retrying) $('recovery-code').focus();
      return;
    }
    if (e instanceof RelayError && e.code === 'client_id_taken') {
      offerRecovery(name, `The name “${name}” is already registered — to a key this browser does not have. If it is yours (a new device, or this browser lost its data), enter your recovery code (the latest one you wrote down) and your name moves here. Otherwise, choose another name.`);
      showError(`could not sign in: ${sayError(e)}`);
      return;
    }
    showError(`could not sign in: ${said}`);
    if (!retrying) $('name').focus();
    return;
  }
  $('recovery').hidden = true; $('recovery-code').value = ''; $('recover').disabled = false;
  if (nameMovedAway) {
    nameMovedAway = false;
    $('connect-title').textContent = CONNECT_TITLE; $('name').readOnly = false; $('connect').hidden = false;
  }
  await setLastUser(client.name);
  await start(recoveryCode ? `Your name moved to this browser. Your contacts will see that your security key changed, and must accept it before you can talk again.` : '');
}

/** The way forward for a name held by another key: the recovery code, or another name. */
function offerRecovery(name, text) {
  $('name').value = name;
  $('recovery-text').textContent = text;
  $('recovery-error').textContent = '';
  $('recovery').hidden = false;
  $('recovery-code').focus();
}

function recoverName() {
  let code;
  try { code = parseRecoveryCode($('recovery-code').value); } catch (e) {
    $('recovery-error').textContent = `That is not a recovery code: ${e.message}`;
    $('recovery-code').focus();
    return;
  }
  signIn($('name').value, code);
}
$('recover').addEventListener('click', recoverName);
$('other-name').addEventListener('click', () => {
  // A page whose name moved away holds that user's state: it starts clean for another name.
  if (nameMovedAway) { setLastUser(null).then(() => location.reload()); return; }
  $('recovery').hidden = true; $('recovery-code').value = ''; showError('');
  $('name').select(); $('name').focus();
});
// The recovery choice answers for the name it was offered for.
$('name').addEventListener('input', () => { if (!nameMovedAway) $('recovery').hidden = true; });

// ---- the recovery code, shown once ------------------------------------------------------------

/**
 * Shows a new account's recovery code until the user says it is written down; then forgets it.
 * Until then it is also kept sealed in this browser (RelayClient.keepRecoveryCode): a reload or a
 * crash shows it again.
 */
const CODE_WHY = {
  new: ['Your recovery code', 'Write it down and keep it somewhere safe. It moves your name to a new device if you lose this one or clear this browser.'],
  recovered: ['Your new recovery code', 'Your name moved here, and it has a new recovery code: the code you just used no longer works. Write the new one down and keep it somewhere safe.'],
  again: ['Your new recovery code', 'The relay had lost its data, so your name was registered again, with a new recovery code: the one you wrote down before no longer works. Write the new one down and keep it somewhere safe.'],
};
const CODE_ONCE = ' Once you choose Done, we cannot show it again: this browser deletes it, and the relay never had it. (Until then it stays here, encrypted, so that a reload shows it again.)';
function showRecoveryCode(code, reason = 'new') {
  const d = $('code-dialog');
  const [title, why] = CODE_WHY[reason] || CODE_WHY.new;
  $('code-title').textContent = title;
  $('code-text').textContent = why + CODE_ONCE;
  // Two halves of four groups, each unbroken: a line never ends inside a group or between
  // groups of one half.
  const groups = formatRecoveryCode(code).split('-');
  const half = (g, tail) => { const s = document.createElement('span'); s.className = 'half'; s.textContent = g.join('-') + tail; return s; };
  $('code-shown').replaceChildren(half(groups.slice(0, 4), '-'), half(groups.slice(4), ''));
  code.fill(0);
  $('code-saved').checked = false; $('code-done').disabled = true; $('code-note').textContent = '';
  if (!d.open) d.showModal();
  $('code-copy').focus();
}
$('code-saved').addEventListener('change', () => { $('code-done').disabled = !$('code-saved').checked; });
$('code-copy').addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText($('code-shown').textContent);
    $('code-note').textContent = 'Copied. Paste it somewhere safe (a password manager), not in a chat.';
  } catch {
    $('code-note').textContent = 'This browser did not let the page copy: select the code and copy it yourself, or write it down.';
  }
});
$('code-done').addEventListener('click', async () => {
  if (!$('code-saved').checked) return;
  $('code-shown').textContent = '';
  $('code-dialog').close();
  // Written down: the sealed copy kept for a reload goes.
  try { await client.confirmRecoveryCode(); } catch { /* it is shown again after a reload */ }
});
// Escape does not lose the code silently: the dialog stays and says why.
$('code-dialog').addEventListener('cancel', (ev) => {
  ev.preventDefault();
  $('code-note').textContent = 'This code cannot be shown again. Write it down, tick the box, then choose Done.';
  $('code-saved').focus();
});
$('code-dialog').addEventListener('close', () => {
  // Closed some other way (the browser closes a dialog on a second Escape): opened again.
  if ($('code-shown').textContent) { $('code-dialog').showModal(); $('code-saved').focus(); return; }
  (current ? $('text') : $('search')).focus();
});

// ---- the name moved to another device ----------------------------------------------------------

let nameMovedAway = false;
/** Our key is gone and the name belongs to another key now: the recovery code was used elsewhere. */
async function nameMoved(name) {
  nameMovedAway = true;
  clearInterval(refreshTimer);
  await flushHistory();
  $('main-view').classList.remove('on');
  $('connect-view').hidden = false;
  $('connect-title').textContent = 'Signed out';
  $('name').readOnly = true; $('connect').hidden = true; $('recover').disabled = false;
  $('handshake-log').textContent = ''; $('own-fp').textContent = '';
  setStatus('signed out', true);
  showError(''); showInfo('');
  offerRecovery(name, `Your name “${name}” moved to another device: someone signed in with its recovery code. This browser can no longer send or receive as ${name}. If that was not you, enter your recovery code to take your name back here. Otherwise, choose another name.`);
}

let refreshTimer = null;
async function start(notice = '') {
  // This sign-in's events only: after a sign-out in place (signedOutInPlace) they are ignored.
  const gen = ++generation, c = client;
  const on = (type, fn) => c.addEventListener(type, (ev) => { if (gen === generation) fn(ev); });
  showError('');
  showInfo(standingNotice = notice);
  connected = !client.needPublish;
  setStatus(connected ? `connected as ${client.name}` : 'reconnecting…', !connected);
  const fp = await client.ownFingerprint();
  $('own-fp').textContent = `key ${fp}`;
  $('me').textContent = `You are ${client.name} · key ${fp}`;
  document.body.dataset.user = client.name;
  $('connect-view').hidden = true;
  $('main-view').classList.add('on');
  // A new account: its recovery code, once, in the same task as the page appears.
  const code = client.takeRecoveryCode();
  if (code) showRecoveryCode(code, client.recoveryCodeReason);
  // The history first, then what waited in the outbox (from before a reload) on top of it.
  for (const [peer, { items: list, unread: n, draft, awaiting: waits }] of await loadHistory(client.name)) {
    if (n) unread.set(peer, n);
    if (draft) drafts.set(peer, draft);
    if (waits) awaiting.add(peer);
    const pending = new Set(client.outbox.map((e) => e.id));
    for (const m of list) {
      if (m.dir === 'out' && m.id !== undefined) {
        // Left the outbox while the page was away from it: the relay stored it.
        if (!pending.has(m.id) && m.state === 'sending…') m.state = 'sent ✓';
        if (pending.has(m.id)) byOutbox.set(m.id, m);
      }
    }
    trimHistory(list);
    convs.set(peer, list);
  }
  on('outbox', ({ detail: r }) => showOutbox(r));
  for (const r of client.waiting()) showOutbox(r);
  if (!connected) showInfo(OFFLINE_NOTE);
  client.beforeReceipts = flushHistory;
  on('message', ({ detail: d }) => {
    heardFrom(d.from);
    // Handed out again (the relay delivered it again before it had our acknowledgement, e.g.
    // after a reload): shown once.
    if ((convs.get(d.from) || []).some((m) => m.dir === 'in' && m.rid === d.rid && m.seq === d.seq && m.epoch === epochOf(d.from))) return;
    const m = { dir: 'in', text: d.text, seq: d.seq, rid: d.rid, at: d.at || Date.now(), delivery: d.delivery };
    const gap = /^after_gap:(\d+)-(\d+)$/.exec(d.delivery);
    if (gap) m.gap = [Number(gap[1]), Number(gap[2])];
    if (d.delivery === 'reused') m.warn = `this message reuses the number of an earlier one from ${d.from}: their app may have been restored from an older copy. Both are shown.`;
    push(d.from, m);
    // Told once to screen readers (the list itself is not a live region: it is redrawn whole).
    $('announce').textContent = `${d.from}: ${d.text}`;
    if (!info.has(d.from)) refreshContacts();
  });
  // A late message (or receipt) may fill a gap: notes are recomputed.
  on('control', ({ detail: d }) => { heardFrom(d.from); if (d.from === current) renderMessages(); });
  on('delivered', ({ detail: d }) => {
    let changed = false;
    for (const m of convs.get(d.from) || []) {
      if (m.dir !== 'out' || !d.seqs.includes(m.seq) || /^delivered/.test(m.state || '') || m.state === 'not sent') continue;
      // With random ids the receipt names the very message; without (older pages) the seq only.
      if (d.ids && m.rid && !d.ids.includes(m.rid)) continue;
      if (m.epoch !== undefined && m.epoch !== epochOf(d.from)) continue;
      m.state = 'delivered ✓✓'; changed = true;
    }
    if (changed) { remember(d.from); rerender(d.from); }
  });
  // A secure conversation whose start had no one-time key (the relay had none left): said once, in it.
  on('ratchet_started', ({ detail: d }) => {
    if (d.oneTimePrekey) return;
    system(d.peer, d.initiator
      ? `Started without a one-time key (the relay had none left for ${d.peer}): your first messages are less protected until ${d.peer} replies — someone who later steals ${d.peer}'s device keys could read them.`
      : `${d.peer} started this conversation without a one-time key (the relay had none left): their first messages are less protected until you reply — someone who later steals your device keys could read them.`);
  });
  on('lost', ({ detail: d }) => {
    const n = d.runs.reduce((a, [x, y]) => a + (y - x), 0);
    system(d.from, `${n} message${n === 1 ? '' : 's'} from ${d.from} never arrived and ${n === 1 ? 'is' : 'are'} now counted lost.`, true);
  });
  on('restored_profile', ({ detail: d }) => {
    system(d.peer, `${d.peer} has received more of your messages than this browser remembers sending: your profile here may be an older copy. Your next messages continue after theirs.`, true);
  });
  on('key_changed', async ({ detail: d }) => {
    await refreshContacts(); rerender(d.peer);
    // Asked once per key; after "Keep blocked" the badge and the bar say it, until the user reviews it.
    if (!keptBlocked(d.peer)) await warnKeyChange(d.peer);
  });
  // Sealed for our previous key (they wrote before our reset or recovery): said plainly, not as
  // an attack. Anything else that does not open is not shown either.
  on('rejected', ({ detail: d }) => system(d.from, d.staleKey
    ? `A message from ${d.from} could not be opened: it was sent to your previous key (most likely before you reset your key or moved your name here with your recovery code), which this browser no longer has. Ask ${d.from} to send it again.`
    : `A message from ${d.from} could not be opened (it was damaged, or not sealed with ${d.from}'s key), so it is not shown.`, !d.staleKey));
  on('expired', ({ detail: d }) => system(d.to, `A message you sent to ${d.to} expired before they came online, and was not delivered.`, true));
  on('relay_lost_data', () => showInfo(standingNotice = 'The relay had lost its data and no longer knew you, so you are registered again. Messages that were waiting for you there, and messages you sent that were not yet delivered, may have been lost.'));
  on('busy', ({ detail: d }) => showBusy($('status'), d.seconds, `connected as ${client.name}`));
  on('status', ({ detail: d }) => {
    if (nameMovedAway) return;
    clearInterval(countdown);
    connected = d.state !== 'offline';
    if (!connected) { setStatus('reconnecting…', true); showInfo(OFFLINE_NOTE); } else { setStatus(`connected as ${client.name}`); showError(''); showInfo(standingNotice); refreshContacts(); }
    renderPeers(); renderHead();
  });
  document.addEventListener('visibilitychange', () => { if (gen === generation && !document.hidden && current) { markRead(current); renderPeers(); } });
  addEventListener('pagehide', () => { if (gen === generation) flushHistory(); });
  on('name_moved', ({ detail: d }) => nameMoved(d.name));
  on('recovery_code', () => { const code = client.takeRecoveryCode(); if (code) showRecoveryCode(code, client.recoveryCodeReason); });
  renderPeers(); renderHead();
  // A reload in an open conversation at phone width (its history entry stays): it opens again.
  if (history.state?.conv && onePane() && client.contacts.has(history.state.conv)) openConversation(history.state.conv, { fromHistory: true });
  if (!$('code-dialog').open) $('search').focus();
  await refreshContacts();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(refreshContacts, REFRESH_MS);
  client.run();
}

$('connect-view').addEventListener('submit', (ev) => {
  ev.preventDefault();
  // Enter in the recovery code's box uses the code.
  if (!$('recovery').hidden && document.activeElement === $('recovery-code')) { recoverName(); return; }
  if (nameMovedAway) { recoverName(); return; }
  signIn($('name').value);
});

// The last user of this browser is signed in again by itself (their profile is stored here).
(async () => {
  let name = null;
  try { name = await lastUser(); if (name && !(await hasProfile(name))) name = null; } catch { name = null; }
  if (name) { setStatus(`signing in as ${name}…`); await signIn(name); return; }
  const out = /^#signed-out-(kept|removed)$/.exec(location.hash);
  if (out) { showInfo(SIGNED_OUT[out[1]]); history.replaceState(null, '', `${location.pathname}${location.search}`); }
  $('connect-view').hidden = false;
  $('name').focus();
})();
