// chat_ui_multiuser.html: several users side by side, each with its own keys and session (kept in
// memory only), showing every handshake step and, for every request and answer, what crosses the
// wire (msg_id, seq_no, msg_key, ciphertext) beside what it means (plaintext).
import { RelayClient, canonicalName, humanError, refusalText } from './mtproto.js';

const pin = document.querySelector('meta[name=relay-fingerprint]').content;
document.getElementById('pin').textContent = `pinned server key ${pin}`;
const users = new Map(); // name -> client, in the order they connected
const refreshers = new Map(); // name -> its recipient picker's refresh
const STEPS = { req_pq: 'req_pq sent', pq_factored: 'pq factored', pow_solved: 'proof of work solved', dh_params_verified: 'DH params: signature and g_a verified', key_confirmed: 'auth key confirmed (never sent)' };

function short(h) { return h.length > 96 ? `${h.slice(0, 96)}… (${h.length / 2} B)` : h; }

async function addUser(typed) {
  let name;
  try { name = canonicalName(typed); } catch { return; }
  if (users.has(name) || document.querySelector(`.user[data-user="${name}"]`)) return;
  const node = document.getElementById('user-tpl').content.firstElementChild.cloneNode(true);
  node.dataset.user = name;
  node.querySelector('.name').textContent = name;
  document.getElementById('users').append(node);
  const steps = node.querySelector('.steps');
  const state = node.querySelector('.state');
  const log = node.querySelector('.log');
  const inbox = node.querySelector('.inbox-box');
  let client;
  try {
    client = await RelayClient.connect({
      name, pin, persist: false,
      trace: (step, detail) => {
        if (step === 'busy') {
          const li = document.createElement('li'); li.className = 'busy';
          li.textContent = `relay busy (rate_limited): retrying in ${detail.seconds} s`;
          steps.append(li); return;
        }
        // The proof of work shows while it runs, then becomes its step.
        let li = steps.querySelector('li.working');
        if (step === 'pow_working') {
          li = document.createElement('li'); li.className = 'working';
          li.textContent = `proof of work: working… (${detail.bits} bits)`;
          steps.append(li); return;
        }
        if (!(step === 'pow_solved' && li)) { li = document.createElement('li'); steps.append(li); }
        li.className = 'ok'; li.dataset.step = step;
        li.textContent = `${STEPS[step] || step} ${JSON.stringify(detail)}`;
      },
    });
  } catch (e) { state.textContent = `failed: ${humanError(e)}`; return; }
  users.set(name, client);
  state.textContent = 'connected'; node.dataset.connected = 'true';
  node.querySelector('.fp').textContent = `key ${await client.ownFingerprint()}`;
  client.addEventListener('wire', ({ detail: w }) => {
    const d = document.createElement('div');
    d.className = 'wire'; d.dataset.dir = w.dir; d.dataset.path = w.path;
    const meta = document.createElement('div'); meta.className = 'meta';
    meta.textContent = `${w.dir === 'out' ? '→' : '←'} ${w.path} msg_id=${w.msgId} seq_no=${w.seqNo} msg_key=${w.msgKey}`;
    const ct = document.createElement('div'); ct.className = 'ct'; ct.textContent = short(w.ciphertext);
    const pt = document.createElement('div'); pt.className = 'pt';
    const shown = { ...w.plaintext };
    if (shown.payload) shown.payload = `<end-to-end packet, ${Math.round(shown.payload.length * 3 / 4)} B>`;
    if (shown.messages) shown.messages = shown.messages.map((m) => ({ ...m, payload: '<e2e>' }));
    if (shown.peers) shown.peers = shown.peers.map((p) => p.client_id);
    pt.textContent = JSON.stringify(shown);
    d.append(meta, ct, pt);
    log.prepend(d);
  });
  client.addEventListener('status', ({ detail: d }) => {
    state.textContent = d.state === 'offline' ? `reconnecting… (${d.detail})` : 'connected';
  });
  client.addEventListener('rejected', ({ detail: d }) => {
    const p = document.createElement('div'); p.className = 'inbox rejected'; p.dataset.from = d.from;
    p.textContent = `[${d.from}] rejected: ${d.reason}`;
    inbox.append(p);
  });
  client.addEventListener('message', ({ detail: m }) => {
    const p = document.createElement('div'); p.className = 'inbox'; p.dataset.from = m.from;
    p.textContent = `[${m.from}] ${m.text}`;
    inbox.append(p);
  });
  client.addEventListener('busy', ({ detail: d }) => { state.textContent = `relay busy: retrying in ${d.seconds} s`; });
  const select = node.querySelector('.peer');
  const find = node.querySelector('.find');
  // Recipients: the bench's own users, plus one page of the directory's names starting with
  // the prefix typed beside the picker (the relay never lists everyone). A refresh never
  // changes who the next message goes to: the chosen peer stays chosen, and listed.
  const refresh = async () => {
    const names = new Set([...users.keys()]);
    const prefix = find.value.trim().toLowerCase();
    if (prefix) {
      try {
        const { peers, next } = await client.searchPeers(prefix);
        for (const p of peers) names.add(p.client_id);
        find.title = next ? `more names start with "${prefix}": type more of the name` : '';
      } catch (e) { state.textContent = `search failed: ${humanError(e)}`; }
    }
    const chosen = select.value;
    if (chosen) names.add(chosen);
    names.delete(name);
    select.replaceChildren(...[...names].sort().map((n) => new Option(n, n)));
    if (chosen) select.value = chosen;
    select.dataset.refreshes = String(Number(select.dataset.refreshes || 0) + 1);
  };
  refreshers.set(name, refresh);
  node.querySelector('.refresh').addEventListener('click', refresh);
  find.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') refresh(); });
  node.querySelector('.verify').addEventListener('click', async () => {
    const fp = await client.fingerprint(select.value);
    const p = document.createElement('pre'); p.className = 'safety'; p.textContent = `${name}↔${select.value}\n${fp}`;
    inbox.append(p);
  });
  node.querySelector('.send').addEventListener('click', async () => {
    const input = node.querySelector('.text');
    const text = input.value; input.value = '';
    try {
      const r = await client.send(select.value, text);
      if (r && r.state === 'refused') state.textContent = `not sent: ${refusalText(r)}`;
      else if (r && r.state === 'sending') state.textContent = 'sending… (waiting for the relay)';
    } catch (e) { state.textContent = `not sent: ${humanError(e, select.value)}`; }
  });
  // Every picker on the bench learns the newcomer (and the newcomer learns everyone).
  for (const r of refreshers.values()) await r();
  client.run();
}

document.getElementById('add-user').addEventListener('click', () => {
  const input = document.getElementById('new-name');
  addUser(input.value.trim()); input.value = '';
});
for (const n of new URLSearchParams(location.search).getAll('user')) addUser(n);
