//! Property tests: msg_ids stay monotonic under any clock; the replay window never accepts a
//! duplicate and never forgets a live id; decoding arbitrary bytes never panics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use mtproto_crypto::{rand_core::OsRng, AuthKey, IdentitySecret};
use mtproto_session::{
    ChatState, MsgId, MsgIdGen, ReplayWindow, Sender, ServerSalt, ServerSession, SessionId, UnixTime,
    Verdict, REPLAY_WINDOW,
};
use proptest::prelude::*;

proptest! {
    #[test]
    fn msg_ids_are_strictly_increasing_under_any_clock(
        clock in proptest::collection::vec(0u64..4_000_000_000_000_000_000, 1..200),
        server in any::<bool>(),
    ) {
        let mut g = MsgIdGen::new();
        let sender = if server { Sender::Server { response: true } } else { Sender::Client };
        let mut last = 0u64;
        for t in clock {
            let id = g.next(sender, UnixTime::from_nanos(t));
            prop_assert!(id.0 > last);
            prop_assert_eq!(id.0 % 4, if server { 1 } else { 0 });
            prop_assert!(id.0 & 0xffff_ffff != 0);
            last = id.0;
        }
    }

    #[test]
    fn the_replay_window_never_accepts_a_duplicate_nor_forgets_a_live_id(
        ids in proptest::collection::vec(1u64..2000, 1..1500),
    ) {
        let mut w = ReplayWindow::default();
        let mut accepted: Vec<u64> = Vec::new();
        let n = ids.len();
        for (step, id) in ids.into_iter().enumerate() {
            let id = id * 4;
            // seq_no 0 for every message: never content-related, so only ids matter here.
            match w.check(MsgId(id), 0) {
                Ok(Verdict::Fresh) => {
                    prop_assert!(!accepted.contains(&id), "accepted a duplicate");
                    w.record(MsgId(id), 0);
                    accepted.push(id);
                }
                Ok(Verdict::Duplicate) => prop_assert!(accepted.contains(&id)),
                Err(_) => {
                    // Refused as too old: only allowed when the window is full and id is below it.
                    prop_assert!(w.len() >= REPLAY_WINDOW);
                }
            }
            if step % 64 != 0 && step + 1 != n {
                continue;
            }
            // The newest REPLAY_WINDOW accepted ids (by value) are all remembered.
            let mut live = accepted.clone();
            live.sort_unstable();
            for keep in live.iter().rev().take(REPLAY_WINDOW) {
                prop_assert!(w.contains(MsgId(*keep)));
            }
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let key = AuthKey::from_bytes(core::array::from_fn(|i| (i * 3) as u8));
        let mut s = ServerSession::new(SessionId([1; 8]), ServerSalt([2; 8]), UnixTime::from_secs(1_800_000_000));
        let mut packet = bytes.clone();
        if packet.len() >= 8 {
            packet[..8].copy_from_slice(key.id().as_bytes());
        }
        prop_assert!(s.decode_request(&key, &packet, UnixTime::from_secs(1_800_000_000)).is_err());
        let a = IdentitySecret::from_bytes([5; 32]);
        let b = IdentitySecret::from_bytes([6; 32]);
        let mut chat = ChatState::new(&a, b.public()).unwrap();
        prop_assert!(chat.open(&packet).is_err());
        let _ = serde_json::from_slice::<mtproto_session::ReqPq>(&bytes);
        let _ = serde_json::from_slice::<mtproto_session::SetClientDhParams>(&bytes);
        let _ = OsRng;
    }
}
