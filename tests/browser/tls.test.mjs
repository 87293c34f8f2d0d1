// The relay's own TLS in Chromium (issue 16): the page loads over https:// from a host name
// that is not localhost, so only TLS makes it a secure context; Web Crypto works and two users chat.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, CHROMIUM_FLAGS } from './helpers.mjs';
import { connect, openPeer, say, inbound, shoot } from './pages.mjs';

test('over the relay\'s own HTTPS, a page on a real host name is a secure context and two users chat', async () => {
  const certs = mkdtempSync(join(tmpdir(), 'relay-tls-'));
  const cert = join(certs, 'cert.pem'), key = join(certs, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=relay.test', '-addext', 'subjectAltName=DNS:relay.test'],
  { stdio: 'ignore' });
  const server = await startServer(['--tls-cert', cert, '--tls-key', key]);
  // The test's own certificate is not in Chromium's store: accepted for this run only.
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [...CHROMIUM_FLAGS, '--ignore-certificate-errors', '--host-resolver-rules=MAP relay.test 127.0.0.1'],
  });
  try {
    assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const base = server.url.replace('127.0.0.1', 'relay.test');
    const [a, b] = [await browser.newContext(), await browser.newContext()];
    const alice = await connect(a, 'alice', base);
    const bob = await connect(b, 'bob', base);
    assert.deepEqual(await alice.evaluate(() => [location.protocol, location.hostname, isSecureContext, typeof crypto.subtle.importKey]),
      ['https:', 'relay.test', true, 'function']);
    const hsts = await alice.evaluate(async () => (await fetch('/healthz')).headers.get('strict-transport-security'));
    assert.equal(hsts, 'max-age=31536000');
    await openPeer(alice, 'bob');
    await say(alice, 'hello over https');
    await openPeer(bob, 'alice');
    await inbound(bob, 'hello over https');
    await shoot(bob, 'tls_chat');
  } finally {
    await browser.close();
    await server.stop();
    rmSync(certs, { recursive: true, force: true });
  }
});
