//! How to connect: the relay's address, how it is trusted, the profile file.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Pin, RecoveryCode};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The client id to register or resume.
    pub name: String,
    /// Server trust.
    pub pin: Pin,
    /// Profile file; `None` keeps everything in memory.
    pub profile: Option<PathBuf>,
    /// Whether to send delivery receipts (off by default; see [`ClientConfig::with_receipts`]).
    pub receipts: bool,
    /// The recovery code that moves the name to this client (see
    /// [`ClientConfig::with_recovery_code`]).
    pub recovery: Option<RecoveryCode>,
    /// Extra PEM root certificates trusted for `https://` relays, beside the usual web roots.
    pub root_certificates: Vec<Vec<u8>>,
    /// Whether to publish prekeys and start conversations under the double ratchet (on by
    /// default; see [`ClientConfig::with_prekeys`]).
    pub prekeys: bool,
    /// How long a peer's `no_prekeys` answer holds before the client asks again
    /// ([`NO_PREKEYS_RETRY`] by default).
    pub no_prekeys_retry: Duration,
    /// The local address requests leave from (the system's choice when `None`).
    pub local_address: Option<IpAddr>,
    /// Whether transport failures and 503 answers are retried (about 5 s) and rate limits
    /// waited out (up to 60 s): on by default; see [`ClientConfig::with_retries`].
    pub retries: bool,
}

/// How long a peer's `no_prekeys` answer holds: its messages go under the static key until
/// then, and the next send after it asks for its bundle again.
pub const NO_PREKEYS_RETRY: Duration = Duration::from_secs(600);

impl ClientConfig {
    /// A configuration without a profile file.
    pub fn new(server: &str, name: &str, pin: Pin) -> Self {
        Self {
            server: server.trim_end_matches('/').to_owned(),
            name: name.to_owned(),
            pin,
            profile: None,
            receipts: false,
            recovery: None,
            root_certificates: Vec::new(),
            prekeys: true,
            no_prekeys_retry: NO_PREKEYS_RETRY,
            local_address: None,
            retries: true,
        }
    }

    /// With `false`, behaves like a client from before the double ratchet: publishes no
    /// prekeys and starts no ratchet conversation, so its conversations stay under the static
    /// chat key. For interoperability tests (an older client), and to turn forward secrecy off.
    ///
    /// ```
    /// use relay_client::{ClientConfig, Pin};
    /// let old_style = ClientConfig::new("http://127.0.0.1:8080", "bob", Pin::TrustOnFirstUse).with_prekeys(false);
    /// assert!(!old_style.prekeys);
    /// ```
    pub fn with_prekeys(mut self, on: bool) -> Self {
        self.prekeys = on;
        self
    }

    /// How long a peer's `no_prekeys` answer holds ([`NO_PREKEYS_RETRY`], 10 minutes, by
    /// default; shorter in tests).
    pub fn with_no_prekeys_retry(mut self, retry: Duration) -> Self {
        self.no_prekeys_retry = retry;
        self
    }

    /// Trusts `pem` (a PEM certificate) as a root for an `https://` relay — a private CA or a
    /// self-signed relay certificate — besides the web's usual roots. The relay's own key is
    /// pinned by the handshake either way; TLS hides who talks to the relay and when.
    pub fn with_root_certificate(mut self, pem: &[u8]) -> Self {
        self.root_certificates.push(pem.to_vec());
        self
    }

    /// Takes the name over from a lost device (a new device, a cleared profile): the relay
    /// answers `client_id_taken` to a new key for a name in use, unless the handshake carries
    /// the proof made with the account's recovery code. The old device is locked out; peers
    /// see a key change. See `docs/protocol.md` §1 "Recovery".
    pub fn with_recovery_code(mut self, code: RecoveryCode) -> Self {
        self.recovery = Some(code);
        self
    }

    /// Sends delivery receipts (`docs/protocol.md` §3 "Control messages"): when the caller
    /// comes back for the next [`Client::poll`](crate::Client::poll) after messages were handed out — it kept them —
    /// each sender gets one end-to-end receipt naming their sequence numbers, through the outbox
    /// (after the messages before it, never shown by [`Client::outbox`](crate::Client::outbox)). The peer sees
    /// [`Event::Delivered`](crate::Event::Delivered); the browser client shows "delivered".
    pub fn with_receipts(mut self, on: bool) -> Self {
        self.receipts = on;
        self
    }

    /// Keeps the profile in `path`.
    pub fn with_profile(mut self, path: impl Into<PathBuf>) -> Self {
        self.profile = Some(path.into());
        self
    }

    /// Sends requests from `address` (a multi-homed host choosing its interface; tests that
    /// play several machines on loopback).
    pub fn with_local_address(mut self, address: IpAddr) -> Self {
        self.local_address = Some(address);
        self
    }

    /// With `false`, every request is made once: a transport failure, a 503 or a rate limit is
    /// reported at once instead of retried or waited out — for load tools and tests that must
    /// see each refusal. A client used by people keeps the default (`true`).
    pub fn with_retries(mut self, on: bool) -> Self {
        self.retries = on;
        self
    }
}
