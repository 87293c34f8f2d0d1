// client_ui.js, part: the people list (contacts kept as rows) and the directory search.
import { canonicalName, bidiBalanced } from './mtproto.js';
import { ui, $, SEARCH_LIMIT, convs, info, looked, presence, sayError, search, shortWhen, unread } from './ui_state.js';
import { openConversation } from './ui_conversation.js';

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

export function badgeFor(name) {
  const p = info.get(name);
  if (ui.client.isBlocked(name) || (p && p.status === 'changed')) { const w = document.createElement('span'); w.className = 'badge changed'; w.textContent = 'key changed'; return w; }
  // Verified means: the safety number of this key and ours was compared. A key change on either
  // side clears it (RelayClient.block, rotateIdentity).
  if (ui.client.isVerified(name)) { const v = document.createElement('span'); v.className = 'badge verified'; v.textContent = '✓ verified'; v.title = 'You compared safety numbers'; return v; }
  return null;
}

/**
 * The contact rows, one per name, kept from one render to the next: a poll that re-renders the list
 * while a finger is on a row must not swallow the tap (a click needs the same element under the
 * press and the release), nor take the keyboard focus off the row.
 */
export const peerRows = new Map();

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

/**
 * While a pointer is down on the list, the rows keep their places: a row that a new message moved
 * from under the finger lost the tap (the release landed on another row), or opened the row that
 * moved there. The order catches up once the tap's click has landed — for a touch that click comes
 * a task or more after the release — or 500 ms after a release that makes none (a drag, a long
 * press, a scroll).
 */
let pressing = false, reorderDue = false, settle = null;
function released() {
  clearTimeout(settle); settle = null;
  pressing = false;
  if (reorderDue) { reorderDue = false; renderPeers(); }
}
$('peers').addEventListener('pointerdown', () => { clearTimeout(settle); settle = null; pressing = true; });
for (const type of ['pointerup', 'pointercancel']) {
  addEventListener(type, () => {
    if (pressing && !settle) settle = setTimeout(released, 500);
  }, true);
}
// After the row's own click handler (this one is on the list, the event bubbles up to it).
$('peers').addEventListener('click', () => { if (settle) setTimeout(released, 0); });

export function renderPeers() {
  if (!ui.client) return;
  const names = ui.client.contactNames();
  for (const n of peerRows.keys()) if (!ui.client.isContact(n)) peerRows.delete(n);
  // Most recent conversation first; then by name.
  names.sort((a, b) => ((last(b)?.at || 0) - (last(a)?.at || 0)) || a.localeCompare(b));
  if (pressing) {
    // The rows on screen stay where they are (new ones go last) until the release.
    const shown = new Map([...$('peers').querySelectorAll('.peer')].map((b, i) => [b.dataset.peer, i]));
    const place = (n) => (shown.has(n) ? shown.get(n) : shown.size);
    names.sort((a, b) => place(a) - place(b));
    reorderDue = true;
  }
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
    b.setAttribute('aria-current', String(name === ui.current));
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
    tag.textContent = ui.client.isContact(p.client_id) ? 'contact' : 'add';
    info.set(p.client_id, info.get(p.client_id) || p);
    return peerRow('result', p.client_id, [tag]).li;
  }));
  $('search-more').hidden = !search.next;
}

function searchNote(text) { $('search-note').textContent = text; $('search-note').hidden = !text; }

export async function runSearch(more = false) {
  const prefix = more ? search.prefix : $('search').value.trim().toLowerCase();
  if (!more) { search.prefix = prefix; search.next = null; search.results = []; search.self = false; }
  searchNote('');
  if (!prefix) { renderSearch(); return; }
  try { canonicalName(prefix); } catch { renderSearch(); searchNote('Names use only letters, digits, "_", "." and "-".'); return; }
  const asked = ++search.asked;
  $('search-more').disabled = true;
  try {
    const page = await ui.client.searchPeers(prefix, { after: more ? search.next : null, limit: SEARCH_LIMIT });
    if (asked !== search.asked) return;
    if (page.peers.some((p) => p.client_id === ui.client.name)) search.self = true;
    search.results.push(...page.peers.filter((p) => p.client_id !== ui.client.name));
    search.next = page.next;
    renderSearch();
    if (!search.results.length && !search.next) {
      // Our own name is never a result: said so, rather than "nobody".
      searchNote(!search.self ? `Nobody's name starts with “${prefix}”.`
        : prefix === ui.client.name ? `“${prefix}” is you. Nobody else's name starts with it.`
          : `Only you (${ui.client.name}) have a name that starts with “${prefix}”.`);
    }
  } catch (e) {
    if (asked === search.asked) searchNote(`Search failed: ${sayError(e)}`);
  } finally { $('search-more').disabled = false; }
}

export function clearSearch() { $('search').value = ''; search.prefix = ''; search.next = null; search.results = []; searchNote(''); renderSearch(); }
