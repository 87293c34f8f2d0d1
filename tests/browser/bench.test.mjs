// The multi-user test bench (chat_ui_multiuser.html) in real Chromium against a real relay-server,
// at 1280×800 and at 390×844: it never picks a recipient by itself, refuses a message to nobody
// and an empty one with a reason on screen, keeps the chosen recipient through refreshes, shows a
// user that could not connect as failed, and its wire log decodes the end-to-end layer beside the
// envelope, timestamped, oldest first. Every state has 0 serious or critical axe-core violations
// and screenshots in test-artifacts/ (bench_<state>_<width>.png, the whole page, and
// bench_<state>_<width>_window.png, what the window shows). Last, Chromium gets the page gzip and
// revalidates it on a reload.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { launchBrowser, startServer, until, artifacts } from './helpers.mjs';
import { axeViolations } from './axe.mjs';

const VIEWPORTS = { desktop: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } };
// Every bench user registers (in memory only): more sign-ups from 127.0.0.1 than the default burst.
const MANY_USERS = ['--register-burst', '1000', '--handshake-burst', '1000'];

let server, browser;
before(async () => { server = await startServer(MANY_USERS); browser = await launchBrowser(); });
after(async () => { await browser?.close(); await server?.stop(); });

const user = (page, name) => page.locator(`.user[data-user="${name}"]`);
const connected = (page, name) => page.waitForSelector(`.user[data-user="${name}"][data-connected="true"]`, { timeout: 30000 });

/** Nothing wider than the window: no sideways page scroll, every card and log row inside it. */
async function assertFits(page, width) {
  const over = await page.evaluate((w) => {
    const out = [];
    if (document.scrollingElement.scrollWidth > w) out.push(`page scrolls sideways (${document.scrollingElement.scrollWidth} px)`);
    for (const el of document.querySelectorAll('.user, .user .wire, .user .row, header')) {
      const r = el.getBoundingClientRect();
      if (r.left < -0.5 || r.right > w + 0.5) out.push(`${el.className} ${el.closest('.user')?.dataset.user || ''}: ${r.left}..${r.right}`);
    }
    return out;
  }, width);
  assert.deepEqual(over, [], `everything fits ${width} px`);
}

/** axe on the page as it is, then screenshots (the window scrolled to `show`, when given). */
async function state(page, name, label, show = null) {
  assert.deepEqual(await axeViolations(page), [], `axe on the ${name} bench at ${label}`);
  if (show) await show.scrollIntoViewIfNeeded();
  // What the window shows, then the whole page (which can move the window's scroll).
  await page.screenshot({ path: join(artifacts, `bench_${name}_${label}_window.png`) });
  await page.screenshot({ path: join(artifacts, `bench_${name}_${label}.png`), fullPage: true });
}

for (const [label, viewport] of Object.entries(VIEWPORTS)) {
  describe(`the bench at ${viewport.width}×${viewport.height}`, () => {
    const px = label === 'desktop' ? 'dk' : 'ph';
    const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((s) => `${px}-${s}`);
    let ctx, page;
    const requests = [];
    const sent = () => requests.filter((u) => u.endsWith('/secure_message')).length;
    before(async () => {
      ctx = await browser.newContext({ viewport });
      page = await ctx.newPage();
      page.on('request', (r) => requests.push(r.url()));
    });
    after(async () => { await ctx?.close(); });

    test('a fresh bench fits the window and says how to start', async () => {
      await page.goto(`${server.url}/chat_ui_multiuser.html`);
      assert.ok(await page.isVisible('#no-users'), 'an empty bench explains itself');
      await assertFits(page, viewport.width);
      await state(page, 'fresh', label);
    });

    test('users connect with no recipient chosen, in columns that fit the window', async () => {
      await page.goto(`${server.url}/chat_ui_multiuser.html?user=${a}&user=${b}&user=${c}`);
      for (const u of [a, b, c]) await connected(page, u);
      for (const u of [a, b, c]) {
        const peers = user(page, u).locator('.peer');
        await until(async () => (await peers.locator('option').count()) === 2, `${u} lists the two others`);
        assert.equal(await peers.inputValue(), '', `${u} has no preselected recipient`);
        assert.match(await user(page, u).locator('.to-hint').innerText(), /nobody chosen/);
        assert.equal(await peers.getAttribute('aria-describedby'), await user(page, u).locator('.to-hint').getAttribute('id'),
          'a screen reader hears why the picker is blank');
      }
      assert.equal(await page.isVisible('#no-users'), false);
      if (label === 'desktop') {
        // Three users side by side, none cut off.
        const tops = await page.locator('.user').evaluateAll((l) => l.map((e) => Math.round(e.getBoundingClientRect().top)));
        assert.equal(new Set(tops).size, 1, `three columns in one row (tops ${tops})`);
      }
      await assertFits(page, viewport.width);
      await state(page, 'connected', label);
    });

    test('a message to nobody is refused with a visible reason and nothing is sent', async () => {
      const u = user(page, a);
      await u.locator('.text').fill('meant for nobody');
      await u.locator('.send').click();
      const problem = u.locator('.problem');
      await problem.waitFor({ state: 'visible' });
      assert.match(await problem.innerText(), /choose who gets it/i);
      assert.equal(await u.locator('.text').inputValue(), 'meant for nobody', 'the text is kept to send once a recipient is chosen');
      assert.equal(sent(), 0, 'no /secure_message left the page');
      await state(page, 'no_recipient', label, u.locator('.problem'));
    });

    test('an empty message is refused with a visible reason and nothing is sent', async () => {
      const u = user(page, a);
      await u.locator('.peer').selectOption(b);
      assert.equal(await u.locator('.to-hint').isVisible(), false, 'the hint goes once someone is chosen');
      assert.equal(await u.locator('.peer').getAttribute('aria-describedby'), null);
      await u.locator('.text').fill('   ');
      await u.locator('.send').click();
      await until(async () => /empty/.test(await u.locator('.problem').innerText()), 'the empty-message reason');
      assert.equal(sent(), 0, 'no /secure_message left the page');
    });

    test('a refresh, a directory search and a newcomer all keep the chosen recipient', async () => {
      const u = user(page, a);
      const peers = u.locator('.peer');
      // c is never first in the list (b sorts before it).
      await peers.selectOption(c);
      let refreshes = Number(await peers.getAttribute('data-refreshes'));
      await u.locator('.refresh').click();
      await until(async () => Number(await peers.getAttribute('data-refreshes')) > refreshes, 'the refresh');
      assert.equal(await peers.inputValue(), c);
      await u.locator('.find').fill(px);
      refreshes = Number(await peers.getAttribute('data-refreshes'));
      await u.locator('.refresh').click();
      await until(async () => Number(await peers.getAttribute('data-refreshes')) > refreshes, 'the search');
      assert.equal(await peers.inputValue(), c);
      await u.locator('.find').fill('');
      // A newcomer refreshes every picker; nobody's choice moves and the newcomer has none.
      await page.fill('#new-name', d);
      await page.click('#add-user');
      await connected(page, d);
      await until(async () => (await peers.locator(`option[value="${d}"]`).count()) === 1, `${a} learns ${d}`);
      assert.equal(await peers.inputValue(), c);
      assert.equal(await user(page, b).locator('.peer').inputValue(), '', `${b} still has nobody chosen`);
      assert.equal(await user(page, d).locator('.peer').inputValue(), '', `${d} starts with nobody chosen`);
    });

    test('the log decodes the end-to-end layer beside the envelope, with times, oldest first', async () => {
      const from = user(page, a), to = user(page, c);
      await from.locator('.peer').selectOption(c);
      await from.locator('.text').fill('hello plaintext-canary-bench');
      await from.locator('.send').click();
      await to.locator('.inbox:has-text("plaintext-canary-bench")').waitFor({ timeout: 20000 });
      assert.equal(await from.locator('.text').inputValue(), '', 'a sent message leaves the composer');
      assert.equal(await from.locator('.problem').isVisible(), false, 'the earlier refusal is gone');
      // The sender's outgoing envelope and the recipient's poll answer carry the same end-to-end
      // packet: both sides decode it to the same seq, random id and plaintext.
      const out = from.locator('.wire[data-dir="out"][data-path="/secure_message"]').first();
      const sentE2e = out.locator('.e2e').first();
      await until(async () => (await sentE2e.getAttribute('data-random-id')) !== null, 'the sender decodes its packet');
      assert.match(await out.locator('.meta').innerText(), /msg_id=\d+ seq_no=\d+ msg_key=[0-9a-f]{32}/);
      assert.match(await out.locator('.ct').innerText(), /^[0-9a-f]{64,}/);
      assert.match(await out.locator('.pt').innerText(), new RegExp(`"target_peer":"${c}"`));
      const got = to.locator('.wire[data-dir="in"][data-path="/poll_messages"] .e2e[data-kind="text"]').first();
      await until(async () => (await got.getAttribute('data-random-id')) !== null, 'the recipient decodes the packet');
      const e2e = async (l) => ({ kind: await l.getAttribute('data-kind'), seq: await l.getAttribute('data-seq'),
        randomId: await l.getAttribute('data-random-id') });
      const mine = await e2e(sentE2e), theirs = await e2e(got);
      assert.match(mine.randomId, /^[0-9a-f]{16}$/);
      assert.deepEqual(mine, { kind: 'text', seq: '0', randomId: mine.randomId });
      assert.deepEqual(theirs, mine);
      assert.match(await sentE2e.innerText(), /seq 0.*random_id [0-9a-f]{16}.*hello plaintext-canary-bench/s);
      assert.match(await got.innerText(), /hello plaintext-canary-bench/);
      // The receipt c sends back is a control message, decoded as such at a.
      const receipt = from.locator('.wire[data-dir="in"][data-path="/poll_messages"] .e2e[data-kind="control"]').first();
      await receipt.waitFor({ timeout: 20000 });
      await until(async () => /"receipt":\[0\]/.test(await receipt.innerText()), 'the receipt decoded');
      // Every row has a time; oldest first, the first row is the user's first poll (the key was
      // published inside connect(), before the page listens).
      const times = async () => from.locator('.wire > .meta > time').evaluateAll((l) => l.map((t) => Date.parse(t.dateTime)));
      let t = await times();
      assert.ok(t.length >= 4 && t.every(Number.isFinite), 'every row has a machine-readable time');
      assert.deepEqual(t, [...t].sort((x, y) => x - y), 'oldest first');
      assert.deepEqual(await from.locator('.wire').first().evaluate((r) => [r.dataset.dir, r.dataset.path]), ['out', '/poll_messages']);
      assert.match(await from.locator('.wire > .meta > time').first().innerText(), /^\d\d:\d\d:\d\d\.\d{3}$/);
      await assertFits(page, viewport.width);
      await state(page, 'messages', label, got);
      // Newest first on request, and back.
      await page.check('#newest-first');
      t = await times();
      assert.deepEqual(t, [...t].sort((x, y) => y - x), 'newest first once asked');
      await page.uncheck('#newest-first');
      t = await times();
      assert.deepEqual(t, [...t].sort((x, y) => x - y), 'oldest first again');
    });

    test('a user who cannot connect is shown failed, with the reason; bad and repeated names say why', async () => {
      // The name belongs to someone else on the relay: a second bench took it first.
      const taken = `${px}-taken`;
      const other = await (await browser.newContext()).newPage();
      await other.goto(`${server.url}/chat_ui_multiuser.html?user=${taken}`);
      await connected(other, taken);
      await other.context().close();
      await page.fill('#new-name', taken);
      await page.click('#add-user');
      const failed = page.locator(`.user[data-user="${taken}"][data-failed="true"]`);
      await failed.waitFor({ timeout: 30000 });
      assert.match(await failed.locator('.state').innerText(), /failed/);
      assert.match(await failed.locator('.failure').innerText(), /belongs to someone else/);
      assert.equal(await failed.locator('.text').isVisible(), false, 'a failed user offers no composer');
      const border = await failed.evaluate((e) => getComputedStyle(e).borderTopColor);
      assert.notEqual(border, await user(page, a).evaluate((e) => getComputedStyle(e).borderTopColor), 'failed looks different');
      // Nobody can pick a user who never connected.
      assert.equal(await user(page, a).locator(`.peer option[value="${taken}"]`).count(), 0);
      // A name the relay would refuse, and one already on the bench: a reason, no card.
      await page.fill('#new-name', 'no spaces allowed');
      await page.click('#add-user');
      await until(async () => /cannot be a name/.test(await page.locator('#add-problem').innerText()), 'the bad-name reason');
      await page.fill('#new-name', b.toUpperCase());
      await page.click('#add-user');
      await until(async () => /already on the bench/.test(await page.locator('#add-problem').innerText()), 'the duplicate reason');
      assert.equal(await page.locator(`.user[data-user="${b}"]`).count(), 1);
      await assertFits(page, viewport.width);
      await state(page, 'failed_user', label, failed);
    });

    test('every scrollable region can be reached from the keyboard and is named', async () => {
      const regions = await page.locator('.log, .inbox-box').evaluateAll((l) => l.map((e) => ({
        tabindex: e.getAttribute('tabindex'), label: e.getAttribute('aria-label') || '', role: e.getAttribute('role') })));
      assert.ok(regions.length >= 8);
      for (const r of regions) {
        assert.equal(r.tabindex, '0');
        assert.match(r.label, /\S/);
        assert.ok(r.role, 'a role that allows a label');
      }
    });
  });
}

test('Chromium gets the bench gzip-compressed, and a reload revalidates it (304 for the scripts)', async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const seen = [];
  page.on('response', async (r) => {
    seen.push({ path: new URL(r.url()).pathname, status: r.status(), encoding: r.headers()['content-encoding'] || null,
      etag: r.headers().etag || null, asked: await r.request().headerValue('if-none-match') });
  });
  await page.goto(`${server.url}/chat_ui_multiuser.html`);
  await page.waitForLoadState('networkidle');
  const files = ['/chat_ui_multiuser.html', '/js/chat_ui_multiuser.js', '/js/mtproto.js'];
  for (const f of files) {
    const r = seen.find((x) => x.path === f);
    assert.ok(r, `${f} loaded`);
    assert.deepEqual([r.status, r.encoding], [200, 'gzip'], f);
    assert.match(r.etag, /^"[0-9a-f]{32}-gzip"$/, f);
  }
  const first = new Map(seen.map((x) => [x.path, x.etag]));
  seen.length = 0;
  await page.reload();
  await page.waitForLoadState('networkidle');
  for (const f of files) {
    const r = seen.find((x) => x.path === f);
    assert.ok(r, `${f} asked for again`);
    assert.equal(r.asked, first.get(f), `${f} is revalidated with its ETag`);
    if (f.startsWith('/js/')) assert.equal(r.status, 304, `${f} is not sent again`);
  }
  await ctx.close();
});
