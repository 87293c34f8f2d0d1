// What one sender's ratchet packets cost the victim's page (docs/protocol.md §3.2, "The cost of
// a forged packet" and "The skip budget"). For each case a fresh account that has a conversation
// with the victim posts N packets; prints the victim's time in Conversations.open. Cases:
//   forged pn=0 n=0        random 0x01 packets claiming a new ratchet key (a DH step each)
//   forged pn=n=1000       the same claiming pn = n = 1000 (chain steps before the frame fails)
//   real jumping 1000      the sender's own chain moved 1000 keys before each (invisible) control
//                          message: they open, and their skipped keys are derived and stored
// A measurement, not a test (no timing is asserted anywhere). With RECOVERY_TEST_PAGE_REV=<rev>
// the victim's page comes from that revision (pages.mjs pageFromRevision): before and after a
// change, same relay, same run.
//   cd tests/browser && RELAY_BIN_DIR=$CARGO_TARGET_DIR/debug node forged_cost.mjs [N]
import { launchBrowser, startServer, until } from './helpers.mjs';
import { scripted, pageFromRevision } from './pages.mjs';

const N = Number(process.argv[2] || 100);
const server = await startServer(['--engine', 'memory', '--register-burst', '1000', '--handshake-burst', '3000', '--pow-bits', '0']);
const browser = await launchBrowser();
const sum = (x) => x.reduce((a, b) => a + b, 0);
try {
  const victim = await scripted(browser, server, 'cost-victim', { beforeConnect: (p) => pageFromRevision(p.context()) });
  await victim.evaluate(() => {
    window.openMs = [];
    const open = c.conv.open.bind(c.conv);
    c.conv.open = async (...x) => { const t = performance.now(); try { return await open(...x); } finally { openMs.push(performance.now() - t); } };
  });
  const cases = [['forged pn=0 n=0', 0, 0], ['forged pn=n=1000', 1000, 1000], ['real jumping 1000', null, 1000]];
  for (const [i, [label, pn, n]] of cases.entries()) {
    const attacker = await scripted(browser, server, `cost-attacker${i}`);
    await attacker.evaluate(() => c.send('cost-victim', 'hi'));
    await until(async () => { await victim.evaluate(() => c.poll(0)); return (await victim.evaluate(() => got.length)) === i + 1; }, 'the victim to read the start');
    await victim.evaluate(() => { openMs.length = 0; rejected.length = 0; });
    await attacker.evaluate(async ([pn, n, N]) => {
      for (let i = 0; i < N; i++) {
        if (pn === null) {
          const r = c.conv.sending('cost-victim').chat.ratchet;
          const to = r.ns + n;
          while (r.ns < to) (await r.nextSend()).mk.fill(0);
          await c.sendControl('cost-victim', { i });
          continue;
        }
        const p = new Uint8Array(41 + 24 + 64); crypto.getRandomValues(p); p[0] = 1;
        const dv = new DataView(p.buffer); dv.setUint32(33, pn, true); dv.setUint32(37, n, true);
        await c.call('/secure_message', { method: 'send_message', target_peer: 'cost-victim', payload: m.b64(p) });
      }
    }, [pn, n, N]);
    const t0 = Date.now();
    let total = 0;
    while (total < N) total += await victim.evaluate(() => c.poll(0));
    const wall = Date.now() - t0;
    const [ms, refused] = await victim.evaluate(() => [openMs.splice(0), rejected.length]);
    console.log(`${label}: ${N} packets, open ${sum(ms).toFixed(0)} ms in all (max ${Math.max(...ms).toFixed(0)} ms, first 4: ${ms.slice(0, 4).map((x) => x.toFixed(0)).join(', ')} ms), ${refused} refused; ${wall} ms polling`);
    await attacker.close();
  }
} finally { await browser.close(); await server.stop(); }
