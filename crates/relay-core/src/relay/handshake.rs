//! The three handshake endpoints: `/req_pq`, `/req_dh_params`, `/set_client_dh_params`.

use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{
    wire::Bytes, DhGenOk, ReqDhParams, ReqPq, ResPq, SecretBytes, ServerDhParams, ServerHandshake,
    SetClientDhParams,
};

use super::{Relay, RESERVED_CLIENT_IDS, SEAL_AUTH_KEY, SEAL_DH_SECRET};
use crate::{AuthKeyRecord, RelayError};

fn nonce16(field: &'static str, b: &Bytes) -> Result<[u8; 16], RelayError> {
    b.0.as_slice().try_into().map_err(|_| RelayError::InvalidField {
        field: field.into(),
        reason: "must be 16 bytes".into(),
    })
}

impl Relay {
    fn handshake(&self) -> ServerHandshake<'_> {
        ServerHandshake::new(&self.key, &self.group)
    }

    /// `POST /req_pq`.
    ///
    /// # Errors
    /// [`RelayError::InvalidField`], [`RelayError::Busy`] when too many handshakes are pending.
    pub async fn req_pq(&self, req: &ReqPq) -> Result<ResPq, RelayError> {
        let now = self.clock.now();
        let bits = self.work.start(std::time::Instant::now());
        let (pending, res) = self
            .handshake()
            .with_pow_bits(bits)
            .handle_req_pq(req, now, &mut OsRng)?;
        self.engine
            .put_pending(pending, self.config.max_pending_handshakes, now)
            .await?;
        Ok(res)
    }

    /// `POST /req_dh_params`.
    ///
    /// # Errors
    /// [`RelayError::UnknownHandshake`], [`RelayError::HandshakeExpired`],
    /// [`RelayError::NonceMismatch`], [`RelayError::BadProofOfWork`],
    /// [`RelayError::HandshakeOutOfOrder`].
    pub async fn req_dh_params(&self, req: &ReqDhParams) -> Result<ServerDhParams, RelayError> {
        let now = self.clock.now();
        let sn = nonce16("server_nonce", &req.server_nonce)?;
        let mut pending = self
            .engine
            .get_pending(sn.into())
            .await?
            .ok_or(RelayError::UnknownHandshake)?;
        let res = self
            .handshake()
            .handle_req_dh_params(&mut pending, req, now, &mut OsRng)?;
        if let mtproto_session::Stage::AwaitingClientDh { a, .. } = &mut pending.stage {
            let sealed = self
                .seal
                .seal(SEAL_DH_SECRET, &sn, a.expose())
                .map_err(|_| RelayError::Internal("sealing the DH secret".into()))?;
            *a = SecretBytes::new(sealed);
        }
        if !self.engine.advance_pending(pending).await? {
            return Err(RelayError::HandshakeOutOfOrder);
        }
        Ok(res)
    }

    /// `POST /set_client_dh_params`: completes the handshake and registers the client id.
    ///
    /// # Errors
    /// As [`Relay::req_dh_params`], plus [`RelayError::BadDh`] and [`RelayError::ClientIdTaken`].
    pub async fn set_client_dh_params(&self, req: &SetClientDhParams) -> Result<DhGenOk, RelayError> {
        let now = self.clock.now();
        // Names are lower case (ClientId), so "Relay" and "ADMIN" are caught here too.
        if RESERVED_CLIENT_IDS.contains(&req.client_id.as_str()) {
            return Err(RelayError::InvalidField {
                field: "client_id".into(),
                reason: "reserved".into(),
            });
        }
        let sn = nonce16("server_nonce", &req.server_nonce)?;
        let recovery_key = recovery_fields(req)?;
        let mut pending = self
            .engine
            .get_pending(sn.into())
            .await?
            .ok_or(RelayError::UnknownHandshake)?;
        if let mtproto_session::Stage::AwaitingClientDh { a, .. } = &mut pending.stage {
            // Opaque on failure: a record from before sealing, or under another server key, is
            // as good as no record.
            let plain = self
                .seal
                .open(SEAL_DH_SECRET, &sn, a.expose())
                .map_err(|_| RelayError::UnknownHandshake)?;
            *a = SecretBytes::new(plain.to_vec());
        }
        let (est, res) = self
            .handshake()
            .handle_set_client_dh_params(pending, req, now, &mut OsRng)?;
        // Only now consume the nonce, so a forged request cannot kill someone else's handshake.
        self.engine
            .take_pending(sn.into())
            .await?
            .ok_or(RelayError::UnknownHandshake)?;
        let key_id = est.auth_key.id();
        let sealed = self
            .seal
            .seal(SEAL_AUTH_KEY, key_id.as_bytes(), est.auth_key.expose_secret())
            .map_err(|_| RelayError::Internal("sealing the auth key".into()))?;
        let mut record = AuthKeyRecord {
            key_id,
            auth_key: SecretBytes::new(sealed),
            client_id: est.client_id.clone(),
            created_at: now,
            recovery_key: recovery_key.map(|k| *k.as_bytes()),
        };
        let old = match &req.recovery_proof {
            Some(_) => self.engine.owner(&est.client_id).await?,
            None => None,
        };
        match (old, &req.recovery_proof) {
            (Some(old), Some(proof)) if old.key_id != key_id => {
                // docs/protocol.md §1 "Recovery": the proof names this handshake's key.
                let stored = old.recovery_key.ok_or(RelayError::RecoveryRefused)?;
                mtproto_crypto::RecoveryPublic::from_bytes(stored)
                    .verify(est.client_id.as_str(), &sn, key_id.as_bytes(), &proof.0)
                    .map_err(|_| RelayError::RecoveryRefused)?;
                record.recovery_key = record.recovery_key.or(Some(stored));
                self.engine
                    .take_over_account(record, est.session, old.key_id, now)
                    .await?;
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&old.key_id);
                self.forget_session(old.key_id);
                tracing::info!(client_id = %est.client_id, auth_key_id = %est.auth_key.id().to_hex(), "account recovered: the name moved to a new key");
                return Ok(res);
            }
            // A free name: a proof proves nothing, an ordinary registration.
            _ => self.engine.create_account(record, est.session, now).await?,
        }
        tracing::info!(client_id = %est.client_id, auth_key_id = %est.auth_key.id().to_hex(), "auth key established");
        Ok(res)
    }
}

/// The recovery key a handshake registers (checked usable), with the proof's length checked.
fn recovery_fields(req: &SetClientDhParams) -> Result<Option<mtproto_crypto::RecoveryPublic>, RelayError> {
    let recovery_key = req
        .recovery_key
        .as_ref()
        .map(|k| mtproto_crypto::RecoveryPublic::from_slice(&k.0))
        .transpose()
        .map_err(|_| RelayError::InvalidField {
            field: "recovery_key".into(),
            reason: "must be 32 bytes".into(),
        })?;
    if recovery_key.is_some_and(|k| !k.is_usable()) {
        return Err(RelayError::InvalidField {
            field: "recovery_key".into(),
            reason: "not a usable Ed25519 public key".into(),
        });
    }
    if req.recovery_proof.as_ref().is_some_and(|p| p.0.len() != 64) {
        return Err(RelayError::InvalidField {
            field: "recovery_proof".into(),
            reason: "must be 64 bytes".into(),
        });
    }
    Ok(recovery_key)
}
