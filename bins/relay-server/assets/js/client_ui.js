// client_ui.html: the everyday client. All crypto happens in mtproto.js (Web Crypto).
import { RelayClient } from './mtproto.js';

const $ = (id) => document.getElementById(id);
const pin = document.querySelector('meta[name=relay-fingerprint]').content;
let client = null;
let current = null;
const convs = new Map(); // peer -> [{dir, text, state, seq}]
const unread = new Map();
let peerList = [];

function showError(msg) { $('error').textContent = msg; $('error').classList.toggle('on', !!msg); }
function setStatus(text, offline) { $('status').textContent = text; $('status').classList.toggle('offline', !!offline); }

function renderPeers() {
  const box = $('peers');
  box.replaceChildren();
  const now = Date.now() / 1000;
  for (const p of peerList) {
    if (p.client_id === client.name) continue;
    const b = document.createElement('button');
    b.className = 'peer'; b.dataset.peer = p.client_id; b.setAttribute('role', 'listitem');
    b.setAttribute('aria-current', String(p.client_id === current));
    const dot = document.createElement('span');
    dot.className = 'dot' + (now - p.last_seen < 60 ? ' online' : '');
    dot.title = now - p.last_seen < 60 ? 'online' : 'away';
    const name = document.createElement('span'); name.textContent = p.client_id;
    b.append(dot, name);
    if (p.status === 'changed') { const w = document.createElement('span'); w.className = 'badge-changed'; w.textContent = 'key changed'; b.append(w); }
    const u = document.createElement('span'); u.className = 'unread'; u.textContent = unread.get(p.client_id) || '';
    b.append(u);
    b.addEventListener('click', () => openConversation(p.client_id));
    box.append(b);
  }
}

function renderMessages() {
  const ul = $('messages');
  ul.replaceChildren();
  for (const m of convs.get(current) || []) {
    const li = document.createElement('li');
    li.className = 'msg ' + m.dir;
    li.dataset.state = m.state || '';
    li.textContent = m.text;
    const s = document.createElement('small');
    s.textContent = m.dir === 'out' ? m.state : m.note || '';
    if (s.textContent) li.append(s);
    ul.append(li);
  }
  ul.scrollTop = ul.scrollHeight;
}

function push(peer, m) {
  if (!convs.has(peer)) convs.set(peer, []);
  convs.get(peer).push(m);
  if (peer !== current && m.dir === 'in') unread.set(peer, (unread.get(peer) || 0) + 1);
  if (peer === current) renderMessages(); else renderPeers();
}

async function refreshPeers() {
  try { peerList = await client.listPeers(); renderPeers(); } catch (e) { showError(`could not load people: ${e.message}`); }
}

async function openConversation(peer) {
  current = peer; unread.delete(peer);
  $('conv-title').textContent = peer;
  for (const id of ['verify', 'text', 'send']) $(id).disabled = false;
  renderPeers(); renderMessages();
  const p = peerList.find((x) => x.client_id === peer);
  if (p && p.status === 'changed') await warnKeyChange(peer);
  $('text').focus();
}

async function warnKeyChange(peer) {
  $('keychange-peer').textContent = peer;
  const p = peerList.find((x) => x.client_id === peer);
  $('keychange-fp').textContent = p && p.fingerprint ? `new key ${p.fingerprint}` : '';
  const d = $('keychange-dialog');
  if (!d.open) d.showModal();
}

$('keychange-accept').addEventListener('click', async () => {
  const peer = $('keychange-peer').textContent;
  $('keychange-dialog').close();
  try { await client.acceptPeerKey(peer); push(peer, { dir: 'system', text: `You accepted ${peer}'s new key. Verify it.` }); await refreshPeers(); } catch (e) { showError(e.message); }
});
$('keychange-cancel').addEventListener('click', () => $('keychange-dialog').close());

$('verify').addEventListener('click', async () => {
  try {
    $('verify-peer').textContent = current;
    $('safety-number').textContent = await client.fingerprint(current);
    $('verify-dialog').showModal();
  } catch (e) { if (e.keyChanged) await warnKeyChange(current); else showError(e.message); }
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
  const peer = current;
  const m = { dir: 'out', text, state: 'sending…' };
  push(peer, m);
  try {
    const r = await client.send(peer, text);
    m.state = `sent ✓ #${r.mailbox_seq}`; m.seq = client.chats.get(peer).sent - 1;
    showError('');
  } catch (e) {
    m.state = 'not sent';
    if (e.keyChanged) await warnKeyChange(peer); else showError(`not sent: ${e.message}`);
  }
  if (peer === current) renderMessages();
});

$('rotate').addEventListener('click', async () => {
  try { await client.rotateIdentity(); $('own-fp').textContent = `key ${await client.ownFingerprint()}`; } catch (e) { showError(e.message); }
});

$('connect-view').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = $('name').value.trim();
  $('connect').disabled = true;
  setStatus('handshake…');
  try {
    client = await RelayClient.connect({ name, pin, trace: (step) => { $('handshake-log').textContent = `handshake: ${step}`; } });
  } catch (e) {
    $('connect').disabled = false; setStatus('not connected', true); showError(`could not connect: ${e.message}`); return;
  }
  showError('');
  setStatus(`connected as ${name}`);
  $('own-fp').textContent = `key ${await client.ownFingerprint()}`;
  $('rotate').hidden = false;
  $('connect-view').style.display = 'none';
  $('main-view').classList.add('on');
  client.addEventListener('message', ({ detail: d }) => {
    const note = d.delivery === 'in_order' ? '' : d.delivery.startsWith('after_gap') ? 'earlier messages missing' : 'arrived late';
    push(d.from, { dir: 'in', text: d.text, note });
    // Someone new wrote first: list them now rather than at the next periodic refresh.
    if (!peerList.some((p) => p.client_id === d.from)) refreshPeers();
  });
  client.addEventListener('delivered', ({ detail: d }) => {
    for (const m of convs.get(d.from) || []) if (m.dir === 'out' && d.seqs.includes(m.seq)) m.state = 'delivered ✓✓';
    if (d.from === current) renderMessages();
  });
  client.addEventListener('key_changed', async ({ detail: d }) => { await refreshPeers(); await warnKeyChange(d.peer); });
  client.addEventListener('rejected', ({ detail: d }) => push(d.from, { dir: 'system', text: `A message claiming to be from ${d.from} was rejected (${d.reason}).` }));
  client.addEventListener('expired', ({ detail: d }) => push(d.to, { dir: 'system', text: `Your message #${d.seq} to ${d.to} expired undelivered.` }));
  client.addEventListener('status', ({ detail: d }) => {
    if (d.state === 'offline') { setStatus('reconnecting…', true); showError(`relay unreachable — retrying (${d.detail})`); } else { setStatus(`connected as ${name}`); showError(''); }
  });
  await refreshPeers();
  setInterval(refreshPeers, 10000);
  client.run();
});
