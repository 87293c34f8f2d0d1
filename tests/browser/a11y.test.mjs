// Accessibility of client_ui.html (issue 13): axe-core finds no serious or critical violation in
// any state of the page, at 1280×800 and at 390×844, and the page works with the keyboard alone
// from sign-up to a sent message. axe-core is a devDependency (package.json), injected into the
// page (the context bypasses the page's CSP for that script only).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { launchBrowser, startServer, until, artifacts } from './helpers.mjs';
import { keepRecoveryCode } from './pages.mjs';
import { DESKTOP, PHONE, openPeer, say, mine, scripted } from './pages.mjs';

const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

/** The serious and critical axe-core violations of `page` as it is now, at both sizes. */
async function audit(page, state) {
  const found = [];
  for (const size of [DESKTOP, PHONE]) {
    await page.setViewportSize(size);
    if (!(await page.evaluate(() => !!window.axe))) await page.addScriptTag({ content: axeSource });
    const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
    assert.ok(r.passes.length >= 10, `axe-core ran its rules (${r.passes.length} passed)`);
    for (const v of r.violations) {
      if (v.impact === 'serious' || v.impact === 'critical') found.push(`${state} at ${size.width}: ${v.id} (${v.impact}) on ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`);
    }
    await page.screenshot({ path: join(artifacts, `a11y_${state}_${size.width}.png`) });
  }
  await page.setViewportSize(DESKTOP);
  return found;
}

test('axe-core: no serious or critical violation in any state of client_ui.html', async () => {
  const ctx = await browser.newContext({ viewport: DESKTOP, bypassCSP: true });
  const g = await scripted(browser, server, 'axe-peer');
  const found = [];
  try {
    const page = await ctx.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.waitForSelector('#connect-view:not([hidden])');
    found.push(...await audit(page, 'signed-out'));
    await page.fill('#name', 'axe-user');
    await page.click('#connect');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await keepRecoveryCode(page);
    found.push(...await audit(page, 'connected'));
    await g.evaluate(() => c.send('axe-user', 'hello from the script'));
    await page.waitForSelector('.peer[data-peer="axe-peer"] .unread:has-text("1")', { timeout: 20000 });
    found.push(...await audit(page, 'unread'));
    await page.fill('#search', 'axe');
    await page.waitForSelector('.result[data-peer="axe-peer"]');
    found.push(...await audit(page, 'search'));
    await page.fill('#search', '');
    await openPeer(page, 'axe-peer');
    await say(page, 'a reply');
    await until(async () => /^(sent|delivered)/.test(await mine(page, 'a reply').getAttribute('data-state')), 'the reply to be stored');
    found.push(...await audit(page, 'conversation'));
    await page.click('#verify');
    found.push(...await audit(page, 'verify-dialog'));
    await page.click('#verify-close');
    await page.click('#rotate');
    found.push(...await audit(page, 'rotate-dialog'));
    await page.click('#rotate-cancel');
    // The peer resets its key: the page warns, then stays blocked.
    await g.evaluate(() => c.rotateIdentity());
    await page.waitForSelector('#keychange-dialog[open]', { timeout: 20000 });
    await until(async () => /^\d{5}/.test(await page.textContent('#keychange-fp')), 'the safety number in the warning');
    found.push(...await audit(page, 'key-change-dialog'));
    await page.click('#keychange-cancel');
    found.push(...await audit(page, 'blocked'));
    // Phone layout: the list pane.
    await page.setViewportSize(PHONE);
    await page.click('#back');
    found.push(...await audit(page, 'phone-list'));
  } finally { await ctx.close(); await g.close(); }
  assert.deepEqual(found, []);
});

test('keyboard only: sign up, find a contact, open the conversation and send', async () => {
  const ctx = await browser.newContext({ viewport: DESKTOP });
  const g = await scripted(browser, server, 'kbd-peer');
  try {
    const page = await ctx.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.waitForSelector('#connect-view:not([hidden])');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'name', 'the name field has the focus');
    await page.keyboard.type('kbd-user');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await keepRecoveryCode(page);
    await until(async () => (await page.evaluate(() => document.activeElement?.id)) === 'search', 'the focus in the search box');
    await page.keyboard.type('kbd-p');
    // Enter in the search box opens the first match.
    await page.keyboard.press('Enter');
    await until(async () => (await page.evaluate(() => document.activeElement?.id)) === 'text', 'the composer to take the focus');
    assert.equal(await page.textContent('#conv-title'), 'kbd-peer');
    await page.keyboard.type('typed with the keyboard only');
    await page.keyboard.press('Enter');
    await until(async () => /^(sent|delivered)/.test(await mine(page, 'typed with the keyboard only').getAttribute('data-state') || ''), 'the message to be stored');
    await until(async () => { await g.evaluate(() => c.poll(0)); return (await g.evaluate(() => got.map((x) => x.text))).includes('typed with the keyboard only'); }, 'the peer to receive it');
    // Tab from the composer reaches Send; Shift+Tab comes back.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'send');
  } finally { await ctx.close(); await g.close(); }
});
