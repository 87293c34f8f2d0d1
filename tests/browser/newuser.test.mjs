// client_ui.html as a new user meets it: the problems an independent review at 1280×800 and
// 390×844 found (review 13), one test each, numbered as the review numbers them. Real Chromium,
// real relay-server; screenshots at both sizes in test-artifacts/ (newuser_*.png).
//
// RECOVERY_TEST_PAGE_REV=<git revision> serves the page from that revision (pages.mjs
// pageFromRevision): RECOVERY_TEST_PAGE_REV=main shows these checks failing on the page before.
// (Item 6, a new recovery code after every recovery, is tested in recovery.test.mjs.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startServer, until } from './helpers.mjs';
import { DESKTOP, PHONE, connect, signIn, openPeer, say, inbound, mine, shoot, scripted, pageFromRevision, keepRecoveryCode, revisionContext, sleep, storedText } from './pages.mjs';
import { axeViolations } from './axe.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

const newContext = (viewport) => revisionContext(browser, viewport);
const focused = (page) => page.evaluate(() => document.activeElement?.id || document.activeElement?.dataset?.peer || '');

test('(1) a draft stays with its conversation: another conversation never shows it, one Enter there sends nothing, and it survives a reload (sealed)', async () => {
  const ctx = await newContext();
  const bob = await scripted(browser, server, 'dr-bob');
  const carol = await scripted(browser, server, 'dr-carol');
  try {
    let page = await connect(ctx, 'dr-alice', server.url);
    await openPeer(page, 'dr-bob');
    await page.fill('#text', 'for bob only');
    await openPeer(page, 'dr-carol');
    assert.equal(await page.inputValue('#text'), '', "carol's composer does not show bob's draft");
    await page.press('#text', 'Enter');
    await sleep(500);
    assert.equal(await page.locator('#messages li.msg.out').count(), 0, 'Enter in carol\'s conversation sent nothing');
    await page.fill('#text', 'for carol');
    await openPeer(page, 'dr-bob');
    assert.equal(await page.inputValue('#text'), 'for bob only', "bob's draft is back in bob's conversation");
    await shoot(page, 'newuser_draft');
    // Kept sealed with the conversation: after a reload each conversation has its own again.
    await sleep(800);
    assert.ok(!(await storedText(page)).includes('for bob only'), 'the draft is not stored in clear');
    await page.reload();
    await signIn(page, 'dr-alice');
    await openPeer(page, 'dr-carol');
    assert.equal(await page.inputValue('#text'), 'for carol');
    await openPeer(page, 'dr-bob');
    assert.equal(await page.inputValue('#text'), 'for bob only');
    // Sent: the draft goes.
    await page.press('#text', 'Enter');
    await until(async () => /^(sent|delivered)/.test(await mine(page, 'for bob only').getAttribute('data-state') || ''), 'the draft to be sent');
    await openPeer(page, 'dr-carol');
    await openPeer(page, 'dr-bob');
    assert.equal(await page.inputValue('#text'), '', 'a sent draft is gone');
    assert.equal(await bob.evaluate(async () => { await c.poll(0); return got.map((m) => m.text); }).then((t) => t.join('|')), 'for bob only');
    assert.equal(await carol.evaluate(async () => { await c.poll(0); return got.length; }), 0, 'carol got nothing');
  } finally { await ctx.close(); await bob.close(); await carol.close(); }
});

test('(2) the key-change dialog: accepting the new key is the primary action; marking verified is a secondary, deliberate one', async () => {
  const ctx = await newContext();
  const g = await scripted(browser, server, 'kc-peer');
  try {
    const page = await connect(ctx, 'kc-user', server.url);
    await g.evaluate(() => c.send('kc-user', 'hello'));
    await openPeer(page, 'kc-peer');
    await inbound(page, 'hello');
    await g.evaluate(() => c.rotateIdentity());
    await g.evaluate(() => c.send('kc-user', 'from the new key'));
    await page.waitForSelector('#keychange-dialog[open]', { timeout: 20000 });
    await until(async () => /^\d{5}/.test(await page.textContent('#keychange-fp')), 'the safety number');
    const look = await page.evaluate(() => {
      const bg = (id) => getComputedStyle(document.getElementById(id)).backgroundColor;
      const buttons = [...document.querySelectorAll('#keychange-dialog .actions button')].map((b) => b.id);
      return { accept: bg('keychange-accept'), verify: bg('keychange-verify'), verifyText: document.getElementById('keychange-verify').textContent, buttons };
    });
    assert.equal(look.accept, 'rgb(63, 81, 181)', 'Accept is the filled, primary button');
    assert.equal(look.verify, 'rgba(0, 0, 0, 0)', 'marking verified is a text button');
    assert.match(look.verifyText, /compared the numbers/i, 'the verify action says what it claims');
    assert.equal(look.buttons[look.buttons.length - 1], 'keychange-accept', 'Accept in the primary place');
    assert.equal(await focused(page), 'keychange-cancel', 'the focus on the safe choice');
    assert.deepEqual(await axeViolations(page), [], 'axe: the key-change dialog');
    await shoot(page, 'newuser_keychange_dialog');
    // Blocking is as before: nothing opens until a choice.
    assert.equal(await page.locator('#messages li.msg.in:has-text("from the new key")').count(), 0);
    await page.click('#keychange-accept');
    await inbound(page, 'from the new key');
    assert.equal(await page.locator('#conv-badge .badge.verified').count(), 0, 'accepting does not mark verified');
    assert.match(await page.textContent('#verify'), /^Verify$/);
  } finally { await ctx.close(); await g.close(); }
});

test('(3) signing in while the relay cannot be reached retries by itself (said on the form), gets in when it is back; editing the name stops it', async () => {
  const ctx = await newContext();
  try {
    const page = await ctx.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.waitForSelector('#connect-view:not([hidden])');
    let tries = 0;
    await page.route('**/req_pq', (route) => { tries += 1; route.abort('connectionrefused'); });
    await page.fill('#name', 'rt-user');
    await page.click('#connect');
    await until(async () => /cannot be reached/.test(await page.textContent('#error')), 'the failure in words');
    await until(async () => /Trying again in \d+ s/.test(await page.textContent('#handshake-log')), 'the retry said on the form', 5000);
    assert.deepEqual(await axeViolations(page), [], 'axe: the sign-in form retrying');
    await shoot(page, 'newuser_signin_retrying');
    await until(() => tries >= 2, 'a second try by itself', 8000);
    // The relay is back: the next try gets in, with no click.
    await page.unroute('**/req_pq');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await keepRecoveryCode(page);
    await until(async () => (await page.textContent('#status')) === 'connected as rt-user', 'signed in');

    // Editing the form stops the waiting.
    const other = await ctx.browser().newContext({ viewport: DESKTOP });
    await pageFromRevision(other);
    const p2 = await other.newPage();
    await p2.goto(`${server.url}/client_ui.html`);
    await p2.waitForSelector('#connect-view:not([hidden])');
    let tries2 = 0;
    await p2.route('**/req_pq', (route) => { tries2 += 1; route.abort('connectionrefused'); });
    await p2.fill('#name', 'rt-other');
    await p2.click('#connect');
    await until(async () => /Trying again/.test(await p2.textContent('#handshake-log')), 'the retry said', 5000);
    const before = tries2;
    await p2.fill('#name', 'rt-other2');
    assert.equal(await p2.textContent('#handshake-log'), '', 'the waiting is over');
    await sleep(5000);
    assert.equal(tries2, before, 'no try after the form was edited');
    await other.close();
  } finally { await ctx.close(); }
});

test('(4) a 64-character name: the status chip ends in "…", the title stays, and the page is never wider than the screen from 320 to 390 px', async () => {
  const name = `ln-${'x'.repeat(57)}-end`;
  assert.equal(name.length, 64);
  const ctx = await newContext(PHONE);
  try {
    const page = await connect(ctx, name, server.url);
    for (const width of [390, 360, 320]) {
      await page.setViewportSize({ width, height: 844 });
      const m = await page.evaluate(() => {
        const h1 = document.querySelector('header h1').getBoundingClientRect();
        const st = document.getElementById('status');
        return {
          doc: document.documentElement.scrollWidth, body: document.body.scrollWidth, header: document.querySelector('header').scrollWidth,
          aside: document.querySelector('aside').scrollWidth, inner: innerWidth, h1Right: h1.right,
          h1Cut: document.querySelector('header h1').scrollWidth > document.querySelector('header h1').clientWidth,
          chipRight: st.getBoundingClientRect().right, cut: st.scrollWidth > st.clientWidth, title: st.title, label: st.textContent,
        };
      });
      for (const k of ['doc', 'body', 'header', 'aside']) assert.ok(m[k] <= width, `${k} is ${m[k]} px wide at ${width} px`);
      assert.ok(m.h1Right <= width && !m.h1Cut, `the title is whole at ${width} px`);
      assert.ok(m.chipRight <= width, `the chip ends on screen at ${width} px`);
      assert.ok(m.cut, 'the name is cut (with "…")');
      assert.equal(m.title, `connected as ${name}`, 'the whole name is the title');
      assert.equal(m.label, `connected as ${name}`, 'and what a screen reader reads');
    }
    await page.setViewportSize(PHONE);
    assert.deepEqual(await axeViolations(page), [], 'axe: a long name');
    await shoot(page, 'newuser_long_name');
  } finally { await ctx.close(); }
});

test('(5) phone: Back from a conversation returns to the chat list with the focus on that contact; a reload keeps the conversation; the desktop adds no history', async () => {
  const ctx = await newContext(PHONE);
  const g = await scripted(browser, server, 'bk-peer');
  try {
    const page = await connect(ctx, 'bk-user', server.url);
    const url = page.url();
    await openPeer(page, 'bk-peer');
    assert.ok(await page.isVisible('#text'), 'the conversation is open');
    await page.goBack();
    await until(async () => !(await page.locator('#main-view.conv-open').count()), 'back to the list');
    assert.equal(page.url(), url, 'still on the page');
    assert.ok(await page.isVisible('#main-view.on .peer[data-peer="bk-peer"]'), 'the chat list');
    assert.equal(await focused(page), 'bk-peer', 'the focus on that contact');
    await shoot(page, 'newuser_back_to_list');
    // The page's own ← Chats and the browser's Back agree.
    await openPeer(page, 'bk-peer');
    await page.click('#back');
    await until(async () => !(await page.locator('#main-view.conv-open').count()), 'back by ← Chats');
    await openPeer(page, 'bk-peer');
    await page.reload();
    await signIn(page, 'bk-user');
    await until(async () => (await page.textContent('#conv-title')) === 'bk-peer' && (await page.locator('#main-view.conv-open').count()), 'the conversation open again after a reload');
    await page.goBack();
    await until(async () => !(await page.locator('#main-view.conv-open').count()), 'back to the list after the reload');
    assert.equal(page.url(), url);
    // Two panes: opening a conversation is no page of its own.
    await page.setViewportSize(DESKTOP);
    const length = await page.evaluate(() => history.length);
    await openPeer(page, 'bk-peer');
    assert.equal(await page.evaluate(() => history.length), length, 'no history entry on the desktop');
  } finally { await ctx.close(); await g.close(); }
});

test('(7, 10) after a key reset: the conversation says it waits for the peer to accept the new key, until a word from them; a message sealed for the old key is explained plainly', async () => {
  const ctx = await newContext();
  const g = await scripted(browser, server, 'rs-peer');
  try {
    const page = await connect(ctx, 'rs-user', server.url);
    await g.evaluate(() => c.send('rs-user', 'hello'));
    await openPeer(page, 'rs-peer');
    await inbound(page, 'hello');
    assert.ok(await page.isHidden('#await-bar'));
    await page.click('#rotate');
    await page.click('#rotate-ok');
    await until(async () => /your key was reset/i.test(await page.textContent('#info')), 'the reset');
    // (10) The note, and it stays while what we send is only "sent".
    await page.waitForSelector('#await-bar:visible');
    assert.match(await page.textContent('#await-bar'), /Waiting for rs-peer to accept your new key/);
    await say(page, 'after my reset');
    await until(async () => /^sent/.test(await mine(page, 'after my reset').getAttribute('data-state') || ''), 'sent');
    assert.ok(await page.isVisible('#await-bar'), 'the note stays while they have not accepted');
    // (7) The peer, not yet aware, writes to the old key. This page names the key version it
    // sealed for and the relay refuses such a message (everyday.test.mjs (k)); a client that
    // does not (an earlier release, here the scripted page with the version forgotten) has it
    // stored, and the reader cannot open it: said for what it most likely is.
    await g.evaluate(() => { c.peers.get('rs-user').version = null; return c.send('rs-user', 'to your old key'); });
    await page.waitForSelector('#messages li.msg.system:has-text("previous key")', { timeout: 20000 });
    const note = await page.textContent('#messages li.msg.system:has-text("previous key")');
    assert.match(note, /send it again/);
    assert.ok(!/claiming|dropped/.test(note), `no talk of an attack in "${note}"`);
    assert.equal(await page.locator('#messages li:has-text("to your old key")').count(), 0, 'nothing of it is shown');
    assert.deepEqual(await axeViolations(page), [], 'axe: the waiting note and the explained message');
    await shoot(page, 'newuser_after_reset');
    // They accept: the next word from them ends the note (after a reload too, it stays ended).
    await g.evaluate(async () => { await c.acceptPeerKey('rs-user'); await c.poll(0); });
    await until(async () => /^delivered/.test(await mine(page, 'after my reset').getAttribute('data-state') || ''), 'delivered once accepted', 20000);
    await page.waitForSelector('#await-bar', { state: 'hidden' });
    await sleep(800); // stored (a history write follows a change by 300 ms)
    await page.reload();
    await signIn(page, 'rs-user');
    await openPeer(page, 'rs-peer');
    await sleep(500);
    assert.ok(await page.isHidden('#await-bar'), 'no note after a reload');
  } finally { await ctx.close(); await g.close(); }
});

test('(8) "Sign out, keep it here" while the relay is down: the page signs out in place (no browser error page) and the name opens again', async () => {
  // A relay of its own, stopped for real (the page and its files come from it).
  const relay = await startServer(['--engine', 'memory', '--pow-bits', '0']);
  const ctx = await newContext();
  try {
    const page = await connect(ctx, 'so-user', relay.url);
    await relay.halt();
    await until(async () => /reconnecting/.test(await page.textContent('#status')), 'offline', 30000);
    await page.click('#signout');
    await page.click('#signout-keep');
    await sleep(1000);
    assert.ok(page.url().startsWith(relay.url), `still the page (${page.url()})`);
    await page.waitForSelector('#connect-view:not([hidden])', { timeout: 10000 });
    assert.match(await page.textContent('#info'), /You signed out/);
    assert.ok(!(await page.locator('#main-view.on').count()), 'the signed-in view is gone');
    assert.equal(await page.locator('.peer').count(), 0, 'nothing of the user is left on screen');
    assert.equal(await focused(page), 'name');
    assert.deepEqual(await axeViolations(page), [], 'axe: signed out in place');
    await shoot(page, 'newuser_signed_out_offline');
    // The profile was kept: its name opens it again, even before the relay is back.
    await page.fill('#name', 'so-user');
    await page.click('#connect');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await until(async () => /reconnecting/.test(await page.textContent('#status')), 'signed in, waiting for the relay');
  } finally { await ctx.close(); await relay.stop(); }
});

test('(9) texts: the sign-in title, your own name in the search, the recovery code in whole groups, its field\'s placeholder at 320–390 px, Verify once verified', async () => {
  const ctx = await newContext();
  const g = await scripted(browser, server, 'tx-peer');
  try {
    const page = await ctx.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.waitForSelector('#connect-view:not([hidden])');
    assert.equal(await page.textContent('#connect-title'), 'Sign in or create an account');
    await page.fill('#name', 'tx-user');
    await page.click('#connect');
    await page.waitForSelector('#code-dialog[open]', { timeout: 20000 });
    // Each half of the code (4 groups) is on one line, at both sizes.
    for (const size of [DESKTOP, PHONE, { width: 320, height: 700 }]) {
      await page.setViewportSize(size);
      const lines = await page.evaluate(() => [...document.querySelectorAll('#code-shown .half')].map((s) => s.getClientRects().length));
      assert.deepEqual(lines, [1, 1], `two halves, each on one line, at ${size.width} px`);
    }
    await page.setViewportSize(DESKTOP);
    assert.match((await page.textContent('#code-shown')).trim(), /^[0-9a-f]{4}(-[0-9a-f]{4}){7}$/, 'the code reads (and copies) as one');
    await shoot(page, 'newuser_code_dialog');
    await keepRecoveryCode(page);
    // Your own name.
    await page.fill('#search', 'tx-user');
    await until(async () => /is you/.test(await page.textContent('#search-note')), 'the search to say it is you');
    await page.fill('#search', 'tx-u');
    await until(async () => /Only you \(tx-user\)/.test(await page.textContent('#search-note')), 'a prefix of your own name');
    await page.fill('#search', '');
    // Verify, then the button says so.
    await g.evaluate(() => c.send('tx-user', 'hello'));
    await openPeer(page, 'tx-peer');
    assert.equal(await page.textContent('#verify'), 'Verify');
    await page.click('#verify');
    await page.click('#verify-ok');
    await until(async () => /^Verified ✓/.test(await page.textContent('#verify')), 'the Verify button to say verified');
    assert.match(await page.textContent('#verify'), /view safety number/);
    await shoot(page, 'newuser_verified');
    assert.deepEqual(await axeViolations(page), [], 'axe: verified');

    // The recovery code field's placeholder fits at 390 and 320 px.
    const other = await browser.newContext({ viewport: PHONE });
    await pageFromRevision(other);
    const p2 = await other.newPage();
    await p2.goto(`${server.url}/client_ui.html`);
    await p2.fill('#name', 'tx-user');
    await p2.click('#connect');
    await p2.waitForSelector('#recovery:not([hidden])', { timeout: 20000 });
    for (const width of [390, 320]) {
      await p2.setViewportSize({ width, height: 844 });
      const fit = await p2.evaluate(() => {
        const el = document.getElementById('recovery-code'), cs = getComputedStyle(el);
        const ctx2 = document.createElement('canvas').getContext('2d');
        ctx2.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
        return { text: ctx2.measureText(el.placeholder).width, room: el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight) };
      });
      assert.ok(fit.text <= fit.room, `the placeholder (${Math.round(fit.text)} px) fits its field (${fit.room} px) at ${width} px`);
    }
    await p2.setViewportSize(PHONE);
    await shoot(p2, 'newuser_recovery_field');
    await other.close();
  } finally { await ctx.close(); await g.close(); }
});

test('(review 13b) a stranger\'s huge messages cannot freeze or fill the page: a bubble shows at most 2,000 characters or 40 lines with "copy all", and a conversation keeps at most 1,000,000 characters', async () => {
  const ctx = await newContext(PHONE);
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write']);
  const g = await scripted(browser, server, 'hx-stranger');
  try {
    const page = await connect(ctx, 'hx-user', server.url);
    // One line of 60,000 characters with nowhere to break it, and 3,000 empty lines.
    await g.evaluate(() => c.send('hx-user', 'wide:' + 'A'.repeat(59995)));
    await g.evaluate(() => c.send('hx-user', 'tall:' + '\n'.repeat(3000) + 'end'));
    await openPeer(page, 'hx-stranger');
    await inbound(page, 'tall:');
    const bodies = await page.locator('#messages li.msg.in .body').evaluateAll((l) => l.map((b) => b.textContent));
    assert.equal(bodies.length, 2);
    assert.ok(bodies[0].startsWith('wide:') && bodies[0].length <= 2001, `the wide one is shown in part (${bodies[0].length})`);
    assert.ok(bodies[1].split('\n').length <= 41, `the tall one is shown in part (${bodies[1].split('\n').length} lines)`);
    assert.equal(await page.locator('#messages li.msg.in button.copy-all').count(), 2);
    const preview = await page.textContent('.peer[data-peer="hx-stranger"] .preview');
    assert.ok(preview.length <= 200, `the list's preview is short (${preview.length})`);
    await page.locator('#messages li.msg.in button.copy-all').first().click();
    await until(async () => (await page.evaluate(() => navigator.clipboard.readText())).length === 60000, 'the whole message copied');
    await shoot(page, 'newuser_long_message');
    assert.deepEqual(await axeViolations(page), [], 'axe: a long message');

    // Twenty more of 60,000 characters: the oldest go, the conversation stays within 1,000,000.
    for (let i = 0; i < 20; i++) await g.evaluate((i) => c.send('hx-user', `big${i}:` + 'B'.repeat(59990)), i);
    await inbound(page, 'big19:');
    const stored = () => page.evaluate(async () => {
      const m = await import('/js/mtproto.js');
      const conv = [...await m.loadHistory('hx-user')].find(([peer]) => peer === 'hx-stranger');
      return conv ? conv[1].items.map((x) => x.text || '') : [];
    });
    let kept = [];
    await until(async () => (kept = await stored()).some((t) => t.startsWith('big19:')), 'the newest message stored');
    kept = kept.map((t) => t.length);
    const total = kept.reduce((a, b) => a + b, 0);
    assert.ok(total <= 1_000_000, `stored text ${total} ≤ 1,000,000`);
    assert.ok(kept.length < 22, `the oldest were dropped (${kept.length} kept)`);
    assert.ok(await page.locator('#messages li.msg.in:has-text("big19:")').count() === 1, 'the newest is shown');
  } finally { await ctx.close(); await g.close(); }
});
