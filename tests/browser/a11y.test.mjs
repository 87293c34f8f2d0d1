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
    // A reload before the code was confirmed: the dialog again.
    await page.reload();
    await page.waitForSelector('#code-dialog[open]', { timeout: 20000 });
    found.push(...await audit(page, 'code-dialog-after-reload'));
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
    // Scrolled up while messages arrive: "new messages ↓".
    await g.evaluate(async () => { for (let i = 0; i < 30; i++) await c.send('axe-user', `filler ${i}`); });
    await page.waitForSelector('#messages li.msg.in:has-text("filler 29")', { timeout: 20000 });
    await page.evaluate(() => { document.getElementById('messages').scrollTop = 0; });
    await g.evaluate(() => c.send('axe-user', 'below the fold'));
    await page.waitForSelector('#new-below:visible', { timeout: 20000 });
    found.push(...await audit(page, 'new-messages-below'));
    await page.click('#new-below');
    // Two lines in the composer.
    await page.keyboard.type('one');
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('two');
    found.push(...await audit(page, 'composer-two-lines'));
    await page.fill('#text', '');
    // The relay cannot be reached: the neutral notice with its Dismiss button.
    await ctx.setOffline(true);
    await page.waitForSelector('#info-bar:visible', { timeout: 30000 });
    found.push(...await audit(page, 'offline-notice'));
    await ctx.setOffline(false);
    await until(async () => (await page.textContent('#status')) === 'connected as axe-user', 'back online', 30000);
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
    // Our own key reset: the status line.
    await page.click('#rotate');
    await page.click('#rotate-ok');
    await page.waitForSelector('#info-bar:visible', { timeout: 20000 });
    found.push(...await audit(page, 'key-reset-notice'));
    // Signing out: the dialog, then the fresh page with its notice.
    await page.click('#signout');
    await page.waitForSelector('#signout-dialog[open]');
    found.push(...await audit(page, 'signout-dialog'));
    await page.click('#signout-remove');
    await page.waitForSelector('#connect-view:not([hidden])', { timeout: 20000 });
    await page.waitForSelector('#info-bar:visible');
    found.push(...await audit(page, 'signed-out-removed'));
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
