//! The directory: our identity key in it (published, rotated); looking peers up, their keys as
//! this client accepted them, key changes, safety numbers.

use mtproto_crypto::{rand_core::OsRng, Fingerprint, IdentityPublic, IdentitySecret};
use mtproto_session::{wire::Bytes, ChatState, ClientId};
use relay_api::{Call, PeersAnswer, PublishAnswer, MAX_LOOKUP_NAMES};

use crate::{now, peer_name, Client, ClientError, KnownPeer, State};

/// A peer as the directory shows it, with what this client thinks of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The client id.
    pub client_id: String,
    /// Its identity key, if published.
    pub identity_key: Option<IdentityPublic>,
    /// The directory's key version.
    pub key_version: u32,
    /// Last seen, unix seconds.
    pub last_seen: u64,
    /// What this client knows.
    pub key_status: KeyStatus,
}

/// Whether a peer's key is the one accepted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// No key published yet.
    NoKey,
    /// Not seen before.
    New,
    /// The accepted key.
    Known,
    /// Different from the accepted key.
    Changed,
}

/// Records `key` as `peer`'s accepted identity key and starts a new chat under it (dropping the
/// ratchet conversations with the old key).
fn accept_key(st: &mut State, peer: &str, key: IdentityPublic, key_version: u32) -> Result<(), ClientError> {
    st.peers.insert(
        peer.to_owned(),
        KnownPeer {
            identity_key: *key.as_bytes(),
            key_version,
            verified: false,
            signing_key: None,
        },
    );
    let chat = ChatState::new(&st.identity, key)?;
    st.chats.insert(peer.to_owned(), chat);
    // The ratchet conversations go with the old static conversation (their window).
    st.ratchets.remove(peer);
    st.no_prekeys_until.remove(peer);
    Ok(())
}

impl Client {
    /// These peers as the directory shows them now (exact names; unknown ones are left out),
    /// each key compared to the accepted one. Asks in batches of
    /// [`MAX_LOOKUP_NAMES`].
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a malformed name; transport, protocol and server errors.
    pub async fn lookup(&self, names: &[&str]) -> Result<Vec<PeerView>, ClientError> {
        let ids = names
            .iter()
            .map(|n| ClientId::new(n).map_err(|e| ClientError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for batch in ids.chunks(MAX_LOOKUP_NAMES) {
            let answer: PeersAnswer = self.call(&Call::lookup_peers(batch.to_vec())).await?;
            out.extend(self.views(answer).await);
        }
        Ok(out)
    }

    /// One page of the directory: peers that published a key whose names start with `prefix`
    /// (empty: everyone), in name order, after `after`. The second value, when there is one, is
    /// the `after` of the next page.
    ///
    /// # Errors
    /// Transport, protocol and server errors.
    pub async fn search(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<(Vec<PeerView>, Option<String>), ClientError> {
        let after = after
            .map(|a| ClientId::new(a).map_err(|e| ClientError::Invalid(e.to_string())))
            .transpose()?;
        let answer: PeersAnswer = self
            .call(&Call::search_peers(&prefix.to_ascii_lowercase(), after))
            .await?;
        let next = answer.next.as_ref().map(ToString::to_string);
        Ok((self.views(answer).await, next))
    }

    /// The contacts: every peer whose key this client accepted, as the directory shows them now.
    ///
    /// # Errors
    /// Transport, protocol and server errors.
    pub async fn contacts(&self) -> Result<Vec<PeerView>, ClientError> {
        let names: Vec<String> = self.state.lock().await.peers.keys().cloned().collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.lookup(&names).await
    }

    pub(crate) async fn views(&self, answer: PeersAnswer) -> Vec<PeerView> {
        let mut st = self.state.lock().await;
        answer
            .peers
            .into_iter()
            .map(|p| {
                let key = p.identity_key.and_then(|k| IdentityPublic::validated(&k.0).ok());
                let known = st.peers.get(p.client_id.as_str());
                let status = match (key, known) {
                    (None, _) => KeyStatus::NoKey,
                    (Some(_), None) => KeyStatus::New,
                    (Some(k), Some(known)) if known.identity_key == *k.as_bytes() => KeyStatus::Known,
                    (Some(_), Some(_)) => KeyStatus::Changed,
                };
                // A known peer whose key changed or was withdrawn (a reset, a recovered
                // account) cannot read what we would send under the old key: blocked.
                if known.is_some() && status != KeyStatus::Known {
                    st.key_changed.insert(p.client_id.to_string(), p.key_version);
                } else {
                    st.key_changed.remove(p.client_id.as_str());
                }
                PeerView {
                    client_id: p.client_id.to_string(),
                    identity_key: key,
                    key_version: p.key_version,
                    last_seen: p.last_seen,
                    key_status: status,
                }
            })
            .collect()
    }

    /// Makes sure a chat with `peer` exists under its accepted key. A first contact accepts the
    /// directory's key; a changed key is an error until [`Client::accept_peer_key`].
    pub(crate) async fn ensure_chat(&self, peer: &str) -> Result<(), ClientError> {
        {
            let st = self.state.lock().await;
            if let Some(&new_version) = st.key_changed.get(peer) {
                return Err(ClientError::PeerKeyChanged {
                    peer: peer.into(),
                    old_version: st.peers.get(peer).map_or(0, |k| k.key_version),
                    new_version,
                });
            }
            if st.chats.contains_key(peer) {
                return Ok(());
            }
        }
        let (key, key_version) = self.directory_key(peer).await?;
        let mut st = self.state.lock().await;
        match st.peers.get(peer) {
            Some(known) if known.identity_key != *key.as_bytes() => {
                return Err(ClientError::PeerKeyChanged {
                    peer: peer.into(),
                    old_version: known.key_version,
                    new_version: key_version,
                });
            }
            Some(_) => {}
            None => accept_key(&mut st, peer, key, key_version)?,
        }
        if !st.chats.contains_key(peer) {
            let chat = ChatState::new(&st.identity, key)?;
            st.chats.insert(peer.to_owned(), chat);
        }
        self.save(&st).await
    }

    /// Accepts `peer`'s current directory key (after the user verified it), starting a new chat.
    ///
    /// # Errors
    /// [`ClientError::NoPeerKey`], transport and server errors.
    pub async fn accept_peer_key(&self, peer: &str) -> Result<(), ClientError> {
        let peer = &peer_name(peer)?;
        let (key, key_version) = self.directory_key(peer).await?;
        let mut st = self.state.lock().await;
        accept_key(&mut st, peer, key, key_version)?;
        st.key_changed.remove(peer);
        st.held.clear();
        self.save(&st).await
    }

    /// `peer`'s identity key and its version as the directory shows them now.
    pub(crate) async fn directory_key(&self, peer: &str) -> Result<(IdentityPublic, u32), ClientError> {
        let view = self
            .lookup(&[peer])
            .await?
            .into_iter()
            .find(|p| p.client_id == peer)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        let key = view
            .identity_key
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        Ok((key, view.key_version))
    }

    /// The safety number to compare with `peer` (identical on both sides).
    ///
    /// # Errors
    /// As [`Client::send`] for a first contact.
    pub async fn fingerprint(&self, peer: &str) -> Result<Fingerprint, ClientError> {
        let peer = &peer_name(peer)?;
        self.ensure_chat(peer).await?;
        let st = self.state.lock().await;
        st.chats
            .get(peer)
            .map(ChatState::fingerprint)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))
    }

    /// Marks `peer`'s accepted key as verified by the user.
    ///
    /// # Errors
    /// [`ClientError::NoPeerKey`] for an unknown peer.
    pub async fn mark_verified(&self, peer: &str) -> Result<(), ClientError> {
        let peer = &peer_name(peer)?;
        let mut st = self.state.lock().await;
        let known = st
            .peers
            .get_mut(peer)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        known.verified = true;
        self.save(&st).await
    }
}

/// Our identity key in the directory.
impl Client {
    /// Publishes this client's identity key (done by `connect`; call again after a rotation).
    ///
    /// # Errors
    /// Transport, protocol and server errors.
    pub async fn publish_key(&self) -> Result<PublishAnswer, ClientError> {
        self.call(&self.publish_call().await).await
    }

    /// The call that publishes this client's identity key as it is now.
    pub(crate) async fn publish_call(&self) -> Call {
        let key = self.state.lock().await.identity.public();
        Call::PublishKey {
            identity_key: Bytes(key.as_bytes().to_vec()),
        }
    }

    /// Replaces this client's identity key with a new one (peers will see a key change), with
    /// new prekeys for it (published, unless the client was made
    /// [`with_prekeys(false)`](crate::ClientConfig::with_prekeys)); every conversation starts
    /// again.
    ///
    /// # Errors
    /// As [`Client::publish_key`]; publishing the new prekeys may fail without an error (they
    /// go again with the next poll).
    pub async fn rotate_identity(&self) -> Result<PublishAnswer, ClientError> {
        {
            let mut guard = self.state.lock().await;
            let st = &mut *guard;
            st.identity = IdentitySecret::generate(&mut OsRng);
            st.prekeys = mtproto_session::x3dh::Prekeys::new(&st.identity, &st.signing, now(), &mut OsRng);
            st.chats.clear();
            st.ratchets.clear();
            st.no_prekeys_until.clear();
            self.save(st).await?;
        }
        let answer = self.publish_key().await?;
        if self.prekeys_on {
            self.state.lock().await.prekeys_due = Some(crate::ONE_TIME_PREKEYS_TARGET);
            self.prekey_upkeep().await;
        }
        Ok(answer)
    }
}
