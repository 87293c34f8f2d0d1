//! The server side: pure functions over a serializable [`PendingHandshake`] record.

use mtproto_crypto::{
    rand_core::CryptoRng, rand_core::RngCore, AuthKey, DhGroup, DhSecret, Nonce128, PqChallenge,
    ServerSigningKey,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{
    session::ServerSession,
    wire::{fixed, Bytes, Hex},
    ClientId, HandshakeError, Result, SecretBytes, ServerSalt, SessionId, UnixTime,
};

use super::*;

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

impl Stage {
    /// The stage's name, as its serde tag spells it (`AwaitingDhParams`, `AwaitingClientDh`):
    /// for stores that keep the stage in a field of its own.
    ///
    /// ```
    /// assert_eq!(mtproto_session::Stage::AwaitingDhParams.name(), "AwaitingDhParams");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Self::AwaitingDhParams => "AwaitingDhParams",
            Self::AwaitingClientDh { .. } => "AwaitingClientDh",
        }
    }
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

    fn check(
        &self,
        now: UnixTime,
        nonce_field: &Bytes,
        server_nonce_field: &Bytes,
    ) -> Result<(), HandshakeError> {
        if self.is_expired(now) {
            return Err(HandshakeError::Expired);
        }
        if !bool::from(nonce("nonce", nonce_field)?.as_bytes().ct_eq(&self.nonce)) {
            return Err(HandshakeError::NonceMismatch { which: "nonce" });
        }
        if !bool::from(
            nonce("server_nonce", server_nonce_field)?
                .as_bytes()
                .ct_eq(&self.server_nonce),
        ) {
            return Err(HandshakeError::NonceMismatch {
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
    /// [`HandshakeError::Malformed`] when the nonce is not 16 bytes.
    pub fn handle_req_pq(
        &self,
        req: &ReqPq,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(PendingHandshake, ResPq), HandshakeError> {
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
    /// [`HandshakeError::Expired`], [`HandshakeError::NonceMismatch`], [`HandshakeError::Malformed`],
    /// [`HandshakeError::BadProofOfWork`], or [`HandshakeError::StepOutOfOrder`] when this step was already done.
    pub fn handle_req_dh_params(
        &self,
        pending: &mut PendingHandshake,
        req: &ReqDhParams,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<ServerDhParams, HandshakeError> {
        pending.check(now, &req.nonce, &req.server_nonce)?;
        if !matches!(pending.stage, Stage::AwaitingDhParams) {
            return Err(HandshakeError::StepOutOfOrder {
                expected: "set_client_dh_params",
                got: "req_dh_params",
            });
        }
        if pending.pow_bits > 0 {
            let answer = req.pow_nonce.as_ref().ok_or(HandshakeError::BadProofOfWork)?;
            let answer: [u8; 8] = fixed("pow_nonce", &answer.0)?;
            if !crate::work::check(&pending.nonce, &pending.server_nonce, pending.pow_bits, &answer) {
                return Err(HandshakeError::BadProofOfWork);
            }
        }
        let challenge =
            PqChallenge::from_factors(pending.p, pending.q).map_err(|_| HandshakeError::BadProofOfWork)?;
        if !challenge.verify(parse_factor("p", &req.p)?, parse_factor("q", &req.q)?) {
            return Err(HandshakeError::BadProofOfWork);
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
    /// [`HandshakeError::Expired`], [`HandshakeError::NonceMismatch`], [`HandshakeError::Malformed`],
    /// [`HandshakeError::Dh`] when `g_b` is out of range, [`HandshakeError::StepOutOfOrder`] when step 2 was skipped.
    pub fn handle_set_client_dh_params(
        &self,
        pending: PendingHandshake,
        req: &SetClientDhParams,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Established, DhGenOk), HandshakeError> {
        pending.check(now, &req.nonce, &req.server_nonce)?;
        let Stage::AwaitingClientDh { a, g_a } = &pending.stage else {
            return Err(HandshakeError::StepOutOfOrder {
                expected: "req_dh_params",
                got: "set_client_dh_params",
            });
        };
        if req.g_b.0.len() != 256 {
            return Err(HandshakeError::Malformed {
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
