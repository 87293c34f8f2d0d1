//! Key names (see the module docs for the layout): every key of one user shares a hash tag.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

impl RedisEngine {
    pub(super) fn hs(&self, rest: &str) -> String {
        format!("{}:{{hs}}:{rest}", self.prefix)
    }

    pub(super) fn key_record(&self, key_id: &[u8; 8]) -> String {
        format!("{}:{{k:{}}}:key", self.prefix, hex(key_id))
    }

    pub(super) fn u(&self, client: &str, rest: &str) -> String {
        format!("{}:{{u:{client}}}:{rest}", self.prefix)
    }

    pub(super) fn sess(&self, client: &str, key_id: &[u8; 8]) -> String {
        self.u(client, &format!("sess:{}", hex(key_id)))
    }

    pub(super) fn out(&self, client: &str, key_id: &[u8; 8], msg_id: u64) -> String {
        self.u(client, &format!("out:{}:{msg_id}", hex(key_id)))
    }

    pub(super) fn marker(&self, to: &str, key_id: &[u8; 8], msg_id: u64) -> String {
        self.u(to, &format!("dup:{}:{msg_id}", hex(key_id)))
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
