// client_ui.js, part: key changes, verification, the composer, search and Back.
import { ui, $, info, sayError, search, showError } from './ui_state.js';
import { runSearch } from './ui_people.js';
import { backToList, forwardSecrecyText, openConversation, refreshContacts, rerender, sendText, setDraft, system } from './ui_conversation.js';

/**
 * Whether the user chose "Keep blocked" for `peer`'s key as the directory has it now (a newer key
 * asks again). Before the first lookup of this page, the key kept is taken as current.
 */
export function keptBlocked(peer) {
  const key = info.get(peer)?.identity_key;
  return ui.client.isKeptBlocked(peer, key || null);
}

/** The key the warning shows (base64), for "Keep blocked" to remember. */
let warnedKey = null;
export async function warnKeyChange(peer) {
  const d = $('keychange-dialog');
  if (d.open && $('keychange-peer').textContent === peer) return;
  $('keychange-peer').textContent = peer; $('keychange-peer2').textContent = peer;
  $('keychange-fp').textContent = '…';
  warnedKey = null;
  if (!d.open) d.showModal();
  $('keychange-cancel').focus();
  try {
    const { key, fingerprint } = await ui.client.pendingKey(peer);
    if ($('keychange-peer').textContent !== peer) return;
    warnedKey = key; $('keychange-fp').textContent = fingerprint;
  } catch (e) { $('keychange-fp').textContent = `(cannot compute it now: ${sayError(e, peer)})`; }
}
/** "Keep blocked" (or Escape): not asked again about this key; the bar offers Review. */
async function keepBlocked() {
  const peer = $('keychange-peer').textContent;
  const key = warnedKey || info.get(peer)?.identity_key;
  if (key) await ui.client.keepBlocked(peer, key);
}

async function acceptKey(verified) {
  const peer = $('keychange-peer').textContent;
  $('keychange-dialog').close();
  try {
    await ui.client.acceptPeerKey(peer);
    if (verified) await ui.client.setVerified(peer, true);
    system(peer, verified ? `You verified ${peer}'s new key.` : `You accepted ${peer}'s new key. Verify it when you can.`);
    await refreshContacts();
  } catch (e) { showError(sayError(e, peer)); }
  if (peer === ui.current) $('text').focus();
}
$('keychange-accept').addEventListener('click', () => acceptKey(false));
// Marking verified is a separate, deliberate step: it says the numbers were compared.
$('keychange-verify').addEventListener('click', () => acceptKey(true));
$('keychange-cancel').addEventListener('click', () => { keepBlocked(); $('keychange-dialog').close(); });
$('keychange-dialog').addEventListener('cancel', () => { keepBlocked(); }); // Escape
$('keychange-dialog').addEventListener('close', () => { rerender(ui.current); if (ui.current) $('blocked-review').focus(); });
$('blocked-review').addEventListener('click', () => warnKeyChange(ui.current));

$('verify').addEventListener('click', async () => {
  if (ui.client.isBlocked(ui.current)) { await warnKeyChange(ui.current); return; }
  try {
    $('verify-peer').textContent = ui.current;
    $('safety-number').textContent = await ui.client.fingerprint(ui.current);
    $('forward-secrecy').textContent = forwardSecrecyText(ui.current);
    $('verify-dialog').showModal();
  } catch (e) { if (e.keyChanged) await warnKeyChange(ui.current); else showError(sayError(e, ui.current)); }
});
$('verify-close').addEventListener('click', () => $('verify-dialog').close());
$('verify-ok').addEventListener('click', async () => {
  const peer = ui.current;
  $('verify-dialog').close();
  await ui.client.setVerified(peer, true);
  system(peer, `You verified ${peer}.`);
});
$('verify-dialog').addEventListener('close', () => $('text').focus());

$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  // After a tap on Send the focus goes back to the message box, for the next one.
  if (!$('text').disabled) $('text').focus();
  if (!text || !ui.current) return;
  $('text').value = '';
  setDraft(ui.current, '');
  fitComposer();
  // What the user sends is shown: the list goes to the end.
  $('messages').scrollTop = $('messages').scrollHeight;
  sendText(ui.current, text);
});
// Enter sends; Shift+Enter starts a new line (and Enter that ends an IME composition does neither).
$('text').addEventListener('keydown', (ev) => {
  if (ev.key !== 'Enter' || ev.shiftKey || ev.isComposing || ev.keyCode === 229) return;
  ev.preventDefault();
  $('composer').requestSubmit();
});
/** The message box grows with its lines, up to its max-height (then it scrolls). */
export function fitComposer() {
  const t = $('text');
  t.style.height = '';
  if (t.scrollHeight > t.clientHeight) t.style.height = `${t.scrollHeight + 2}px`;
}
$('text').addEventListener('input', () => { fitComposer(); setDraft(ui.current, $('text').value); });

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
export let popping = null, popped = null;
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
  if (conv && conv !== ui.current && ui.client.isContact(conv)) openConversation(conv, { fromHistory: true });
  else if (!conv && ui.current) backToList();
});
