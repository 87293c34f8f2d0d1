// Shared harness: a real relay-server process per test file, Debian's Chromium, artifacts.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, '../..');
export const binDir = process.env.RELAY_BIN_DIR || join(root, 'target', 'debug');
export const artifacts = join(root, 'test-artifacts');
mkdirSync(artifacts, { recursive: true });

export const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export async function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: CHROMIUM_FLAGS });
}

/** A loopback port that was free a moment ago (to restart a server on the same origin). */
export async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
  });
}

/**
 * Starts relay-server (by default on an ephemeral loopback port, in a new data directory);
 * resolves when its banner is complete (the `web clients:` line comes last). With
 * `--metrics-bind` among `extra`, `metrics` is the operator-only `/stats` URL the banner names.
 * `dataDir` restarts a relay on the data of an earlier one (stopped with `halt()`, which keeps
 * the directory; `stop()` removes it).
 */
export async function startServer(extra = [], { bind = '127.0.0.1:0', dataDir = null } = {}) {
  const dir = dataDir || mkdtempSync(join(tmpdir(), 'relay-browser-'));
  const proc = spawn(join(binDir, 'relay-server'), ['--bind', bind, '--data-dir', dir, ...extra],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' } });
  const lines = createInterface({ input: proc.stdout });
  const info = await new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('relay-server did not start')), 20000);
    const got = {};
    lines.on('line', (l) => {
      const m = l.match(/listening on (https?:\/\/\S+)/); if (m) got.url = m[1];
      const f = l.match(/fingerprint ([0-9a-f]{16})/); if (f) got.fingerprint = f[1];
      const s = l.match(/^\s*metrics:\s+(http:\/\/\S+\/stats)/); if (s) got.metrics = s[1];
      if (/^\s*web clients:/.test(l)) {
        clearTimeout(t);
        if (got.url && got.fingerprint) res(got); else rej(new Error(`relay-server banner without its address or fingerprint: ${JSON.stringify(got)}`));
      }
    });
    proc.on('exit', (c) => rej(new Error(`relay-server exited ${c}`)));
  });
  const halt = async () => { if (proc.exitCode === null && proc.signalCode === null) { proc.kill('SIGTERM'); await new Promise((r) => proc.once('exit', r)); } };
  return { ...info, dir, proc, halt, async stop() { await halt(); rmSync(dir, { recursive: true, force: true }); } };
}

/** The operator-only counters of a server started with `--metrics-bind` (`GET /stats`). */
export async function stats(server) {
  if (!server.metrics) throw new Error('this server was started without --metrics-bind');
  const r = await fetch(server.metrics);
  if (!r.ok) throw new Error(`/stats answered ${r.status}`);
  return r.json();
}

/**
 * A private redis-server on a free loopback port (AOF, fsync always, as the relay needs), in a
 * temporary directory. `kill()` stops it as a crash would; `restart()` brings it back on the same
 * port and data; `stop()` ends it and removes the directory.
 */
export async function startRedis() {
  const dir = mkdtempSync(join(tmpdir(), 'relay-redis-'));
  const port = await freePort();
  let proc;
  const launch = () => new Promise((res, rej) => {
    proc = spawn(process.env.REDIS_SERVER || 'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    const t = setTimeout(() => rej(new Error('redis-server did not start')), 20000);
    createInterface({ input: proc.stdout }).on('line', (l) => { if (l.includes('Ready to accept connections')) { clearTimeout(t); res(); } });
    proc.once('error', (e) => { clearTimeout(t); rej(e); });
  });
  const kill = async () => { if (proc.exitCode === null && proc.signalCode === null) { proc.kill('SIGKILL'); await new Promise((r) => proc.once('exit', r)); } };
  await launch();
  return {
    url: `redis://127.0.0.1:${port}/0`,
    kill,
    async restart() { await kill(); await launch(); },
    async stop() { await kill(); rmSync(dir, { recursive: true, force: true }); },
  };
}

/** Records every request body a page sends, to check that no plaintext crosses the wire. */
export function recordTraffic(page, sink) {
  page.on('request', (r) => { const b = r.postData(); if (b) sink.push(b); sink.push(r.url()); });
}

/** Polls `fn` until it returns truthy (bounded). */
export async function until(fn, what, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}
