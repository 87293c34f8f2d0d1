//! Feeds arbitrary bytes to packet decoding in every framing: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtproto_crypto::{AuthKey, Direction, Framing, Layout, Mode};

fuzz_target!(|data: &[u8]| {
    let key = AuthKey::from_bytes(core::array::from_fn(|i| i as u8));
    for mode in [Mode::Cbc, Mode::Ige] {
        for layout in [Layout::MTPROTO, Layout::MTPROTO_OPAQUE, Layout::SECRET_CHAT, Layout::LENGTH_PREFIXED] {
            let f = Framing::new(mode, layout);
            // As received, and with the key id forced so decryption and the msg_key check run.
            let _ = f.open(&key, Direction::ClientToServer, data);
            if data.len() >= 8 {
                let mut forged = data.to_vec();
                forged[..8].copy_from_slice(key.id().as_bytes());
                let _ = f.open(&key, Direction::ServerToClient, &forged);
            }
        }
    }
});
