//! The handshake: MTProto's auth-key creation carried as this project's JSON.
//!
//! ```text
//! client                                                   server
//!   req_pq {nonce}                         ─────────────►
//!                  ◄───────────── {nonce, server_nonce, pq, fingerprint}
//!   (factor pq)
//!   req_dh_params {nonce, server_nonce, p, q} ──────────►  check proof of work first
//!                  ◄───────────── {g, dh_prime, g_a, server_time, server_public_key,
//!                                  signature over the transcript}
//!   (check pin, signature, group, g_a; pick b)
//!   set_client_dh_params {nonce, server_nonce, g_b, client_id} ──►
//!                  ◄───────────── {auth_key_id, key_confirmation, session_id, salt, status}
//!   (check key confirmation)
//! ```
//!
//! The server's side is a set of pure functions over a serializable [`PendingHandshake`] record,
//! so a relay can keep that record in any store (and a second node can continue it). The
//! client's side is a chain of types, each consumed by its transition: a [`ClientSession`]
//! exists only after a verified key confirmation.

use mtproto_crypto::{
    factor_pq, kdf::sha256, legacy, rand_core::CryptoRng, rand_core::RngCore, AuthKey, DhGroup, DhSecret,
    Nonce128, Nonce256, PqChallenge, ServerKeyFingerprint, ServerPublicKey, ServerSigningKey,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{
    session::{ClientSession, ServerSession},
    wire::{fixed, Bytes, Hex},
    ClientId, Error, Result, SecretBytes, ServerSalt, SessionId, UnixTime,
};

/// How long a pending handshake lives.
pub const HANDSHAKE_TTL_SECS: u64 = 60;
/// `status` of a successful `set_client_dh_params`, as in the original API.
pub const STATUS_OK: &str = "Auth key established";

// ---- Wire messages ------------------------------------------------------------------------------

/// `POST /req_pq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReqPq {
    /// 16 random bytes.
    pub nonce: Bytes,
}

/// The answer to `req_pq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResPq {
    /// The client's nonce.
    pub nonce: Bytes,
    /// 16 random bytes from the server.
    pub server_nonce: Bytes,
    /// The proof-of-work challenge, 8 bytes big-endian, hex.
    pub pq: Hex,
    /// The 64-bit fingerprint of the server's Ed25519 key, hex.
    pub fingerprint: Hex,
    /// Leading zero bits of work asked before `req_dh_params` ([`crate::work`]); 0 or absent:
    /// none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pow_bits: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// `POST /req_dh_params`: the proof-of-work answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReqDhParams {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// The smaller factor, minimal big-endian bytes, hex.
    pub p: Hex,
    /// The larger factor, minimal big-endian bytes, hex.
    pub q: Hex,
    /// The proof of work's answer, 8 bytes hex, when `resPQ` asked for `pow_bits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pow_nonce: Option<Hex>,
}

/// The answer to `req_dh_params`, signed by the server's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerDhParams {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// The generator.
    pub g: u32,
    /// The 2048-bit safe prime, hex.
    pub dh_prime: Hex,
    /// `g^a mod p`, 256 bytes, hex.
    pub g_a: Hex,
    /// The server's unix time in seconds.
    pub server_time: u64,
    /// The server's Ed25519 public key (32 bytes, base64).
    pub server_public_key: Bytes,
    /// Ed25519 signature over [`dh_params_transcript`] (64 bytes, base64).
    pub signature: Bytes,
}

/// `POST /set_client_dh_params`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetClientDhParams {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// `g^b mod p`, 256 bytes, hex.
    pub g_b: Hex,
    /// The name the client registers under.
    pub client_id: ClientId,
    /// The public half of the user's recovery code (Ed25519, 32 bytes, base64), kept by the
    /// relay with the account: registered with a new name, or replacing the old one on a
    /// recovery. Absent: none registered (a recovery keeps the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<Bytes>,
    /// A recovery: the proof (64 bytes, base64) that this handshake's key may take over the
    /// name, made with the recovery code ([`AwaitingDhGen::prove_recovery`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_proof: Option<Bytes>,
}

/// The answer to `set_client_dh_params`. It carries no key: it proves possession of one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhGenOk {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// `SHA1(auth_key)[12..20]`, hex.
    pub auth_key_id: Hex,
    /// MTProto's `new_nonce_hash1` over the transcript nonce (see [`key_confirmation`]), hex.
    pub key_confirmation: Hex,
    /// The new session's id (8 bytes, base64).
    pub session_id: Bytes,
    /// The first server salt (8 bytes, base64).
    pub salt: Bytes,
    /// [`STATUS_OK`].
    pub status: String,
    /// The server's unix time in seconds.
    pub server_time: u64,
}

// ---- Transcript formulas -----------------------------------------------------------------------

/// The values of a `req_dh_params` answer that the server's signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedDhValues<'a> {
    /// The generator.
    pub g: u32,
    /// The prime, 256 bytes.
    pub dh_prime: &'a [u8],
    /// `g^a`, 256 bytes.
    pub g_a: &'a [u8],
    /// The server's unix time.
    pub server_time: u64,
    /// The server's key.
    pub server_key: &'a ServerPublicKey,
}

/// What the server signs in its `req_dh_params` answer: every value the client will rely on,
/// bound to both nonces and the proof-of-work challenge.
pub fn dh_params_transcript(
    nonce: &Nonce128,
    server_nonce: &Nonce128,
    pq: u64,
    v: &SignedDhValues<'_>,
) -> Vec<u8> {
    let SignedDhValues {
        g,
        dh_prime,
        g_a,
        server_time,
        server_key,
    } = *v;
    let mut t = Vec::with_capacity(64 + 2 * 256 + 64);
    t.extend_from_slice(b"mtproto-relay/server-dh-params/v1");
    t.extend_from_slice(nonce.as_bytes());
    t.extend_from_slice(server_nonce.as_bytes());
    t.extend_from_slice(&pq.to_be_bytes());
    t.extend_from_slice(&g.to_le_bytes());
    t.extend_from_slice(dh_prime);
    t.extend_from_slice(g_a);
    t.extend_from_slice(&server_time.to_le_bytes());
    t.extend_from_slice(server_key.as_bytes());
    t
}

/// The key confirmation: MTProto's `new_nonce_hash1 = SHA1(new_nonce ‖ 0x01 ‖ aux_hash)[4..20]`,
/// where our `new_nonce` (which MTProto sends RSA-encrypted, and we have no RSA step for) is a
/// hash of the whole transcript: both nonces, both DH values, the client id, the session id and
/// the salt. A tampered `client_id`, `session_id` or `salt` therefore fails the confirmation.
#[allow(clippy::too_many_arguments)]
pub fn key_confirmation(
    auth_key: &AuthKey,
    nonce: &Nonce128,
    server_nonce: &Nonce128,
    g_a: &[u8],
    g_b: &[u8],
    client_id: &ClientId,
    session_id: SessionId,
    salt: ServerSalt,
) -> [u8; 16] {
    let id = client_id.as_str().as_bytes();
    let new_nonce = Nonce256::from_bytes(sha256(&[
        b"mtproto-relay/key-confirmation/v1",
        nonce.as_bytes(),
        server_nonce.as_bytes(),
        g_a,
        g_b,
        &[id.len() as u8],
        id,
        &session_id.0,
        &salt.0,
    ]));
    legacy::new_nonce_hash(&new_nonce, 1, auth_key.aux_hash())
}

fn nonce(field: &'static str, b: &Bytes) -> Result<Nonce128> {
    Ok(Nonce128::from_bytes(fixed(field, &b.0)?))
}

fn minimal_be(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count().min(3);
    b.get(skip..).unwrap_or_default().to_vec()
}

fn parse_factor(field: &'static str, h: &Hex) -> Result<u64> {
    // Minimal big-endian, at most 4 bytes, as MTProto's p and q strings.
    if h.0.is_empty() || h.0.len() > 4 || h.0.first() == Some(&0) {
        return Err(Error::Malformed {
            field,
            reason: "minimal big-endian bytes of a 32-bit number",
        });
    }
    Ok(h.0.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

// ---- Server side -------------------------------------------------------------------------------

/// Where a server-side handshake stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Stage {
    /// `resPQ` sent; waiting for the proof of work.
    AwaitingDhParams,
    /// `server_DH_params` sent; waiting for `g_b`.
    AwaitingClientDh {
        /// The server's secret exponent.
        a: SecretBytes,
        /// `g^a`, 256 bytes.
        g_a: Vec<u8>,
    },
}

/// A server-side handshake between two steps: what a relay stores under `server_nonce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingHandshake {
    /// The client's nonce.
    pub nonce: [u8; 16],
    /// The server's nonce: the key under which this record is stored.
    pub server_nonce: [u8; 16],
    /// The proof-of-work factors.
    pub p: u32,
    /// The proof-of-work factors.
    pub q: u32,
    /// When `req_pq` arrived.
    pub created_at: UnixTime,
    /// Where the handshake stands.
    pub stage: Stage,
    /// The work asked for in `resPQ` (records stored before it existed ask none).
    #[serde(default)]
    pub pow_bits: u8,
}

impl PendingHandshake {
    /// Whether the record has outlived [`HANDSHAKE_TTL_SECS`] at `now`.
    pub fn is_expired(&self, now: UnixTime) -> bool {
        now.secs_since(self.created_at) >= HANDSHAKE_TTL_SECS || now < self.created_at
    }

    fn check(&self, now: UnixTime, nonce_field: &Bytes, server_nonce_field: &Bytes) -> Result<()> {
        if self.is_expired(now) {
            return Err(Error::HandshakeExpired);
        }
        if !bool::from(nonce("nonce", nonce_field)?.as_bytes().ct_eq(&self.nonce)) {
            return Err(Error::NonceMismatch { which: "nonce" });
        }
        if !bool::from(
            nonce("server_nonce", server_nonce_field)?
                .as_bytes()
                .ct_eq(&self.server_nonce),
        ) {
            return Err(Error::NonceMismatch {
                which: "server_nonce",
            });
        }
        Ok(())
    }
}

/// A completed server-side handshake: the key, who claimed it, and the new session.
#[derive(Debug)]
pub struct Established {
    /// The shared auth key.
    pub auth_key: AuthKey,
    /// The client id named in `set_client_dh_params`.
    pub client_id: ClientId,
    /// The session created for it.
    pub session: ServerSession,
}

/// The server's side: its signing key and DH group.
#[derive(Debug)]
pub struct ServerHandshake<'a> {
    key: &'a ServerSigningKey,
    group: &'a DhGroup,
    pow_bits: u8,
}

impl<'a> ServerHandshake<'a> {
    /// A server handshake driver that asks for no hashcash work.
    pub fn new(key: &'a ServerSigningKey, group: &'a DhGroup) -> Self {
        Self {
            key,
            group,
            pow_bits: 0,
        }
    }

    /// Asks new handshakes for `bits` of proof of work ([`crate::work`]) before the DH step.
    #[must_use]
    pub fn with_pow_bits(mut self, bits: u8) -> Self {
        self.pow_bits = bits;
        self
    }

    /// Step 1: a fresh `server_nonce` and proof-of-work challenge. The caller stores the
    /// returned record under its `server_nonce` (bounded in number, see the relay).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the nonce is not 16 bytes.
    pub fn handle_req_pq(
        &self,
        req: &ReqPq,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(PendingHandshake, ResPq)> {
        let client_nonce = nonce("nonce", &req.nonce)?;
        let mut server_nonce = [0u8; 16];
        rng.fill_bytes(&mut server_nonce);
        let challenge = PqChallenge::generate(rng);
        let (p, q) = challenge.factors();
        let pending = PendingHandshake {
            nonce: *client_nonce.as_bytes(),
            server_nonce,
            p,
            q,
            created_at: now,
            stage: Stage::AwaitingDhParams,
            pow_bits: self.pow_bits,
        };
        let res = ResPq {
            nonce: req.nonce.clone(),
            server_nonce: Bytes(server_nonce.to_vec()),
            pq: Hex(challenge.pq().to_be_bytes().to_vec()),
            fingerprint: Hex(self.key.public().fingerprint().as_bytes().to_vec()),
            pow_bits: self.pow_bits,
        };
        Ok((pending, res))
    }

    /// Step 2: checks the nonces and the proof of work *before* any expensive work, then
    /// draws the DH secret and signs the answer. Updates `pending` to the next stage.
    ///
    /// # Errors
    /// [`Error::HandshakeExpired`], [`Error::NonceMismatch`], [`Error::Malformed`],
    /// [`Error::BadProofOfWork`], or [`Error::StepOutOfOrder`] when this step was already done.
    pub fn handle_req_dh_params(
        &self,
        pending: &mut PendingHandshake,
        req: &ReqDhParams,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<ServerDhParams> {
        pending.check(now, &req.nonce, &req.server_nonce)?;
        if !matches!(pending.stage, Stage::AwaitingDhParams) {
            return Err(Error::StepOutOfOrder {
                expected: "set_client_dh_params",
                got: "req_dh_params",
            });
        }
        if pending.pow_bits > 0 {
            let answer = req.pow_nonce.as_ref().ok_or(Error::BadProofOfWork)?;
            let answer: [u8; 8] = fixed("pow_nonce", &answer.0)?;
            if !crate::work::check(&pending.nonce, &pending.server_nonce, pending.pow_bits, &answer) {
                return Err(Error::BadProofOfWork);
            }
        }
        let challenge = PqChallenge::from_factors(pending.p, pending.q).map_err(|_| Error::BadProofOfWork)?;
        if !challenge.verify(parse_factor("p", &req.p)?, parse_factor("q", &req.q)?) {
            return Err(Error::BadProofOfWork);
        }
        let (a, g_a) = self.group.generate(rng)?;
        let server_time = now.as_secs();
        let public = self.key.public();
        let transcript = dh_params_transcript(
            &Nonce128::from_bytes(pending.nonce),
            &Nonce128::from_bytes(pending.server_nonce),
            challenge.pq(),
            &SignedDhValues {
                g: self.group.g(),
                dh_prime: self.group.prime(),
                g_a: g_a.as_bytes(),
                server_time,
                server_key: &public,
            },
        );
        let signature = self.key.sign(&transcript);
        pending.stage = Stage::AwaitingClientDh {
            a: SecretBytes::new(a.to_be_bytes().to_vec()),
            g_a: g_a.as_bytes().to_vec(),
        };
        Ok(ServerDhParams {
            nonce: req.nonce.clone(),
            server_nonce: req.server_nonce.clone(),
            g: self.group.g(),
            dh_prime: Hex(self.group.prime().to_vec()),
            g_a: Hex(g_a.as_bytes().to_vec()),
            server_time,
            server_public_key: Bytes(public.as_bytes().to_vec()),
            signature: Bytes(signature.to_vec()),
        })
    }

    /// Step 3: checks `g_b`, computes the auth key, creates the session and the key
    /// confirmation. Consumes the pending record: a `server_nonce` serves once.
    ///
    /// # Errors
    /// [`Error::HandshakeExpired`], [`Error::NonceMismatch`], [`Error::Malformed`],
    /// [`Error::Dh`] when `g_b` is out of range, [`Error::StepOutOfOrder`] when step 2 was skipped.
    pub fn handle_set_client_dh_params(
        &self,
        pending: PendingHandshake,
        req: &SetClientDhParams,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Established, DhGenOk)> {
        pending.check(now, &req.nonce, &req.server_nonce)?;
        let Stage::AwaitingClientDh { a, g_a } = &pending.stage else {
            return Err(Error::StepOutOfOrder {
                expected: "req_dh_params",
                got: "set_client_dh_params",
            });
        };
        if req.g_b.0.len() != 256 {
            return Err(Error::Malformed {
                field: "g_b",
                reason: "must be 256 bytes",
            });
        }
        let g_b = self.group.check_public(&req.g_b.0)?;
        let a = DhSecret::from_be_bytes(a.expose())?;
        let auth_key = self.group.agree(&a, &g_b);
        let mut session_id = [0u8; 8];
        let mut salt = [0u8; 8];
        rng.fill_bytes(&mut session_id);
        rng.fill_bytes(&mut salt);
        let (session_id, salt) = (SessionId(session_id), ServerSalt(salt));
        let confirmation = key_confirmation(
            &auth_key,
            &Nonce128::from_bytes(pending.nonce),
            &Nonce128::from_bytes(pending.server_nonce),
            g_a,
            &req.g_b.0,
            &req.client_id,
            session_id,
            salt,
        );
        let answer = DhGenOk {
            nonce: req.nonce.clone(),
            server_nonce: req.server_nonce.clone(),
            auth_key_id: Hex(auth_key.id().as_bytes().to_vec()),
            key_confirmation: Hex(confirmation.to_vec()),
            session_id: Bytes(session_id.0.to_vec()),
            salt: Bytes(salt.0.to_vec()),
            status: STATUS_OK.to_owned(),
            server_time: now.as_secs(),
        };
        let session = ServerSession::new(session_id, salt, now);
        Ok((
            Established {
                auth_key,
                client_id: req.client_id.clone(),
                session,
            },
            answer,
        ))
    }
}

// ---- Client side -------------------------------------------------------------------------------

/// What the client trusts as the server's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPin {
    /// Only a key with this 64-bit fingerprint.
    Fingerprint(ServerKeyFingerprint),
    /// Only exactly this key.
    Key(ServerPublicKey),
    /// Any key, on first use: the caller must save the key the session reports and pin it
    /// from then on.
    TrustOnFirstUse,
}

impl ServerPin {
    fn accepts(&self, key: &ServerPublicKey) -> bool {
        match self {
            Self::Fingerprint(fp) => key.fingerprint() == *fp,
            Self::Key(k) => k == key,
            Self::TrustOnFirstUse => true,
        }
    }

    fn expected(&self) -> String {
        match self {
            Self::Fingerprint(fp) => fp.to_string(),
            Self::Key(k) => k.fingerprint().to_string(),
            Self::TrustOnFirstUse => "any".to_owned(),
        }
    }
}

/// The start of a client handshake.
#[derive(Debug)]
pub struct ClientHandshake;

impl ClientHandshake {
    /// Starts a handshake: returns the state waiting for `resPQ` and the `req_pq` to send.
    pub fn start(
        pin: ServerPin,
        client_id: ClientId,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (AwaitingResPq, ReqPq) {
        let mut n = [0u8; 16];
        rng.fill_bytes(&mut n);
        (
            AwaitingResPq {
                nonce: Nonce128::from_bytes(n),
                pin,
                client_id,
            },
            ReqPq {
                nonce: Bytes(n.to_vec()),
            },
        )
    }
}

fn same_nonce(which: &'static str, ours: &Nonce128, theirs: &Bytes) -> Result<()> {
    if theirs.0.as_slice() == ours.as_bytes() {
        Ok(())
    } else {
        Err(Error::NonceMismatch { which })
    }
}

/// Waiting for `resPQ`.
#[derive(Debug)]
pub struct AwaitingResPq {
    nonce: Nonce128,
    pin: ServerPin,
    client_id: ClientId,
}

impl AwaitingResPq {
    /// Checks `resPQ` (nonce, a pinned fingerprint) and solves the proof of work.
    ///
    /// # Errors
    /// [`Error::NonceMismatch`], [`Error::Malformed`], [`Error::UntrustedServer`], or
    /// [`Error::Dh`] when pq cannot be factored.
    pub fn handle_res_pq(self, res: &ResPq) -> Result<(AwaitingDhParams, ReqDhParams)> {
        same_nonce("nonce", &self.nonce, &res.nonce)?;
        let server_nonce = nonce("server_nonce", &res.server_nonce)?;
        let fp = ServerKeyFingerprint::from_bytes(fixed("fingerprint", &res.fingerprint.0)?);
        let fp_ok = match self.pin {
            ServerPin::Fingerprint(pinned) => pinned == fp,
            ServerPin::Key(k) => k.fingerprint() == fp,
            ServerPin::TrustOnFirstUse => true,
        };
        if !fp_ok {
            return Err(Error::UntrustedServer {
                got: fp.to_string(),
                expected: self.pin.expected(),
            });
        }
        let pq = u64::from_be_bytes(fixed("pq", &res.pq.0)?);
        let (p, q) = factor_pq(pq)?;
        let pow_nonce = match res.pow_bits {
            0 => None,
            bits => Some(Hex(crate::work::solve(
                self.nonce.as_bytes(),
                server_nonce.as_bytes(),
                bits,
            )?
            .to_vec())),
        };
        let req = ReqDhParams {
            nonce: res.nonce.clone(),
            server_nonce: res.server_nonce.clone(),
            p: Hex(minimal_be(p)),
            q: Hex(minimal_be(q)),
            pow_nonce,
        };
        Ok((
            AwaitingDhParams {
                nonce: self.nonce,
                server_nonce,
                pq,
                fingerprint: fp,
                pin: self.pin,
                client_id: self.client_id,
            },
            req,
        ))
    }
}

/// Waiting for the signed DH parameters.
#[derive(Debug)]
pub struct AwaitingDhParams {
    nonce: Nonce128,
    server_nonce: Nonce128,
    pq: u64,
    fingerprint: ServerKeyFingerprint,
    pin: ServerPin,
    client_id: ClientId,
}

impl AwaitingDhParams {
    /// Checks the nonces, the server key against the pin and `resPQ`'s fingerprint, the
    /// signature over the transcript, the group and `g_a`; then picks `b` and computes the key.
    ///
    /// # Errors
    /// [`Error::NonceMismatch`], [`Error::UntrustedServer`], [`Error::BadSignature`],
    /// [`Error::Dh`], [`Error::Malformed`].
    pub fn handle_server_dh_params(
        self,
        res: &ServerDhParams,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(AwaitingDhGen, SetClientDhParams)> {
        same_nonce("nonce", &self.nonce, &res.nonce)?;
        same_nonce("server_nonce", &self.server_nonce, &res.server_nonce)?;
        let server_key =
            ServerPublicKey::from_slice(&res.server_public_key.0).map_err(|_| Error::Malformed {
                field: "server_public_key",
                reason: "must be 32 bytes",
            })?;
        if server_key.fingerprint() != self.fingerprint || !self.pin.accepts(&server_key) {
            return Err(Error::UntrustedServer {
                got: server_key.fingerprint().to_string(),
                expected: self.pin.expected(),
            });
        }
        let transcript = dh_params_transcript(
            &self.nonce,
            &self.server_nonce,
            self.pq,
            &SignedDhValues {
                g: res.g,
                dh_prime: &res.dh_prime.0,
                g_a: &res.g_a.0,
                server_time: res.server_time,
                server_key: &server_key,
            },
        );
        server_key.verify(&transcript, &res.signature.0)?;
        let group = if res.dh_prime.0.as_slice() == mtproto_crypto::MTPROTO_DH_PRIME.as_slice() && res.g == 3
        {
            DhGroup::mtproto()
        } else {
            DhGroup::from_received(res.g, &res.dh_prime.0)?
        };
        if res.g_a.0.len() != 256 {
            return Err(Error::Malformed {
                field: "g_a",
                reason: "must be 256 bytes",
            });
        }
        let g_a = group.check_public(&res.g_a.0)?;
        let (b, g_b) = group.generate(rng)?;
        let auth_key = group.agree(&b, &g_a);
        let time_offset = i64::try_from(res.server_time)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        let req = SetClientDhParams {
            nonce: res.nonce.clone(),
            server_nonce: res.server_nonce.clone(),
            g_b: Hex(g_b.as_bytes().to_vec()),
            client_id: self.client_id.clone(),
            recovery_key: None,
            recovery_proof: None,
        };
        Ok((
            AwaitingDhGen {
                nonce: self.nonce,
                server_nonce: self.server_nonce,
                g_a: res.g_a.0.clone(),
                g_b: g_b.as_bytes().to_vec(),
                auth_key,
                client_id: self.client_id,
                server_key,
                time_offset,
            },
            req,
        ))
    }
}

/// Waiting for `dh_gen_ok`; holds the computed auth key.
#[derive(Debug)]
pub struct AwaitingDhGen {
    nonce: Nonce128,
    server_nonce: Nonce128,
    g_a: Vec<u8>,
    g_b: Vec<u8>,
    auth_key: AuthKey,
    client_id: ClientId,
    server_key: ServerPublicKey,
    time_offset: i64,
}

impl AwaitingDhGen {
    /// Checks `dh_gen_ok`: nonces, the auth key id, and the key confirmation (constant time).
    /// Only this builds a [`ClientSession`].
    ///
    /// # Errors
    /// [`Error::NonceMismatch`], [`Error::Malformed`], [`Error::KeyConfirmation`].
    pub fn handle_dh_gen_ok(self, res: &DhGenOk) -> Result<ClientSession> {
        same_nonce("nonce", &self.nonce, &res.nonce)?;
        same_nonce("server_nonce", &self.server_nonce, &res.server_nonce)?;
        let session_id = SessionId(fixed("session_id", &res.session_id.0)?);
        let salt = ServerSalt(fixed("salt", &res.salt.0)?);
        let confirmation: [u8; 16] = fixed("key_confirmation", &res.key_confirmation.0)?;
        let expected = key_confirmation(
            &self.auth_key,
            &self.nonce,
            &self.server_nonce,
            &self.g_a,
            &self.g_b,
            &self.client_id,
            session_id,
            salt,
        );
        let id_ok = res.auth_key_id.0.as_slice().ct_eq(self.auth_key.id().as_bytes());
        if !bool::from(expected.ct_eq(&confirmation) & id_ok) {
            return Err(Error::KeyConfirmation);
        }
        Ok(ClientSession::established(
            self.auth_key,
            self.client_id,
            self.server_key,
            session_id,
            salt,
            self.time_offset,
        ))
    }

    /// The server's public key (to pin after trust on first use).
    pub fn server_key(&self) -> &ServerPublicKey {
        &self.server_key
    }

    /// Fills `req`'s recovery fields: `register` as the account's recovery key, and with
    /// `code` the proof that this handshake's key may take the name over from a lost device
    /// (`docs/protocol.md` §1 "Recovery").
    pub fn prove_recovery(
        &self,
        req: &mut SetClientDhParams,
        register: Option<mtproto_crypto::RecoveryPublic>,
        code: Option<&mtproto_crypto::RecoveryCode>,
    ) {
        req.recovery_key = register.map(|k| Bytes(k.as_bytes().to_vec()));
        req.recovery_proof = code.map(|c| {
            Bytes(
                c.prove(
                    self.client_id.as_str(),
                    self.server_nonce.as_bytes(),
                    self.auth_key.id().as_bytes(),
                )
                .to_vec(),
            )
        });
    }
}
