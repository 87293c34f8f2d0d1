// client_ui.html: the everyday client. All crypto happens in mtproto.js (Web Crypto).
//
// People: the contacts (whom this user wrote to, heard from or added; kept with the profile),
// refreshed with one exact directory lookup, and a prefix search of the directory, a page at a
// time (the relay never lists everyone). `?search_limit=N` sets the page size (default 20).
//
// Outgoing messages live in the client's outbox (mtproto.js, kept with the profile) until the
// relay stored or refused them: each shows "sending…" (a spinner), "sent", or "not sent: <reason>"
// with retry and discard. The outbox survives a reload: its messages are shown again, still
// sending, and go out in order when the relay answers.
import { RelayClient, canonicalName, humanError, refusalText, MAX_PEERS_PAGE } from './mtproto.js';

const $ = (id) => document.getElementById(id);
const pin = document.querySelector('meta[name=relay-fingerprint]').content;
const SEARCH_LIMIT = Math.min(Math.max(Number(new URLSearchParams(location.search).get('search_limit')) || 20, 1), MAX_PEERS_PAGE);
let client = null;
let current = null;
const convs = new Map(); // peer -> [{dir, text, state, reason, seq, id (outbox), pending}]
const byOutbox = new Map(); // outbox id -> its message in convs
const unread = new Map();
const info = new Map(); // contact -> its directory entry from the last lookup (with `status`)
const looked = new Set(); // the names that lookup asked for (a contact asked and absent is gone)
const search = { prefix: '', next: null, results: [], asked: 0, timer: null };

const OFFLINE_NOTE = 'The relay is unreachable. Messages you write wait here and go out, in order, when it is back.';
function showError(msg) { $('error').textContent = msg; $('error').classList.toggle('on', !!msg); }
/** A notice that outlives reconnecting (the relay lost its data), until the next message is sent. */
let standingNotice = '';
function setStatus(text, offline) { $('status').textContent = text; $('status').classList.toggle('offline', !!offline); }

/** Counts `seconds` down in `el`: "the relay is busy, retrying in N s". */
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

const online = (p) => p && p.last_seen && Date.now() / 1000 - p.last_seen < 60;

/** One row of a list: presence dot, name, then `extra` nodes. */
function row(tag, cls, name, p, extra = []) {
  const b = document.createElement(tag);
  b.className = cls; b.dataset.peer = name; b.setAttribute('role', 'listitem'); b.type = 'button';
  const dot = document.createElement('span');
  dot.className = 'dot' + (online(p) ? ' online' : '');
  dot.title = online(p) ? 'online' : 'away';
  const label = document.createElement('span'); label.textContent = name; label.title = name;
  b.append(dot, label, ...extra);
  b.addEventListener('click', () => openConversation(name));
  return b;
}

function renderPeers() {
  const box = $('peers');
  const names = [...client.contacts].sort();
  box.replaceChildren(...names.map((name) => {
    const p = info.get(name);
    const extra = [];
    if (p && p.status === 'changed') { const w = document.createElement('span'); w.className = 'badge-changed'; w.textContent = 'key changed'; extra.push(w); }
    const u = document.createElement('span'); u.className = 'unread'; u.textContent = unread.get(name) || '';
    extra.push(u);
    const b = row('button', 'peer', name, p, extra);
    b.setAttribute('aria-current', String(name === current));
    if (looked.has(name) && !p) { b.classList.add('gone'); b.title = 'not on the relay any more'; }
    return b;
  }));
  $('contacts-empty').hidden = names.length > 0;
}

function renderSearch() {
  $('search-box').hidden = !search.prefix;
  $('search-results').replaceChildren(...search.results.map((p) => {
    const tag = document.createElement('span'); tag.className = 'tag';
    tag.textContent = client.contacts.has(p.client_id) ? 'contact' : 'add';
    return row('button', 'result', p.client_id, p, [tag]);
  }));
  $('search-more').hidden = !search.next;
}

function searchNote(text) { $('search-note').textContent = text; $('search-note').hidden = !text; }

/** A prefix search (`more`: the next page of the same search). */
async function runSearch(more = false) {
  const prefix = more ? search.prefix : $('search').value.trim().toLowerCase();
  if (!more) { search.prefix = prefix; search.next = null; search.results = []; }
  searchNote('');
  if (!prefix) { renderSearch(); return; }
  try { canonicalName(prefix); } catch { renderSearch(); searchNote('Names use only letters, digits, "_", "." and "-".'); return; }
  const asked = ++search.asked;
  $('search-more').disabled = true;
  try {
    const page = await client.searchPeers(prefix, { after: more ? search.next : null, limit: SEARCH_LIMIT });
    if (asked !== search.asked) return; // a newer search started meanwhile
    search.results.push(...page.peers.filter((p) => p.client_id !== client.name));
    search.next = page.next;
    renderSearch();
    if (!search.results.length && !search.next) searchNote(`Nobody's name starts with “${prefix}”.`);
  } catch (e) {
    if (asked === search.asked) searchNote(`Search failed: ${humanError(e)}`);
  } finally { $('search-more').disabled = false; }
}

function clearSearch() { $('search').value = ''; search.prefix = ''; search.next = null; search.results = []; searchNote(''); renderSearch(); }

function renderMessages() {
  const ul = $('messages');
  ul.replaceChildren();
  for (const m of convs.get(current) || []) {
    const li = document.createElement('li');
    li.className = 'msg ' + m.dir;
    li.dataset.state = m.state || '';
    if (m.mailboxSeq !== undefined) li.dataset.mailboxSeq = String(m.mailboxSeq);
    li.textContent = m.text;
    const s = document.createElement('small');
    s.textContent = m.dir === 'out' ? (m.reason ? `${m.state}: ${m.reason}` : m.state) : m.note || '';
    if (m.dir === 'out' && m.state === 'sending…') {
      const spin = document.createElement('span'); spin.className = 'spinner'; spin.setAttribute('aria-hidden', 'true');
      s.prepend(spin);
      if (m.lastError) s.title = `waiting for the relay: ${m.lastError}`;
    }
    if (s.textContent) li.append(s);
    if (m.dir === 'out' && m.state === 'not sent') {
      const actions = document.createElement('span'); actions.className = 'msg-actions';
      const retry = document.createElement('button'); retry.type = 'button'; retry.className = 'text retry'; retry.textContent = 'retry';
      retry.addEventListener('click', () => retryMessage(m));
      const discard = document.createElement('button'); discard.type = 'button'; discard.className = 'text discard'; discard.textContent = 'discard';
      discard.addEventListener('click', () => discardMessage(m));
      actions.append(retry, discard);
      li.append(actions);
    }
    ul.append(li);
  }
  ul.scrollTop = ul.scrollHeight;
}

/** Shows an outbox receipt on its message (made on the first receipt of a new outbox entry). */
function showOutbox(r) {
  if (r.control) return;
  let m = byOutbox.get(r.id);
  if (r.state === 'abandoned') {
    byOutbox.delete(r.id);
    const list = convs.get(r.to) || [];
    if (m && list.includes(m)) list.splice(list.indexOf(m), 1);
    if (r.to === current) renderMessages();
    return;
  }
  const fresh = !m;
  if (fresh) { m = { dir: 'out', text: r.text, id: r.id }; byOutbox.set(r.id, m); }
  m.seq = r.seq; m.reason = null; m.lastError = null;
  if (r.state === 'sending') { m.state = 'sending…'; m.lastError = r.lastError; }
  else if (r.state === 'refused') { m.state = 'not sent'; m.reason = refusalText(r); }
  else if (r.state === 'stored') {
    m.mailboxSeq = r.mailboxSeq;
    if (!/^delivered/.test(m.state || '')) m.state = `sent ✓ #${r.mailboxSeq}`;
  }
  if (fresh) push(r.to, m); else if (r.to === current) renderMessages();
}

async function retryMessage(m) {
  if (m.id === undefined) {
    // Never sealed (no key, a changed key): send it again as a new message.
    const list = convs.get(current) || [];
    list.splice(list.indexOf(m), 1);
    renderMessages();
    await sendText(current, m.text);
    return;
  }
  try { await client.retry(m.id); } catch (e) { showError(humanError(e, current)); }
}

async function discardMessage(m) {
  if (m.id === undefined) {
    const list = convs.get(current) || [];
    list.splice(list.indexOf(m), 1);
    renderMessages();
    return;
  }
  try { await client.abandon(m.id); } catch (e) { showError(humanError(e, current)); }
}

/** Sends `text`: the outbox's receipts show it; only an error before sealing is shown here. */
async function sendText(peer, text) {
  try {
    const r = await client.send(peer, text);
    if (r && r.state === 'stored') { standingNotice = ''; showError(''); }
  } catch (e) {
    // The reason stays on the message; the banner is for the page's own state.
    const m = { dir: 'out', text, state: 'not sent' };
    if (e.keyChanged) { m.reason = `${peer}'s key changed`; await warnKeyChange(peer); } else m.reason = humanError(e, peer);
    push(peer, m);
  }
}

function push(peer, m) {
  if (!convs.has(peer)) convs.set(peer, []);
  convs.get(peer).push(m);
  if (peer !== current && m.dir === 'in') unread.set(peer, (unread.get(peer) || 0) + 1);
  if (peer === current) renderMessages(); else renderPeers();
}

/** One exact lookup of every contact: presence, key versions, fingerprints, key changes. */
async function refreshContacts() {
  const names = [...client.contacts];
  try {
    const found = names.length ? await client.lookupPeers(names) : [];
    info.clear(); looked.clear();
    for (const n of names) looked.add(n);
    for (const p of found) info.set(p.client_id, p);
    renderPeers();
  } catch (e) {
    // While the relay is away the status line and the banner say so already.
    showError(e.transport ? OFFLINE_NOTE : `could not load your contacts: ${humanError(e)}`);
  }
}

async function openConversation(name) {
  const peer = canonicalName(name);
  current = peer; unread.delete(peer);
  $('conv-title').textContent = peer;
  for (const id of ['verify', 'text', 'send']) $(id).disabled = false;
  const added = await client.addContact(peer);
  if (search.prefix) clearSearch();
  renderPeers(); renderMessages();
  if (added || !info.has(peer)) await refreshContacts();
  const p = info.get(peer);
  if (p && p.status === 'changed') await warnKeyChange(peer);
  $('text').focus();
}

async function warnKeyChange(peer) {
  $('keychange-peer').textContent = peer;
  const p = info.get(peer);
  $('keychange-fp').textContent = p && p.fingerprint ? `new key ${p.fingerprint}` : '';
  const d = $('keychange-dialog');
  if (!d.open) d.showModal();
}

$('keychange-accept').addEventListener('click', async () => {
  const peer = $('keychange-peer').textContent;
  $('keychange-dialog').close();
  try { await client.acceptPeerKey(peer); push(peer, { dir: 'system', text: `You accepted ${peer}'s new key. Verify it.` }); await refreshContacts(); } catch (e) { showError(humanError(e, peer)); }
});
$('keychange-cancel').addEventListener('click', () => $('keychange-dialog').close());

$('verify').addEventListener('click', async () => {
  try {
    $('verify-peer').textContent = current;
    $('safety-number').textContent = await client.fingerprint(current);
    $('verify-dialog').showModal();
  } catch (e) { if (e.keyChanged) await warnKeyChange(current); else showError(humanError(e, current)); }
});
$('verify-close').addEventListener('click', () => $('verify-dialog').close());
$('verify-ok').addEventListener('click', async () => {
  const k = client.peers.get(current); if (k) { k.verified = true; await client.save(); }
  $('verify-dialog').close();
  push(current, { dir: 'system', text: `${current} verified` });
});

$('composer').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  if (!text || !current) return;
  $('text').value = '';
  await sendText(current, text);
});

$('search').addEventListener('input', () => { clearTimeout(search.timer); search.timer = setTimeout(() => runSearch(false), 250); });
$('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); clearTimeout(search.timer); runSearch(false); });
$('search-more').addEventListener('click', () => runSearch(true));

$('rotate').addEventListener('click', async () => {
  try { await client.rotateIdentity(); $('own-fp').textContent = `key ${await client.ownFingerprint()}`; } catch (e) { showError(humanError(e)); }
});

const STEP_TEXT = {
  req_pq: 'asking the relay…', pq_factored: 'pq factored', pow_solved: 'proof of work done',
  dh_params_verified: 'relay signature verified', key_confirmed: 'key confirmed', resumed: 'resumed',
};

$('connect-view').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  let name;
  try { name = canonicalName($('name').value); } catch (e) { showError(e.message); return; }
  $('connect').disabled = true;
  setStatus('handshake…');
  const log = $('handshake-log');
  const trace = (step, d) => {
    if (step === 'busy') { showBusy(log, d.seconds, 'handshake: retrying…'); return; }
    clearInterval(countdown);
    log.textContent = step === 'pow_working' ? `handshake: working… (proof of work, ${d.bits} bits)` : `handshake: ${STEP_TEXT[step] || step}`;
  };
  try {
    client = await RelayClient.connect({ name, pin, trace });
  } catch (e) {
    clearInterval(countdown);
    $('connect').disabled = false; setStatus('not connected', true); showError(`could not connect: ${humanError(e)}`); return;
  }
  showError('');
  setStatus(`connected as ${client.name}`);
  $('own-fp').textContent = `key ${await client.ownFingerprint()}`;
  $('rotate').hidden = false;
  $('connect-view').style.display = 'none';
  $('main-view').classList.add('on');
  // What waited in the outbox (from before a reload) is shown again, then flushed by run().
  client.addEventListener('outbox', ({ detail: r }) => showOutbox(r));
  for (const r of client.waiting()) showOutbox(r);
  if (client.needPublish) { setStatus('reconnecting…', true); showError(OFFLINE_NOTE); }
  client.addEventListener('message', ({ detail: d }) => {
    const note = d.delivery === 'in_order' ? '' : d.delivery.startsWith('after_gap') ? 'earlier messages missing' : 'arrived late';
    push(d.from, { dir: 'in', text: d.text, note });
    // Someone new wrote first: the client added them to the contacts; look them up now.
    if (!info.has(d.from)) refreshContacts();
  });
  client.addEventListener('delivered', ({ detail: d }) => {
    for (const m of convs.get(d.from) || []) if (m.dir === 'out' && d.seqs.includes(m.seq)) m.state = 'delivered ✓✓';
    if (d.from === current) renderMessages();
  });
  client.addEventListener('key_changed', async ({ detail: d }) => { await refreshContacts(); await warnKeyChange(d.peer); });
  client.addEventListener('rejected', ({ detail: d }) => push(d.from, { dir: 'system', text: `A message claiming to be from ${d.from} was rejected (${d.reason}).` }));
  client.addEventListener('expired', ({ detail: d }) => push(d.to, { dir: 'system', text: `Your message #${d.seq} to ${d.to} expired undelivered.` }));
  client.addEventListener('relay_lost_data', () => showError(standingNotice = 'The relay had lost its data and no longer knew you, so you are registered again. Messages that were waiting for you there, and messages you sent that were not yet delivered, may have been lost.'));
  client.addEventListener('busy', ({ detail: d }) => showBusy($('status'), d.seconds, `connected as ${client.name}`));
  client.addEventListener('status', ({ detail: d }) => {
    clearInterval(countdown);
    if (d.state === 'offline') { setStatus('reconnecting…', true); showError(`relay unreachable — retrying (${d.detail}). Messages you write wait and go out when it is back.`); } else { setStatus(`connected as ${client.name}`); showError(standingNotice); }
  });
  await refreshContacts();
  setInterval(refreshContacts, 10000);
  client.run();
});
