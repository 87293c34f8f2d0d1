//! The client side: a chain of types, each consumed by its transition.

use mtproto_crypto::{
    factor_pq, rand_core::CryptoRng, rand_core::RngCore, AuthKey, DhGroup, Nonce128, ServerKeyFingerprint,
    ServerPublicKey,
};
use subtle::ConstantTimeEq;

use crate::{
    session::ClientSession,
    wire::{fixed, Bytes, Hex},
    ClientId, HandshakeError, Result, ServerSalt, SessionId, UnixTime,
};

use super::*;

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

pub(super) fn same_nonce(which: &'static str, ours: &Nonce128, theirs: &Bytes) -> Result<(), HandshakeError> {
    if theirs.0.as_slice() == ours.as_bytes() {
        Ok(())
    } else {
        Err(HandshakeError::NonceMismatch { which })
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
    /// [`HandshakeError::NonceMismatch`], [`HandshakeError::Malformed`], [`HandshakeError::UntrustedServer`], or
    /// [`HandshakeError::Dh`] when pq cannot be factored.
    pub fn handle_res_pq(self, res: &ResPq) -> Result<(AwaitingDhParams, ReqDhParams), HandshakeError> {
        same_nonce("nonce", &self.nonce, &res.nonce)?;
        let server_nonce = nonce("server_nonce", &res.server_nonce)?;
        let fp = ServerKeyFingerprint::from_bytes(fixed("fingerprint", &res.fingerprint.0)?);
        let fp_ok = match self.pin {
            ServerPin::Fingerprint(pinned) => pinned == fp,
            ServerPin::Key(k) => k.fingerprint() == fp,
            ServerPin::TrustOnFirstUse => true,
        };
        if !fp_ok {
            return Err(HandshakeError::UntrustedServer {
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
    /// [`HandshakeError::NonceMismatch`], [`HandshakeError::UntrustedServer`], [`HandshakeError::BadSignature`],
    /// [`HandshakeError::Dh`], [`HandshakeError::Malformed`].
    pub fn handle_server_dh_params(
        self,
        res: &ServerDhParams,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(AwaitingDhGen, SetClientDhParams), HandshakeError> {
        same_nonce("nonce", &self.nonce, &res.nonce)?;
        same_nonce("server_nonce", &self.server_nonce, &res.server_nonce)?;
        let server_key =
            ServerPublicKey::from_slice(&res.server_public_key.0).map_err(|_| HandshakeError::Malformed {
                field: "server_public_key",
                reason: "must be 32 bytes",
            })?;
        if server_key.fingerprint() != self.fingerprint || !self.pin.accepts(&server_key) {
            return Err(HandshakeError::UntrustedServer {
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
            return Err(HandshakeError::Malformed {
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
    /// [`HandshakeError::NonceMismatch`], [`HandshakeError::Malformed`], [`HandshakeError::KeyConfirmation`].
    pub fn handle_dh_gen_ok(self, res: &DhGenOk) -> Result<ClientSession, HandshakeError> {
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
            return Err(HandshakeError::KeyConfirmation);
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
