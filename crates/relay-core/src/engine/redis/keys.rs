//! Key names (see the module docs for the layout): every key of one user shares a hash tag.

use super::*;
#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use mtproto_crypto::{AuthKeyId, Nonce128};

impl RedisEngine {
    pub(super) fn hs(&self, rest: &str) -> String {
        format!("{}:{{hs}}:{rest}", self.prefix)
    }

    /// A pending handshake (a hash: `stage`, `rec`). Its own `h:` prefix: the string records
    /// of earlier releases (`P:{hs}:<server_nonce>`, JSON) are never read as hashes; they
    /// expire by themselves within two minutes.
    pub(super) fn pending(&self, server_nonce: &Nonce128) -> String {
        self.hs(&format!("h:{}", hex(server_nonce.as_bytes())))
    }

    pub(super) fn key_record(&self, key_id: &AuthKeyId) -> String {
        format!("{}:{{k:{}}}:key", self.prefix, hex(key_id.as_bytes()))
    }

    pub(super) fn u(&self, client: &str, rest: &str) -> String {
        format!("{}:{{u:{client}}}:{rest}", self.prefix)
    }

    pub(super) fn sess(&self, client: &str, key_id: &AuthKeyId) -> String {
        self.u(client, &format!("sess:{}", hex(key_id.as_bytes())))
    }

    pub(super) fn out(&self, client: &str, key_id: &AuthKeyId, msg_id: u64) -> String {
        self.u(client, &format!("out:{}:{msg_id}", hex(key_id.as_bytes())))
    }

    pub(super) fn marker(&self, to: &str, key_id: &AuthKeyId, msg_id: u64) -> String {
        self.u(to, &format!("dup:{}:{msg_id}", hex(key_id.as_bytes())))
    }

    pub(super) fn key_record_hex(&self, key_id_hex: &str) -> String {
        format!("{}:{{k:{key_id_hex}}}:key", self.prefix)
    }

    pub(super) fn directory(&self) -> String {
        format!("{}:peers", self.prefix)
    }

    /// The directory's index of clients that published an identity key.
    pub(super) fn names(&self) -> String {
        format!("{}:names", self.prefix)
    }

    pub(super) fn channel(&self) -> String {
        format!("{}:wake", self.prefix)
    }
}
