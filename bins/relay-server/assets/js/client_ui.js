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
  RelayClient, RelayError, canonicalName, loadHistory, saveHistory, lastUser, setLastUser, hasProfile, formatRecoveryCode, parseRecoveryCode,
} from './mtproto.js';
import { ui, $, OFFLINE_NOTE, REFRESH_MS, awaiting, byOutbox, convs, countdown, dirty, drafts, flushHistory, historyWrites, info, looked, markRead, pin, remember, saveTimer, sayError, search, setStatus, showBusy, showError, showInfo, trimHistory, unread } from './ui_state.js';
import { clearSearch, peerRows, renderPeers } from './ui_people.js';
import { epochOf, heardFrom, onePane, openConversation, push, refreshContacts, renderHead, renderMessages, rerender, showOutbox, system } from './ui_conversation.js';
import { fitComposer, keptBlocked, warnKeyChange } from './ui_actions.js';

$('rotate').addEventListener('click', () => $('rotate-dialog').showModal());
$('rotate-cancel').addEventListener('click', () => $('rotate-dialog').close());
$('rotate-ok').addEventListener('click', async () => {
  $('rotate-dialog').close();
  try {
    await ui.client.rotateIdentity();
    const fp = await ui.client.ownFingerprint();
    $('own-fp').textContent = `key ${fp}`;
    $('me').textContent = `You are ${ui.client.name} · key ${fp}`;
    showError('');
    showInfo(ui.standingNotice = `Your key was reset: your new key is ${fp}. Your contacts are asked to accept it before you can talk again, and your safety numbers changed: compare them again with the people you had verified.`);
    // Each conversation says it waits for them, until a word (a message, a receipt) under the new key.
    for (const peer of ui.client.contactNames()) { awaiting.add(peer); remember(peer); }
    renderPeers(); renderHead();
  } catch (e) { showError(`could not reset your key: ${sayError(e)}`); }
});
$('rotate-dialog').addEventListener('close', () => $('rotate').focus());
$('signout').addEventListener('click', () => {
  $('signout-name').textContent = ui.client.name;
  const waiting = ui.client.waiting().length;
  $('signout-outbox').hidden = !waiting;
  $('signout-outbox').textContent = waiting ? `${waiting === 1 ? '1 message has' : `${waiting} messages have`} not been sent yet: removing the profile discards ${waiting === 1 ? 'it' : 'them'}.` : '';
  $('signout-dialog').showModal();
});
$('signout-cancel').addEventListener('click', () => $('signout-dialog').close());
$('signout-dialog').addEventListener('close', () => { if (!ui.forgetting && !leaving) $('signout').focus(); });
let leaving = false;
// Sign out, keep the profile: this browser forgets who signed in last; typing the name opens it again.
$('signout-keep').addEventListener('click', async () => {
  leaving = true;
  $('signout-dialog').close();
  await flushHistory();
  await setLastUser(null);
  ui.client.stop();
  reloadSaying('kept');
});
// Sign out and remove: nothing of the profile stays in this browser (RelayClient.forget).
$('signout-remove').addEventListener('click', async () => {
  ui.forgetting = true;
  $('signout-dialog').close();
  clearTimeout(saveTimer); clearInterval(refreshTimer); dirty.clear();
  setStatus('removing your profile…', true);
  try {
    await historyWrites;
    await ui.client.forget();
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
  ui.generation += 1; // the old client's events no longer reach the page
  ui.client.stop();
  clearInterval(refreshTimer); clearTimeout(saveTimer); clearInterval(countdown); clearTimeout(search.timer);
  for (const m of [convs, byOutbox, unread, info, drafts]) m.clear();
  for (const x of [looked, awaiting, dirty]) x.clear();
  ui.current = null; ui.newBelow = 0; ui.standingNotice = '';
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
  ui.client = null;
  ui.forgetting = false; leaving = false;
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
    ui.client = await RelayClient.connect({ name, pin, trace, recoveryCode });
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
  if (ui.nameMovedAway) {
    ui.nameMovedAway = false;
    $('connect-title').textContent = CONNECT_TITLE; $('name').readOnly = false; $('connect').hidden = false;
  }
  await setLastUser(ui.client.name);
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
  if (ui.nameMovedAway) { setLastUser(null).then(() => location.reload()); return; }
  $('recovery').hidden = true; $('recovery-code').value = ''; showError('');
  $('name').select(); $('name').focus();
});
// The recovery choice answers for the name it was offered for.
$('name').addEventListener('input', () => { if (!ui.nameMovedAway) $('recovery').hidden = true; });

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
  try { await ui.client.confirmRecoveryCode(); } catch { /* it is shown again after a reload */ }
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
  (ui.current ? $('text') : $('search')).focus();
});

// ---- the name moved to another device ----------------------------------------------------------

/** Our key is gone and the name belongs to another key now: the recovery code was used elsewhere. */
async function nameMoved(name) {
  ui.nameMovedAway = true;
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
  const gen = ++ui.generation, c = ui.client;
  const on = (type, fn) => c.addEventListener(type, (ev) => { if (gen === ui.generation) fn(ev); });
  showError('');
  showInfo(ui.standingNotice = notice);
  ui.connected = !ui.client.needPublish;
  setStatus(ui.connected ? `connected as ${ui.client.name}` : 'reconnecting…', !ui.connected);
  const fp = await ui.client.ownFingerprint();
  $('own-fp').textContent = `key ${fp}`;
  $('me').textContent = `You are ${ui.client.name} · key ${fp}`;
  document.body.dataset.user = ui.client.name;
  // The history is read before the page appears: a conversation opened at once shows all of it.
  const saved = await loadHistory(ui.client.name);
  $('connect-view').hidden = true;
  $('main-view').classList.add('on');
  // A new account: its recovery code, once, in the same task as the page appears.
  const code = ui.client.takeRecoveryCode();
  if (code) showRecoveryCode(code, ui.client.recoveryCodeReason);
  // The history first, then what waited in the outbox (from before a reload) on top of it.
  for (const [peer, { items: list, unread: n, draft, awaiting: waits }] of saved) {
    if (n) unread.set(peer, n);
    if (draft) drafts.set(peer, draft);
    if (waits) awaiting.add(peer);
    const pending = new Set(ui.client.outboxIds());
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
  for (const r of ui.client.waiting()) showOutbox(r);
  if (!ui.connected) showInfo(OFFLINE_NOTE);
  ui.client.beforeReceipts = flushHistory;
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
  on('control', ({ detail: d }) => { heardFrom(d.from); if (d.from === ui.current) renderMessages(); });
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
  on('relay_lost_data', () => showInfo(ui.standingNotice = 'The relay had lost its data and no longer knew you, so you are registered again. Messages that were waiting for you there, and messages you sent that were not yet delivered, may have been lost.'));
  on('busy', ({ detail: d }) => showBusy($('status'), d.seconds, `connected as ${ui.client.name}`));
  on('status', ({ detail: d }) => {
    if (ui.nameMovedAway) return;
    clearInterval(countdown);
    ui.connected = d.state !== 'offline';
    if (!ui.connected) { setStatus('reconnecting…', true); showInfo(OFFLINE_NOTE); } else { setStatus(`connected as ${ui.client.name}`); showError(''); showInfo(ui.standingNotice); refreshContacts(); }
    renderPeers(); renderHead();
  });
  document.addEventListener('visibilitychange', () => { if (gen === ui.generation && !document.hidden && ui.current) { markRead(ui.current); renderPeers(); } });
  addEventListener('pagehide', () => { if (gen === ui.generation) flushHistory(); });
  on('name_moved', ({ detail: d }) => nameMoved(d.name));
  on('recovery_code', () => { const code = ui.client.takeRecoveryCode(); if (code) showRecoveryCode(code, ui.client.recoveryCodeReason); });
  renderPeers(); renderHead();
  // A reload in an open conversation at phone width (its history entry stays): it opens again.
  if (history.state?.conv && onePane() && ui.client.isContact(history.state.conv)) openConversation(history.state.conv, { fromHistory: true });
  if (!$('code-dialog').open) $('search').focus();
  await refreshContacts();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(refreshContacts, REFRESH_MS);
  ui.client.run();
}

$('connect-view').addEventListener('submit', (ev) => {
  ev.preventDefault();
  // Enter in the recovery code's box uses the code.
  if (!$('recovery').hidden && document.activeElement === $('recovery-code')) { recoverName(); return; }
  if (ui.nameMovedAway) { recoverName(); return; }
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
