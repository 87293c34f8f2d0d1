// Bytes and text: concatenation, UTF-8, hex, base64, little-endian integers, comparison, and
// text made safe to show beside other text (bidiBalanced).

const te = new TextEncoder();
const td = new TextDecoder();

export function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
export const utf8 = (s) => te.encode(s);
export const fromUtf8 = (b) => td.decode(b);
export function hex(b) { return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(''); }
export function fromHex(s) {
  if (s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error('bad hex');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}
export function b64(b) { let s = ''; for (const x of b) s += String.fromCharCode(x); return btoa(s); }
export function fromB64(s) { const bin = atob(s); return Uint8Array.from(bin, (c) => c.charCodeAt(0)); }
export function u32le(n) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n >>> 0, true); return b; }
export function u64le(n) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n), true); return b; }
export const readU32 = (b, o) => new DataView(b.buffer, b.byteOffset).getUint32(o, true);
export const readU64 = (b, o) => new DataView(b.buffer, b.byteOffset).getBigUint64(o, true);
export function randomBytes(n) { return globalThis.crypto.getRandomValues(new Uint8Array(n)); }
export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}
export function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

const OPENS = new Map([[0x202A, 0x202C], [0x202B, 0x202C], [0x202D, 0x202C], [0x202E, 0x202C],
  [0x2066, 0x2069], [0x2067, 0x2069], [0x2068, 0x2069]]);
/**
 * `text` with its explicit bidirectional controls balanced, for display: a closer (U+202C PDF,
 * U+2069 PDI) that closes nothing is dropped, and every embedding, override or isolate left open
 * is closed at the end. Shown in an isolated run (dir=auto), the text then cannot reorder
 * anything beside it: a stray U+2069 would otherwise close the browser's own isolate early.
 */
export function bidiBalanced(text) {
  const open = [];
  let out = '';
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if (OPENS.has(c)) { open.push(OPENS.get(c)); out += ch; continue; }
    if (c === 0x202C || c === 0x2069) {
      // A PDI also closes the embeddings opened after its isolate (UAX #9, X6a).
      const at = open.lastIndexOf(c);
      // A PDF cannot close an embedding opened outside the isolate it is in (X7).
      if (at < 0 || (c === 0x202C && open.lastIndexOf(0x2069) > at)) continue;
      if (c === 0x2069) for (let i = open.length - 1; i > at; i--) out += String.fromCodePoint(open[i]);
      open.length = at;
      out += ch;
      continue;
    }
    out += ch;
  }
  for (let i = open.length - 1; i >= 0; i--) out += String.fromCodePoint(open[i]);
  return out;
}
