//! Known-answer tests from the standards' published vectors (see `tests/data/README.md` for
//! every source): RFC 7748 (X25519), RFC 8032 (Ed25519), RFC 4231 (HMAC-SHA256), RFC 5869
//! (HKDF), NIST SP 800-38A (AES), and Project Wycheproof's X25519, Ed25519, HKDF and AES-CBC
//! suites. The MTProto vectors are in `tests/vectors.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use common::{arr, flip, hx, load};
use mtproto_crypto::{hazmat, kdf, ServerPublicKey, ServerSigningKey};
use serde_json::Value;

// ---- Standards vectors: RFC 7748, RFC 8032, RFC 4231, RFC 5869, NIST SP 800-38A ------------------------

#[test]
fn rfc_vectors() {
    let rfc = load("rfc_vectors.json");
    for t in rfc["x25519"].as_array().unwrap() {
        let out = hazmat::x25519(&arr(&t["scalar"]), &arr(&t["u"])).unwrap();
        assert_eq!(out.to_vec(), hx(&t["out"]), "{}", t["source"]);
        let out2 = hazmat::x25519(&flip(hx(&t["scalar"]), 9).try_into().unwrap(), &arr(&t["u"])).unwrap();
        assert_ne!(out2.to_vec(), hx(&t["out"]));
    }
    for t in rfc["ed25519"].as_array().unwrap() {
        let k = ServerSigningKey::from_seed(arr(&t["seed"]));
        assert_eq!(
            k.public().as_bytes().to_vec(),
            hx(&t["public"]),
            "{}",
            t["source"]
        );
        let msg = hx(&t["msg"]);
        assert_eq!(k.sign(&msg).to_vec(), hx(&t["sig"]), "{}", t["source"]);
        k.public().verify(&msg, &hx(&t["sig"])).unwrap();
        for bit in [0, 255, 256, 511] {
            assert!(k.public().verify(&msg, &flip(hx(&t["sig"]), bit)).is_err());
        }
        // A peer's identity signing key is the same RFC 8032 Ed25519.
        let p = mtproto_crypto::IdentitySigningKey::from_seed(arr(&t["seed"]));
        assert_eq!(
            p.public().as_bytes().to_vec(),
            hx(&t["public"]),
            "{}",
            t["source"]
        );
        assert_eq!(p.sign(&msg).to_vec(), hx(&t["sig"]), "{}", t["source"]);
        p.public().verify(&msg, &hx(&t["sig"])).unwrap();
        assert!(p.public().verify(&msg, &flip(hx(&t["sig"]), 7)).is_err());
    }
    for t in rfc["hmac_sha256"].as_array().unwrap() {
        let (key, data) = (hx(&t["key"]), hx(&t["data"]));
        assert_eq!(
            kdf::hmac_sha256(&key, &[&data]).to_vec(),
            hx(&t["tag"]),
            "{}",
            t["source"]
        );
        // The same bytes split into two parts give the same tag; one flipped bit does not.
        let (a, b) = data.split_at(data.len() / 2);
        assert_eq!(kdf::hmac_sha256(&key, &[a, b]).to_vec(), hx(&t["tag"]));
        assert_ne!(
            kdf::hmac_sha256(&key, &[&flip(data.clone(), 3)]).to_vec(),
            hx(&t["tag"])
        );
    }
    for t in rfc["hkdf_sha256"].as_array().unwrap() {
        let want = hx(&t["okm"]);
        let mut out = vec![0u8; want.len()];
        kdf::hkdf_sha256(&hx(&t["salt"]), &hx(&t["ikm"]), &hx(&t["info"]), &mut out).unwrap();
        assert_eq!(out, want, "{}", t["source"]);
        kdf::hkdf_sha256(
            &hx(&t["salt"]),
            &flip(hx(&t["ikm"]), 0),
            &hx(&t["info"]),
            &mut out,
        )
        .unwrap();
        assert_ne!(out, want);
    }
    for t in rfc["aes256_cbc"].as_array().unwrap() {
        let mut buf = hx(&t["plaintext"]);
        hazmat::aes256_cbc_encrypt(&arr(&t["key"]), &arr(&t["iv"]), &mut buf).unwrap();
        assert_eq!(buf, hx(&t["ciphertext"]));
        hazmat::aes256_cbc_decrypt(&arr(&t["key"]), &arr(&t["iv"]), &mut buf).unwrap();
        assert_eq!(buf, hx(&t["plaintext"]));
    }
}

// ---- Wycheproof ---------------------------------------------------------------------------------

fn wycheproof_tests(file: &str) -> Vec<(Value, Value)> {
    let d = load(file);
    let mut out = Vec::new();
    for g in d["testGroups"].as_array().unwrap() {
        for t in g["tests"].as_array().unwrap() {
            out.push((g.clone(), t.clone()));
        }
    }
    assert!(out.len() > 50);
    out
}

#[test]
fn wycheproof_x25519() {
    let mut rejected = 0;
    for (_, t) in wycheproof_tests("x25519_test.json") {
        let shared = hx(&t["shared"]);
        let got = hazmat::x25519(&arr(&t["private"]), &arr(&t["public"]));
        if shared.iter().all(|b| *b == 0) {
            // Low-order public keys: the all-zero secret must be refused, never used.
            assert!(got.is_err(), "tcId {} accepted a zero shared secret", t["tcId"]);
            rejected += 1;
        } else {
            assert_eq!(
                got.unwrap().to_vec(),
                shared,
                "tcId {} ({})",
                t["tcId"],
                t["comment"]
            );
        }
        assert_ne!(
            t["result"], "invalid",
            "x25519 file has no invalid cases; update this harness"
        );
    }
    assert!(rejected > 0);
}

#[test]
fn wycheproof_ed25519() {
    let (mut valid, mut invalid) = (0, 0);
    for (g, t) in wycheproof_tests("ed25519_test.json") {
        let pk = ServerPublicKey::from_slice(&hx(&g["publicKey"]["pk"])).unwrap();
        let ok = pk.verify(&hx(&t["msg"]), &hx(&t["sig"])).is_ok();
        match t["result"].as_str().unwrap() {
            "valid" => {
                assert!(ok, "tcId {} valid but rejected", t["tcId"]);
                valid += 1;
            }
            "invalid" => {
                assert!(!ok, "tcId {} ({}) invalid but accepted", t["tcId"], t["comment"]);
                invalid += 1;
            }
            other => panic!("unexpected result {other}"),
        }
    }
    assert!(valid > 0 && invalid > 0);
}

#[test]
fn wycheproof_hkdf() {
    for (_, t) in wycheproof_tests("hkdf_sha256_test.json") {
        let size = t["size"].as_u64().unwrap() as usize;
        let mut out = vec![0u8; size];
        let r = kdf::hkdf_sha256(&hx(&t["salt"]), &hx(&t["ikm"]), &hx(&t["info"]), &mut out);
        match t["result"].as_str().unwrap() {
            "valid" => {
                r.unwrap();
                assert_eq!(out, hx(&t["okm"]), "tcId {}", t["tcId"]);
            }
            _ => assert!(r.is_err(), "tcId {} ({}) accepted", t["tcId"], t["comment"]),
        }
    }
}

/// Removes PKCS#7 padding the way a careful caller of raw CBC must; used to check that raw
/// decryption yields exactly the bytes Wycheproof expects (valid padding for valid cases, broken
/// padding for the invalid ones).
fn pkcs7_unpad(buf: &[u8]) -> Option<&[u8]> {
    let n = usize::from(*buf.last()?);
    if n == 0 || n > 16 || n > buf.len() || !buf[buf.len() - n..].iter().all(|b| usize::from(*b) == n) {
        return None;
    }
    Some(&buf[..buf.len() - n])
}

#[test]
fn wycheproof_aes_cbc() {
    let mut checked = 0;
    for (g, t) in wycheproof_tests("aes_cbc_pkcs5_test.json") {
        if g["keySize"] != 256 {
            continue; // this crate implements AES-256 only
        }
        let (key, iv): ([u8; 32], [u8; 16]) = (arr(&t["key"]), arr(&t["iv"]));
        let ct = hx(&t["ct"]);
        let mut buf = ct.clone();
        let decrypted = hazmat::aes256_cbc_decrypt(&key, &iv, &mut buf);
        match t["result"].as_str().unwrap() {
            "valid" => {
                decrypted.unwrap();
                assert_eq!(
                    pkcs7_unpad(&buf).unwrap(),
                    hx(&t["msg"]).as_slice(),
                    "tcId {}",
                    t["tcId"]
                );
                let mut enc = buf.clone();
                hazmat::aes256_cbc_encrypt(&key, &iv, &mut enc).unwrap();
                assert_eq!(enc, ct);
            }
            _ => assert!(
                decrypted.is_err() || pkcs7_unpad(&buf).is_none(),
                "tcId {} ({}) accepted",
                t["tcId"],
                t["comment"]
            ),
        }
        checked += 1;
    }
    assert!(checked > 50);
}
