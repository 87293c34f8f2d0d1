//! The local profile: everything a client needs to resume without a new handshake or identity.

use std::collections::BTreeMap;
use std::path::Path;

use mtproto_session::{x3dh::Prekeys, ChatStateData, ClientSessionState, SecretBytes, UnixTime};
use serde::{Deserialize, Serialize};

use crate::{ClientError, KeptMessage, OutboxEntry, RatchetsData};

/// What the client knows about a peer's identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// The identity key accepted for this peer.
    pub identity_key: [u8; 32],
    /// Its directory version when accepted.
    pub key_version: u32,
    /// Whether the user compared fingerprints and marked it verified.
    pub verified: bool,
    /// The Ed25519 identity signing key of the first prekey bundle a start used with this
    /// identity key (trust on first use, `docs/crypto.md`): a bundle signed by another one is
    /// refused ([`ClientError::SigningKeyChanged`]). A new identity key starts without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<[u8; 32]>,
}

/// The profile file's content. It holds secrets: the file is written with owner-only permissions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// The registered name.
    pub client_id: String,
    /// The X25519 identity secret.
    pub identity: SecretBytes,
    /// The pinned server key (32 bytes), once known.
    pub server_key: Option<[u8; 32]>,
    /// The session with the server.
    pub session: Option<ClientSessionState>,
    /// Peers whose keys were accepted.
    pub peers: BTreeMap<String, KnownPeer>,
    /// The static conversations: per peer, the static chat key and the one receive window
    /// (static and ratchet messages are numbered by it).
    pub chats: BTreeMap<String, ChatStateData>,
    /// Messages not yet stored by the relay (sending or refused); absent in older profiles.
    #[serde(default)]
    pub outbox: Vec<OutboxEntry>,
    /// Mailbox entries handed to the application and not yet acknowledged: after a restart
    /// they are handed out again if the relay delivers them again (the application may have
    /// died before keeping them; it recognises a repeat by sender and `seq`).
    #[serde(default)]
    pub handed_out: Vec<relay_api::AckRef>,
    /// The Ed25519 identity signing key's seed (secret), which signs the prekeys; absent in
    /// older profiles (a new one is made).
    #[serde(default)]
    pub signing_key: Option<SecretBytes>,
    /// The prekey secrets: signed prekeys (the current and up to two previous) and unused
    /// one-time prekeys (at most 200); absent in older profiles.
    #[serde(default)]
    pub prekeys: Option<Prekeys>,
    /// Per peer, the ratchet conversations (`ours`, `theirs`) with their secrets.
    #[serde(default)]
    pub ratchets: BTreeMap<String, RatchetsData>,
    /// Peers whose relay answered `no_prekeys`, and until when that answer holds.
    #[serde(default)]
    pub no_prekeys_until: BTreeMap<String, UnixTime>,
    /// The opened messages of `handed_out`, to hand out again after a crash (the relay's copy
    /// of a ratchet message cannot be opened twice).
    #[serde(default)]
    pub kept: Vec<KeptMessage>,
}

impl Profile {
    /// Reads a profile.
    ///
    /// # Errors
    /// [`ClientError::Profile`] when the file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Option<Self>, ClientError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Profile(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::Profile(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the profile atomically (temporary file, fsync, rename) with mode 0600.
    ///
    /// # Errors
    /// [`ClientError::Profile`] on any I/O failure.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        use std::io::Write;
        let err = |e: std::io::Error| ClientError::Profile(format!("{}: {e}", path.display()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| ClientError::Profile(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}
