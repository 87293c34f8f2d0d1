//! Salts survive requests that are not committed: after a long quiet spell, the salt a
//! `bad_server_salt` notice announces is accepted by the next request, and keeps being accepted
//! while polls that change nothing are not committed (found by the protocol documentation
//! review: the relay drew fresh random salts on every request and saved them only on commit, so
//! a client that only polled got 48 forever).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{client, idle_poll as poll, relay_at};

use mtproto_session::{BadMsgCode, UnixTime};
use relay_core::RelayError;

#[tokio::test]
async fn a_salt_announced_after_a_quiet_spell_is_accepted_by_every_later_request() {
    let t0 = 1_800_000_000;
    let (relay, clock) = relay_at(t0);
    let mut alice = client(&relay, "alice", UnixTime::from_secs(t0)).await;
    poll(&relay, &mut alice, UnixTime::from_secs(t0)).await.unwrap();

    // 100 minutes without a request: the first salt (60 minutes with its grace) is over.
    let later = t0 + 6_000;
    clock.set(later);
    let at = UnixTime::from_secs(later);
    let notice = match poll(&relay, &mut alice, at).await {
        Err(RelayError::BadMsg { code, notice }) => {
            assert_eq!(code, BadMsgCode::BadServerSalt);
            notice.expect("a sealed notice")
        }
        other => panic!("expected bad_server_salt, got {other:?}"),
    };
    let incoming = alice.decode_response(&notice, at).unwrap();
    assert!(alice.handle_notice(&incoming, at).is_some(), "the notice applies");
    // The announced salt is accepted now, and again by polls that commit nothing.
    for i in 0..3 {
        clock.set(later + i * 60);
        poll(&relay, &mut alice, UnixTime::from_secs(later + i * 60))
            .await
            .unwrap_or_else(|e| panic!("poll {i} after the notice: {e:?}"));
    }
}
