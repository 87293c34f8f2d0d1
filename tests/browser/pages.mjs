// What the client_ui tests do with a page: sign in, open a conversation, write, read, and take
// screenshots at both sizes. One copy for the test files that drive client_ui.html.
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { until, artifacts, root } from './helpers.mjs';

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** Screenshots of `page` at 1280×800 and at 390×844 (then back), as NAME.png and NAME_phone.png. */
export async function shoot(page, name) {
  const was = page.viewportSize();
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: join(artifacts, `${name}.png`) });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(artifacts, `${name}_phone.png`) });
  await page.setViewportSize(was || DESKTOP);
}

/**
 * Signs `name` in on an open client_ui page. A page that resumed the last profile by itself
 * (the same browser profile signed in before) is accepted when it is that user's.
 */
export async function signIn(page, name) {
  await page.waitForSelector('#connect-view:visible, #main-view.on', { timeout: 20000 });
  if (!(await page.locator('#main-view.on').count())) {
    await page.fill('#name', name);
    await page.click('#connect');
  }
  await page.waitForSelector('#main-view.on', { timeout: 20000 });
  await keepRecoveryCode(page);
  await until(async () => (await page.textContent('#status')).includes(`as ${name.toLowerCase()}`), `${name} to be signed in`);
}

/**
 * A new account's page shows its recovery code in a dialog (in the same task as the signed-in
 * view appears): read it, confirm it is written down, close. Returns the code, or null when
 * there was none (a resumed profile).
 */
export async function keepRecoveryCode(page) {
  if (!(await page.locator('#code-dialog[open]').count())) return null;
  const code = await page.textContent('#code-shown');
  await page.check('#code-saved');
  await page.click('#code-done');
  await page.waitForSelector('#code-dialog:not([open])', { state: 'attached' });
  // The dialog's 'close' event, which puts the focus where the user works (the search box, or the
  // message box of an open conversation), comes a task after close(): wait for it, or a check of
  // the focus races it (a CI run saw the focus still on Done).
  await page.waitForFunction(() => ['search', 'text'].includes(document.activeElement?.id));
  return code;
}

export async function connect(context, name, base, query = '') {
  const page = await context.newPage();
  await page.goto(`${base}/client_ui.html${query}`);
  await signIn(page, name);
  return page;
}

/** Opens the conversation with `peer`: from the contacts, or else found with the search box. */
export async function openPeer(page, peer) {
  if (await page.locator('#back:visible').count()) await page.click('#back');
  if ((await page.locator(`.peer[data-peer="${peer}"]`).count()) === 0) {
    await page.fill('#search', peer);
    await page.waitForSelector(`.result[data-peer="${peer}"]`, { timeout: 20000 });
    await page.click(`.result[data-peer="${peer}"]`);
  } else {
    await page.click(`.peer[data-peer="${peer}"]`);
  }
  await until(async () => (await page.textContent('#conv-title')) === peer, `the conversation with ${peer} to open`);
}

export async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/**
 * Submits each of `texts` from the composer with no wait between them (as fast as Enter, Enter):
 * all in one task of the page, so nothing the page awaits runs in between.
 */
export async function burst(page, texts) {
  await page.evaluate((all) => {
    const box = document.getElementById('text'), form = document.getElementById('composer');
    for (const t of all) { box.value = t; form.requestSubmit(); }
  }, texts);
}

export const mine = (page, text) => page.locator(`#messages li.msg.out:has-text("${text}")`);
export const inbound = (page, text, timeout = 30000) => page.waitForSelector(`#messages li.msg.in:has-text("${text}")`, { timeout });
/** The texts of the messages received in the open conversation, in the order shown (text only). */
export const received = (page) => page.locator('#messages li.msg.in').evaluateAll((l) => l.map((li) => (li.querySelector('.body') || li.firstChild).textContent));
/** The states of the messages sent in the open conversation, in the order shown. */
export const sentStates = (page) => page.locator('#messages li.msg.out').evaluateAll((l) => l.map((li) => li.dataset.state));

/**
 * A scripted client `name` of `relay` in a blank page of `browser` (mtproto.js's RelayClient as
 * `window.c`, the module as `window.m`, nothing persisted unless `persist`); what it receives is `window.got` (the
 * 'message' events), what it refused `window.rejected`, the conversations it started or accepted
 * `window.starts`, and the end-to-end layer of every packet it sealed or opened `window.wire`
 * ({peer, out, kind: 'static' | 'ratchet' | 'start', seq, control, text, payload}). It polls only
 * when told (`c.poll(0)`), so a test decides when it reads. `beforeConnect(page)` runs first.
 */
export async function scripted(browser, relay, name, { beforeConnect = null, persist = false } = {}) {
  const page = await browser.newPage();
  await page.goto(relay.url + '/');
  if (beforeConnect) await beforeConnect(page);
  await scriptIn(page, relay, name, { persist });
  return page;
}

/** A scripted client's poll, answered at once. */
export const pollNow = (p) => p.evaluate(() => c.poll(0));
/** A scripted client's send to `to`; resolves to the receipt's state. */
export const sendNow = (p, to, text) => p.evaluate(([to, text]) => c.send(to, text).then((r) => r.state), [to, text]);
/** The texts a scripted client received, in order. */
export const gotTexts = (p) => p.evaluate(() => got.map((g) => g.text));
/** The end-to-end layer of every packet a scripted client sealed or opened. */
export const wireOf = (p) => p.evaluate(() => wire);

/** Connects `name` in `page` (already on the relay) as `scripted` does: after a reload, again. */
export async function scriptIn(page, relay, name, { persist = false } = {}) {
  await page.evaluate(async ({ name, pin, persist }) => {
    const m = await import('/js/mtproto.js');
    window.m = m;
    window.c = await m.RelayClient.connect({ name, pin, persist });
    window.got = []; window.wire = []; window.starts = []; window.rejected = [];
    c.addEventListener('message', (e) => got.push(e.detail));
    c.addEventListener('rejected', (e) => rejected.push(e.detail));
    // Its own array: a test that sets `window.wire` to record something else takes nothing from it.
    const e2e = wire;
    c.addEventListener('e2e', (e) => e2e.push({ peer: e.detail.peer, out: e.detail.outgoing, kind: e.detail.packet, seq: e.detail.seq, control: e.detail.control, text: e.detail.text, payload: e.detail.payload }));
    c.addEventListener('ratchet_started', (e) => starts.push(e.detail));
  }, { name, pin: relay.fingerprint, persist });
}

/**
 * With RECOVERY_TEST_PAGE_REV=<git revision> set, `context` gets client_ui.html and js/ from that
 * revision instead of the relay's own copy (the relay still answers; its pin is kept): how a test
 * is seen failing on the page from before a change. Without it, nothing happens.
 */
export async function pageFromRevision(context, rev = process.env.RECOVERY_TEST_PAGE_REV) {
  if (!rev) return;
  await context.route(/\/(client_ui\.html|js\/[a-z_]+\.js)(\?.*)?$/, async (route) => {
    const path = new URL(route.request().url()).pathname.slice(1);
    let res;
    // The relay is down: as it would be without the route (the browser's own error page).
    try { res = await route.fetch(); } catch { await route.abort('connectionrefused'); return; }
    let body = execFileSync('git', ['show', `${rev}:bins/relay-server/assets/${path}`], { cwd: root, encoding: 'utf8' });
    if (path.endsWith('.html')) body = body.replace('{{SERVER_FINGERPRINT}}', /name="relay-fingerprint" content="([0-9a-f]*)"/.exec(await res.text())[1]);
    const headers = { ...res.headers() };
    delete headers['content-encoding']; delete headers['content-length']; delete headers.etag;
    await route.fulfill({ status: 200, headers, body });
  });
}

/** A new context of `browser` at `viewport`, with the page from RECOVERY_TEST_PAGE_REV when set. */
export async function revisionContext(browser, viewport = DESKTOP) {
  const ctx = await browser.newContext({ viewport });
  await pageFromRevision(ctx);
  return ctx;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Every string and byte array in the page's IndexedDB, as text (bytes read as Latin-1 and UTF-8). */
export async function storedText(page) {
  return page.evaluate(async () => {
    const db = await new Promise((res, rej) => { const r = indexedDB.open('mtproto-relay'); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
    const out = [];
    const walk = (v) => {
      if (v == null) return;
      if (typeof v === 'string') out.push(v);
      else if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
        const b = new Uint8Array(v);
        out.push(new TextDecoder('latin1').decode(b), new TextDecoder().decode(b));
      } else if (Array.isArray(v)) v.forEach(walk);
      else if (typeof v === 'object' && !(v instanceof CryptoKey)) Object.values(v).forEach(walk);
    };
    for (const name of db.objectStoreNames) {
      const all = await new Promise((res) => { const r = db.transaction(name).objectStore(name).getAll(); r.onsuccess = () => res(r.result); });
      walk(all);
    }
    db.close();
    return out.join('\n');
  });
}

/**
 * The keys of every IndexedDB store of the page's origin (`{ store: [key, …] }`, keys as
 * strings), and the number of localStorage and sessionStorage entries: what a browser keeps.
 */
export async function storedKeys(page) {
  return page.evaluate(async () => {
    const out = { localStorage: localStorage.length, sessionStorage: sessionStorage.length };
    const db = await new Promise((res, rej) => { const r = indexedDB.open('mtproto-relay'); r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
    for (const name of db.objectStoreNames) {
      out[name] = await new Promise((res) => { const r = db.transaction(name).objectStore(name).getAllKeys(); r.onsuccess = () => res(r.result.map(String)); });
    }
    db.close();
    return out;
  });
}
