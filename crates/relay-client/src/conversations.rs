//! Conversations under the double ratchet (issue 15, `docs/protocol.md` §3): per peer at most
//! two — `ours` (this client started it) and `theirs` (the peer did) — beside the static
//! conversation, whose [`ChatState`] is the peer's one receive window: every message to or from
//! the peer, static or ratchet, is numbered by it and checked against it.
//!
//! - Sending: with the one ratchet conversation there is; with both, the one whose initiator has
//!   the lower identity public key (bytes compared), which both sides pick alike after
//!   simultaneous starts; with none, the client fetches the peer's prekey bundle and starts one
//!   (without a one-time prekey when the relay had none left, and says so:
//!   [`Event::StartedWithoutOneTimePrekey`]). A peer that published no prekeys (an older client) gets
//!   messages under the static key, and is asked again after [`crate::ClientConfig::no_prekeys_retry`].
//!   Never under the static key once a ratchet conversation exists.
//! - Receiving: by [`packet_kind`]. Static packets open with the static conversation (older
//!   clients); ratchet packets with the conversation that knows their ratchet key, else the one
//!   that sends, then the other ([`PeerRatchets::open_order`]); a start with `theirs` when it carries
//!   the same start ephemeral key (the initiator repeats its start until it hears back), else
//!   it is accepted as a new `theirs`.
//! - Skipped message keys: at most [`MAX_SKIPPED_KEYS_TOTAL`] across all conversations (so
//!   that many peers, or one attacker with many accounts, cannot grow the profile without
//!   bound): after every opened packet and when the profile loads, while over it, the oldest
//!   keys of the conversation holding the most are evicted ([`cap_skipped_keys`]).
//! - The opened messages are kept (in the profile) until acknowledged: a ratchet message's key
//!   is gone once opened, so after a crash the relay's copy cannot be opened again; the kept copy
//!   is handed out instead.

use std::collections::BTreeMap;

use mtproto_crypto::{rand_core::OsRng, IdentityPublic};
use mtproto_session::{
    packet_kind, start_of, ChatState, Delivery, E2eError, PacketKind, RatchetChat, RatchetChatData, Received,
    UnixTime, MAX_SKIPPED_KEYS_TOTAL,
};
use relay_api::ErrorCode;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{now, peer_name, Client, ClientError, Event, State};

/// A mailbox entry as acknowledged: its sequence number and store time.
pub(crate) type KeptKey = (u64, Option<u64>);

/// One ratchet conversation with a peer and how it started.
pub(crate) struct Conv {
    pub(crate) chat: RatchetChat,
    /// Its start used the signed prekey only (the peer's relay had no one-time prekey left).
    pub(crate) without_one_time_prekey: bool,
}

/// A peer's ratchet conversations.
#[derive(Default)]
pub(crate) struct PeerRatchets {
    /// Started by this client.
    pub(crate) ours: Option<Conv>,
    /// Started by the peer.
    pub(crate) theirs: Option<Conv>,
    /// `ours` sends no more (it is kept to open what the peer sends in it): the peer made a new
    /// start after ours had heard back (`docs/protocol.md` §3.3).
    pub(crate) ours_retired: bool,
}

impl PeerRatchets {
    /// The conversation that sends: the only one, or as [`PeerRatchets::ours_sends`] says.
    pub(crate) fn sender(&mut self) -> Option<&mut Conv> {
        if self.ours_sends() {
            self.ours.as_mut()
        } else {
            self.theirs.as_mut()
        }
    }

    fn is_empty(&self) -> bool {
        self.ours.is_none() && self.theirs.is_none()
    }

    /// Whether `ours` is the conversation that sends (`docs/protocol.md` §3.3): the only one;
    /// with both, not when retired; when it has heard back (the peer sends in it: after
    /// simultaneous starts only the lower initiator's does, so this changes nothing there, and
    /// after a retirement at the peer both converge on one conversation); else the one whose
    /// initiator has the lower identity key.
    fn ours_sends(&self) -> bool {
        match (&self.ours, &self.theirs) {
            (Some(_), Some(_)) if self.ours_retired => false,
            (Some(o), Some(_)) if !o.chat.start_pending() => true,
            (Some(o), Some(t)) => o.chat.initiator_key().as_bytes() < t.chat.initiator_key().as_bytes(),
            (o, _) => o.is_some(),
        }
    }

    /// The conversations to try a ratchet packet in, in order (`docs/protocol.md` §3.3): only
    /// the one that knows the packet's ratchet key, if one does (ratchet keys are fresh random
    /// keys: the other cannot own it, and trying it there would charge a copy or a late
    /// message as a new chain); for a new ratchet key, the sending one (both sides converge on
    /// it), then the other. So in the flows the tests cover (simultaneous starts, bursts, copies,
    /// reordering) an honest peer's packets do not pay the wrong conversation's chain steps from
    /// its skip budget.
    pub(crate) fn open_order(&mut self, packet: &[u8], now: UnixTime) -> [Option<&mut Conv>; 2] {
        let knows = |c: &Option<Conv>| c.as_ref().is_some_and(|c| c.chat.recognizes(packet, now));
        if knows(&self.theirs) {
            return [self.theirs.as_mut(), None];
        }
        if knows(&self.ours) {
            return [self.ours.as_mut(), None];
        }
        if self.ours_sends() {
            [self.ours.as_mut(), self.theirs.as_mut()]
        } else {
            [self.theirs.as_mut(), self.ours.as_mut()]
        }
    }

    pub(crate) fn data(&self) -> RatchetsData {
        let conv = |c: &Option<Conv>| {
            c.as_ref().map(|c| ConvData {
                chat: c.chat.data(),
                without_one_time_prekey: c.without_one_time_prekey,
            })
        };
        RatchetsData {
            ours: conv(&self.ours),
            theirs: conv(&self.theirs),
            ours_retired: self.ours_retired,
        }
    }

    /// Restores saved conversations with the peer whose key is `peer`; conversations with
    /// another key (an outdated profile) are dropped.
    pub(crate) fn restore(data: RatchetsData, peer: &IdentityPublic) -> Result<Self, ClientError> {
        let conv = |c: Option<ConvData>| -> Result<Option<Conv>, ClientError> {
            let Some(c) = c else { return Ok(None) };
            let chat = RatchetChat::restore(c.chat)?;
            Ok(
                bool::from(chat.peer().as_bytes().ct_eq(peer.as_bytes())).then_some(Conv {
                    chat,
                    without_one_time_prekey: c.without_one_time_prekey,
                }),
            )
        };
        Ok(Self {
            ours: conv(data.ours)?,
            theirs: conv(data.theirs)?,
            ours_retired: data.ours_retired,
        })
    }
}

/// A saved ratchet conversation. Holds the ratchet's secrets (the profile is owner-only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvData {
    /// The conversation.
    pub chat: RatchetChatData,
    /// Its start used no one-time prekey.
    #[serde(default)]
    pub without_one_time_prekey: bool,
}

/// A peer's saved ratchet conversations (profile field `ratchets`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RatchetsData {
    /// The conversation this client started.
    #[serde(default)]
    pub ours: Option<ConvData>,
    /// The conversation the peer started.
    #[serde(default)]
    pub theirs: Option<ConvData>,
    /// `ours` sends no more, it only opens (`docs/protocol.md` §3.3).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ours_retired: bool,
}

/// A message handed to the application and not yet acknowledged, kept (in the profile) so
/// that it can be handed out again if the application died before keeping it: the relay's
/// copy of a ratchet message cannot be opened twice. `Debug` shows the body's length only.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeptMessage {
    /// The mailbox entry's sequence number.
    pub entry_seq: u64,
    /// The mailbox entry's store time (ms), as acknowledged.
    pub entry_ts: Option<u64>,
    /// The sender.
    pub from: String,
    /// Its sequence number in the conversation.
    pub seq: u32,
    /// The body.
    pub body: mtproto_session::wire::Bytes,
    /// The sender's clock, ms.
    pub sent_at_ms: u64,
    /// How it fitted the conversation when first handed out.
    pub delivery: Delivery,
}

impl std::fmt::Debug for KeptMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptMessage")
            .field("entry_seq", &self.entry_seq)
            .field("from", &self.from)
            .field("seq", &self.seq)
            .field("body_len", &self.body.0.len())
            .finish_non_exhaustive()
    }
}

impl KeptMessage {
    pub(crate) fn key(&self) -> KeptKey {
        (self.entry_seq, self.entry_ts)
    }

    /// The message as it was handed out (nothing lost, no counter moved: reported then).
    pub(crate) fn received(&self) -> Received {
        Received {
            body: self.body.0.clone(),
            random_id: [0; 8],
            seq: self.seq,
            sent_at_ms: self.sent_at_ms,
            delivery: self.delivery.clone(),
            lost: Vec::new(),
            own_counter_moved: None,
        }
    }
}

/// What the conversation with a peer runs under now ([`Client::conversation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The next message goes under the double ratchet: forward secret (a key stolen later
    /// does not open it) and self-healing. `false`: under the static chat key, because the
    /// peer published no prekeys (an older client) or no message was sent or received yet.
    pub forward_secret: bool,
    /// The ratchet conversation that sends was started by this client.
    pub initiated: bool,
    /// Its start used the peer's signed prekey only (the relay had no one-time prekey left):
    /// a recorded start could be replayed to the peer (the peer's window refuses the replayed
    /// message), and the first messages are protected by the signed prekey until it rotates.
    /// Tell the user.
    pub without_one_time_prekey: bool,
    /// This client is sending under the static key because the peer has published no prekeys
    /// (asked again after [`crate::ClientConfig::no_prekeys_retry`]).
    pub peer_has_no_prekeys: bool,
}

/// A packet opened by [`Client::open_packet`].
pub(crate) struct Opened {
    pub(crate) received: Received,
    /// A start accepted into a new conversation: whether it used a one-time prekey.
    pub(crate) accepted: Option<bool>,
}

impl Opened {
    fn plain(received: Received) -> Self {
        Self {
            received,
            accepted: None,
        }
    }
}

/// The error to report after several conversations refused a packet: a replay (the packet did
/// belong to one of them) beats any other, and anything beats "not ours" (`Decrypt`).
fn worse(a: E2eError, b: E2eError) -> E2eError {
    let rank = |e: &E2eError| match e {
        E2eError::Replay { .. } | E2eError::MessageKeyGone { .. } => 2,
        E2eError::Decrypt => 0,
        _ => 1,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

impl State {
    /// Whether a message to `peer` may go under the static key: no ratchet conversation, and
    /// the peer has no prekeys (remembered), or this client does not use prekeys.
    pub(crate) fn may_send_static(&self, peer: &str, prekeys_on: bool) -> bool {
        self.ratchets.get(peer).is_none_or(PeerRatchets::is_empty)
            && (!prekeys_on || self.no_prekeys_until.get(peer).is_some_and(|t| *t > now()))
    }

    fn has_ratchet(&self, peer: &str) -> bool {
        self.ratchets.get(peer).is_some_and(|r| !r.is_empty())
    }
}

impl Client {
    /// What the conversation with `peer` runs under now: forward secret or not, and whether
    /// its start lacked a one-time prekey. `None` for a peer without a conversation yet.
    ///
    /// ```no_run
    /// # async fn demo(client: &relay_client::Client) -> Result<(), relay_client::ClientError> {
    /// client.send("bob", b"hi").await?;
    /// if let Some(c) = client.conversation("bob").await? {
    ///     println!("forward secret: {}", c.forward_secret);
    ///     if c.without_one_time_prekey {
    ///         println!("started without a one-time prekey");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a malformed name.
    pub async fn conversation(&self, peer: &str) -> Result<Option<Conversation>, ClientError> {
        let peer = peer_name(peer)?;
        let mut st = self.state.lock().await;
        if !st.chats.contains_key(&peer) {
            return Ok(None);
        }
        let no_prekeys = st.no_prekeys_until.get(&peer).is_some_and(|t| *t > now());
        let sender = st.ratchets.get_mut(&peer).and_then(PeerRatchets::sender);
        Ok(Some(Conversation {
            forward_secret: sender.is_some(),
            initiated: sender.as_ref().is_some_and(|c| c.chat.initiator()),
            without_one_time_prekey: sender.as_ref().is_some_and(|c| c.without_one_time_prekey),
            peer_has_no_prekeys: sender.is_none() && no_prekeys,
        }))
    }

    /// Makes sure the next message to `peer` can go as `docs/protocol.md` §3 says: when there
    /// is no ratchet conversation and the peer's "no prekeys" answer is not fresh, fetches the
    /// peer's bundle and starts one, or remembers that it has none. Call after `ensure_chat`.
    ///
    /// # Errors
    /// Transport and server errors of the fetch (other than `no_prekeys`);
    /// [`ClientError::PeerKeyChanged`] when the bundle is for another identity key than the
    /// accepted one; [`ClientError::SigningKeyChanged`] when it is signed by another signing key
    /// than the one pinned for that identity key.
    pub(crate) async fn prepare_conversation(&self, peer: &str) -> Result<(), ClientError> {
        {
            let st = self.state.lock().await;
            if !self.prekeys_on || st.has_ratchet(peer) || st.may_send_static(peer, true) {
                return Ok(());
            }
        }
        let answer = match self.prekey_bundle(peer).await {
            Ok(a) => a,
            Err(ClientError::Server {
                code: ErrorCode::NoPrekeys,
                ..
            }) => {
                let mut st = self.state.lock().await;
                let until = now().plus_secs(self.no_prekeys_retry.as_secs());
                st.no_prekeys_until.insert(peer.to_owned(), until);
                return self.save(&st).await;
            }
            Err(e) => return Err(e),
        };
        let mut st = self.state.lock().await;
        if st.has_ratchet(peer) {
            return Ok(()); // another task started one meanwhile
        }
        let expected = st
            .chats
            .get(peer)
            .map(|c| *c.peer())
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        let signing = answer.bundle.signing_key;
        let pinned = st.peers.get(peer).and_then(|k| k.signing_key);
        if pinned.is_some_and(|p| p != signing) {
            return Err(ClientError::SigningKeyChanged {
                peer: peer.to_owned(),
            });
        }
        match RatchetChat::initiate(&st.identity, &answer.bundle, &expected, &mut OsRng) {
            Ok((chat, started)) => {
                // The bundle's signature checked out for the accepted identity key: its signing
                // key is pinned from now on (trust on first use).
                if let Some(k) = st.peers.get_mut(peer) {
                    k.signing_key.get_or_insert(signing);
                }
                let without = started.one_time_prekey.is_none();
                let r = st.ratchets.entry(peer.to_owned()).or_default();
                r.ours = Some(Conv {
                    chat,
                    without_one_time_prekey: without,
                });
                r.ours_retired = false;
                st.no_prekeys_until.remove(peer);
                if without {
                    st.notices.push(Event::StartedWithoutOneTimePrekey {
                        peer: peer.to_owned(),
                        initiated: true,
                    });
                }
                self.save(&st).await
            }
            Err(E2eError::PeerIdentityMismatch) => {
                // The relay has another key for the peer now: the directory says so, and
                // sending is refused until the user accepts it.
                drop(st);
                self.lookup(&[peer]).await?;
                self.ensure_chat(peer).await?;
                Err(E2eError::PeerIdentityMismatch.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a packet from `from` (whose static conversation exists) as `docs/protocol.md` §3
    /// says, then holds the skipped keys of all conversations to [`MAX_SKIPPED_KEYS_TOTAL`]. No
    /// error changes anything.
    pub(crate) fn open_packet(&self, st: &mut State, from: &str, packet: &[u8]) -> Result<Opened, E2eError> {
        let opened = Self::open_packet_uncapped(st, from, packet)?;
        cap_skipped_keys(&mut st.ratchets);
        Ok(opened)
    }

    fn open_packet_uncapped(st: &mut State, from: &str, packet: &[u8]) -> Result<Opened, E2eError> {
        let State {
            chats,
            ratchets,
            identity,
            prekeys,
            ..
        } = st;
        let window: &mut ChatState = chats.get_mut(from).ok_or(E2eError::Decrypt)?;
        let time = now();
        match packet_kind(packet) {
            None => Err(E2eError::Decrypt),
            Some(PacketKind::Static) => window.open(packet).map(Opened::plain),
            Some(PacketKind::Ratchet) => {
                let Some(r) = ratchets.get_mut(from) else {
                    return Err(E2eError::Decrypt);
                };
                let mut err = E2eError::Decrypt;
                for conv in r.open_order(packet, time).into_iter().flatten() {
                    match conv.chat.open(window, packet, time, &mut OsRng) {
                        Ok(received) => return Ok(Opened::plain(received)),
                        Err(e) => err = worse(err, e),
                    }
                }
                Err(err)
            }
            Some(PacketKind::Start) => {
                let start = start_of(packet)?;
                if !bool::from(start.identity.ct_eq(window.peer().as_bytes())) {
                    // Not the key accepted for this sender: the key-changed path.
                    return Err(E2eError::Decrypt);
                }
                let r = ratchets.entry(from.to_owned()).or_default();
                if let Some(t) = r
                    .theirs
                    .as_mut()
                    .filter(|t| bool::from(t.chat.start_ephemeral().ct_eq(&start.ephemeral)))
                {
                    return t.chat.open(window, packet, time, &mut OsRng).map(Opened::plain);
                }
                let (chat, accepted) =
                    RatchetChat::accept(identity, prekeys, window, packet, time, &mut OsRng)?;
                let one_time = accepted.one_time_prekey.is_some();
                // A new start while ours has heard back: the peer may no longer have ours (its
                // profile came back from an older copy), or this is a late copy of a start it
                // made before it saw ours (it then still has ours). Ours sends no more, so the
                // answer goes where the peer surely reads; it stays to open what the peer sends
                // in it (`docs/protocol.md` §3.3). While ours is still a pending start the two
                // crossed (simultaneous starts): the peer will accept ours, the usual rule.
                if r.ours.as_ref().is_some_and(|o| !o.chat.start_pending()) {
                    r.ours_retired = true;
                }
                r.theirs = Some(Conv {
                    chat,
                    without_one_time_prekey: !one_time,
                });
                Ok(Opened {
                    received: accepted.received,
                    accepted: Some(one_time),
                })
            }
        }
    }
}

/// Saved conversations by peer, for the profile.
pub(crate) fn ratchets_data(r: &BTreeMap<String, PeerRatchets>) -> BTreeMap<String, RatchetsData> {
    r.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.data()))
        .collect()
}

/// Holds the skipped message keys of all conversations to [`MAX_SKIPPED_KEYS_TOTAL`]: while
/// over, the oldest keys of the conversation holding the most are evicted (zeroized) — the
/// largest stores levelled down together, ties in peer order, `ours` before `theirs`. A message
/// whose key went fails with [`E2eError::MessageKeyGone`]. Returns how many keys went.
pub(crate) fn cap_skipped_keys(r: &mut BTreeMap<String, PeerRatchets>) -> usize {
    let mut convs: Vec<&mut Conv> = r
        .values_mut()
        .flat_map(|p| [p.ours.as_mut(), p.theirs.as_mut()])
        .flatten()
        .collect();
    let mut counts: Vec<usize> = convs.iter().map(|c| c.chat.ratchet().skipped_count()).collect();
    let mut total: usize = counts.iter().sum();
    let mut dropped = 0;
    while total > MAX_SKIPPED_KEYS_TOTAL {
        let most = counts.iter().copied().max().unwrap_or(0);
        if most == 0 {
            break; // unreachable: total > 0
        }
        let next = counts.iter().copied().filter(|c| *c < most).max().unwrap_or(0);
        let holders = counts.iter().filter(|c| **c == most).count();
        // Each holder down towards the next largest, the excess shared among them.
        let per = (most - next).min((total - MAX_SKIPPED_KEYS_TOTAL).div_ceil(holders));
        for (conv, count) in convs.iter_mut().zip(counts.iter_mut()) {
            if *count != most || total <= MAX_SKIPPED_KEYS_TOTAL {
                continue;
            }
            let n = conv
                .chat
                .drop_oldest_skipped(per.min(total - MAX_SKIPPED_KEYS_TOTAL));
            *count -= n;
            total -= n;
            dropped += n;
        }
    }
    dropped
}

/// Whether `t` is at least `secs` seconds before `now`.
pub(crate) fn older_than(t: Option<UnixTime>, secs: u64) -> bool {
    t.is_none_or(|t| t.plus_secs(secs) <= now())
}
