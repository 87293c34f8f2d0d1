//! Sessions and envelopes: a client and a server session in memory, and every rule broken once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use mtproto_crypto::{
    rand_core::OsRng, AuthKey, DhGroup, Direction, Framing, Layout, Mode, ServerSigningKey,
};
use mtproto_session::{
    session::{open_envelope_with, ENVELOPE, MAX_BODY},
    BadMsgCode, ClientHandshake, ClientId, ClientSession, EnvelopeError, Established, MsgId, Notice,
    ServerHandshake, ServerPin, ServerSalt, SessionId, UnixTime,
};

fn connect(now: UnixTime) -> (ClientSession, Established) {
    let key = ServerSigningKey::generate(&mut OsRng);
    let group = DhGroup::mtproto();
    let server = ServerHandshake::new(&key, &group);
    let (c, req) = ClientHandshake::start(
        ServerPin::Key(key.public()),
        ClientId::new("bob").unwrap(),
        &mut OsRng,
    );
    let (mut pending, res) = server.handle_req_pq(&req, now, &mut OsRng).unwrap();
    let (c, req) = c.handle_res_pq(&res).unwrap();
    let res = server
        .handle_req_dh_params(&mut pending, &req, now, &mut OsRng)
        .unwrap();
    let (c, req) = c.handle_server_dh_params(&res, now, &mut OsRng).unwrap();
    let (est, res) = server
        .handle_set_client_dh_params(pending, &req, now, &mut OsRng)
        .unwrap();
    (c.handle_dh_gen_ok(&res).unwrap(), est)
}

fn t0() -> UnixTime {
    UnixTime::from_secs(1_800_000_000)
}

/// Seals an envelope with arbitrary header fields (what a broken or hostile client could send).
fn raw(
    key: &AuthKey,
    salt: ServerSalt,
    session: SessionId,
    msg_id: u64,
    seq_no: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut p = salt.0.to_vec();
    p.extend_from_slice(&session.0);
    p.extend_from_slice(&msg_id.to_le_bytes());
    p.extend_from_slice(&seq_no.to_le_bytes());
    p.extend_from_slice(&(body.len() as u32).to_le_bytes());
    p.extend_from_slice(body);
    ENVELOPE
        .seal(key, Direction::ClientToServer, &p, &mut OsRng)
        .unwrap()
}

fn bad_code(e: EnvelopeError) -> BadMsgCode {
    match e {
        EnvelopeError::BadMsg { code, .. } => code,
        other => panic!("expected a bad message, got {other:?}"),
    }
}

#[test]
fn requests_and_answers_round_trip() {
    let (mut client, mut est) = connect(t0());
    for i in 0..5u8 {
        let now = t0().plus_secs(u64::from(i));
        let out = client.encode_request(&[i; 40], now, &mut OsRng).unwrap();
        assert_eq!(out.msg_id.0 % 4, 0);
        assert_eq!(out.seq_no, 2 * u32::from(i) + 1);
        let got = est
            .session
            .decode_request(&est.auth_key, &out.packet, now)
            .unwrap();
        assert_eq!(got.body, vec![i; 40]);
        let answer = est
            .session
            .encode_response(&est.auth_key, b"{\"ok\":true}", now, &mut OsRng)
            .unwrap();
        assert_eq!(answer.msg_id.0 % 4, 1);
        assert_eq!(
            client.decode_response(&answer.packet, now).unwrap().body,
            b"{\"ok\":true}"
        );
    }
}

#[test]
fn a_replayed_envelope_is_a_duplicate_even_much_later() {
    let (mut client, mut est) = connect(t0());
    let out = client.encode_request(b"x", t0(), &mut OsRng).unwrap();
    est.session
        .decode_request(&est.auth_key, &out.packet, t0())
        .unwrap();
    assert_eq!(
        est.session
            .decode_request(&est.auth_key, &out.packet, t0())
            .unwrap_err(),
        EnvelopeError::Duplicate { msg_id: out.msg_id.0 }
    );
    assert!(matches!(
        est.session
            .decode_request(&est.auth_key, &out.packet, t0().plus_secs(1000)),
        Err(EnvelopeError::Duplicate { .. })
    ));
    // Server answers replayed to the client are refused too.
    let a = est
        .session
        .encode_response(&est.auth_key, b"y", t0(), &mut OsRng)
        .unwrap();
    client.decode_response(&a.packet, t0()).unwrap();
    assert!(matches!(
        client.decode_response(&a.packet, t0()),
        Err(EnvelopeError::Duplicate { .. })
    ));
}

#[test]
fn msg_ids_outside_the_window_or_with_wrong_bits_are_refused() {
    let (mut client, mut est) = connect(t0());
    let out = client.encode_request(b"x", t0(), &mut OsRng).unwrap();
    let err = est
        .session
        .decode_request(&est.auth_key, &out.packet, t0().plus_secs(301))
        .unwrap_err();
    assert_eq!(bad_code(err), BadMsgCode::MsgIdTooLow);
    let salt = client.salt();
    let sid = client.session_id();
    let future = ((t0().as_secs() + 31) << 32) | 4;
    let err = est
        .session
        .decode_request(
            &est.auth_key,
            &raw(&est.auth_key, salt, sid, future, 1, b"x"),
            t0(),
        )
        .unwrap_err();
    assert_eq!(bad_code(err), BadMsgCode::MsgIdTooHigh);
    let odd = (t0().as_secs() << 32) | 5;
    let err = est
        .session
        .decode_request(&est.auth_key, &raw(&est.auth_key, salt, sid, odd, 1, b"x"), t0())
        .unwrap_err();
    assert_eq!(bad_code(err), BadMsgCode::MsgIdBadLowBits);
}

#[test]
fn a_stale_salt_gets_the_current_one_and_the_resend_works() {
    let (mut client, mut est) = connect(t0());
    // Two hours later the first salt is out of its grace period.
    let later = t0().plus_secs(2 * 3600);
    client.sync_time(later.as_secs(), later);
    let out = client.encode_request(b"hello", later, &mut OsRng).unwrap();
    let err = est
        .session
        .decode_request(&est.auth_key, &out.packet, later)
        .unwrap_err();
    assert_eq!(bad_code(err.clone()), BadMsgCode::BadServerSalt);
    est.session.rotate_salts(later, &mut OsRng);
    let current = est.session.current_salt(later).unwrap();
    let notice = Notice::for_error(&err, current).unwrap();
    let sealed = est
        .session
        .encode_notice(&est.auth_key, &notice, later, &mut OsRng)
        .unwrap();
    assert_eq!(sealed.msg_id.0 % 4, 3);
    assert_eq!(sealed.seq_no % 2, 0);
    let incoming = client.decode_response(&sealed.packet, later).unwrap();
    assert_eq!(client.handle_notice(&incoming, later), Some(notice));
    assert_eq!(client.salt(), current);
    let again = client.encode_request(b"hello", later, &mut OsRng).unwrap();
    assert_eq!(
        est.session
            .decode_request(&est.auth_key, &again.packet, later)
            .unwrap()
            .body,
        b"hello"
    );
}

#[test]
fn notices_about_messages_never_sent_are_ignored() {
    let (mut client, mut est) = connect(t0());
    let notice = Notice::BadServerSalt {
        bad_msg_id: 12345 << 32,
        bad_msg_seqno: 1,
        error_code: 48,
        new_server_salt: mtproto_session::wire::Bytes(vec![9; 8]),
    };
    let sealed = est
        .session
        .encode_notice(&est.auth_key, &notice, t0(), &mut OsRng)
        .unwrap();
    let before = client.salt();
    let incoming = client.decode_response(&sealed.packet, t0()).unwrap();
    assert_eq!(client.handle_notice(&incoming, t0()), None);
    assert_eq!(client.salt(), before);
}

#[test]
fn clock_notices_fix_the_time_offset() {
    let (mut client, mut est) = connect(t0());
    // The client's clock runs 400 s late.
    let client_now = t0().offset_secs(-400);
    client.sync_time(client_now.as_secs(), client_now);
    let out = client.encode_request(b"x", client_now, &mut OsRng).unwrap();
    let err = est
        .session
        .decode_request(&est.auth_key, &out.packet, t0())
        .unwrap_err();
    assert_eq!(bad_code(err.clone()), BadMsgCode::MsgIdTooLow);
    let notice = Notice::for_error(&err, est.session.current_salt(t0()).unwrap()).unwrap();
    let sealed = est
        .session
        .encode_notice(&est.auth_key, &notice, t0(), &mut OsRng)
        .unwrap();
    // The client checks server ids against its (wrong) clock only through the offset: accept it.
    client.sync_time(t0().as_secs(), client_now);
    let incoming = client.decode_response(&sealed.packet, client_now).unwrap();
    assert!(client.handle_notice(&incoming, client_now).is_some());
    assert_eq!(client.time_offset(), 400);
    let again = client.encode_request(b"x", client_now, &mut OsRng).unwrap();
    est.session
        .decode_request(&est.auth_key, &again.packet, t0())
        .unwrap();
}

#[test]
fn seq_no_rules() {
    let (client, mut est) = connect(t0());
    let (salt, sid, key) = (client.salt(), client.session_id(), &est.auth_key);
    let id = |k: u64| ((t0().as_secs()) << 32) | (k * 4);
    // Even seq_no for an RPC: 35.
    let err = est
        .session
        .decode_request(key, &raw(key, salt, sid, id(1), 2, b"x"), t0())
        .unwrap_err();
    assert_eq!(bad_code(err), BadMsgCode::SeqNoExpectedOdd);
    est.session
        .decode_request(key, &raw(key, salt, sid, id(10), 5, b"x"), t0())
        .unwrap();
    // Higher msg_id, lower seq_no: 32.
    let err = est
        .session
        .decode_request(key, &raw(key, salt, sid, id(11), 3, b"x"), t0())
        .unwrap_err();
    assert_eq!(bad_code(err), BadMsgCode::SeqNoTooLow);
    // Same odd seq_no: 32.
    let err = est
        .session
        .decode_request(key, &raw(key, salt, sid, id(12), 5, b"x"), t0())
        .unwrap_err();
    assert_eq!(bad_code(err), BadMsgCode::SeqNoTooLow);
    // Lower msg_id, higher seq_no: 33.
    let err = est
        .session
        .decode_request(key, &raw(key, salt, sid, id(9), 7, b"x"), t0())
        .unwrap_err();
    assert_eq!(bad_code(err), BadMsgCode::SeqNoTooHigh);
    // Reordering that respects the order is fine.
    est.session
        .decode_request(key, &raw(key, salt, sid, id(9), 3, b"x"), t0())
        .unwrap();
    est.session
        .decode_request(key, &raw(key, salt, sid, id(13), 7, b"x"), t0())
        .unwrap();
}

#[test]
fn wrong_session_truncated_and_oversized_envelopes() {
    let (mut client, mut est) = connect(t0());
    let key = &est.auth_key;
    let other = SessionId([7; 8]);
    let err = est.session.decode_request(
        key,
        &raw(key, client.salt(), other, (t0().as_secs() << 32) | 4, 1, b"x"),
        t0(),
    );
    assert_eq!(err.unwrap_err(), EnvelopeError::WrongSession);
    let out = client.encode_request(b"truncate me", t0(), &mut OsRng).unwrap();
    for cut in [0, 7, 8, 24, 40, out.packet.len() - 16, out.packet.len() - 1] {
        assert!(
            est.session.decode_request(key, &out.packet[..cut], t0()).is_err(),
            "cut at {cut}"
        );
    }
    let mut longer = out.packet.clone();
    longer.extend_from_slice(&[0; 16]);
    assert_eq!(
        est.session.decode_request(key, &longer, t0()).unwrap_err(),
        EnvelopeError::Decrypt
    );
    assert!(matches!(
        client.encode_request(&vec![0; MAX_BODY + 1], t0(), &mut OsRng),
        Err(EnvelopeError::TooLarge { .. })
    ));
    assert!(matches!(
        est.session.decode_request(key, &vec![0; MAX_BODY + 2000], t0()),
        Err(EnvelopeError::TooLarge { .. })
    ));
    // Another key: opaque.
    let stranger = AuthKey::from_bytes(core::array::from_fn(|i| i as u8));
    assert_eq!(
        est.session
            .decode_request(&stranger, &out.packet, t0())
            .unwrap_err(),
        EnvelopeError::Decrypt
    );
}

#[test]
fn state_survives_a_restart_on_both_sides() {
    let (mut client, est) = connect(t0());
    let out = client.encode_request(b"1", t0(), &mut OsRng).unwrap();
    let saved = serde_json::to_string(&client.state()).unwrap();
    assert!(!format!("{:?}", client.state()).contains(&hex::encode(&client.auth_key().expose_secret()[..16])));
    let mut server_session = est.session.clone();
    let server_saved = serde_json::to_string(&server_session).unwrap();
    server_session
        .decode_request(&est.auth_key, &out.packet, t0())
        .unwrap();
    let mut restored: mtproto_session::ServerSession = serde_json::from_str(&server_saved).unwrap();
    restored.decode_request(&est.auth_key, &out.packet, t0()).unwrap();
    let mut client2 = ClientSession::restore(serde_json::from_str(&saved).unwrap()).unwrap();
    let out2 = client2.encode_request(b"2", t0(), &mut OsRng).unwrap();
    assert!(out2.msg_id > out.msg_id, "restored msg_id generator continues");
    assert_eq!(
        restored
            .decode_request(&est.auth_key, &out2.packet, t0())
            .unwrap()
            .body,
        b"2"
    );
}

/// Telegram's published encrypted messages go through the same header parser with the IGE
/// framing (`gen_client_to_server_ping_official_auth_key`, `grammers_decrypt_server_data_v2`).
#[test]
fn mtproto_vectors_replay_through_the_envelope_parser() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../mtproto-crypto/tests/data/mtproto_vectors.json"
    );
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ige = Framing::new(Mode::Ige, Layout::MTPROTO);
    let mut seen = 0;
    for v in file["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        if !matches!(
            name,
            "gen_client_to_server_ping_official_auth_key"
                | "gen_server_to_client_pong_official_auth_key"
                | "grammers_decrypt_server_data_v2"
        ) {
            continue;
        }
        let (i, o) = (&v["inputs"], &v["outputs"]);
        let key = AuthKey::from_slice(&hex::decode(i["auth_key"].as_str().unwrap()).unwrap()).unwrap();
        let dir = if i["x"] == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let packet = hex::decode(o["packet"].as_str().or(i["packet"].as_str()).unwrap()).unwrap();
        let env = open_envelope_with(ige, &key, dir, &packet).unwrap();
        let msg_id = i["msg_id"].as_u64().or(o["msg_id"].as_u64()).unwrap();
        assert_eq!(env.msg_id, MsgId(msg_id), "{name}");
        let seq = i["seq_no"].as_u64().or(o["seq_no"].as_u64()).unwrap();
        assert_eq!(u64::from(env.seq_no), seq, "{name}");
        let salt = i["salt"].as_str().or(o["salt"].as_str()).unwrap();
        assert_eq!(hex::encode(env.salt.0), salt.to_lowercase(), "{name}");
        let mut flipped = packet.clone();
        flipped[30] ^= 1;
        assert_eq!(
            open_envelope_with(ige, &key, dir, &flipped).unwrap_err(),
            EnvelopeError::Decrypt
        );
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn a_seq_no_notice_moves_the_counter_only_when_it_names_the_seq_no_we_sent() {
    let (mut client, mut est) = connect(t0());
    let out = client.encode_request(b"x", t0(), &mut OsRng).unwrap();
    let mut notice = |client: &mut mtproto_session::ClientSession, bad_msg_seqno: u32| {
        let n = Notice::BadMsgNotification {
            bad_msg_id: out.msg_id.0,
            bad_msg_seqno,
            error_code: 32,
        };
        let sealed = est
            .session
            .encode_notice(&est.auth_key, &n, t0(), &mut OsRng)
            .unwrap();
        let incoming = client.decode_response(&sealed.packet, t0()).unwrap();
        client.handle_notice(&incoming, t0())
    };
    // A notice naming another seq_no than the one sent with that msg_id (a faulty relay): not
    // applied, else one such notice could push the counter to the top for good.
    assert_eq!(notice(&mut client, u32::MAX - 4), None);
    let next = client.encode_request(b"x", t0(), &mut OsRng).unwrap();
    assert_eq!(next.seq_no, out.seq_no + 2);
    // The real one: the counter jumps to at most MAX_SEQ_NO_STEP above the refused seq_no.
    assert!(notice(&mut client, out.seq_no).is_some());
    let after = client.encode_request(b"x", t0(), &mut OsRng).unwrap();
    assert_eq!(after.seq_no, out.seq_no + mtproto_session::MAX_SEQ_NO_STEP);
}
