//! What the relay-core tests that drive a `Relay` directly share: a clock the test moves, a
//! relay on a memory engine, and a client session made by a real handshake.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mtproto_crypto::{rand_core::OsRng, RecoveryCode, ServerSigningKey};
use mtproto_session::{wire::Bytes, ClientHandshake, ClientId, ClientSession, ServerPin, UnixTime};
use relay_core::api::{Call, Endpoint, EnvelopeRequest};
use relay_core::{Clock, MemoryEngine, Relay, RelayConfig, RelayError};

/// A clock the test moves (unix seconds).
pub struct Manual(pub AtomicU64);

impl Manual {
    /// Moves the clock to `secs`.
    pub fn set(&self, secs: u64) {
        self.0.store(secs, Ordering::Relaxed);
    }
}

impl Clock for Manual {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(self.0.load(Ordering::Relaxed))
    }
}

/// A relay on a memory engine whose clock starts at `t0` and is the returned [`Manual`].
pub fn relay_at(t0: u64) -> (Relay, Arc<Manual>) {
    let clock = Arc::new(Manual(AtomicU64::new(t0)));
    let relay = Relay::new(
        Arc::new(MemoryEngine::new()),
        ServerSigningKey::generate(&mut OsRng),
        RelayConfig::default(),
    )
    .with_clock(clock.clone());
    (relay, clock)
}

/// A client named `name`, registered by a full handshake at `now`.
pub async fn client(relay: &Relay, name: &str, now: UnixTime) -> ClientSession {
    register(relay, name, now, None, None).await
}

/// A client named `name`, registered by a full handshake at `now` with `register` as its
/// recovery key, taking the name over with `recover` when given.
pub async fn register(
    relay: &Relay,
    name: &str,
    now: UnixTime,
    register: Option<&RecoveryCode>,
    recover: Option<&RecoveryCode>,
) -> ClientSession {
    let pin = ServerPin::Key(relay.server_key().public());
    let (c, req) = ClientHandshake::start(pin, ClientId::new(name).unwrap(), &mut OsRng);
    let res = relay.req_pq(&req).await.unwrap();
    let (c, req) = c.handle_res_pq(&res).unwrap();
    let res = relay.req_dh_params(&req).await.unwrap();
    let (c, mut req) = c.handle_server_dh_params(&res, now, &mut OsRng).unwrap();
    c.prove_recovery(&mut req, register.map(RecoveryCode::public), recover);
    let res = relay.set_client_dh_params(&req).await.unwrap();
    c.handle_dh_gen_ok(&res).unwrap()
}

/// The JSON carrier of an envelope.
pub fn envelope(packet: &[u8]) -> EnvelopeRequest {
    EnvelopeRequest {
        packet: Some(Bytes(packet.to_vec())),
        ..EnvelopeRequest::default()
    }
}

/// A poll of `c` at `at` that acknowledges nothing and does not wait (not committed, unless due).
pub async fn idle_poll(relay: &Relay, c: &mut ClientSession, at: UnixTime) -> Result<(), RelayError> {
    let call = Call::PollMessages {
        ack: Vec::new(),
        timeout_ms: Some(0),
        limit: None,
    };
    let packet = c
        .encode_request(&serde_json::to_vec(&call).unwrap(), at, &mut OsRng)
        .unwrap()
        .packet;
    relay
        .handle(Endpoint::PollMessages, &envelope(&packet))
        .await
        .map(|_| ())
}
