//! Prekeys (`docs/protocol.md` §2.3 `publish_prekeys`, `prekey_bundle`; §3): the client keeps
//! its Ed25519 identity signing key and its [`x3dh::Prekeys`] in the profile, publishes the
//! signed prekey and tops the relay's one-time prekeys up to [`ONE_TIME_PREKEYS_TARGET`] on
//! connect, again after every accepted start (one that used none says the relay ran out) when
//! the relay holds fewer than [`ONE_TIME_PREKEYS_LOW`], and rotates the signed prekey when it is
//! older than [`SIGNED_PREKEY_MAX_AGE_SECS`]. The thin calls stay public for tools and tests.

use mtproto_crypto::{rand_core::OsRng, IdentitySigningKey};
use mtproto_session::{x3dh, ClientId, PrekeyBundle};
use relay_api::{
    Call, OneTimePrekeyUpload, PrekeyBundleAnswer, PublishPrekeysAnswer, SignedPrekeyUpload,
    MAX_PREKEYS_PER_PUBLISH,
};

use crate::{conversations::older_than, now, Client, ClientError};

/// How many one-time prekeys the client keeps on the relay: it tops them up to this many.
pub const ONE_TIME_PREKEYS_TARGET: usize = 100;
/// After accepting a start (with a one-time prekey or without one), the client asks the relay
/// and tops it up when it holds fewer than this many.
pub const ONE_TIME_PREKEYS_LOW: usize = 50;
/// The signed prekey is replaced when older than this (7 days); the previous two are kept for
/// starts in flight.
pub const SIGNED_PREKEY_MAX_AGE_SECS: u64 = 7 * 24 * 3600;

impl Client {
    /// New prekeys for this client's identity key, with a first signed prekey signed by
    /// `signing` (for tools and tests: the client keeps and publishes its own prekeys).
    pub async fn new_prekeys(&self, signing: &IdentitySigningKey) -> x3dh::Prekeys {
        let st = self.state.lock().await;
        x3dh::Prekeys::new(&st.identity, signing, now(), &mut OsRng)
    }

    /// Publishes `prekeys`' current signed prekey (replacing the one the relay held) and adds
    /// `one_time` (at most [`MAX_PREKEYS_PER_PUBLISH`], typically the output of
    /// [`x3dh::Prekeys::generate_one_time`]). Returns how many one-time prekeys the relay holds
    /// now; an empty `one_time` only asks, so the client knows when to make more.
    ///
    /// The client publishes its own prekeys (on connect, and when they run low): this is for
    /// tools and tests with prekeys of their own, on a client made with
    /// [`crate::ClientConfig::with_prekeys`]`(false)` (else the two would replace each other's
    /// signed prekey).
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
        self.publish_bundle(&prekeys.bundle(None), one_time).await
    }

    /// [`Client::publish_prekeys`] of the public half `own` (a bundle without a one-time prekey).
    async fn publish_bundle(
        &self,
        own: &PrekeyBundle,
        one_time: &[x3dh::OneTimePrekeyPublic],
    ) -> Result<usize, ClientError> {
        if one_time.len() > MAX_PREKEYS_PER_PUBLISH {
            return Err(ClientError::Invalid(format!(
                "at most {MAX_PREKEYS_PER_PUBLISH} one-time prekeys in one publish"
            )));
        }
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

    /// Publishes this client's signed prekey — a new one first when the current one is older
    /// than [`SIGNED_PREKEY_MAX_AGE_SECS`] — and, when the relay holds fewer than `below`
    /// one-time prekeys, tops them up to [`ONE_TIME_PREKEYS_TARGET`]. The new private keys are
    /// saved in the profile before their public halves leave; the oldest local ones go first
    /// when more than [`x3dh::MAX_ONE_TIME_PREKEYS`] would be kept. Returns how many one-time
    /// prekeys the relay holds.
    pub(crate) async fn top_up_prekeys(&self, below: usize) -> Result<usize, ClientError> {
        let _one = self.publishing.lock().await;
        let own = {
            let mut guard = self.state.lock().await;
            let st = &mut *guard;
            if older_than(st.prekeys.signed_prekey_created(), SIGNED_PREKEY_MAX_AGE_SECS) {
                st.prekeys.rotate_signed_prekey(&st.signing, now(), &mut OsRng);
                self.save(st).await?;
            }
            st.prekeys.bundle(None)
        };
        let held = self.publish_bundle(&own, &[]).await?;
        if held >= below || held >= ONE_TIME_PREKEYS_TARGET {
            return Ok(held);
        }
        let fresh = {
            let mut st = self.state.lock().await;
            let count = (ONE_TIME_PREKEYS_TARGET - held).min(MAX_PREKEYS_PER_PUBLISH);
            st.prekeys.make_room_for_one_time(count);
            let fresh = st.prekeys.generate_one_time(count, &mut OsRng)?;
            self.save(&st).await?;
            fresh
        };
        self.publish_bundle(&own, &fresh).await
    }

    /// Runs a top-up that is due (see [`Client::top_up_prekeys`]): after an accepted start
    /// (with or without a one-time prekey), after the relay lost our data, after a failed
    /// publish, or when the signed prekey is due for rotation. A failure leaves it due.
    pub(crate) async fn prekey_upkeep(&self) {
        if !self.prekeys_on {
            return;
        }
        let due = {
            let mut st = self.state.lock().await;
            let rotate = older_than(st.prekeys.signed_prekey_created(), SIGNED_PREKEY_MAX_AGE_SECS);
            match st.prekeys_due.take() {
                Some(below) => Some(below),
                None => rotate.then_some(0),
            }
        };
        let Some(below) = due else { return };
        if let Err(e) = self.top_up_prekeys(below).await {
            tracing::warn!(error = %e, "publishing prekeys failed; trying again with the next poll");
            let mut st = self.state.lock().await;
            st.prekeys_due = Some(st.prekeys_due.map_or(below, |b| b.max(below)));
        }
    }

    /// Fetches `peer`'s prekey bundle, with at most one of its one-time prekeys, which the
    /// relay hands out to nobody else (`one_time_prekey` is `None` when the peer has none left
    /// or this client fetched many lately). The bundle's signature is checked; whether its
    /// `identity` is the key this client accepted for `peer` is [`x3dh::initiate`]'s check.
    /// Returns the bundle and the peer's `key_version`. ([`Client::send`] fetches bundles
    /// itself when it starts a conversation.)
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
