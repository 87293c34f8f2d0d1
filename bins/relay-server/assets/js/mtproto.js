// mtproto-relay in the browser: the same protocol as the Rust crates (mtproto-crypto,
// mtproto-session, relay-client), with every cryptographic operation done by the Web Crypto API.
// No other crypto library. Byte layouts: docs/protocol.md. Interop vectors: tests/browser.
//
// One module per layer, as the crates: bytes.js, crypto.js (mtproto-crypto), chat.js and
// session.js (mtproto-session), store.js, outbox.js and client.js (relay-client); ratchet.js and
// conversations.js are the end-to-end ratchet. This module re-exports the layers, so that a page
// imports one name: `import { RelayClient } from '/js/mtproto.js'`.

export * from './bytes.js';
export * from './crypto.js';
export * from './chat.js';
export * from './session.js';
export * from './store.js';
export * from './client.js';
export * from './outbox.js';
