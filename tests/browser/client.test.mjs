// client_ui.html as people use it every day (issue 13): key changes that protect (defect 2), a
// phone layout (defect 3), history that stays and is sealed at rest (defect 5), a key reset that
// asks first and focus where it belongs (defect 8), words instead of codes, and the basics
// (times, day separators, previews, unread count in the title, presence that goes stale, no
// mailbox numbers). Real Chromium, real relay-server; screenshots go to test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { launchBrowser, startServer, until, artifacts } from './helpers.mjs';
import { DESKTOP, PHONE, connect, signIn, openPeer, say, burst, received, mine, inbound, shoot, scripted, storedText } from './pages.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

const newContext = (viewport = DESKTOP) => browser.newContext({ viewport });
const SAFETY_NUMBER = /^\d{5} \d{5} \d{5} \d{5}\n\d{5} \d{5} \d{5} \d{5}\n\d{5} \d{5} \d{5} \d{5}$/;

test('a key change blocks both ways until accepted or verified; the warning shows the safety number as Verify does; verified lasts', async () => {
  const ctxA = await newContext(), ctxB = await newContext();
  try {
    const dave = await connect(ctxA, 'kc-dave', server.url);
    let erin = await connect(ctxB, 'kc-erin', server.url);
    await openPeer(dave, 'kc-erin');
    await say(dave, 'first contact');
    await say(dave, 'second');
    await say(dave, 'third');
    await openPeer(erin, 'kc-dave');
    await inbound(erin, 'third');
    // Erin verifies Dave: a badge that lasts (after a reload too).
    await erin.click('#verify');
    assert.match(await erin.textContent('#safety-number'), SAFETY_NUMBER);
    await erin.click('#verify-ok');
    await erin.waitForSelector('#conv-badge .badge.verified');
    await erin.waitForSelector('.peer[data-peer="kc-dave"] .badge.verified');
    await erin.reload();
    await signIn(erin, 'kc-erin');
    await erin.waitForSelector('.peer[data-peer="kc-dave"] .badge.verified');
    await shoot(erin, 'client_ui_verified');

    // Erin resets her key (after confirming) and writes with the new one.
    await erin.click('#rotate');
    await erin.click('#rotate-ok');
    await openPeer(erin, 'kc-dave');
    await say(erin, 'from my new key');
    await dave.waitForSelector('#keychange-dialog[open]', { timeout: 20000 });
    await until(async () => SAFETY_NUMBER.test(await dave.textContent('#keychange-fp')), 'the new safety number in the warning');
    const warned = await dave.textContent('#keychange-fp');
    await shoot(dave, 'client_ui_key_changed_dialog');
    // Dave keeps it blocked: he cannot write to Erin, and nothing from her new key shows.
    await dave.click('#keychange-cancel');
    await dave.waitForSelector('#blocked-bar:not([hidden])');
    assert.ok(await dave.locator('#text').isDisabled(), 'the composer is disabled while blocked');
    await shoot(dave, 'client_ui_key_blocked');
    await burst(dave, ['sent while blocked']); // even a forced submit sends nothing
    await dave.waitForSelector('#keychange-dialog[open]');
    await dave.click('#keychange-cancel');
    assert.equal(await mine(dave, 'sent while blocked').count(), 0, 'nothing was sealed to the new key');
    assert.equal(await dave.locator('#messages li.msg.in:has-text("from my new key")').count(), 0);
    // Erin's Verify shows the very number Dave was shown.
    await erin.click('#verify');
    assert.equal(await erin.textContent('#safety-number'), warned, "the warning showed Verify's number for the new key");
    await erin.click('#verify-close');
    // Dave compares and verifies: unblocked, Erin's message opens, and the badge says verified.
    await dave.click('#blocked-review');
    await dave.click('#keychange-verify');
    await inbound(dave, 'from my new key');
    await dave.waitForSelector('#conv-badge .badge.verified');
    await say(dave, 'welcome back');
    await inbound(erin, 'welcome back');
    // Under the new key the seqs started again at 0: still shown last, after the old ones (the
    // new-user review saw it filed among them).
    assert.equal((await received(erin)).at(-1), 'welcome back', 'the newest message is last');
    assert.equal(await erin.locator('#messages li.msg.system:has-text("could not be opened")').count(), 0, 'no "rejected" at Erin');
  } finally { await ctxA.close(); await ctxB.close(); }
});

test('phone layout at 390×844 with 100 messages: one pane at a time, header and composer on screen, the list scrolls', async () => {
  const ctx = await newContext(PHONE);
  const g = await scripted(browser, server, 'chatty');
  try {
    const page = await connect(ctx, 'phone-user', server.url);
    await g.evaluate(async () => { for (let i = 1; i <= 100; i++) await c.send('phone-user', `message number ${i} with a few words to wrap on a phone`); });
    await page.waitForSelector('.peer[data-peer="chatty"]', { timeout: 20000 });
    // The list pane alone.
    assert.ok(await page.isVisible('#peers'));
    assert.ok(!(await page.isVisible('#conversation')), 'the conversation is hidden while the list shows');
    await page.screenshot({ path: join(artifacts, 'client_ui_phone_list.png') });
    await openPeer(page, 'chatty');
    await until(async () => (await received(page)).length === 100, 'all 100 to show', 30000);
    const geometry = async () => page.evaluate(() => {
      const box = (id) => { const r = document.getElementById(id).getBoundingClientRect(); return { top: r.top, bottom: r.bottom, height: r.height }; };
      const ul = document.getElementById('messages');
      return {
        vh: innerHeight, header: box('conv-head'), top: document.querySelector('header').getBoundingClientRect().top, composer: box('composer'),
        pageScrolls: document.scrollingElement.scrollHeight > innerHeight + 1,
        listScrolls: ul.scrollHeight > ul.clientHeight && getComputedStyle(ul).overflowY === 'auto',
        atBottom: ul.scrollHeight - ul.scrollTop - ul.clientHeight < 2,
        asideShown: getComputedStyle(document.querySelector('aside')).display !== 'none',
      };
    });
    let g1 = await geometry();
    assert.equal(g1.top, 0, 'the page header is at the top');
    assert.ok(g1.header.top >= 0 && g1.header.bottom <= g1.vh && g1.header.height > 0, `the conversation header is on screen: ${JSON.stringify(g1)}`);
    assert.ok(g1.composer.top >= 0 && g1.composer.bottom <= g1.vh, `the composer is on screen: ${JSON.stringify(g1)}`);
    assert.ok(!g1.pageScrolls, 'the page itself does not scroll');
    assert.ok(g1.listScrolls, 'the message list is the scroller');
    assert.ok(g1.atBottom, 'the newest message is in view');
    assert.ok(!g1.asideShown, 'one pane at a time');
    await page.screenshot({ path: join(artifacts, 'client_ui_phone_conversation.png') });
    // Scrolling the list moves the list, not the page; the composer stays.
    await page.mouse.move(195, 400);
    await page.mouse.wheel(0, -3000);
    await until(async () => !(await geometry()).atBottom, 'the list to scroll up');
    g1 = await geometry();
    assert.ok(g1.composer.bottom <= g1.vh && !g1.pageScrolls);
    // Back to the list; the row of the conversation just left has the focus.
    await page.click('#back');
    assert.ok(await page.isVisible('#peers'));
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.peer), 'chatty');
    // A message in the conversation just left is unread (badge and title), not read unseen.
    await g.evaluate(async () => { await c.send('phone-user', 'after you went back'); });
    await until(async () => (await page.textContent('.peer[data-peer="chatty"] .unread')) === '1', 'the unread badge of the conversation left');
    assert.match(await page.title(), /^\(1\) /);
    // At 1280×800 both panes show side by side, the composer on screen.
    await page.setViewportSize(DESKTOP);
    await openPeer(page, 'chatty');
    const g2 = await geometry();
    assert.ok(g2.asideShown && g2.composer.bottom <= g2.vh && !g2.pageScrolls && g2.listScrolls, JSON.stringify(g2));
    await shoot(page, 'client_ui_100_messages');
  } finally { await ctx.close(); await g.close(); }
});

test('history stays: a reload signs in by itself and restores conversations, contacts, verification; all sealed at rest', async () => {
  const ctx = await newContext();
  const g = await scripted(browser, server, 'keeper-peer');
  try {
    let page = await connect(ctx, 'keeper', server.url);
    await g.evaluate(() => c.send('keeper', 'incoming secret-canary-in'));
    await openPeer(page, 'keeper-peer');
    await inbound(page, 'secret-canary-in');
    await say(page, 'outgoing secret-canary-out');
    await until(async () => /^(sent|delivered)/.test(await mine(page, 'secret-canary-out').getAttribute('data-state')), 'the reply to be stored');
    await page.click('#verify');
    await page.click('#verify-ok');
    // A message that cannot leave (the relay unreachable for this page) waits in the outbox.
    await page.route('**/secure_message', (route) => route.abort('connectionrefused'));
    await say(page, 'waiting secret-canary-outbox');
    await until(async () => (await mine(page, 'secret-canary-outbox').getAttribute('data-state')) === 'sending…', 'the message to wait');
    await new Promise((r) => setTimeout(r, 800)); // the history is written 0.3 s after a change
    // Nothing readable at rest: not the messages, not the waiting one, not the contact's name.
    const stored = await storedText(page);
    assert.ok(stored.length > 1000, 'something is stored');
    for (const s of ['secret-canary-in', 'secret-canary-out', 'secret-canary-outbox', 'keeper-peer']) assert.ok(!stored.includes(s), `"${s}" is stored in clear`);
    const key = await page.evaluate(async () => {
      const db = await new Promise((res) => { const r = indexedDB.open('mtproto-relay'); r.onsuccess = () => res(r.result); });
      const k = await new Promise((res) => { const r = db.transaction('vault').objectStore('vault').get('key'); r.onsuccess = () => res(r.result); });
      return { cls: k?.constructor?.name, extractable: k?.extractable, alg: k?.algorithm?.name, len: k?.algorithm?.length };
    });
    assert.deepEqual(key, { cls: 'CryptoKey', extractable: false, alg: 'AES-GCM', len: 256 });
    await page.unroute('**/secure_message');
    // A reload: no name to type, everything back, and the waiting message goes out.
    await page.reload();
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    assert.equal(await page.textContent('#status'), 'connected as keeper');
    await page.waitForSelector('.peer[data-peer="keeper-peer"] .badge.verified');
    assert.match(await page.textContent('.peer[data-peer="keeper-peer"] .preview'), /secret-canary-outbox/);
    await openPeer(page, 'keeper-peer');
    assert.deepEqual(await received(page), ['incoming secret-canary-in']);
    await until(async () => /^(sent|delivered)/.test(await mine(page, 'secret-canary-outbox').getAttribute('data-state') || ''), 'the waiting message to go out');
    assert.equal(await mine(page, 'secret-canary-out').count(), 2, 'both of mine are back (the sent one and the waiting one)');
    await shoot(page, 'client_ui_restored');
    // A second tab of the same browser does not open the same profile a second time.
    const second = await ctx.newPage();
    await second.goto(`${server.url}/client_ui.html`);
    await second.waitForSelector('#error.on', { timeout: 20000 });
    assert.match(await second.textContent('#error'), /already open in another tab/);
    assert.ok(await second.isVisible('#connect-view'));
    await second.close();
    // Signing out and keeping the profile forgets who signed in last, and shows the sign-in form
    // (signout.test.mjs has the removal).
    await page.click('#signout');
    await page.click('#signout-keep');
    await page.waitForSelector('#connect-view:not([hidden])');
    await shoot(page, 'client_ui_signed_out');
  } finally { await ctx.close(); await g.close(); }
});

test('a profile an earlier release stored in clear is resumed, then written back sealed', async () => {
  const ctx = await newContext();
  try {
    let page = await connect(ctx, 'legacy-user', server.url);
    const fp = await page.textContent('#own-fp');
    await page.close();
    // What earlier releases stored: the same profile record, in clear.
    const lab = await ctx.newPage();
    await lab.goto(server.url + '/');
    const record = () => lab.evaluate(async () => {
      const db = await new Promise((res) => { const r = indexedDB.open('mtproto-relay'); r.onsuccess = () => res(r.result); });
      const v = await new Promise((res) => { const r = db.transaction('profiles').objectStore('profiles').get('legacy-user'); r.onsuccess = () => res(r.result); });
      db.close();
      return { sealed: !!v.sealed, clearSession: !!v.session };
    });
    await lab.evaluate(async () => {
      const m = await import('/js/mtproto.js');
      const p = await m.loadProfile('legacy-user');
      const db = await new Promise((res) => { const r = indexedDB.open('mtproto-relay'); r.onsuccess = () => res(r.result); });
      await new Promise((res, rej) => { const tx = db.transaction('profiles', 'readwrite'); tx.objectStore('profiles').put(p, 'legacy-user'); tx.oncomplete = res; tx.onerror = rej; });
      db.close();
    });
    assert.deepEqual(await record(), { sealed: false, clearSession: true });
    page = await ctx.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await signIn(page, 'legacy-user');
    assert.equal(await page.textContent('#own-fp'), fp, 'the same identity');
    await until(async () => (await record()).sealed, 'the profile to be written back sealed');
    assert.deepEqual(await record(), { sealed: true, clearSession: false });
  } finally { await ctx.close(); }
});

test('"Reset my key" asks first and is not the first Tab stop; focus follows each step', async () => {
  const ctx = await newContext();
  try {
    const page = await connect(ctx, 'focus-user', server.url);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'search', 'after signing in, the search box has the focus');
    // Tab from the top of the page (the body has the focus, as after a load).
    await page.evaluate(() => { const b = document.body; b.tabIndex = -1; b.focus(); b.removeAttribute('tabindex'); });
    await page.keyboard.press('Tab');
    assert.notEqual(await page.evaluate(() => document.activeElement?.id), 'rotate', 'the first Tab stop is not "Reset my key"');
    const fp = await page.textContent('#own-fp');
    await page.click('#rotate');
    await page.waitForSelector('#rotate-dialog[open]');
    assert.equal(await page.textContent('#own-fp'), fp, 'nothing changed before the confirmation');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'rotate-cancel', 'the safe choice has the focus');
    await shoot(page, 'client_ui_rotate_confirm');
    await page.keyboard.press('Enter'); // Cancel
    assert.equal(await page.textContent('#own-fp'), fp, 'cancel keeps the key');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'rotate');
    await page.click('#rotate');
    await page.click('#rotate-ok');
    await until(async () => (await page.textContent('#own-fp')) !== fp, 'the new key');
    // Opening a conversation puts the focus in the composer.
    const g = await scripted(browser, server, 'focus-peer');
    await openPeer(page, 'focus-peer');
    // The title shows at once; the focus moves when the open has finished (it saves the contact).
    await until(async () => (await page.evaluate(() => document.activeElement?.id)) === 'text', 'the focus in the composer');
    await g.close();
  } finally { await ctx.close(); }
});

test('errors are written for people: a taken name, a broken gateway, an unreachable relay', async () => {
  const ctxA = await newContext(), ctxB = await newContext();
  try {
    await connect(ctxA, 'taken-name', server.url);
    const page = await ctxB.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.fill('#name', 'Taken-Name');
    await page.click('#connect');
    await page.waitForSelector('#error.on');
    const taken = await page.textContent('#error');
    assert.match(taken, /registered to someone else/);
    assert.ok(!/client_id_taken|_|\d{3}/.test(taken), `no code in "${taken}"`);
    assert.ok(await page.isVisible('#recovery'), 'the way back (account recovery) has its place');
    await shoot(page, 'client_ui_name_taken');
    // A gateway in front of the relay answers with its own HTML error page.
    await page.route('**/req_pq', (route) => route.fulfill({ status: 502, contentType: 'text/html', body: '<html><body><h1>502 Bad Gateway</h1></body></html>' }));
    await page.fill('#name', 'someone-new');
    await page.click('#connect');
    await until(async () => /not answering properly/.test(await page.textContent('#error')), 'the gateway error in words');
    const gw = await page.textContent('#error');
    assert.ok(!/[<>]|http|502|position/i.test(gw), `no markup, code or parser position in "${gw}"`);
    // The relay cannot be reached at all.
    await page.route('**/req_pq', (route) => route.abort('connectionrefused'));
    await page.click('#connect');
    await until(async () => /cannot be reached/.test(await page.textContent('#error')), 'the unreachable relay in words');
    assert.ok(!/fetch|TypeError/i.test(await page.textContent('#error')));
  } finally { await ctxA.close(); await ctxB.close(); }
});

test('the basics: times and day separators, previews, unread count in the title, no mailbox numbers, new contacts at once', async () => {
  const ctxA = await newContext(), ctxB = await newContext();
  try {
    const ann = await connect(ctxA, 'basic-ann', server.url);
    const ben = await connect(ctxB, 'basic-ben', server.url);
    await openPeer(ann, 'basic-ben');
    await say(ann, 'hello ben');
    // Ben never opened a conversation: the new contact is in his list, unread, and in his tab title.
    await ben.waitForSelector('.peer[data-peer="basic-ann"] .unread:has-text("1")', { timeout: 20000 });
    await until(async () => (await ben.title()) === '(1) mtproto-relay', 'the unread count in the title');
    assert.equal(await ben.textContent('.peer[data-peer="basic-ann"] .preview'), 'hello ben');
    assert.match(await ben.textContent('.peer[data-peer="basic-ann"] .when'), /\d{1,2}:\d{2}/);
    await shoot(ben, 'client_ui_unread');
    await openPeer(ben, 'basic-ann');
    await until(async () => (await ben.title()) === 'mtproto-relay', 'the title to drop the count once read');
    // Times on messages, a day separator.
    assert.equal(await ben.locator('#messages li.day').first().textContent(), 'Today');
    assert.match(await ben.locator('#messages li.msg.in .time').first().getAttribute('data-time'), /\d{1,2}:\d{2}/);
    await say(ben, 'hi ann');
    await inbound(ann, 'hi ann');
    // States say sent / delivered, never the relay's mailbox number.
    await until(async () => /^delivered/.test(await mine(ann, 'hello ben').getAttribute('data-state')), 'delivered');
    for (const small of await ann.locator('#messages li.msg.out small').allTextContents()) assert.ok(!/#\d/.test(small), `no mailbox number in "${small}"`);
    assert.equal(await ann.textContent('.peer[data-peer="basic-ben"] .preview'), 'hi ann');
  } finally { await ctxA.close(); await ctxB.close(); }
});

test('presence: "online" while the peer\'s page is open, "last seen" soon after it closes and while the relay is away', async () => {
  const relay = await startServer(['--engine', 'memory']);
  const ctxA = await newContext(), ctxB = await newContext();
  try {
    const watcher = await connect(ctxA, 'watcher', relay.url);
    let watched = await connect(ctxB, 'watched', relay.url);
    await openPeer(watcher, 'watched');
    await until(async () => (await watcher.textContent('#presence')) === 'online', 'the peer to show online', 20000);
    assert.equal(await watcher.locator('.peer[data-peer="watched"] .dot.online').count(), 1);
    await shoot(watcher, 'client_ui_presence_online');
    await watched.close();
    await until(async () => /^last seen/.test(await watcher.textContent('#presence')), 'the closed page to go stale', 30000);
    assert.equal(await watcher.locator('.peer[data-peer="watched"] .dot.online').count(), 0);
    // Back, then the relay goes away: nobody is shown online while we cannot know.
    watched = await connect(ctxB, 'watched', relay.url);
    await until(async () => (await watcher.textContent('#presence')) === 'online', 'the peer to come back online', 20000);
    await relay.halt();
    await until(async () => /you are offline/.test(await watcher.textContent('#presence')), 'presence to be unknown during the outage', 30000);
    assert.equal(await watcher.locator('.dot.online').count(), 0);
    await shoot(watcher, 'client_ui_presence_offline');
  } finally { await ctxA.close(); await ctxB.close(); await relay.stop(); }
});
