//! The relay's prekey calls (`docs/protocol.md` §2.3 `publish_prekeys`, `prekey_bundle`): thin
//! methods, the first half of issue 15's client side. The client does not keep prekeys or start
//! ratchet conversations yet; the caller holds the [`x3dh::Prekeys`] and runs
//! [`x3dh::initiate`] with what it fetched.

use mtproto_crypto::{rand_core::OsRng, IdentitySigningKey};
use mtproto_session::{x3dh, ClientId};
use relay_api::{
    Call, OneTimePrekeyUpload, PrekeyBundleAnswer, PublishPrekeysAnswer, SignedPrekeyUpload,
    MAX_PREKEYS_PER_PUBLISH,
};

use crate::{now, Client, ClientError};

impl Client {
    /// New prekeys for this client's identity key, with a first signed prekey signed by
    /// `signing` (the caller keeps both, as secrets, until the client stores them itself).
    pub async fn new_prekeys(&self, signing: &IdentitySigningKey) -> x3dh::Prekeys {
        let st = self.state.lock().await;
        x3dh::Prekeys::new(&st.identity, signing, now(), &mut OsRng)
    }

    /// Publishes `prekeys`' current signed prekey (replacing the one the relay held) and adds
    /// `one_time` (at most [`MAX_PREKEYS_PER_PUBLISH`], typically the output of
    /// [`x3dh::Prekeys::generate_one_time`]). Returns how many one-time prekeys the relay holds
    /// now; an empty `one_time` only asks, so the client knows when to make more.
    ///
    /// The identity key must have been published first (`connect` does it), and `prekeys` must
    /// be for this client's identity key: the relay verifies the signature over the key it
    /// holds now.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] when `prekeys` belong to another identity key or `one_time` is
    /// too long; [`ClientError::Server`] with [`relay_api::ErrorCode::PrekeyQuota`] when the
    /// relay would hold more than [`relay_api::MAX_ONE_TIME_PREKEYS`] (nothing was stored),
    /// [`relay_api::ErrorCode::NoIdentityKey`], `invalid_field`; transport and protocol errors.
    pub async fn publish_prekeys(
        &self,
        prekeys: &x3dh::Prekeys,
        one_time: &[x3dh::OneTimePrekeyPublic],
    ) -> Result<usize, ClientError> {
        if one_time.len() > MAX_PREKEYS_PER_PUBLISH {
            return Err(ClientError::Invalid(format!(
                "at most {MAX_PREKEYS_PER_PUBLISH} one-time prekeys in one publish"
            )));
        }
        let own = prekeys.bundle(None);
        if own.identity != *self.identity_key().await.as_bytes() {
            return Err(ClientError::Invalid(
                "these prekeys are for another identity key".into(),
            ));
        }
        let call = Call::PublishPrekeys {
            signing_key: mtproto_session::wire::Bytes(own.signing_key.to_vec()),
            signed_prekey: SignedPrekeyUpload::from(&own.signed_prekey),
            one_time_prekeys: one_time.iter().map(OneTimePrekeyUpload::from).collect(),
        };
        let answer: PublishPrekeysAnswer = self.call(&call).await?;
        Ok(answer.one_time_prekeys)
    }

    /// Fetches `peer`'s prekey bundle, with at most one of its one-time prekeys, which the
    /// relay hands out to nobody else (`one_time_prekey` is `None` when the peer has none left
    /// or this client fetched many lately). The bundle's signature is checked; whether its
    /// `identity` is the key this client accepted for `peer` is [`x3dh::initiate`]'s check.
    /// Returns the bundle and the peer's `key_version`.
    ///
    /// A fetch is sent (and, after a transport failure, resent) as one envelope: however often
    /// it is resent, the relay answers the same bundle and takes one one-time prekey.
    ///
    /// # Errors
    /// [`ClientError::Server`] with [`relay_api::ErrorCode::UnknownPeer`] or
    /// [`relay_api::ErrorCode::NoPrekeys`] (the peer published none for its current identity
    /// key); [`ClientError::Protocol`] when the signature does not verify; transport errors.
    pub async fn prekey_bundle(&self, peer: &str) -> Result<PrekeyBundleAnswer, ClientError> {
        let peer = ClientId::new(peer).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let answer: PrekeyBundleAnswer = self.call(&Call::PrekeyBundle { peer }).await?;
        answer.bundle.verify()?;
        Ok(answer)
    }
}
