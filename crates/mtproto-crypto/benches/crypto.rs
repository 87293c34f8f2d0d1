//! mtproto-crypto beside OpenSSL (through the `openssl` crate, EVP where it exists), measured in
//! the same process on the same machine. Figures and the reading of them: `docs/benchmarks.md`.
//! Run with `cargo bench -p mtproto-crypto --bench crypto` (a filter after `--` selects rows); it
//! first prints the CPU model, the core count and the load, which go with the figures.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mtproto_crypto::{
    hazmat, kdf, AuthKey, DhGroup, DhSecret, Direction, Framing, IdentitySecret, Layout, Mode, MsgKey,
    ServerSigningKey, MTPROTO_DH_PRIME,
};
use openssl::{
    bn::BigNum,
    derive::Deriver,
    dh::Dh,
    pkey::{Id, PKey},
    sha::sha256,
    sign::Signer,
    symm::{Cipher, Crypter, Mode as SslMode},
};

fn ssl_cbc(mode: SslMode, key: &[u8; 32], iv: &[u8; 16], input: &[u8], out: &mut [u8]) {
    let mut c = Crypter::new(Cipher::aes_256_cbc(), mode, key, Some(iv)).unwrap();
    c.pad(false);
    let n = c.update(input, out).unwrap();
    c.finalize(&mut out[n..]).unwrap();
}

fn aes(c: &mut Criterion) {
    let key = [7u8; 32];
    let iv16 = [9u8; 16];
    let iv32 = [9u8; 32];
    for size in [1024usize, 16 * 1024] {
        let mut g = c.benchmark_group(format!("aes256/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let data = vec![0x5au8; size];
        let mut buf = data.clone();
        let mut out = vec![0u8; size + 16];
        g.bench_function("cbc_encrypt/ours", |b| {
            b.iter(|| hazmat::aes256_cbc_encrypt(&key, &iv16, black_box(&mut buf)).unwrap())
        });
        g.bench_function("cbc_encrypt/openssl", |b| {
            b.iter(|| ssl_cbc(SslMode::Encrypt, &key, &iv16, black_box(&data), &mut out))
        });
        g.bench_function("cbc_decrypt/ours", |b| {
            b.iter(|| hazmat::aes256_cbc_decrypt(&key, &iv16, black_box(&mut buf)).unwrap())
        });
        g.bench_function("cbc_decrypt/openssl", |b| {
            b.iter(|| ssl_cbc(SslMode::Decrypt, &key, &iv16, black_box(&data), &mut out))
        });
        g.bench_function("ige_encrypt/ours", |b| {
            b.iter(|| hazmat::aes256_ige_encrypt(&key, &iv32, black_box(&mut buf)).unwrap())
        });
        g.bench_function("ige_decrypt/ours", |b| {
            b.iter(|| hazmat::aes256_ige_decrypt(&key, &iv32, black_box(&mut buf)).unwrap())
        });
        let ssl_key = openssl::aes::AesKey::new_encrypt(&key).unwrap();
        g.bench_function("ige_encrypt/openssl", |b| {
            b.iter(|| {
                let mut iv = iv32;
                openssl::aes::aes_ige(
                    black_box(&data),
                    &mut out[..size],
                    &ssl_key,
                    &mut iv,
                    SslMode::Encrypt,
                )
            })
        });
        g.finish();
    }
}

fn hashes(c: &mut Criterion) {
    for size in [1024usize, 16 * 1024] {
        let mut g = c.benchmark_group(format!("sha256/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let data = vec![1u8; size];
        g.bench_function("ours", |b| b.iter(|| kdf::sha256(&[black_box(&data)])));
        g.bench_function("openssl", |b| b.iter(|| sha256(black_box(&data))));
        g.finish();
    }
    let key: [u8; 256] = core::array::from_fn(|i| i as u8);
    let mk = MsgKey::from_bytes([3; 16]);
    c.bench_function("kdf/derive_aes", |b| {
        b.iter(|| kdf::derive_aes(black_box(&key), black_box(&mk), Direction::ClientToServer))
    });
}

/// The same MTProto 2.0 construction (msg_key, KDF, AES-256-CBC, a fresh key per message) built
/// from OpenSSL's EVP calls, as a C implementation would write it.
fn ssl_seal(key: &[u8; 256], plaintext: &[u8], out: &mut Vec<u8>) {
    let mut h = openssl::sha::Sha256::new();
    h.update(&key[88..120]);
    h.update(plaintext);
    let large = h.finish();
    let mk = &large[8..24];
    let a = sha256(&[mk, &key[0..36]].concat());
    let b = sha256(&[&key[40..76], mk].concat());
    let mut aes_key = [0u8; 32];
    aes_key[..8].copy_from_slice(&a[..8]);
    aes_key[8..24].copy_from_slice(&b[8..24]);
    aes_key[24..].copy_from_slice(&a[24..]);
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&b[..8]);
    iv[8..].copy_from_slice(&a[8..16]);
    out.clear();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(mk);
    let start = out.len();
    out.resize(start + plaintext.len() + 16, 0);
    ssl_cbc(SslMode::Encrypt, &aes_key, &iv, plaintext, &mut out[start..]);
    out.truncate(start + plaintext.len());
}

fn message(c: &mut Criterion) {
    let key = AuthKey::from_bytes(core::array::from_fn(|i| (i * 7) as u8));
    let framing = Framing::new(Mode::Cbc, Layout::MTPROTO_OPAQUE);
    let mut payload = vec![0u8; 32 + 1024];
    payload[28..32].copy_from_slice(&1024u32.to_le_bytes());
    let mut g = c.benchmark_group("message_1k");
    g.throughput(Throughput::Bytes(1024));
    let mut rng = rand_core::OsRng;
    g.bench_function("seal_open/ours", |b| {
        b.iter(|| {
            let packet = framing
                .seal(&key, Direction::ClientToServer, black_box(&payload), &mut rng)
                .unwrap();
            let opened = framing.open(&key, Direction::ClientToServer, &packet).unwrap();
            black_box(opened.data().len())
        })
    });
    // The OpenSSL version gets its padding pre-made (no RNG cost) and reuses its buffers.
    let mut padded = payload.clone();
    padded.extend_from_slice(&[0u8; 16]);
    let raw = key.expose_secret();
    let (mut packet, mut plain) = (Vec::new(), Vec::new());
    g.bench_function("seal_open/openssl_evp", |b| {
        b.iter(|| {
            ssl_seal(raw, black_box(&padded), &mut packet);
            // Seal x = 0, open with the receiver's slices for x = 0: reuse the packet as sent.
            assert!(ssl_open_x0(raw, &packet, &mut plain));
            black_box(plain.len())
        })
    });
    g.finish();
}

/// `ssl_open` for x = 0 (the direction `ssl_seal` writes).
fn ssl_open_x0(key: &[u8; 256], packet: &[u8], out: &mut Vec<u8>) -> bool {
    let mk = &packet[8..24];
    let a = sha256(&[mk, &key[0..36]].concat());
    let b = sha256(&[&key[40..76], mk].concat());
    let mut aes_key = [0u8; 32];
    aes_key[..8].copy_from_slice(&a[..8]);
    aes_key[8..24].copy_from_slice(&b[8..24]);
    aes_key[24..].copy_from_slice(&a[24..]);
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&b[..8]);
    iv[8..].copy_from_slice(&a[8..16]);
    out.resize(packet.len() - 24 + 16, 0);
    ssl_cbc(SslMode::Decrypt, &aes_key, &iv, &packet[24..], out);
    out.truncate(packet.len() - 24);
    let mut h = openssl::sha::Sha256::new();
    h.update(&key[88..120]);
    h.update(out);
    openssl::memcmp::eq(&h.finish()[8..24], mk)
}

fn dh(c: &mut Criterion) {
    let group = DhGroup::mtproto();
    let mut rng = rand_core::OsRng;
    let (_, peer) = group.generate(&mut rng).unwrap();
    let p = BigNum::from_slice(&MTPROTO_DH_PRIME).unwrap();
    let peer_bn = BigNum::from_slice(peer.as_bytes()).unwrap();
    let mut g = c.benchmark_group("dh2048");
    g.sample_size(20);
    for bits in [256usize, 2048] {
        let mut exp = vec![0u8; bits / 8];
        openssl::rand::rand_bytes(&mut exp).unwrap();
        exp[0] |= 0x80;
        let secret = DhSecret::from_be_bytes(&exp).unwrap();
        g.bench_function(BenchmarkId::new("shared_secret/ours_consttime", bits), |b| {
            b.iter(|| group.agree(black_box(&secret), black_box(&peer)))
        });
        let ssl = Dh::from_pqg(p.to_owned().unwrap(), None, BigNum::from_u32(3).unwrap())
            .unwrap()
            .set_private_key(BigNum::from_slice(&exp).unwrap())
            .unwrap();
        g.bench_function(BenchmarkId::new("shared_secret/openssl_consttime", bits), |b| {
            b.iter(|| ssl.compute_key(black_box(&peer_bn)).unwrap())
        });
        let (bp, be, bm) = (
            num_bigint_dig::BigUint::from_bytes_be(peer.as_bytes()),
            num_bigint_dig::BigUint::from_bytes_be(&exp),
            num_bigint_dig::BigUint::from_bytes_be(&MTPROTO_DH_PRIME),
        );
        g.bench_function(
            BenchmarkId::new("shared_secret/num_bigint_dig_vartime", bits),
            |b| b.iter(|| black_box(&bp).modpow(&be, &bm)),
        );
    }
    g.bench_function("server_handshake_dh/ours (keygen + shared)", |b| {
        b.iter(|| {
            let (s, _public) = group.generate(&mut rng).unwrap();
            group.agree(&s, black_box(&peer))
        })
    });
    // What the relay does: its group carries a table of g's powers for the keygen.
    let server_group = DhGroup::mtproto().with_generator_table();
    g.bench_function(
        "server_handshake_dh/ours_generator_table (keygen + shared)",
        |b| {
            b.iter(|| {
                let (s, _public) = server_group.generate(&mut rng).unwrap();
                server_group.agree(&s, black_box(&peer))
            })
        },
    );
    g.bench_function("keygen/ours_generator_table", |b| {
        b.iter(|| server_group.generate(&mut rng).unwrap())
    });
    g.bench_function("keygen/ours", |b| b.iter(|| group.generate(&mut rng).unwrap()));
    g.finish();
}

fn curves(c: &mut Criterion) {
    let mut rng = rand_core::OsRng;
    let a = IdentitySecret::generate(&mut rng);
    let bpub = IdentitySecret::generate(&mut rng).public();
    let a_bytes = a.to_bytes();
    c.bench_function("x25519/ours", |b| {
        b.iter(|| hazmat::x25519(black_box(&a_bytes), bpub.as_bytes()).unwrap())
    });
    let ssl_a = PKey::private_key_from_raw_bytes(&a_bytes[..], Id::X25519).unwrap();
    let ssl_b = PKey::public_key_from_raw_bytes(bpub.as_bytes(), Id::X25519).unwrap();
    c.bench_function("x25519/openssl", |b| {
        b.iter(|| {
            let mut d = Deriver::new(&ssl_a).unwrap();
            d.set_peer(&ssl_b).unwrap();
            d.derive_to_vec().unwrap()
        })
    });
    c.bench_function("chat_key/ours (x25519 + hkdf 256 B)", |b| {
        b.iter(|| a.chat_key(black_box(&bpub)).unwrap())
    });
    let k = ServerSigningKey::generate(&mut rng);
    let msg = [5u8; 128];
    c.bench_function("ed25519_sign/ours", |b| b.iter(|| k.sign(black_box(&msg))));
    let ssl_k = PKey::private_key_from_raw_bytes(k.seed(), Id::ED25519).unwrap();
    c.bench_function("ed25519_sign/openssl", |b| {
        b.iter(|| {
            Signer::new_without_digest(&ssl_k)
                .unwrap()
                .sign_oneshot_to_vec(black_box(&msg))
                .unwrap()
        })
    });
    c.bench_function("pq/factor", |b| {
        b.iter(|| mtproto_crypto::factor_pq(black_box(1_468_428_376_148_703_121)).unwrap())
    });
}

/// The machine the figures come from: CPU model, logical cores and load average (Linux `/proc`;
/// elsewhere "unknown").
fn print_machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    println!(
        "machine: {model}; {cores} cores; aes {} sha_ni {} adx {} avx512f {}; load average {}",
        has("aes"),
        has("sha_ni"),
        has("adx"),
        has("avx512f"),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}

fn config() -> Criterion {
    print_machine();
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = aes, hashes, message, dh, curves }
criterion_main!(benches);
