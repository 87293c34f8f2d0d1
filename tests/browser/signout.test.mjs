// Signing out of client_ui.html on a shared computer (issue 13, the new-user review): "Sign out…"
// asks, says plainly that the name then needs the recovery code, and "Remove from this browser"
// leaves nothing of the profile in IndexedDB or Web Storage — the next person gets a fresh page,
// and the name comes back only with the code. "Sign out, keep it here" keeps the profile (anyone
// here can open it by typing the name). Real Chromium, real relay-server; screenshots in
// test-artifacts/.
//
// RECOVERY_TEST_PAGE_REV=<git revision> serves the page from that revision (pages.mjs
// pageFromRevision): RECOVERY_TEST_PAGE_REV=main shows these checks failing on the page before.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer, until } from './helpers.mjs';
import { signIn, openPeer, say, inbound, mine, shoot, scripted, keepRecoveryCode, storedKeys, pageFromRevision, revisionContext } from './pages.mjs';
import { axeViolations } from './axe.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

const newContext = () => revisionContext(browser);

/** Signs `name` up on a new page of `ctx`; returns the page and the recovery code it showed. */
async function signUp(ctx, name) {
  const page = await ctx.newPage();
  await page.goto(`${server.url}/client_ui.html`);
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForSelector('#main-view.on', { timeout: 20000 });
  const code = await keepRecoveryCode(page);
  await until(async () => (await page.textContent('#status')) === `connected as ${name}`, `${name} to be signed in`);
  return { page, code };
}

test('sign out and remove: a warning about the recovery code, then nothing of the profile is left in this browser and the page starts fresh', async () => {
  const ctx = await newContext();
  const g = await scripted(browser, server, 'so-peer');
  try {
    const { page, code } = await signUp(ctx, 'so-user');
    await g.evaluate(() => c.send('so-user', 'incoming so-canary'));
    await openPeer(page, 'so-peer');
    await inbound(page, 'incoming so-canary');
    await say(page, 'outgoing so-canary');
    await until(async () => /^(sent|delivered)/.test(await mine(page, 'outgoing so-canary').getAttribute('data-state') || ''), 'the reply to be stored');
    await until(async () => (await storedKeys(page)).history.length > 0, 'the history to be written');
    const before = await storedKeys(page);
    assert.deepEqual(before.profiles, ['so-user']);

    // The dialog: what removal means, the recovery code named, the safe choice focused.
    await page.click('#signout');
    await page.waitForSelector('#signout-dialog[open]');
    const text = await page.textContent('#signout-dialog');
    assert.match(text, /so-user/);
    assert.match(text, /recovery code/);
    assert.match(text, /conversations/);
    assert.ok(!/[0-9a-f]{4}-[0-9a-f]{4}/.test(text), 'nothing secret is shown');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'signout-cancel', 'Cancel has the focus');
    assert.deepEqual(await axeViolations(page), [], 'axe: the sign-out dialog');
    await shoot(page, 'client_ui_signout_dialog');
    // Cancel changes nothing.
    await page.keyboard.press('Enter');
    await page.waitForSelector('#signout-dialog:not([open])', { state: 'attached' });
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'signout', 'the focus back on Sign out');
    assert.equal(await page.textContent('#status'), 'connected as so-user');

    // Remove: the page reloads to an empty sign-in form.
    await page.click('#signout');
    await page.click('#signout-remove');
    await page.waitForSelector('#connect-view:not([hidden])', { timeout: 20000 });
    await page.waitForLoadState('load');
    assert.equal(await page.inputValue('#name'), '', 'no name filled in');
    assert.equal(await page.locator('#main-view.on').count(), 0, 'not signed in');
    assert.equal(await page.textContent('#info'), 'You signed out, and your profile was removed from this browser.');
    // Nothing of the profile in IndexedDB (no record, not even the storage key) or Web Storage.
    const after = await storedKeys(page);
    assert.deepEqual(after, { localStorage: 0, sessionStorage: 0, profiles: [], vault: [], history: [] }, JSON.stringify(after));
    assert.ok(before.vault.includes('key'), 'the storage key was there before');
    await shoot(page, 'client_ui_signed_out_removed');
    // A second load starts fresh too (nothing signs in by itself).
    await page.reload();
    await page.waitForSelector('#connect-view:not([hidden])', { timeout: 20000 });
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await page.locator('#main-view.on').count(), 0);

    // The relay still holds the name for the old key: only the recovery code brings it here.
    await page.fill('#name', 'so-user');
    await page.click('#connect');
    await page.waitForSelector('#recovery:not([hidden])', { timeout: 20000 });
    await page.fill('#recovery-code', code);
    await page.click('#recover');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await until(async () => (await page.textContent('#status')) === 'connected as so-user', 'the name back with the code');
    assert.equal(await page.locator('.peer[data-peer="so-peer"]').count(), 0, 'the old contacts did not come back');
  } finally { await ctx.close(); await g.close(); }
});

test('removing one profile keeps another profile of the same browser, and its storage key', async () => {
  const ctx = await newContext();
  try {
    const { page } = await signUp(ctx, 'so-stays');
    await page.click('#signout');
    await page.click('#signout-keep');
    await page.waitForSelector('#connect-view:not([hidden])', { timeout: 20000 });
    await page.fill('#name', 'so-goes');
    await page.click('#connect');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await keepRecoveryCode(page);
    await signIn(page, 'so-goes');
    await page.click('#signout');
    await page.click('#signout-remove');
    await page.waitForSelector('#connect-view:not([hidden])', { timeout: 20000 });
    const after = await storedKeys(page);
    assert.deepEqual(after.profiles, ['so-stays']);
    assert.ok(after.vault.includes('key'), 'the storage key stays for the other profile');
    assert.ok(!after.vault.includes('recovery/so-goes') && !after.history.some((k) => k.startsWith('so-goes')));
    // The one left opens as before.
    await signIn(page, 'so-stays');
  } finally { await ctx.close(); }
});

test('sign out, keep it here: the profile stays and opens again by its name', async () => {
  const ctx = await newContext();
  try {
    const { page } = await signUp(ctx, 'so-keeps');
    const fp = await page.textContent('#own-fp');
    await page.click('#signout');
    await page.click('#signout-keep');
    await page.waitForSelector('#connect-view:not([hidden])', { timeout: 20000 });
    assert.deepEqual((await storedKeys(page)).profiles, ['so-keeps']);
    assert.match(await page.textContent('#info'), /profile stays in this browser/);
    await signIn(page, 'so-keeps');
    assert.equal(await page.textContent('#own-fp'), fp, 'the same identity');
  } finally { await ctx.close(); }
});
