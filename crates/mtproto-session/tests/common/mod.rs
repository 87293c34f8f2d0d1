//! Shared by the ratchet tests: a deterministic RNG and two peers in memory.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::indexing_slicing)]

use mtproto_crypto::rand_core::{CryptoRng, Error as RandError, RngCore};
use mtproto_crypto::{Fingerprint, IdentitySecret, IdentitySigningKey};
use mtproto_session::{
    x3dh::Prekeys, Accepted, ChatState, E2eError, PrekeyBundle, Ratchet, RatchetChat, Received, Sealed,
    Started, UnixTime,
};
use sha2::{Digest, Sha256};

/// A deterministic stream for tests and vectors: block i = SHA-256("mtproto-relay/test-rng/v1" ‖
/// seed ‖ i as u64 LE), the blocks concatenated, bytes handed out in order. A JavaScript
/// implementation reproduces the vectors by drawing the same bytes in the same order.
pub struct TestRng {
    seed: Vec<u8>,
    counter: u64,
    buf: Vec<u8>,
}

impl TestRng {
    pub fn new(seed: &[u8]) -> Self {
        Self {
            seed: seed.to_vec(),
            counter: 0,
            buf: Vec::new(),
        }
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            if self.buf.is_empty() {
                let block = Sha256::new()
                    .chain_update(b"mtproto-relay/test-rng/v1")
                    .chain_update(&self.seed)
                    .chain_update(self.counter.to_le_bytes())
                    .finalize();
                self.counter += 1;
                self.buf = block.iter().rev().copied().collect();
            }
            *d = self.buf.pop().unwrap();
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), RandError> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TestRng {}

pub fn now() -> UnixTime {
    UnixTime::from_secs(1_800_000_000)
}

/// Alice and Bob with identities and Bob's prekeys.
pub struct Peers {
    pub alice: IdentitySecret,
    pub bob: IdentitySecret,
    pub bob_signing: IdentitySigningKey,
    pub bob_prekeys: Prekeys,
    pub rng: TestRng,
}

pub fn peers(seed: &[u8]) -> Peers {
    let mut rng = TestRng::new(seed);
    let alice = IdentitySecret::generate(&mut rng);
    let bob = IdentitySecret::generate(&mut rng);
    let bob_signing = IdentitySigningKey::generate(&mut rng);
    let bob_prekeys = Prekeys::new(&bob, &bob_signing, now(), &mut rng);
    Peers {
        alice,
        bob,
        bob_signing,
        bob_prekeys,
        rng,
    }
}

/// One side of a ratchet conversation with the peer's one receive window (the static
/// conversation's [`ChatState`]), as a client keeps them.
pub struct Side {
    pub chat: RatchetChat,
    pub window: ChatState,
}

impl Side {
    pub fn seal(&mut self, body: &[u8], now: UnixTime, rng: &mut TestRng) -> Result<Sealed, E2eError> {
        self.chat.seal(&mut self.window, body, now, rng)
    }
    pub fn open(&mut self, packet: &[u8], now: UnixTime, rng: &mut TestRng) -> Result<Received, E2eError> {
        self.chat.open(&mut self.window, packet, now, rng)
    }
    pub fn start_pending(&self) -> bool {
        self.chat.start_pending()
    }
    pub fn ratchet(&self) -> &Ratchet {
        self.chat.ratchet()
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.window.fingerprint()
    }
    /// Alice's side from Bob's bundle, with a fresh window.
    pub fn initiate(
        own: &IdentitySecret,
        bundle: &PrekeyBundle,
        peer: &IdentitySecret,
        rng: &mut TestRng,
    ) -> Result<(Self, Started), E2eError> {
        let (chat, started) = RatchetChat::initiate(own, bundle, &peer.public(), rng)?;
        let window = ChatState::new(own, peer.public())?;
        Ok((Self { chat, window }, started))
    }
    /// Bob's side from a start, with a fresh window.
    pub fn accept(
        own: &IdentitySecret,
        prekeys: &mut Prekeys,
        peer: &IdentitySecret,
        packet: &[u8],
        now: UnixTime,
        rng: &mut TestRng,
    ) -> Result<(Self, Accepted), E2eError> {
        let mut window = ChatState::new(own, peer.public())?;
        let (chat, acc) = RatchetChat::accept(own, prekeys, &mut window, packet, now, rng)?;
        Ok((Self { chat, window }, acc))
    }
}

/// A started conversation: Alice sent "hello" with a one-time prekey, Bob accepted it.
pub fn started(seed: &[u8]) -> (Peers, Side, Side) {
    let mut p = peers(seed);
    let opk = p.bob_prekeys.generate_one_time(5, &mut p.rng).unwrap().pop();
    let bundle = p.bob_prekeys.bundle(opk);
    let (mut a, _) = Side::initiate(&p.alice, &bundle, &p.bob, &mut p.rng).unwrap();
    let first = a.seal(b"hello", now(), &mut p.rng).unwrap();
    let (b, acc) = Side::accept(
        &p.bob,
        &mut p.bob_prekeys,
        &p.alice,
        &first.packet,
        now(),
        &mut p.rng,
    )
    .unwrap();
    assert_eq!(acc.received.body, b"hello");
    (p, a, b)
}

/// Save and restore through JSON, as a client's store would: the conversation's saved form
/// with its window beside it (under `"window"`).
pub fn saved(c: &Side) -> String {
    let mut v = serde_json::to_value(c.chat.data()).unwrap();
    v["window"] = serde_json::to_value(c.window.data()).unwrap();
    serde_json::to_string(&v).unwrap()
}

pub fn load(json: &str) -> Side {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    let window = v.as_object_mut().unwrap().remove("window").unwrap();
    Side {
        chat: RatchetChat::restore(serde_json::from_value(v).unwrap()).unwrap(),
        window: ChatState::restore(serde_json::from_value(window).unwrap()).unwrap(),
    }
}

/// A started conversation in which Bob answered once, so Alice's packets carry no start.
pub fn answered(seed: &[u8]) -> (Peers, Side, Side) {
    let (mut p, mut a, mut b) = started(seed);
    let r = b.seal(b"answer", now(), &mut p.rng).unwrap();
    a.open(&r.packet, now(), &mut p.rng).unwrap();
    assert!(!a.start_pending());
    (p, a, b)
}
