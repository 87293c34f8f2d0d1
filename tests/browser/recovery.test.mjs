// Account recovery in client_ui.html (issue 13, defect 4; docs/protocol.md §1 "Recovery"), in real
// Chromium against the real relay-server: the code is shown at sign-up until the user confirms it
// is written down — kept sealed in IndexedDB until then, so a reload or a crash shows it again,
// and deleted after; a taken name is explained with a way forward; a wrong code changes nothing;
// the right code moves the name to a fresh browser, the peer is warned of the key change and,
// once he accepts, they talk again; the old browser is told its name moved. Screenshots go to
// test-artifacts/.
//
// RECOVERY_TEST_PAGE_REV=<git revision> serves the page's files (client_ui.html, js/) from that
// revision instead of the relay's own copy: how these checks were seen failing on the page before
// recovery existed (RECOVERY_TEST_PAGE_REV=main).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { launchBrowser, startServer, until, binDir, freePort } from './helpers.mjs';
import { connect, openPeer, say, inbound, shoot, keepRecoveryCode, storedKeys, revisionContext, storedText } from './pages.mjs';
import { axeViolations } from './axe.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

const CODE = /^[0-9a-f]{4}(-[0-9a-f]{4}){7}$/;
const SAFETY_NUMBER = /^\d{5} \d{5} \d{5} \d{5}\n\d{5} \d{5} \d{5} \d{5}\n\d{5} \d{5} \d{5} \d{5}$/;

const newContext = () => revisionContext(browser);

test('recovery: the code shown once, a taken name explained, a wrong code refused, the right one moves the name; the peer is warned, the old browser told', async () => {
  const ctxA = await newContext(), ctxB = await newContext(), ctxC = await newContext();
  try {
    // Alice signs up: the dialog shows her code, once, and keeps the focus until she confirms.
    const alice = await ctxA.newPage();
    await alice.goto(`${server.url}/client_ui.html`);
    await alice.fill('#name', 'rc-alice');
    await alice.click('#connect');
    await alice.waitForSelector('#code-dialog[open]', { timeout: 20000 });
    const code = (await alice.textContent('#code-shown')).trim();
    assert.match(code, CODE, 'the code as Rust shows it: 8 groups of 4 hex digits');
    assert.ok(await alice.evaluate(() => document.getElementById('code-dialog').contains(document.activeElement)), 'the focus is in the dialog');
    assert.equal(await alice.evaluate(() => document.getElementById(document.getElementById('code-dialog').getAttribute('aria-labelledby'))?.textContent), 'Your recovery code');
    assert.match(await alice.textContent('#code-text'), /write it down/i);
    assert.match(await alice.textContent('#code-text'), /cannot show it again/);
    assert.deepEqual(await axeViolations(alice), [], 'axe: the code dialog');
    await shoot(alice, 'recovery_code_dialog');
    // Escape does not lose it silently: the dialog stays and says why; Done waits for the tick.
    await alice.keyboard.press('Escape');
    assert.equal(await alice.locator('#code-dialog[open]').count(), 1, 'Escape leaves the code on screen');
    assert.match(await alice.textContent('#code-note'), /cannot be shown again/);
    assert.ok(await alice.locator('#code-done').isDisabled(), 'Done waits for the confirmation');
    await alice.check('#code-saved');
    await alice.click('#code-done');
    await alice.waitForSelector('#code-dialog:not([open])', { state: 'attached' });
    assert.equal(await alice.textContent('#code-shown'), '', 'the code leaves the page');

    // Bob and Alice talk.
    const bob = await connect(ctxB, 'rc-bob', server.url);
    await openPeer(bob, 'rc-alice');
    await say(bob, 'hello alice');
    await openPeer(alice, 'rc-bob');
    await inbound(alice, 'hello alice');
    await say(alice, 'hi bob');
    await inbound(bob, 'hi bob');
    // The page never stored the code (IndexedDB holds sealed records; nothing in clear either).
    const stored = await storedText(alice);
    for (const form of [code, code.replace(/-/g, '')]) assert.ok(!stored.includes(form), 'the recovery code is not in IndexedDB');

    // Alice on a fresh browser profile asks for her name: a sentence and a way forward.
    const alice2 = await ctxC.newPage();
    await alice2.goto(`${server.url}/client_ui.html`);
    await alice2.fill('#name', 'RC-Alice');
    await alice2.click('#connect');
    await alice2.waitForSelector('#recovery:not([hidden])', { timeout: 20000 });
    assert.match(await alice2.textContent('#recovery-text'), /already registered.*recovery code.*choose another name/s);
    assert.equal(await alice2.evaluate(() => document.activeElement?.id), 'recovery-code', 'the focus is on the code field');
    assert.ok(await alice2.isVisible('#other-name'), 'another name is offered too');
    for (const where of ['#recovery', '#error']) assert.ok(!/client_id_taken|_|\d{3}/.test(await alice2.textContent(where)), `no raw code in ${where}`);
    assert.deepEqual(await axeViolations(alice2), [], 'axe: the recovery form');
    await shoot(alice2, 'recovery_name_taken');

    // Not a code, then a wrong code: readable errors, and nothing changes.
    await alice2.fill('#recovery-code', 'abc-def');
    await alice2.click('#recover');
    await until(async () => /not a recovery code/.test(await alice2.textContent('#recovery-error')), 'the malformed code to be explained');
    const wrong = code.replace(/^./, (c) => (c === '0' ? '1' : '0'));
    await alice2.fill('#recovery-code', wrong);
    await alice2.click('#recover');
    await until(async () => /does not match this name/.test(await alice2.textContent('#recovery-error')), 'the wrong code to be refused');
    const refused = await alice2.textContent('#recovery-error');
    assert.ok(!/recovery_refused|_|\d{3}/.test(refused), `no code in "${refused}"`);
    assert.equal(await alice2.locator('#main-view.on').count(), 0, 'not signed in');
    assert.deepEqual(await axeViolations(alice2), [], 'axe: the recovery form with its error');
    await shoot(alice2, 'recovery_wrong_code');
    // A phone with its keyboard open (390×500): the form scrolls, so its buttons can be reached
    // (the page did not scroll, and "This is my name" sat below the screen — phone-width review).
    await alice2.setViewportSize({ width: 390, height: 500 });
    await alice2.evaluate(() => { for (const e of [document.scrollingElement, document.querySelector('main')]) e.scrollTop = 0; });
    await alice2.mouse.move(195, 300);
    for (let i = 0; i < 6; i++) await alice2.mouse.wheel(0, 200);
    await until(async () => {
      const box = await alice2.locator('#recover').boundingBox();
      return box && box.y >= 0 && box.y + box.height <= 500;
    }, '"This is my name" to scroll into view at 390×500');
    await alice2.setViewportSize({ width: 1280, height: 800 });
    await say(alice, 'still mine');
    await inbound(bob, 'still mine');

    // The right code, typed in capitals with spaces: signed in, with a new code to write down
    // (the one just typed no longer works: the next test).
    await alice2.fill('#recovery-code', code.toUpperCase().replace(/-/g, ' '));
    await alice2.press('#recovery-code', 'Enter');
    await alice2.waitForSelector('#main-view.on', { timeout: 20000 });
    const renewed = await keepRecoveryCode(alice2);
    assert.match(renewed || '', CODE, 'a recovery shows a new code');
    await until(async () => (await alice2.textContent('#status')) === 'connected as rc-alice', 'the new browser to be signed in');
    assert.match(await alice2.textContent('#info'), /moved to this browser/);

    // Bob is warned: the new key's safety number, the very one Alice's new browser shows.
    await bob.waitForSelector('#keychange-dialog[open]', { timeout: 20000 });
    assert.equal(await bob.textContent('#keychange-peer'), 'rc-alice');
    await until(async () => SAFETY_NUMBER.test(await bob.textContent('#keychange-fp')), 'the new safety number in the warning');
    await shoot(bob, 'recovery_peer_warned');
    await openPeer(alice2, 'rc-bob');
    await alice2.click('#verify');
    await alice2.waitForSelector('#verify-dialog[open]');
    assert.equal(await alice2.textContent('#safety-number'), await bob.textContent('#keychange-fp'), 'the number Bob is shown is the new key\'s');
    await alice2.click('#verify-close');
    await bob.click('#keychange-accept');
    await say(alice2, 'back on a new device');
    await inbound(bob, 'back on a new device');
    await say(bob, 'welcome back');
    await inbound(alice2, 'welcome back');
    await shoot(alice2, 'recovery_talking_again');

    // The old browser is told its name moved, with the way forward (not a dead end).
    await alice.waitForSelector('#recovery:not([hidden])', { timeout: 40000 });
    assert.match(await alice.textContent('#recovery-text'), /moved to another device.*recovery code.*choose another name/s);
    assert.equal(await alice.textContent('#status'), 'signed out');
    assert.ok(await alice.isEnabled('#recover'), 'the code can be used here');
    await new Promise((r) => setTimeout(r, 5000)); // a contacts refresh (every 4 s) adds no raw error
    assert.equal(await alice.textContent('#error'), '');
    assert.ok(!/client_id_taken|unknown_auth_key/.test(await alice.textContent('body')));
    assert.deepEqual(await axeViolations(alice), [], 'axe: the old browser told');
    await shoot(alice, 'recovery_old_device_told');
  } finally { await ctxA.close(); await ctxB.close(); await ctxC.close(); }
});

test('a recovery registers a new code, shown once like at sign-up: the code used is refused after it, the new one works', async () => {
  const ctxA = await newContext(), ctxB = await newContext(), ctxC = await newContext(), ctxD = await newContext();
  try {
    const a = await ctxA.newPage();
    await a.goto(`${server.url}/client_ui.html`);
    await a.fill('#name', 'rn-alice');
    await a.click('#connect');
    await a.waitForSelector('#main-view.on', { timeout: 20000 });
    const codeA = await keepRecoveryCode(a);
    assert.match(codeA || '', CODE);

    /** A fresh browser asks for the name and gives `code`; resolves when signed in or refused. */
    const recover = async (ctx, code) => {
      const p = await ctx.newPage();
      await p.goto(`${server.url}/client_ui.html`);
      await p.fill('#name', 'rn-alice');
      await p.click('#connect');
      await p.waitForSelector('#recovery:not([hidden])', { timeout: 20000 });
      await p.fill('#recovery-code', code);
      await p.click('#recover');
      await p.waitForSelector('#main-view.on, #recovery-error:not(:empty)', { timeout: 20000 });
      return p;
    };
    // Recovered with code A: a new code B, said to replace A, kept sealed until Done.
    const b = await recover(ctxB, codeA);
    await b.waitForSelector('#code-dialog[open]', { timeout: 20000 });
    assert.equal(await b.textContent('#code-title'), 'Your new recovery code');
    assert.match(await b.textContent('#code-text'), /the code you just used no longer works/);
    const codeB = (await b.textContent('#code-shown')).trim();
    assert.match(codeB, CODE);
    assert.notEqual(codeB, codeA, 'a new code');
    assert.deepEqual(await axeViolations(b), [], 'axe: the new code after a recovery');
    await shoot(b, 'recovery_new_code');
    await b.reload();
    await b.waitForSelector('#code-dialog[open]', { timeout: 20000 });
    assert.equal((await b.textContent('#code-shown')).trim(), codeB, 'the same new code after a reload');
    assert.equal(await b.textContent('#code-title'), 'Your new recovery code', 'still said to be the new one');
    assert.equal(await codeInClear(b, codeB), false, 'sealed while it waits');
    assert.equal(await keepRecoveryCode(b), codeB);

    // Code A no longer works (recovery_refused); code B does.
    const c = await recover(ctxC, codeA);
    await until(async () => /does not match this name/.test(await c.textContent('#recovery-error')), 'the old code to be refused');
    assert.equal(await c.locator('#main-view.on').count(), 0, 'not signed in with the old code');
    const d = await recover(ctxD, codeB);
    await d.waitForSelector('#main-view.on', { timeout: 20000 });
    const codeC = await keepRecoveryCode(d);
    assert.match(codeC || '', CODE);
    assert.ok(codeC !== codeB && codeC !== codeA, 'and again a new one');
    await until(async () => (await d.textContent('#status')) === 'connected as rn-alice', 'signed in with the new code');
  } finally { await ctxA.close(); await ctxB.close(); await ctxC.close(); await ctxD.close(); }
});

/** Whether the recovery code `code` (as shown) appears in clear anywhere in the page's IndexedDB. */
async function codeInClear(page, code) {
  const stored = await storedText(page);
  return [code, code.replace(/-/g, '')].some((form) => stored.includes(form));
}

test('the recovery code survives a reload or a crash until the user confirms it: shown again, sealed at rest, deleted after Done', async () => {
  const ctx = await newContext();
  try {
    let page = await ctx.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.fill('#name', 'rc-reload');
    await page.click('#connect');
    await page.waitForSelector('#code-dialog[open]', { timeout: 20000 });
    const code = (await page.textContent('#code-shown')).trim();
    assert.match(code, CODE);

    // A reload while the dialog is open: the same code again, the dialog still modal.
    await page.reload();
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await until(async () => (await page.locator('#code-dialog[open]').count()) === 1, 'the code dialog after a reload', 5000);
    assert.equal((await page.textContent('#code-shown')).trim(), code, 'the same code after a reload');
    // Kept while it waits: one sealed record in the vault, the code nowhere in clear.
    assert.ok((await storedKeys(page)).vault.includes('recovery/rc-reload'), 'the pending code is stored');
    assert.equal(await codeInClear(page, code), false, 'the pending code is sealed');
    assert.ok(await page.locator('#code-done').isDisabled(), 'Done still waits for the confirmation');
    assert.match(await page.textContent('#code-text'), /cannot show it again/);
    assert.deepEqual(await axeViolations(page), [], 'axe: the code dialog after a reload');
    await shoot(page, 'recovery_code_after_reload');

    // A crash: the tab goes without running anything; a new tab signs in and shows it again.
    await page.close({ runBeforeUnload: false });
    page = await ctx.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.waitForSelector('#code-dialog[open]', { timeout: 20000 });
    assert.equal((await page.textContent('#code-shown')).trim(), code, 'the same code after a crash');

    // Confirmed: the stored copy goes, and a reload shows no code.
    assert.equal(await keepRecoveryCode(page), code);
    await until(async () => !(await storedKeys(page)).vault.includes('recovery/rc-reload'), 'the pending code to be deleted');
    await page.reload();
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await until(async () => (await page.textContent('#status')) === 'connected as rc-reload', 'signed in again');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await page.locator('#code-dialog[open]').count(), 0, 'no code after it was confirmed');
    assert.equal(await codeInClear(page, code), false);
  } finally { await ctx.close(); }
});

test('a code issued again (the relay lost its data and the page registered anew) is kept the same way until confirmed', async () => {
  const port = await freePort();
  const keyDir = mkdtempSync(join(tmpdir(), 'relay-key-'));
  const keyArgs = ['--key-file', join(keyDir, 'server_key'), '--pow-bits', '0'];
  let relay = await startServer(keyArgs, { bind: `127.0.0.1:${port}` });
  const ctx = await newContext();
  try {
    const page = await ctx.newPage();
    await page.goto(`${relay.url}/client_ui.html`);
    await page.fill('#name', 'rc-again');
    await page.click('#connect');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    const first = await keepRecoveryCode(page);
    assert.match(first || '', CODE);
    await until(async () => (await storedKeys(page)).vault.includes('recovery/rc-again') === false, 'the first code to be deleted once confirmed');
    // The relay loses its data: the page registers again, with a new code.
    await relay.stop();
    relay = await startServer([...keyArgs, '--start-fresh'], { bind: `127.0.0.1:${port}` });
    await page.waitForSelector('#code-dialog[open]', { timeout: 40000 });
    const second = (await page.textContent('#code-shown')).trim();
    assert.match(second, CODE);
    assert.notEqual(second, first, 'a new code');
    assert.equal(await page.textContent('#code-title'), 'Your new recovery code');
    assert.match(await page.textContent('#code-text'), /lost its data.*no longer works/s);
    // A reload before it is confirmed shows it again.
    await page.reload();
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    await until(async () => (await page.locator('#code-dialog[open]').count()) === 1, 'the new code dialog after a reload', 5000);
    assert.equal((await page.textContent('#code-shown')).trim(), second);
    assert.ok((await storedKeys(page)).vault.includes('recovery/rc-again'), 'the new code is kept until confirmed');
    assert.equal(await keepRecoveryCode(page), second);
    await until(async () => !(await storedKeys(page)).vault.includes('recovery/rc-again'), 'the new code to be deleted once confirmed');
  } finally { await ctx.close(); await relay.stop(); rmSync(keyDir, { recursive: true, force: true }); }
});

/** relay-chat (the Rust client) as `name` with `args`; its output lines in `lines`. */
function relayChat(name, args = []) {
  const dir = mkdtempSync(join(tmpdir(), 'relay-chat-'));
  const proc = spawn(join(binDir, 'relay-chat'), ['--server', server.url, '--name', name, '--pin', server.fingerprint, '--profile', join(dir, 'p.json'), ...args],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines = [];
  createInterface({ input: proc.stdout }).on('line', (l) => lines.push(l));
  createInterface({ input: proc.stderr }).on('line', (l) => lines.push(l));
  const quit = async () => { proc.stdin.write('/quit\n'); if (proc.exitCode === null) await new Promise((r) => proc.once('exit', r)); };
  return { proc, lines, quit };
}

test('Rust and browser codes are one format: a browser code moves the name to relay-chat --recover, a relay-chat code to the browser', async () => {
  // Made by the browser, used by the terminal chat.
  const ctxA = await newContext(), ctxB = await newContext();
  try {
    const page = await ctxA.newPage();
    await page.goto(`${server.url}/client_ui.html`);
    await page.fill('#name', 'rc-cross');
    await page.click('#connect');
    await page.waitForSelector('#main-view.on', { timeout: 20000 });
    const code = await keepRecoveryCode(page);
    assert.match(code, CODE);
    const rust = relayChat('rc-cross', ['--recover', code]);
    await until(() => rust.lines.some((l) => l.includes('connected as rc-cross')), `relay-chat to take the name over (${rust.lines.join(' | ')})`);
    // A recovery registers a new code (the one used stops working): relay-chat says so and shows it.
    await until(() => rust.lines.some((l) => l.includes('your recovery code')), `relay-chat to show its new code (${rust.lines.join(' | ')})`);
    assert.ok(rust.lines.some((l) => l.includes('the recovery code you used no longer works')), rust.lines.join(' | '));
    const renewed = rust.lines.find((l) => l.includes('your recovery code')).trim().split(' ').pop();
    assert.match(renewed, CODE);
    assert.notEqual(renewed, code, 'a new code, not the one used');
    await page.waitForSelector('#recovery:not([hidden])', { timeout: 40000 });
    assert.match(await page.textContent('#recovery-text'), /moved to another device/);
    await rust.quit();

    // Made by the terminal chat, used by the browser.
    const made = relayChat('rc-rusty');
    await until(() => made.lines.some((l) => l.includes('connected as rc-rusty')), 'relay-chat to sign up');
    const shown = made.lines.find((l) => l.includes('your recovery code'));
    const rustCode = /([0-9a-f]{4}(-[0-9a-f]{4}){7})\s*$/.exec(shown || '')?.[1];
    assert.match(rustCode || '', CODE, `the code relay-chat showed: ${shown}`);
    await made.quit();
    const browserPage = await ctxB.newPage();
    await browserPage.goto(`${server.url}/client_ui.html`);
    await browserPage.fill('#name', 'rc-rusty');
    await browserPage.click('#connect');
    await browserPage.waitForSelector('#recovery:not([hidden])', { timeout: 20000 });
    await browserPage.fill('#recovery-code', rustCode);
    await browserPage.click('#recover');
    await browserPage.waitForSelector('#main-view.on', { timeout: 20000 });
    await until(async () => (await browserPage.textContent('#status')) === 'connected as rc-rusty', 'the browser to take the name over');
  } finally { await ctxA.close(); await ctxB.close(); }
});
