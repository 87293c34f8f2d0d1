// Browser ↔ Rust under the double ratchet (issue 15; docs/protocol.md §3.3): the terminal chat
// (relay-chat, on relay-client) and the page's client (mtproto.js + conversations.js) follow the
// same conversation rules, so they start, ratchet, reorder and restart together. The browser side
// is mtproto.js's RelayClient in a blank page (it records the end-to-end kind of every packet it
// seals or opens); the Rust side is the relay-chat binary driven on stdin/stdout.
//   cd tests/browser && RELAY_BIN_DIR=$CARGO_TARGET_DIR/debug node --test interop.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launchBrowser, startServer, until, binDir } from './helpers.mjs';
import { scripted } from './pages.mjs';

let server, browser;
before(async () => {
  server = await startServer(['--engine', 'memory', '--register-burst', '100', '--handshake-burst', '300', '--pow-bits', '0']);
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); await server?.stop(); });

/** relay-chat as `name` with the profile at `profile`; `lines` is everything it printed. */
async function terminal(name, profile) {
  const proc = spawn(join(binDir, 'relay-chat'), ['--server', server.url, '--name', name, '--pin', server.fingerprint, '--profile', profile],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = [];
  createInterface({ input: proc.stdout }).on('line', (l) => lines.push(l));
  const exited = new Promise((r) => proc.once('exit', r));
  await until(() => lines.some((l) => l.includes(`connected as ${name}`)), `${name} (relay-chat) to connect`);
  return {
    lines,
    type: (text) => proc.stdin.write(text + '\n'),
    /** Every message line from `from`, as printed: `[from] text  (note)`. */
    from: (from) => lines.filter((l) => l.startsWith(`[${from}] `)).map((l) => l.slice(from.length + 3)),
    async quit() { proc.stdin.write('/quit\n'); await exited; },
    kill() { proc.kill('SIGKILL'); },
  };
}

/** The page's client `name` (pages.mjs `scripted`: it records the kind of every packet). */
const web = (name) => scripted(browser, server, name);
const poll = (p) => p.evaluate(() => c.poll(0));
const send = (p, to, text) => p.evaluate(([to, text]) => c.send(to, text).then((r) => r.state), [to, text]);
const got = (p) => p.evaluate(() => got.map((g) => g.text));
const kinds = (p, out) => p.evaluate((out) => wire.filter((w) => w.out === out && !w.control).map((w) => w.kind), out);

test('relay-chat and the page talk under the double ratchet: starts, replies, reordered packets, a restart, the same safety line', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'interop-'));
  const profile = join(dir, 'rusty.json');
  let rust = await terminal('ir-rust', profile);
  const page = await web('ir-web');
  try {
    // The page starts (X3DH with the terminal's published prekeys); the terminal reads it.
    assert.equal(await send(page, 'ir-rust', 'w1 from the page'), 'stored');
    await until(() => rust.from('ir-web').includes('w1 from the page'), 'relay-chat to print w1');
    assert.deepEqual(await kinds(page, true), ['start'], 'the page sent a start');

    // The terminal answers in the page's conversation: a ratchet packet (a DH step).
    rust.type('/open ir-web');
    rust.type('r1 from the terminal');
    await until(async () => { await poll(page); return (await got(page)).includes('r1 from the terminal'); }, 'the page to read r1');
    assert.deepEqual(await kinds(page, false), ['ratchet'], 'the terminal answered under the ratchet');

    // Reordered: sealed w2..w4 in one chain, stored as w4, w2; then a new chain after the
    // terminal's next message, its w5 stored before the late w3.
    const seal = (texts) => page.evaluate(async (texts) => {
      const w = await c.chatWith('ir-rust');
      const out = [];
      for (const t of texts) out.push(m.b64((await c.conv.seal('ir-rust', w, m.utf8(t))).packet));
      return out;
    }, texts);
    const post = (payloads) => page.evaluate(async (payloads) => {
      for (const p of payloads) await c.call('/secure_message', { method: 'send_message', target_peer: 'ir-rust', payload: p });
    }, payloads);
    const [w2, w3, w4] = await seal(['w2', 'w3', 'w4']);
    await post([w4, w2]);
    await until(() => rust.from('ir-web').some((l) => l.startsWith('w2')), 'relay-chat to print w2');
    rust.type('r2 turn');
    await until(async () => { await poll(page); return (await got(page)).includes('r2 turn'); }, 'the page to read r2');
    const [w5] = await seal(['w5 after a DH step']);
    await post([w5, w3]);
    await until(() => rust.from('ir-web').some((l) => l.startsWith('w3')), 'relay-chat to print the late w3');
    const shown = rust.from('ir-web');
    // Each once, in the order they were stored, the reordering said in words (never an error).
    assert.deepEqual(shown.map((l) => l.split('  (')[0]), ['w1 from the page', 'w4', 'w2', 'w5 after a DH step', 'w3']);
    assert.match(shown[1], /before this one have not arrived yet/);
    assert.match(shown[2], /arrived late/);
    assert.match(shown[4], /arrived late/);
    assert.equal(rust.lines.filter((l) => l.startsWith('!!')).length, 0, `no warning or dropped message:\n${rust.lines.join('\n')}`);

    // The terminal calls it forward secret, started by the page; the safety number is the static one.
    rust.type('/fp ir-web');
    await until(() => rust.lines.some((l) => l.includes('forward secret:')), 'the /fp line');
    assert.match(rust.lines.find((l) => l.includes('forward secret:')), /forward secret: yes \(double ratchet, started by them\)/);
    const security = await page.evaluate(() => c.security('ir-rust'));
    assert.equal(security.forwardSecret, true);

    // The terminal restarts on its profile: the ratchet goes on, both ways.
    await rust.quit();
    rust = await terminal('ir-rust', profile);
    assert.equal(await send(page, 'ir-rust', 'w6 after the restart'), 'stored');
    await until(() => rust.from('ir-web').some((l) => l.startsWith('w6 after the restart')), 'relay-chat to print w6 after its restart');
    rust.type('/open ir-web');
    rust.type('r3 after the restart');
    await until(async () => { await poll(page); return (await got(page)).includes('r3 after the restart'); }, 'the page to read r3');
    assert.deepEqual(await got(page), ['r1 from the terminal', 'r2 turn', 'r3 after the restart'], 'each once, in order');
    assert.ok((await kinds(page, false)).every((k) => k === 'ratchet'), 'nothing static from the terminal');
    assert.ok((await kinds(page, true)).slice(1).every((k) => k === 'ratchet'), 'nothing static from the page');
    assert.equal(rust.lines.filter((l) => l.startsWith('!!')).length, 0, `no warning after the restart:\n${rust.lines.join('\n')}`);
  } finally {
    await rust.quit().catch(() => rust.kill());
    await page.close();
  }
});

test('the terminal starts with the page (the page answers in the terminal\'s conversation), and simultaneous starts converge', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'interop-'));
  const rust = await terminal('is-rust', join(dir, 'p.json'));
  const page = await web('is-web');
  try {
    // Both start at once: each sends its first message before reading the other's.
    rust.type('/open is-web');
    rust.type('t1 from the terminal');
    await until(() => rust.lines.some((l) => l.startsWith('sent #')), 'relay-chat to send t1');
    assert.equal(await send(page, 'is-rust', 'p1 from the page'), 'stored');
    assert.deepEqual(await kinds(page, true), ['start'], 'the page made its own start (it had read nothing)');
    await until(async () => { await poll(page); return (await got(page)).includes('t1 from the terminal'); }, 'the page to read t1');
    await until(() => rust.from('is-web').includes('p1 from the page'), 'relay-chat to print p1');
    // From now on both send in the conversation of the lower initiator key, and each opens it.
    for (let i = 2; i <= 4; i++) {
      assert.equal(await send(page, 'is-rust', `p${i}`), 'stored');
      rust.type(`t${i}`);
    }
    await until(() => rust.from('is-web').includes('p4'), 'relay-chat to print p4');
    await until(async () => { await poll(page); return (await got(page)).includes('t4'); }, 'the page to read t4');
    assert.deepEqual(rust.from('is-web').map((l) => l.split('  (')[0]), ['p1 from the page', 'p2', 'p3', 'p4']);
    assert.deepEqual(await got(page), ['t1 from the terminal', 't2', 't3', 't4']);
    const outKinds = await kinds(page, true);
    assert.ok(outKinds.slice(1).every((k) => k === 'ratchet' || k === 'start'), `nothing static: ${outKinds}`);
    assert.equal(rust.lines.filter((l) => l.startsWith('!!')).length, 0, `no warning:\n${rust.lines.join('\n')}`);
  } finally {
    await rust.quit().catch(() => rust.kill());
    await page.close();
  }
});
