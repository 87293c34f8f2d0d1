//! Known-answer tests from published vectors (see `tests/data/README.md` for every source).
//!
//! Every positive vector is also run with one bit flipped, and must then fail. The last test
//! checks that every vector in `mtproto_vectors.json` was used, or is listed with the reason it
//! does not apply.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeSet;
use std::sync::Mutex;

use common::{arr, flip, hx, load};
use mtproto_crypto::{
    factor_pq, hazmat, kdf, legacy, AuthKey, ChatKey, DhGroup, DhSecret, Direction, Framing, FramingKey,
    Layout, Mode, MsgKey, Nonce128, Nonce256,
};
use serde_json::Value;

mod common;

static USED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn mtproto(category: &str) -> Vec<Value> {
    let all = load("mtproto_vectors.json");
    let picked: Vec<Value> = all["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["category"] == category)
        .cloned()
        .collect();
    assert!(!picked.is_empty(), "no vectors in category {category}");
    picked
}

fn used(v: &Value) {
    USED.lock()
        .unwrap()
        .insert(v["name"].as_str().unwrap().to_owned());
}

fn key256(v: &Value) -> AuthKey {
    AuthKey::from_slice(&hx(v)).unwrap()
}

fn nonce256(v: &Value) -> Nonce256 {
    Nonce256::from_slice(&hx(v)).unwrap()
}

fn tmp_keys(v: &Value, new_nonce: &Value, server_nonce: &[u8]) {
    let nn = nonce256(new_nonce);
    let sn = Nonce128::from_slice(server_nonce).unwrap();
    let (k, iv) = legacy::tmp_aes_key_iv(&nn, &sn);
    assert_eq!(k.to_vec(), hx(&v["outputs"]["tmp_aes_key"]), "{}", v["name"]);
    assert_eq!(iv.to_vec(), hx(&v["outputs"]["tmp_aes_iv"]), "{}", v["name"]);
    // Flipped: a one-bit change of the server nonce changes both.
    let sn2 = Nonce128::from_slice(&flip(server_nonce.to_vec(), 5)).unwrap();
    let (k2, iv2) = legacy::tmp_aes_key_iv(&nn, &sn2);
    assert_ne!(k2, k);
    assert_ne!(iv2, iv);
}

/// Decrypts an IGE-encrypted `answer_with_hash` and checks its SHA-1 prefix over `answer_len`.
fn decrypt_answer(v: &Value, encrypted: &[u8], new_nonce: &Value, server_nonce: &[u8]) -> Vec<u8> {
    let (k, iv) = legacy::tmp_aes_key_iv(&nonce256(new_nonce), &Nonce128::from_slice(server_nonce).unwrap());
    let mut buf = encrypted.to_vec();
    hazmat::aes256_ige_decrypt(&k, &iv, &mut buf).unwrap();
    let mut tampered = flip(encrypted.to_vec(), 3);
    hazmat::aes256_ige_decrypt(&k, &iv, &mut tampered).unwrap();
    assert_ne!(tampered[..20], buf[..20], "{}", v["name"]);
    buf
}

#[test]
fn handshake_official_sample_2024() {
    let v = &mtproto("handshake")
        .into_iter()
        .find(|v| v["name"] == "official_samples_auth_key_2024")
        .unwrap();
    used(v);
    let (i, o) = (&v["inputs"], &v["outputs"]);
    assert_eq!(factor_pq(i["pq"].as_u64().unwrap()), Ok((1008949199, 1455403679)));
    let sn = hx(&i["server_nonce"]);
    tmp_keys(v, &i["new_nonce"], &sn);

    // Server answer: decrypt, check the SHA-1 prefix and the fields at their offsets.
    let awh = decrypt_answer(v, &hx(&i["encrypted_answer"]), &i["new_nonce"], &sn);
    assert_eq!(awh, hx(&o["answer_with_hash"]));
    let answer = &awh[20..20 + 564];
    assert_eq!(legacy::sha1(&[answer]).to_vec(), awh[..20].to_vec());
    assert_eq!(&answer[4..20], hx(&i["nonce"]).as_slice());
    assert_eq!(&answer[20..36], sn.as_slice());
    assert_eq!(answer[36..40], 3u32.to_le_bytes());
    assert_eq!(&answer[44..300], hx(&i["dh_prime"]).as_slice());
    assert_eq!(&answer[304..560], hx(&i["g_a"]).as_slice());

    // DH: group checks, g_b from b, auth key from g_a and b.
    let group = DhGroup::from_received(3, &hx(&i["dh_prime"])).unwrap();
    let b = DhSecret::from_be_bytes(&hx(&i["b"])).unwrap();
    let g_b = group.public_value(&b).unwrap();
    assert_eq!(g_b.as_bytes().to_vec(), hx(&o["g_b"]));
    let g_a = group.check_public(&hx(&i["g_a"])).unwrap();
    let auth_key = group.agree(&b, &g_a);
    assert_eq!(auth_key.expose_secret().to_vec(), hx(&o["auth_key"]));
    let b_flipped = DhSecret::from_be_bytes(&flip(hx(&i["b"]), 77)).unwrap();
    assert_ne!(
        group.agree(&b_flipped, &g_a).expose_secret().to_vec(),
        hx(&o["auth_key"])
    );

    // client_DH_inner_data: SHA1 ‖ data ‖ padding, IGE under the temporary key.
    let data = hx(&i["client_dh_inner_data"]);
    assert_eq!(&data[44..48], [0xfe, 0, 1, 0]);
    assert_eq!(&data[48..304], g_b.as_bytes().as_slice());
    let mut buf = legacy::sha1(&[&data]).to_vec();
    buf.extend_from_slice(&data);
    buf.extend_from_slice(&hx(&i["client_padding"]));
    let (k, iv) = legacy::tmp_aes_key_iv(&nonce256(&i["new_nonce"]), &Nonce128::from_slice(&sn).unwrap());
    hazmat::aes256_ige_encrypt(&k, &iv, &mut buf).unwrap();
    assert_eq!(buf, hx(&o["client_encrypted_data"]));

    // Derived values.
    assert_eq!(auth_key.id().as_bytes().to_vec(), hx(&o["auth_key_id"]));
    assert_eq!(auth_key.aux_hash().to_vec(), hx(&o["auth_key_aux_hash"]));
    let nn = nonce256(&i["new_nonce"]);
    for (n, field) in [
        (1u8, "new_nonce_hash1"),
        (2, "new_nonce_hash2"),
        (3, "new_nonce_hash3"),
    ] {
        assert_eq!(
            legacy::new_nonce_hash(&nn, n, auth_key.aux_hash()).to_vec(),
            hx(&o[field]),
            "{field}"
        );
    }
    let salt = legacy::initial_server_salt(&nn, &Nonce128::from_slice(&sn).unwrap());
    assert_eq!(salt.to_vec(), hx(&o["initial_server_salt"]));
}

#[test]
fn handshake_grammers_flow_replays() {
    let v = &mtproto("handshake")
        .into_iter()
        .find(|v| v["name"] == "grammers_auth_flow")
        .unwrap();
    used(v);
    let (i, o) = (&v["inputs"], &v["outputs"]);
    let res_pq = hx(&i["resPQ"]);
    assert_eq!(&res_pq[..4], [0x63, 0x24, 0x16, 0x05]);
    let server_nonce = res_pq[20..36].to_vec();
    // pq: TL string of 8 bytes at offset 36, big-endian.
    assert_eq!(res_pq[36], 8);
    let pq = u64::from_be_bytes(res_pq[37..45].try_into().unwrap());
    assert_eq!(pq, o["pq"].as_u64().unwrap());
    let (p, q) = factor_pq(pq).unwrap();
    assert_eq!(
        (u64::from(p), u64::from(q)),
        (o["p"].as_u64().unwrap(), o["q"].as_u64().unwrap())
    );
    tmp_keys(v, &i["new_nonce"], &server_nonce);

    // server_DH_params_ok: ctor, nonce, server_nonce, then encrypted_answer as a long TL string.
    let ok = hx(&i["server_DH_params_ok"]);
    assert_eq!(ok[36], 0xfe);
    let len = usize::from(ok[37]) | usize::from(ok[38]) << 8 | usize::from(ok[39]) << 16;
    let awh = decrypt_answer(v, &ok[40..40 + len], &i["new_nonce"], &server_nonce);
    let answer = &awh[20..];
    assert_eq!(answer[36..40], 3u32.to_le_bytes());
    assert_eq!(&answer[304..560], hx(&o["g_a"]).as_slice());
    assert_eq!(
        u64::from(u32::from_le_bytes(answer[36..40].try_into().unwrap())),
        o["g"].as_u64().unwrap()
    );

    let group = DhGroup::from_received(3, &answer[44..300]).unwrap();
    let b = DhSecret::from_be_bytes(&hx(&i["b"])).unwrap();
    let key = group.agree(&b, &group.check_public(&answer[304..560]).unwrap());
    assert_eq!(key.expose_secret().to_vec(), hx(&o["auth_key"]));
    assert_eq!(key.id().as_bytes().to_vec(), hx(&o["auth_key_id"]));
    let nn = nonce256(&i["new_nonce"]);
    let salt = legacy::initial_server_salt(&nn, &Nonce128::from_slice(&server_nonce).unwrap());
    assert_eq!(salt.to_vec(), hx(&o["first_salt_bytes"]));
    assert_eq!(i64::from_le_bytes(salt), o["first_salt_i64"].as_i64().unwrap());
    // dh_gen_ok carries new_nonce_hash1 at offset 36.
    let gen_ok = hx(&o["dh_gen_ok"]);
    assert_eq!(
        legacy::new_nonce_hash(&nn, 1, key.aux_hash()).to_vec(),
        gen_ok[36..52].to_vec()
    );
    assert_ne!(
        legacy::new_nonce_hash(&nn, 2, key.aux_hash()).to_vec(),
        gen_ok[36..52].to_vec()
    );
    // The request the client sent carries g_b = 3^b.
    let req = hx(&o["set_client_DH_params_request"]);
    assert_eq!(&req[4..20], hx(&i["nonce"]).as_slice());
    let g_b = group.public_value(&b).unwrap();
    let (k, iv) = legacy::tmp_aes_key_iv(&nn, &Nonce128::from_slice(&server_nonce).unwrap());
    let mut enc = req[40..].to_vec();
    enc.truncate(enc.len() / 16 * 16);
    hazmat::aes256_ige_decrypt(&k, &iv, &mut enc).unwrap();
    assert_eq!(&enc[20 + 48..20 + 304], g_b.as_bytes().as_slice());
}

#[test]
fn handshake_tmp_key_vectors() {
    for v in mtproto("handshake") {
        let name = v["name"].as_str().unwrap();
        let (i, o) = (&v["inputs"], &v["outputs"]);
        match name {
            "gotd_temp_aes_keys_old_sample" => {
                let sn = hx(&i["server_nonce"]);
                tmp_keys(&v, &i["new_nonce"], &sn);
                let awh = decrypt_answer(&v, &hx(&i["encrypted_answer"]), &i["new_nonce"], &sn);
                let answer = hx(&o["answer"]);
                assert_eq!(&awh[20..20 + answer.len()], answer.as_slice());
                assert_eq!(legacy::sha1(&[&answer]).to_vec(), awh[..20].to_vec());
            }
            "gotd_tmp_aes_leading_zero_nonce" | "grammers_key_from_nonce" => {
                tmp_keys(&v, &i["new_nonce"], &hx(&i["server_nonce"]));
            }
            "grammers_new_nonce_hash" => {
                let key = key256(&i["auth_key"]);
                let nn = nonce256(&i["new_nonce"]);
                for (n, f) in [
                    (1u8, "new_nonce_hash1"),
                    (2, "new_nonce_hash2"),
                    (3, "new_nonce_hash3"),
                ] {
                    assert_eq!(legacy::new_nonce_hash(&nn, n, key.aux_hash()).to_vec(), hx(&o[f]));
                    let nn2 = Nonce256::from_slice(&flip(nn.as_bytes().to_vec(), 3)).unwrap();
                    assert_ne!(
                        legacy::new_nonce_hash(&nn2, n, key.aux_hash()).to_vec(),
                        hx(&o[f])
                    );
                }
            }
            _ => continue,
        }
        used(&v);
    }
}

#[test]
fn pq_vectors() {
    for v in mtproto("pq") {
        let pq = v["inputs"]["pq"].as_u64().unwrap();
        let want = (
            v["outputs"]["p"].as_u64().unwrap(),
            v["outputs"]["q"].as_u64().unwrap(),
        );
        let (p, q) = factor_pq(pq).unwrap();
        assert_eq!((u64::from(p), u64::from(q)), want);
        // Flipped bit: the result is no longer this factorisation (often not a valid pq at all).
        assert_ne!(factor_pq(pq ^ 2).ok(), Some((p, q)));
        used(&v);
    }
}

#[test]
fn dh_gotd_static() {
    let v = &mtproto("dh")[0];
    let i = &v["inputs"];
    // This old sample uses g = 2, which is not a quadratic residue mod this prime: a strict
    // client must refuse the group.
    assert!(DhGroup::from_received(2, &hx(&i["dh_prime"])).is_err());
    // The shared value g_a^b does not depend on g, so it is checked through the group with g = 3.
    let group = DhGroup::from_received(3, &hx(&i["dh_prime"])).unwrap();
    let b = DhSecret::from_be_bytes(&hx(&i["b"])).unwrap();
    let g_a = group.check_public(&hx(&i["g_a"])).unwrap();
    assert_eq!(
        group.agree(&b, &g_a).expose_secret().to_vec(),
        hx(&v["outputs"]["g_ab"])
    );
    let b2 = DhSecret::from_be_bytes(&flip(hx(&i["b"]), 9)).unwrap();
    assert_ne!(
        group.agree(&b2, &g_a).expose_secret().to_vec(),
        hx(&v["outputs"]["g_ab"])
    );
    used(v);
}

#[test]
fn kdf_vectors() {
    for v in mtproto("kdf") {
        let (i, o) = (&v["inputs"], &v["outputs"]);
        let key: [u8; 256] = arr(&i["auth_key"]);
        let dir = if i["x"] == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let mk = MsgKey::from_slice(&hx(&i["msg_key"])).unwrap();
        let out = kdf::derive_aes(&key, &mk, dir);
        assert_eq!(out.key.to_vec(), hx(&o["aes_key"]));
        assert_eq!(out.iv.to_vec(), hx(&o["aes_iv"]));
        let mk2 = MsgKey::from_slice(&flip(hx(&i["msg_key"]), 100)).unwrap();
        assert_ne!(kdf::derive_aes(&key, &mk2, dir).key.to_vec(), hx(&o["aes_key"]));
        assert_ne!(
            kdf::derive_aes(&key, &mk, dir.reverse()).key.to_vec(),
            hx(&o["aes_key"])
        );
        used(&v);
    }
}

#[test]
fn auth_key_id_vectors() {
    for v in mtproto("auth_key_id") {
        let (i, o) = (&v["inputs"], &v["outputs"]);
        let key = key256(&i["auth_key"]);
        assert_eq!(key.id().as_bytes().to_vec(), hx(&o["auth_key_id"]));
        assert_eq!(key.aux_hash().to_vec(), hx(&o["aux_hash"]));
        if let Some(u) = o["auth_key_id_u64_le"].as_u64() {
            assert_eq!(key.id().to_u64_le(), u);
        }
        assert!(format!("{key:?}").contains(&key.id().to_hex()));
        let key2 = AuthKey::from_slice(&flip(hx(&i["auth_key"]), 2047)).unwrap();
        assert_ne!(key2.id(), key.id());
        assert_ne!(key2, key);
        used(&v);
    }
}

/// tdlib's test-input generator (tdutils/test/crypto.cpp).
fn tdlib_lcg(seed: &mut u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(123_457_567).wrapping_add(987_651_241);
            ((*seed >> 23) & 255) as u8
        })
        .collect()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn aes_ige_vectors() {
    for v in mtproto("aes_ige") {
        let name = v["name"].as_str().unwrap();
        let (i, o) = (&v["inputs"], &v["outputs"]);
        if name.starts_with("openssl_ige_aes128") {
            continue; // AES-128: run by the crate's unit test `hazmat::tests::openssl_ige_aes128_vectors`
        }
        let (key, iv, data, want): ([u8; 32], [u8; 32], Vec<u8>, Option<Vec<u8>>) =
            if let Some(len) = i["length"].as_u64() {
                let mut seed = len as u32;
                let pt = tdlib_lcg(&mut seed, len as usize);
                let key = tdlib_lcg(&mut seed, 32).try_into().unwrap();
                let iv = tdlib_lcg(&mut seed, 32).try_into().unwrap();
                (key, iv, pt, None)
            } else if name == "grammers_ige_decrypt" {
                let mut buf = hx(&i["ciphertext"]);
                hazmat::aes256_ige_decrypt(&arr(&i["key"]), &arr(&i["iv"]), &mut buf).unwrap();
                assert_eq!(buf, hx(&o["plaintext"]));
                let mut buf2 = flip(hx(&i["ciphertext"]), 0);
                hazmat::aes256_ige_decrypt(&arr(&i["key"]), &arr(&i["iv"]), &mut buf2).unwrap();
                assert_ne!(buf2, hx(&o["plaintext"]));
                used(&v);
                continue;
            } else {
                (
                    arr(&i["key"]),
                    arr(&i["iv"]),
                    hx(&i["plaintext"]),
                    Some(hx(&o["ciphertext"])),
                )
            };
        let mut buf = data.clone();
        hazmat::aes256_ige_encrypt(&key, &iv, &mut buf).unwrap();
        if let Some(want) = want {
            assert_eq!(buf, want, "{name}");
        }
        if let Some(crc) = o["crc32"].as_u64().or(o["crc32_of_ciphertext"].as_u64()) {
            assert_eq!(u64::from(crc32(&buf)), crc, "{name}");
        }
        let mut back = buf.clone();
        hazmat::aes256_ige_decrypt(&key, &iv, &mut back).unwrap();
        assert_eq!(back, data, "{name}");
        if !data.is_empty() {
            let mut other = flip(data.clone(), 3);
            hazmat::aes256_ige_encrypt(&key, &iv, &mut other).unwrap();
            assert_ne!(other, buf, "{name}");
        }
        used(&v);
    }
}

#[test]
fn aes_cbc_vectors() {
    for v in mtproto("aes_cbc") {
        let name = v["name"].as_str().unwrap();
        let (i, o) = (&v["inputs"], &v["outputs"]);
        let (key, iv, data, want): ([u8; 32], [u8; 16], Vec<u8>, Option<Vec<u8>>) =
            if let Some(len) = i["length"].as_u64() {
                let mut seed = len as u32;
                let pt = tdlib_lcg(&mut seed, len as usize);
                let key = tdlib_lcg(&mut seed, 32).try_into().unwrap();
                let iv = tdlib_lcg(&mut seed, 16).try_into().unwrap();
                (key, iv, pt, None)
            } else {
                (
                    arr(&i["key"]),
                    arr(&i["iv"]),
                    hx(&i["plaintext"]),
                    Some(hx(&o["ciphertext"])),
                )
            };
        let mut buf = data.clone();
        hazmat::aes256_cbc_encrypt(&key, &iv, &mut buf).unwrap();
        if let Some(want) = want {
            assert_eq!(buf, want, "{name}");
        }
        if let Some(crc) = o["crc32"].as_u64().or(o["crc32_of_ciphertext"].as_u64()) {
            assert_eq!(u64::from(crc32(&buf)), crc, "{name}");
        }
        let mut back = buf.clone();
        hazmat::aes256_cbc_decrypt(&key, &iv, &mut back).unwrap();
        assert_eq!(back, data);
        let mut other = data.clone();
        hazmat::aes256_cbc_encrypt(&key, &flip(iv.to_vec(), 0).try_into().unwrap(), &mut other).unwrap();
        assert_ne!(other, buf);
        used(&v);
    }
}

fn direction(x: &Value) -> Direction {
    match x.as_u64() {
        Some(0) => Direction::ClientToServer,
        Some(8) => Direction::ServerToClient,
        _ => panic!("bad x {x}"),
    }
}

/// Opens `packet` and checks that every single-bit flip of it is rejected.
fn open_and_flip<K: FramingKey>(f: Framing, key: &K, dir: Direction, packet: &[u8]) -> Vec<u8> {
    let payload = f.open(key, dir, packet).unwrap().payload().to_vec();
    let step = if packet.len() > 400 { 7 } else { 1 };
    for bit in (0..packet.len() * 8).step_by(step) {
        assert!(
            f.open(key, dir, &flip(packet.to_vec(), bit)).is_err(),
            "bit {bit} flipped and accepted"
        );
    }
    assert!(f.open(key, dir.reverse(), packet).is_err());
    payload
}

#[test]
fn message_encryption_vectors() {
    let ige = Framing::new(Mode::Ige, Layout::MTPROTO);
    for v in mtproto("message_encryption") {
        let name = v["name"].as_str().unwrap();
        let (i, o) = (&v["inputs"], &v["outputs"]);
        let key = key256(&i["auth_key"]);
        let dir = direction(&i["x"]);
        match name {
            "grammers_encrypt_client_data_v2" => {
                // Raw data without a header: the KDF and IGE layers directly.
                let mut buf = hx(&i["plaintext"]);
                buf.extend_from_slice(&hx(&i["padding"]));
                let mk = kdf::msg_key(key.expose_secret(), dir, &buf);
                assert_eq!(mk.as_bytes().to_vec(), hx(&o["msg_key"]));
                let aes = kdf::derive_aes(key.expose_secret(), &mk, dir);
                hazmat::aes256_ige_encrypt(&aes.key, &aes.iv, &mut buf).unwrap();
                let mut packet = key.id().as_bytes().to_vec();
                packet.extend_from_slice(mk.as_bytes());
                packet.extend_from_slice(&buf);
                assert_eq!(packet, hx(&o["packet"]));
                let mut pt2 = flip(hx(&i["plaintext"]), 4);
                pt2.extend_from_slice(&hx(&i["padding"]));
                assert_ne!(
                    kdf::msg_key(key.expose_secret(), dir, &pt2).as_bytes().to_vec(),
                    hx(&o["msg_key"])
                );
            }
            "grammers_decrypt_server_data_v2" => {
                let payload = open_and_flip(ige, &key, dir, &hx(&i["packet"]));
                let pt = hx(&o["plaintext"]);
                assert_eq!(
                    payload,
                    pt[..pt.len() - o["padding_len"].as_u64().unwrap() as usize]
                );
                assert_eq!(&payload[..8], hx(&o["salt"]).as_slice());
                assert_eq!(&payload[8..16], hx(&o["session_id"]).as_slice());
                assert_eq!(
                    u64::from_le_bytes(payload[16..24].try_into().unwrap()),
                    o["msg_id"].as_u64().unwrap()
                );
                assert_eq!(
                    u64::from(u32::from_le_bytes(payload[24..28].try_into().unwrap())),
                    o["seq_no"].as_u64().unwrap()
                );
                assert_eq!(
                    payload.len() - 32,
                    o["message_data_length"].as_u64().unwrap() as usize
                );
            }
            _ => {
                let body = hx(&i["body"]);
                let mut payload = hx(&i["salt"]);
                payload.extend_from_slice(&hx(&i["session_id"]));
                payload.extend_from_slice(&i["msg_id"].as_u64().unwrap().to_le_bytes());
                payload.extend_from_slice(&(i["seq_no"].as_u64().unwrap() as u32).to_le_bytes());
                payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
                payload.extend_from_slice(&body);
                let mut full = payload.clone();
                full.extend_from_slice(&hx(&i["padding"]));
                assert_eq!(full, hx(&o["plaintext"]), "{name}");
                let aes = kdf::derive_aes(
                    key.expose_secret(),
                    &MsgKey::from_slice(&hx(&o["msg_key"])).unwrap(),
                    dir,
                );
                assert_eq!(aes.key.to_vec(), hx(&o["aes_key"]));
                assert_eq!(aes.iv.to_vec(), hx(&o["aes_iv"]));
                let packet = ige
                    .seal_with_padding(&key, dir, &payload, &hx(&i["padding"]))
                    .unwrap();
                assert_eq!(packet, hx(&o["packet"]), "{name}");
                assert_eq!(open_and_flip(ige, &key, dir, &packet), payload);
            }
        }
        used(&v);
    }
}

#[test]
fn secret_chat_vectors() {
    let f = Framing::new(Mode::Ige, Layout::SECRET_CHAT);
    for v in mtproto("secret_chat") {
        let name = v["name"].as_str().unwrap();
        let (i, o) = (&v["inputs"], &v["outputs"]);
        match name {
            "gen_e2e_message_x0" | "gen_e2e_message_x8" => {
                let key = ChatKey::from_slice(&hx(&i["key"])).unwrap();
                assert_eq!(key.id().as_bytes().to_vec(), hx(&o["key_fingerprint"]));
                let data = hx(&i["data"]);
                let mut payload = (data.len() as u32).to_le_bytes().to_vec();
                payload.extend_from_slice(&data);
                let dir = direction(&i["x"]);
                let packet = f
                    .seal_with_padding(&key, dir, &payload, &hx(&i["padding"]))
                    .unwrap();
                assert_eq!(packet, hx(&o["encrypted"]), "{name}");
                assert_eq!(open_and_flip(f, &key, dir, &packet), payload);
            }
            "gen_key_visualization" => {
                let vis =
                    legacy::telegram_key_visualization(&arr(&i["initial_key"]), &arr(&i["layer46_key"]));
                assert_eq!(vis.to_vec(), hx(&o["visualization"]));
                let other = legacy::telegram_key_visualization(
                    &flip(hx(&i["initial_key"]), 1).try_into().unwrap(),
                    &arr(&i["layer46_key"]),
                );
                assert_ne!(other, vis);
            }
            _ => continue,
        }
        used(&v);
    }
}

/// Vectors that do not apply to this crate, with the reason. Everything else must be used.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    (
        "official_rsa_pad_partial",
        "the relay authenticates its DH answer with Ed25519, not RSA_PAD",
    ),
    (
        "gen_file_key_fingerprint",
        "no file encryption (MD5 fingerprints) in this system",
    ),
    (
        "openssl_ige_aes128_0",
        "AES-128: run by the unit test hazmat::tests::openssl_ige_aes128_vectors",
    ),
    (
        "openssl_ige_aes128_1",
        "AES-128: run by the unit test hazmat::tests::openssl_ige_aes128_vectors",
    ),
];

#[test]
fn zz_every_vector_is_used() {
    // Runs the other tests' bodies first so this does not depend on test order.
    handshake_official_sample_2024();
    handshake_grammers_flow_replays();
    handshake_tmp_key_vectors();
    pq_vectors();
    dh_gotd_static();
    kdf_vectors();
    auth_key_id_vectors();
    aes_ige_vectors();
    aes_cbc_vectors();
    message_encryption_vectors();
    secret_chat_vectors();
    let used = USED.lock().unwrap().clone();
    let all = load("mtproto_vectors.json");
    for v in all["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let skipped = NOT_APPLICABLE.iter().any(|(n, _)| *n == name);
        assert!(
            used.contains(name) ^ skipped,
            "vector {name}: used={} listed-as-not-applicable={skipped}",
            used.contains(name)
        );
    }
}
