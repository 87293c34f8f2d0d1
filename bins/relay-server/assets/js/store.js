// The page's storage (IndexedDB), sealed at rest (Rust: relay-client profile).

import { b64, fromB64, fromUtf8, randomBytes, utf8 } from './bytes.js';
import { subtle } from './crypto.js';

//
// Everything the page keeps (profiles with their session and chat keys and the outbox, the
// conversations' history, the name last signed in) is sealed with AES-256-GCM under one key per
// origin: a Web Crypto key made non-extractable and stored as a CryptoKey object in the `vault`
// store. Script in the page can use it but never read its bytes; a copy of the browser's files
// holds only ciphertext beside an opaque key handle (docs/security.md, "The browser's storage").
// The identity private key is a non-extractable CryptoKey of its own, stored beside the record.
// Profiles written in clear by earlier releases are read once and written back sealed.

const STORES = ['profiles', 'vault', 'history'];
let dbOpen = null;
function idb() {
  dbOpen = dbOpen || new Promise((resolve, reject) => {
    const r = indexedDB.open('mtproto-relay', 2);
    r.onupgradeneeded = () => { for (const s of STORES) if (!r.result.objectStoreNames.contains(s)) r.result.createObjectStore(s); };
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => { dbOpen = null; reject(r.error); };
  });
  return dbOpen;
}
async function idbGet(store, key) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const r = db.transaction(store).objectStore(store).get(key);
    r.onsuccess = () => resolve(r.result ?? null);
    r.onerror = () => reject(r.error);
  });
}
async function idbPut(store, key, value) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(store, 'readwrite');
    if (value === undefined) tx.objectStore(store).delete(key); else tx.objectStore(store).put(value, key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}
async function idbKeys(store) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const r = db.transaction(store).objectStore(store).getAllKeys();
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

let vaultKey = null;
/** The origin's storage key: AES-256-GCM, non-extractable, made once and kept in IndexedDB. */
export async function storageKey() {
  if (vaultKey) return vaultKey;
  let k = await idbGet('vault', 'key');
  if (!k) {
    k = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
    await idbPut('vault', 'key', k);
    // Two tabs may have raced: keep the one stored first.
    k = (await idbGet('vault', 'key')) || k;
  }
  vaultKey = k;
  return k;
}

// JSON with byte arrays: a Uint8Array is {"$b": base64}.
export const packJson = (v) => JSON.stringify(v, (_, x) => (x instanceof Uint8Array ? { $b: b64(x) } : x));
const unpackJson = (s) => JSON.parse(s, (_, x) => (x && typeof x === 'object' && typeof x.$b === 'string' && Object.keys(x).length === 1 ? fromB64(x.$b) : x));

/** Seals `value` (JSON with byte arrays) for storage: {iv, ct}; `label` binds it to its place. */
export async function sealRecord(value, label) { return sealJson(packJson(value), label); }
async function sealJson(json, label) {
  const iv = randomBytes(12);
  const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: utf8(label) }, await storageKey(), utf8(json)));
  return { iv, ct };
}
export async function openRecord(rec, label) {
  const pt = await subtle.decrypt({ name: 'AES-GCM', iv: rec.iv, additionalData: utf8(label) }, await storageKey(), rec.ct);
  return unpackJson(fromUtf8(new Uint8Array(pt)));
}

/** A stored profile: {identity: {privateKey, pub}, session, chats, peers, contacts, outbox, …} or null. */
export async function loadProfile(name) {
  const rec = await idbGet('profiles', name);
  if (!rec) return null;
  if (!rec.sealed) return rec; // written in clear by an earlier release: sealed at the next save
  const p = await openRecord(rec.sealed, `profile/${name}`);
  p.identity = { privateKey: rec.privateKey, pub: p.identityPub };
  // The conversations' private keys (conversations.js): CryptoKeys, beside the sealed rest.
  p.ratchetKeys = rec.ratchetKeys || null;
  return p;
}
/** Whether a profile of `name` is stored on this browser (without opening it). */
export async function hasProfile(name) { return (await idbGet('profiles', name)) !== null; }
export async function saveProfile(name, profile) {
  const { identity, ...rest } = profile;
  await saveProfileJson(name, identity, packJson({ ...rest, identityPub: identity.pub }));
}
/**
 * saveProfile with the profile (less its identity) already serialized by packJson, with
 * `identityPub`. `ratchetKeys`: the non-extractable CryptoKeys of the conversations
 * (conversations.js toRecord().keys), stored by structured clone beside the sealed record, in
 * the same write.
 */
export async function saveProfileJson(name, identity, json, ratchetKeys = null) {
  const sealed = await sealJson(json, `profile/${name}`);
  await idbPut('profiles', name, ratchetKeys ? { privateKey: identity.privateKey, sealed, ratchetKeys } : { privateKey: identity.privateKey, sealed });
}

/** The name signed in last on this browser (to sign in again by itself), or null. */
export async function lastUser() {
  const rec = await idbGet('vault', 'last');
  if (!rec) return null;
  try { return (await openRecord(rec, 'last-user')).name; } catch { return null; }
}
export async function setLastUser(name) { await idbPut('vault', 'last', name ? await sealRecord({ name }, 'last-user') : undefined); }

/**
 * The history of `name`'s conversations: Map peer -> {items, unread}: what the page keeps of each
 * message, and how many of them the user has not seen. (Records of earlier releases are the
 * bare array of items: read with unread 0.)
 */
export async function loadHistory(name) {
  const out = new Map();
  const prefix = `${name}\u0000`;
  for (const k of await idbKeys('history')) {
    if (typeof k !== 'string' || !k.startsWith(prefix)) continue;
    try {
      const rec = await openRecord(await idbGet('history', k), `history/${k}`);
      out.set(k.slice(prefix.length), Array.isArray(rec) ? { items: rec, unread: 0, draft: '', awaiting: false }
        : { items: rec.items || [], unread: Number(rec.unread) || 0, draft: typeof rec.draft === 'string' ? rec.draft : '', awaiting: !!rec.awaiting });
    } catch { /* unreadable: skipped */ }
  }
  return out;
}
/**
 * Seals one conversation: its messages, unread count, the unsent draft of its composer, and
 * whether it waits for the peer to accept our new key (`awaiting`).
 */
export async function saveHistory(name, peer, items, { unread = 0, draft = '', awaiting = false } = {}) {
  const k = `${name}\u0000${peer}`;
  await idbPut('history', k, await sealRecord({ items, unread, draft, awaiting }, `history/${k}`));
}

/**
 * A new account's recovery code (16 bytes) waiting for the user to say it is written down: kept
 * sealed in the vault (`recovery/<name>`) so that a reload or a crash while it is on screen does
 * not lose it; deleted once confirmed (clearPendingRecoveryCode). docs/security.md.
 */
export async function savePendingRecoveryCode(name, code, reason = 'new') {
  await idbPut('vault', `recovery/${name}`, await sealRecord({ code, reason }, `recovery/${name}`));
}
/**
 * The code savePendingRecoveryCode kept for `name` and why it was made ('new': a new account,
 * 'recovered': a recovery replaced the old code, 'again': the relay lost its data): {code,
 * reason}, or null.
 */
export async function loadPendingRecoveryCode(name) {
  const rec = await idbGet('vault', `recovery/${name}`);
  if (!rec) return null;
  try { const r = await openRecord(rec, `recovery/${name}`); return r.code ? { code: r.code, reason: r.reason || 'new' } : null; } catch { return null; }
}
export async function clearPendingRecoveryCode(name) { await idbPut('vault', `recovery/${name}`, undefined); }

/**
 * Removes everything this browser keeps of `name` (sign out, "remove from this browser"): its
 * profile (identity private key, session and auth key, conversation keys, contacts, outbox),
 * every conversation's history, a pending recovery code, and the last-user record when it names
 * `name`. When no other profile is left (and no other tab is signing one in), every store is
 * emptied, the origin's storage key with it, so that a copy of a deleted record left behind by
 * the browser's storage engine can never be opened. The caller stops every writer first
 * (RelayClient.forget does).
 */
export async function deleteProfile(name) {
  const db = await idb();
  const last = await lastUser();
  const history = (await idbKeys('history')).filter((k) => typeof k === 'string' && k.startsWith(`${name}\u0000`));
  await new Promise((resolve, reject) => {
    const tx = db.transaction(STORES, 'readwrite');
    tx.objectStore('profiles').delete(name);
    for (const k of history) tx.objectStore('history').delete(k);
    tx.objectStore('vault').delete(`recovery/${name}`);
    if (last === name || last === null) tx.objectStore('vault').delete('last');
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
  // Another tab signing another name in holds its profile's Web Lock (client_ui's holdProfile)
  // and may not have stored its profile yet: the key stays for it.
  const others = navigator.locks ? (await navigator.locks.query()).held.filter((l) => l.name.startsWith('mtproto-relay/profile/') && l.name !== `mtproto-relay/profile/${name}`) : [];
  if ((await idbKeys('profiles')).length === 0 && others.length === 0) {
    await new Promise((resolve, reject) => {
      const tx = db.transaction(STORES, 'readwrite');
      for (const s of STORES) tx.objectStore(s).clear();
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
    vaultKey = null;
  }
}
