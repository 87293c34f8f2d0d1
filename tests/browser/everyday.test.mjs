// client_ui.html in everyday use: the smaller defects the new-user review found after issue 13,
// one test each, named by the review's letter (a)–(i). Real Chromium, real relay-server;
// screenshots at 1280×800 and 390×844 in test-artifacts/.
//
// RECOVERY_TEST_PAGE_REV=<git revision> serves the page from that revision (pages.mjs
// pageFromRevision): RECOVERY_TEST_PAGE_REV=main shows these checks failing on the page before.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer, until } from './helpers.mjs';
import { DESKTOP, PHONE, connect, signIn, openPeer, say, inbound, received, mine, shoot, scripted, pageFromRevision } from './pages.mjs';
import { axeViolations } from './axe.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

async function newContext(viewport = DESKTOP) {
  const ctx = await browser.newContext({ viewport });
  await pageFromRevision(ctx);
  return ctx;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const focused = (page) => page.evaluate(() => document.activeElement?.id);
/** The badge the contact list shows beside `peer` ('' for none). */
const listBadge = (page, peer) => page.evaluate((p) => document.querySelector(`.peer[data-peer="${p}"] .badge`)?.textContent || '', peer);
const headBadge = (page) => page.evaluate(() => document.querySelector('#conv-badge .badge')?.textContent || '');
/** What a profile stored says of `peer` (`peers[peer]`), read as the page reads it. */
const storedPeer = (page, me, peer) => page.evaluate(async ({ me, peer }) => (await (await import('/js/mtproto.js')).loadProfile(me)).peers[peer], { me, peer });

test('(d) notices: what needs no action is neutral (a status), not the red error banner (an alert); both can be dismissed', async () => {
  const ctx = await newContext();
  const g = await scripted(browser, server, 'nu-peer');
  try {
    const page = await connect(ctx, 'nu-user', server.url);
    // The relay cannot be reached: said in the neutral banner (a status), with a Dismiss button.
    await ctx.setOffline(true);
    await until(async () => /cannot be reached/.test(await page.textContent('#info')), 'the offline notice', 30000);
    assert.equal(await page.textContent('#error'), '', 'not in the error banner');
    assert.ok(await page.isHidden('#error-bar'));
    assert.equal(await page.getAttribute('#info', 'role'), 'status');
    const colors = await page.evaluate(() => ({ info: getComputedStyle(document.getElementById('info-bar')).backgroundColor, error: getComputedStyle(document.getElementById('error-bar')).backgroundColor }));
    assert.notEqual(colors.info, colors.error, 'not the error colour');
    assert.equal(colors.info, 'rgb(227, 231, 247)');
    const dismiss = page.getByRole('button', { name: 'Dismiss this notice' });
    assert.equal(await dismiss.count(), 1, 'a Dismiss button with an accessible name');
    assert.deepEqual(await axeViolations(page), [], 'axe: the offline notice');
    await shoot(page, 'client_ui_notice_offline');
    await dismiss.click();
    assert.ok(await page.isHidden('#info-bar'), 'dismissed');
    assert.equal(await focused(page), 'search', 'the focus where the user works');
    await ctx.setOffline(false);
    await until(async () => (await page.textContent('#status')) === 'connected as nu-user', 'back online', 30000);
    // Errors keep the red banner (an alert), and can be dismissed too. (A refused contacts
    // lookup: there must be a contact to look up.)
    await g.evaluate(() => c.send('nu-user', 'hello'));
    await page.waitForSelector('.peer[data-peer="nu-peer"]', { timeout: 20000 });
    await page.route('**/peers', (route) => route.fulfill({ status: 400, contentType: 'application/json', body: JSON.stringify({ error: 'invalid_field', message: 'names: not a list' }) }));
    await until(async () => /could not load your contacts/.test(await page.textContent('#error')), 'an error', 20000);
    await page.unroute('**/peers');
    assert.equal(await page.getAttribute('#error', 'role'), 'alert');
    assert.equal(await page.evaluate(() => getComputedStyle(document.getElementById('error-bar')).backgroundColor), 'rgb(183, 28, 28)');
    await shoot(page, 'client_ui_notice_error');
    await page.getByRole('button', { name: 'Dismiss this message' }).click();
    assert.ok(await page.isHidden('#error-bar'), 'the error dismissed');
  } finally { await ctx.close(); await g.close(); }
});
