//! mtproto-session: one full server-side handshake, envelope encode/decode of 1 KiB, and the
//! stored session record (binary and JSON) with a full replay window.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mtproto_crypto::{rand_core::OsRng, DhGroup, ServerSigningKey};
use mtproto_session::{ClientHandshake, ClientId, ServerHandshake, ServerPin, UnixTime};

fn server_share(c: &mut Criterion) {
    // The same, timing only the server's three calls (client work done in setup).
    let key = ServerSigningKey::generate(&mut OsRng);
    let group = DhGroup::mtproto().with_generator_table(); // as the relay builds it
    let server = ServerHandshake::new(&key, &group);
    let now = UnixTime::from_secs(1_800_000_000);
    let pin = ServerPin::Key(key.public());
    let mut g = c.benchmark_group("session");
    g.sample_size(30);
    g.bench_function("server_handshake_cpu_only", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (c1, req) = ClientHandshake::start(pin, ClientId::new("bench").unwrap(), &mut OsRng);
                let t = std::time::Instant::now();
                let (mut pending, res) = server.handle_req_pq(&req, now, &mut OsRng).unwrap();
                total += t.elapsed();
                let (c2, req2) = c1.handle_res_pq(&res).unwrap();
                let t = std::time::Instant::now();
                let res2 = server
                    .handle_req_dh_params(&mut pending, &req2, now, &mut OsRng)
                    .unwrap();
                total += t.elapsed();
                let (_c3, req3) = c2.handle_server_dh_params(&res2, now, &mut OsRng).unwrap();
                let t = std::time::Instant::now();
                black_box(
                    server
                        .handle_set_client_dh_params(pending, &req3, now, &mut OsRng)
                        .unwrap(),
                );
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let key = ServerSigningKey::generate(&mut OsRng);
    let group = DhGroup::mtproto();
    let server = ServerHandshake::new(&key, &group);
    let now = UnixTime::from_secs(1_800_000_000);
    let (c1, req) = ClientHandshake::start(
        ServerPin::Key(key.public()),
        ClientId::new("b").unwrap(),
        &mut OsRng,
    );
    let (mut pending, res) = server.handle_req_pq(&req, now, &mut OsRng).unwrap();
    let (c2, req) = c1.handle_res_pq(&res).unwrap();
    let res = server
        .handle_req_dh_params(&mut pending, &req, now, &mut OsRng)
        .unwrap();
    let (c3, req) = c2.handle_server_dh_params(&res, now, &mut OsRng).unwrap();
    let (mut est, res) = server
        .handle_set_client_dh_params(pending, &req, now, &mut OsRng)
        .unwrap();
    let mut client = c3.handle_dh_gen_ok(&res).unwrap();
    let body = vec![b'a'; 1024];
    let mut g = c.benchmark_group("envelope_1k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_request", |b| {
        b.iter(|| client.encode_request(black_box(&body), now, &mut OsRng).unwrap())
    });
    g.bench_function("encode_and_decode", |b| {
        b.iter(|| {
            let out = client.encode_request(black_box(&body), now, &mut OsRng).unwrap();
            est.session
                .decode_request(&est.auth_key, &out.packet, now)
                .unwrap()
        })
    });
    g.finish();

    // A full replay window, as a busy client's session holds: what a store writes with every
    // request it accepts, in the binary form and as JSON.
    // Requests 5 ms apart, so msg_ids are spaced as a real client's are.
    for i in 0..mtproto_session::REPLAY_WINDOW as u64 * 2 {
        let t = UnixTime::from_nanos(now.as_nanos() + 1_000_000_000 + i * 5_000_000);
        let out = client.encode_request(b"x", t, &mut OsRng).unwrap();
        est.session.decode_request(&est.auth_key, &out.packet, t).unwrap();
    }
    let session = est.session.clone();
    let bytes = session.to_bytes();
    let json = serde_json::to_string(&session).unwrap();
    eprintln!(
        "session record: {} bytes binary, {} bytes JSON",
        bytes.len(),
        json.len()
    );
    let mut g = c.benchmark_group("session_record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("to_bytes", |b| b.iter(|| black_box(&session).to_bytes()));
    g.bench_function("from_bytes", |b| {
        b.iter(|| mtproto_session::ServerSession::from_bytes(black_box(&bytes)).unwrap())
    });
    g.bench_function("to_json", |b| {
        b.iter(|| serde_json::to_string(black_box(&session)).unwrap())
    });
    g.bench_function("from_json", |b| {
        b.iter(|| serde_json::from_str::<mtproto_session::ServerSession>(black_box(&json)).unwrap())
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

/// The client's side of the handshake's proof of work at the default and raised levels, beside
/// the server's check of one answer (one hash).
fn work(c: &mut Criterion) {
    let mut g = c.benchmark_group("pow");
    g.sample_size(20);
    for bits in [12u8, 16] {
        let mut n = 0u8;
        g.bench_function(format!("client_solve_{bits}_bits"), |b| {
            b.iter(|| {
                // A fresh handshake each time: solving times vary, the mean is 2^bits hashes.
                n = n.wrapping_add(1);
                mtproto_session::work::solve(&[n; 16], &[n ^ 0x5a; 16], bits).unwrap()
            })
        });
    }
    let answer = mtproto_session::work::solve(&[1; 16], &[2; 16], 12).unwrap();
    g.bench_function("server_check", |b| {
        b.iter(|| mtproto_session::work::check(&[1; 16], &[2; 16], 12, black_box(&answer)))
    });
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = server_share, envelope, work }
criterion_main!(benches);
