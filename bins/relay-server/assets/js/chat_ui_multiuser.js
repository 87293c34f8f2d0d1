// chat_ui_multiuser.html: several users side by side, each with its own keys and session (kept in
// memory only), showing every handshake step and, for every request and answer, what crosses the
// wire (msg_id, seq_no, msg_key, ciphertext) beside what it means (plaintext) and, for a message,
// the end-to-end layer inside it (seq, random id, the peer's clock, plaintext) as that user's own
// chat key opens it. A test bench: it never chooses a recipient by itself and never sends an
// empty message.
import {
  RelayClient, canonicalName, humanError, refusalText, open, LAYOUT_E2E, fromB64, fromUtf8, hex, readU32, readU64, bidiBalanced,
} from './mtproto.js';
import { packetKind } from './ratchet_chat.js';

const pin = document.querySelector('meta[name=relay-fingerprint]').content;
document.getElementById('pin').textContent = `pinned server key ${pin}`;
const users = new Map(); // name -> client, in the order they connected
const refreshers = new Map(); // name -> its recipient picker's refresh
const STEPS = { req_pq: 'req_pq sent', pq_factored: 'pq factored', pow_solved: 'proof of work solved', dh_params_verified: 'DH params: signature and g_a verified', key_confirmed: 'auth key confirmed (never sent)' };
const newestFirst = document.getElementById('newest-first');

function short(h) { return h.length > 96 ? `${h.slice(0, 96)}… (${h.length / 2} B)` : h; }
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
/** A <time> with the local clock to the millisecond, and the full instant for machines. */
function timeEl(ms) {
  const t = el('time'); const d = new Date(ms);
  t.dateTime = d.toISOString();
  t.textContent = `${d.toTimeString().slice(0, 8)}.${String(d.getMilliseconds()).padStart(3, '0')}`;
  return t;
}

/** Rows kept in one log or inbox; the oldest go first (a bench left running for hours polls on). */
const MAX_ROWS = 1000;

/** Adds a row to a log in the order the reader chose, following the end when the reader is there. */
function addRow(box, row) {
  if (newestFirst.checked) {
    box.prepend(row);
    if (box.childElementCount > MAX_ROWS) box.lastElementChild.remove();
    return;
  }
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 8;
  box.append(row);
  if (box.childElementCount > MAX_ROWS) box.firstElementChild.remove();
  if (atEnd) box.scrollTop = box.scrollHeight;
}
newestFirst.addEventListener('change', () => {
  for (const box of document.querySelectorAll('.log, .inbox-box')) {
    box.replaceChildren(...[...box.children].reverse());
    box.scrollTop = newestFirst.checked ? 0 : box.scrollHeight;
  }
});

/**
 * The end-to-end layer of one static packet (docs/protocol.md §3: random_id ‖ out_seq ‖ in_seq ‖
 * sent_at_ms ‖ body), opened with `client`'s chat key for `peer` without touching the chat's
 * replay window: for a packet the client did not open itself (it refused it). Null while there is
 * no chat with `peer` yet, or for a ratchet packet (its key is used once, by the client). Throws
 * 'decrypt' when the key does not open it.
 */
async function openE2e(client, peer, payloadB64, outgoing) {
  const chat = client.staticChat(peer);
  const packet = fromB64(payloadB64);
  if (!chat || packetKind(packet) !== 'static') return null;
  // The sender seals with its own side's x; the recipient opens with the sender's.
  const x = outgoing ? chat.sendX : 8 - chat.sendX;
  const d = (await open(chat.key, x, packet, LAYOUT_E2E)).slice(LAYOUT_E2E.dataOffset);
  if (d.length < 24) throw new Error('decrypt');
  const body = d.slice(24);
  const control = body.length > 0 && body[0] === 0;
  return { randomId: hex(d.slice(0, 8)), seq: readU32(d, 8), inSeq: readU32(d, 12), sentAt: Number(readU64(d, 16)),
    kind: control ? 'control' : 'text', text: fromUtf8(control ? body.slice(1) : body), packet: 'static' };
}

/**
 * Fills an `.e2e` cell from what the client sealed or opened (its 'e2e' events, in `known` by
 * payload), else by opening a static packet with the chat key; returns false while neither can
 * say yet (try again later).
 */
async function showE2e(cell, client, known, { peer, payload, outgoing }) {
  let m = null;
  const k = known.get(payload);
  if (k) m = { ...k, kind: k.control ? 'control' : 'text' };
  else {
    try { m = await openE2e(client, peer, payload, outgoing); } catch (e) {
      cell.dataset.kind = 'unreadable';
      cell.textContent = `end-to-end: cannot be opened with the current key for ${peer} (${e.message})`;
      return true;
    }
  }
  if (!m) return false;
  Object.assign(cell.dataset, { kind: m.kind, seq: String(m.seq), randomId: m.randomId, packet: m.packet });
  // A ratchet packet's key is used once and deleted: what is shown is what the client saw then.
  const under = m.packet === 'static' ? 'static chat key' : m.packet === 'start' ? 'double ratchet, start' : 'double ratchet';
  const head = el('b', '', `end-to-end ${outgoing ? '→' : '←'} ${peer} (${under})`);
  const sentAt = new Date(m.sentAt);
  cell.replaceChildren(head, ` seq ${m.seq} · in_seq ${m.inSeq} · random_id ${m.randomId} · sent_at `, timeEl(sentAt.getTime()),
    `\n${m.kind === 'control' ? 'control ' : ''}${m.kind === 'control' ? m.text : JSON.stringify(m.text)}`);
  return true;
}

function reportAddProblem(text) { document.getElementById('add-problem').textContent = text; }

async function addUser(typed) {
  let name;
  try { name = canonicalName(typed); } catch (e) {
    reportAddProblem(`“${typed}” cannot be a name: ${e.message}.`);
    return;
  }
  const there = document.querySelector(`.user[data-user="${name}"]`);
  if (there) {
    reportAddProblem(there.dataset.failed ? `${name} is already on the bench, failed: remove its card to try again.` : `${name} is already on the bench.`);
    return;
  }
  reportAddProblem('');
  document.getElementById('no-users').hidden = true;
  const node = document.getElementById('user-tpl').content.firstElementChild.cloneNode(true);
  node.dataset.user = name;
  node.setAttribute('aria-label', name);
  node.querySelector('.name').textContent = name;
  document.getElementById('users').append(node);
  const steps = node.querySelector('.steps');
  const state = node.querySelector('.state');
  const log = node.querySelector('.log');
  const inbox = node.querySelector('.inbox-box');
  const controls = node.querySelector('.controls');
  const problem = node.querySelector('.problem');
  const notice = node.querySelector('.notice');
  const select = node.querySelector('.peer');
  const hint = node.querySelector('.to-hint');
  const text = node.querySelector('.text');
  // The hint says why the picker is blank (names are [a-z0-9_.-], fine in an id).
  hint.id = `to-hint-${name}`;
  log.setAttribute('aria-label', `${name}: wire log`);
  inbox.setAttribute('aria-label', `${name}: messages received`);
  controls.querySelector('legend').textContent = `send as ${name}`;
  const setState = (s, label) => { node.dataset.state = s; state.textContent = label; };
  const say = (message) => { problem.textContent = message; problem.hidden = !message; if (message) notice.textContent = ''; };
  let client;
  try {
    client = await RelayClient.connect({
      name, pin, persist: false,
      trace: (step, detail) => {
        if (step === 'busy') {
          const li = el('li', 'busy', `relay busy (rate_limited): retrying in ${detail.seconds} s`);
          steps.append(li); return;
        }
        // The proof of work shows while it runs, then becomes its step.
        let li = steps.querySelector('li.working');
        if (step === 'pow_working') {
          steps.append(el('li', 'working', `proof of work: working… (${detail.bits} bits)`)); return;
        }
        if (!(step === 'pow_solved' && li)) { li = el('li'); steps.append(li); }
        li.className = 'ok'; li.dataset.step = step;
        li.textContent = `${STEPS[step] || step} ${JSON.stringify(detail)}`;
      },
    });
  } catch (e) {
    // Failed, and visibly so: a red card with the reason, no composer, and a way to clear it.
    node.dataset.failed = 'true';
    setState('failed', '✖ failed');
    node.querySelector('.handshake summary').textContent = 'handshake (where it stopped)';
    controls.hidden = true; log.hidden = true;
    const failure = node.querySelector('.failure');
    failure.querySelector('.why').textContent = `${name} could not connect: ${humanError(e)}`;
    failure.hidden = false;
    failure.querySelector('.remove').addEventListener('click', () => {
      node.remove();
      document.getElementById('no-users').hidden = document.querySelector('.user') !== null;
      document.getElementById('new-name').focus();
    });
    return;
  }
  users.set(name, client);
  setState('connected', 'connected'); node.dataset.connected = 'true';
  // The steps fold away once done, to leave the log the room (one click shows them again).
  const handshake = node.querySelector('.handshake');
  handshake.querySelector('summary').textContent = `handshake ✔ (${steps.children.length} steps)`;
  handshake.open = false;
  controls.disabled = false;
  node.querySelector('.fp').textContent = `key ${await client.ownFingerprint()}`;

  // End-to-end cells the client had not opened yet when their packet crossed the wire.
  let pending = [];
  // What the client sealed and opened, by payload (bounded like the log).
  const known = new Map();
  const retryPending = async () => {
    // Rows dropped from the log are forgotten with them.
    const waiting = pending.filter((p) => p.cell.isConnected); pending = [];
    for (const p of waiting) if (!(await showE2e(p.cell, client, known, p.packet))) pending.push(p);
  };
  client.addEventListener('e2e', ({ detail: d }) => {
    known.set(d.payload, d);
    for (const k of known.keys()) { if (known.size <= 2 * MAX_ROWS) break; known.delete(k); }
    retryPending();
  });
  const decode = async (cell, packet) => {
    cell.textContent = `end-to-end ${packet.outgoing ? '→' : '←'} ${packet.peer}: not opened yet…`;
    if (!(await showE2e(cell, client, known, packet))) pending.push({ cell, packet });
  };
  client.addEventListener('wire', ({ detail: w }) => {
    const row = el('div', 'wire'); row.dataset.dir = w.dir; row.dataset.path = w.path;
    const meta = el('div', 'meta');
    meta.append(timeEl(Date.now()), ' ', el('span', 'dir', `${w.dir === 'out' ? '→' : '←'} ${w.path}`),
      ` msg_id=${w.msgId} seq_no=${w.seqNo} msg_key=${w.msgKey}${w.resend ? ' (the same envelope again)' : ''}`);
    const ct = el('div', 'ct', short(w.ciphertext));
    ct.title = 'the envelope as it crossed the wire, encrypted under this session\'s auth key';
    const meaning = el('div', 'meaning');
    const pt = el('div', 'pt');
    const shown = { ...w.plaintext };
    const packets = [];
    if (shown.payload) {
      packets.push({ peer: shown.target_peer, payload: shown.payload, outgoing: w.dir === 'out' });
      shown.payload = `<end-to-end packet, ${Math.round(shown.payload.length * 3 / 4)} B>`;
    }
    if (shown.messages) {
      for (const m of shown.messages) if (m.payload) packets.push({ peer: m.from, payload: m.payload, outgoing: false });
      shown.messages = shown.messages.map((m) => (m.payload ? { ...m, payload: '<e2e>' } : m));
    }
    if (shown.peers) shown.peers = shown.peers.map((p) => p.client_id);
    pt.textContent = JSON.stringify(shown);
    meaning.append(pt);
    row.append(meta, ct, meaning);
    for (const p of packets) { const cell = el('div', 'e2e'); meaning.append(cell); decode(cell, p); }
    addRow(log, row);
    retryPending();
  });
  const inboxLine = (cls, from, words, at) => {
    const p = el('div', cls); p.dataset.from = from;
    // The words in their own isolated run (dir=auto): bidi controls in a message stay in it.
    const text = el('bdi', 'words', bidiBalanced(words)); text.dir = 'auto';
    p.append(timeEl(at || Date.now()), ` [${from}] `, text);
    addRow(inbox, p);
  };
  client.addEventListener('status', ({ detail: d }) => {
    if (d.state === 'offline') setState('offline', `reconnecting… (${d.detail})`); else setState('connected', 'connected');
  });
  client.addEventListener('rejected', ({ detail: d }) => { inboxLine('inbox rejected', d.from, `rejected: ${d.reason}`); retryPending(); });
  client.addEventListener('message', ({ detail: m }) => { inboxLine('inbox', m.from, m.text, m.at); retryPending(); });
  client.addEventListener('delivered', ({ detail: d }) => { notice.textContent = `${d.from} opened message ${d.seqs.join(', ')}`; retryPending(); });
  client.addEventListener('busy', ({ detail: d }) => setState('offline', `relay busy: retrying in ${d.seconds} s`));
  const find = node.querySelector('.find');
  const showChoice = () => {
    hint.hidden = select.value !== '';
    if (hint.hidden) select.removeAttribute('aria-describedby'); else select.setAttribute('aria-describedby', hint.id);
  };
  select.addEventListener('change', () => { showChoice(); if (select.value) say(''); });
  // Recipients: the bench's own users, plus one page of the directory's names starting with
  // the prefix typed beside the picker (the relay never lists everyone). Nobody is chosen until
  // the user picks someone, and a refresh never changes who the next message goes to.
  const refresh = async () => {
    const names = new Set([...users.keys()]);
    const prefix = find.value.trim().toLowerCase();
    if (prefix) {
      try {
        const { peers, next } = await client.searchPeers(prefix);
        for (const p of peers) names.add(p.client_id);
        find.title = next ? `more names start with "${prefix}": type more of the name` : '';
      } catch (e) { say(`search failed: ${humanError(e)}`); }
    }
    const chosen = select.value;
    if (chosen) names.add(chosen);
    names.delete(name);
    const listed = [...names].sort();
    select.replaceChildren(...listed.map((n) => new Option(n, n)));
    // Inserting options selects the first one: undo that unless someone was chosen.
    select.selectedIndex = listed.indexOf(chosen);
    showChoice();
    select.dataset.refreshes = String(Number(select.dataset.refreshes || 0) + 1);
  };
  refreshers.set(name, refresh);
  node.querySelector('.refresh').addEventListener('click', refresh);
  find.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') refresh(); });
  /** The chosen recipient, or null with the reason shown. */
  const recipient = () => {
    if (select.value) return select.value;
    say('Choose who gets it first: pick a name under “to” (nobody is chosen for you).');
    select.focus();
    return null;
  };
  node.querySelector('.verify').addEventListener('click', async () => {
    const peer = recipient();
    if (!peer) return;
    try {
      const fp = await client.fingerprint(peer);
      const p = el('pre', 'safety', `${name}↔${peer}\n${fp}`);
      node.querySelector('.controls').append(p);
      say('');
    } catch (e) { say(`no safety number: ${humanError(e, peer)}`); }
  });
  const send = async () => {
    const peer = recipient();
    if (!peer) return;
    const words = text.value;
    if (!words.trim()) { say('The message is empty: type something to send.'); text.focus(); return; }
    say('');
    text.value = '';
    try {
      const r = await client.send(peer, words);
      if (r && r.state === 'refused') say(`not sent to ${peer}: ${refusalText(r)}`);
      else if (r && r.state === 'sending') notice.textContent = `to ${peer}: sending… (waiting for the relay)`;
      else notice.textContent = `to ${peer}: stored by the relay`;
    } catch (e) {
      // Not sealed (no key, a changed key, a full outbox): the text comes back to try again.
      if (!text.value) text.value = words;
      say(`not sent to ${peer}: ${humanError(e, peer)}`);
    }
  };
  node.querySelector('.send').addEventListener('click', send);
  text.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') send(); });
  // Every picker on the bench learns the newcomer (and the newcomer learns everyone).
  for (const r of refreshers.values()) await r();
  client.run();
}

document.getElementById('add-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = document.getElementById('new-name');
  const typed = input.value.trim();
  if (!typed) { reportAddProblem('Type a name to add a user.'); return; }
  input.value = '';
  addUser(typed);
});
for (const n of new URLSearchParams(location.search).getAll('user')) addUser(n);
