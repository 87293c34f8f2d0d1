// client_ui.js, part: the page's shared state, its words for people, times, and the sealed history.
import { RelayError, humanError, MAX_PEERS_PAGE, saveHistory } from './mtproto.js';

export const $ = (id) => document.getElementById(id);
export const pin = document.querySelector('meta[name=relay-fingerprint]').content;
export const SEARCH_LIMIT = Math.min(Math.max(Number(new URLSearchParams(location.search).get('search_limit')) || 20, 1), MAX_PEERS_PAGE);
/** A contact is "online" while its last request is at most this old (it long-polls every 10 s). */
const ONLINE_SECS = 15;
/** Contacts (presence, key changes) are looked up again this often. */
export const REFRESH_MS = 4000;
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
export function shownPart(text) {
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
export function trimHistory(list) {
  if (list.length > KEEP_MESSAGES + 100) list.splice(0, list.length - KEEP_MESSAGES);
  let chars = 0, keep = list.length;
  while (keep > 0 && chars + (list[keep - 1].text?.length || 0) <= KEEP_CHARS) chars += list[--keep].text?.length || 0;
  if (keep > 0) list.splice(0, keep);
}

/** The page's state that several of its modules change. */
export const ui = {
  client: null,
  connected: false, // our own link to the relay: presence is unknown while it is down
  current: null,
  /** Set once the profile is being removed: nothing may be written again. */
  forgetting: false,
  /** Counts sign-ins in this page: the listeners of a signed-out client no longer act. */
  generation: 0,
  nameMovedAway: false,
  /** Messages that arrived in the open conversation while the user was scrolled up. */
  newBelow: 0,
  /** The info notice that stays until dismissed (a status change shows it again after OFFLINE_NOTE). */
  standingNotice: '',
};
export const convs = new Map(); // peer -> [message]; message: {dir, text, at, seq, rid, state, reason, id, mailboxSeq, gap, delivery, epoch}
export const byOutbox = new Map(); // outbox id -> its message in convs
export const unread = new Map();
export const info = new Map(); // contact -> its directory entry from the last lookup (with `status`)
export const looked = new Set(); // the names that lookup asked for (a contact asked and absent is gone)
export const search = { prefix: '', next: null, results: [], asked: 0, timer: null, self: false };
export const drafts = new Map(); // peer -> the unsent text of its composer (sealed with its history)
/** Contacts that have not yet accepted our new key (after "Reset my key"), until a word from them. */
export const awaiting = new Set();

// ---- words for people ------------------------------------------------------------------------

export const OFFLINE_NOTE = 'The relay cannot be reached. Messages you write wait here and go out, in order, when it is back.';
/** An error as a sentence for people: no codes, no parser positions. */
export function sayError(e, peer) {
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
export function showError(msg) { $('error').textContent = msg; $('error').classList.toggle('on', !!msg); $('error-bar').hidden = !msg; }
/** A notice that asks nothing of the user (the link is down, the name moved here, a key reset). */
export function showInfo(msg) { $('info').textContent = msg; $('info-bar').hidden = !msg; }
/** After a banner is dismissed the focus goes where the user works. */
function focusWork() {
  if ($('main-view').classList.contains('on')) (ui.current && !$('text').disabled ? $('text') : $('search')).focus();
  else $('name').focus();
}
$('error-dismiss').addEventListener('click', () => { showError(''); focusWork(); });
$('info-dismiss').addEventListener('click', () => {
  if ($('info').textContent === ui.standingNotice) ui.standingNotice = '';
  showInfo(''); focusWork();
});
/** The status chip; a long name is cut with "…" on screen, so the whole text is its title too. */
export function setStatus(text, offline) { $('status').textContent = text; $('status').title = text; $('status').classList.toggle('offline', !!offline); }

export let countdown = null;
export function showBusy(el, seconds, after) {
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

export const hm = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
export function dayKey(ms) { const d = new Date(ms); return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`; }
export function dayLabel(ms) {
  const now = new Date();
  if (dayKey(ms) === dayKey(now.getTime())) return 'Today';
  if (dayKey(ms) === dayKey(now.getTime() - 86400000)) return 'Yesterday';
  return new Date(ms).toLocaleDateString([], { weekday: 'long', day: 'numeric', month: 'long', year: now.getFullYear() === new Date(ms).getFullYear() ? undefined : 'numeric' });
}
export function shortWhen(ms) { return dayKey(ms) === dayKey(Date.now()) ? hm(ms) : new Date(ms).toLocaleDateString([], { day: 'numeric', month: 'short' }); }
const serverNow = () => Date.now() / 1000 + (ui.client ? ui.client.clockOffset() : 0);
/** {online, text} for a directory entry: unknown while our own link is down. */
export function presence(p) {
  if (!p || !p.last_seen) return { online: false, text: '' };
  if (!ui.connected) return { online: false, text: `last seen ${ago(p.last_seen)} (you are offline)` };
  if (serverNow() - p.last_seen <= ONLINE_SECS) return { online: true, text: 'online' };
  return { online: false, text: `last seen ${ago(p.last_seen)}` };
}
function ago(secs) {
  const d = Math.max(0, serverNow() - secs);
  if (d < 60) return 'just now';
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  const ms = (secs - (ui.client ? ui.client.clockOffset() : 0)) * 1000;
  if (d < 86400 && dayKey(ms) === dayKey(Date.now())) return `today at ${hm(ms)}`;
  return `${dayLabel(ms).toLowerCase()} at ${hm(ms)}`;
}

// ---- history ---------------------------------------------------------------------------------

export const dirty = new Set();
export let saveTimer = null;
export function remember(peer) { if (ui.forgetting) return; dirty.add(peer); clearTimeout(saveTimer); saveTimer = setTimeout(flushHistory, 300); }
/** The history writes, one after another (a removal waits for the last). */
export let historyWrites = Promise.resolve();
/** Writes every changed conversation (sealed), with its unread count. Resolves when they are stored. */
export function flushHistory() {
  clearTimeout(saveTimer);
  const run = historyWrites.then(async () => {
    if (ui.forgetting) return;
    const peers = [...dirty]; dirty.clear();
    for (const peer of peers) {
      const list = (convs.get(peer) || []).slice(-KEEP_MESSAGES).map(({ dir, text, at, seq, rid, state, reason, id, mailboxSeq, gap, delivery, epoch, warn, warnLevel }) =>
        ({ dir, text, at, seq, rid, state, reason, id, mailboxSeq, gap, delivery, epoch, warn, warnLevel }));
      try { await saveHistory(ui.client.name, peer, list, { unread: unread.get(peer) || 0, draft: drafts.get(peer) || '', awaiting: awaiting.has(peer) }); } catch { dirty.add(peer); }
    }
  });
  historyWrites = run.catch(() => {});
  return run;
}
/** `peer`'s conversation is seen: its unread count goes (and is stored so). */
export function markRead(peer) {
  if (!unread.has(peer)) return;
  unread.delete(peer);
  remember(peer);
}
