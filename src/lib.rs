//! Facade over the mtproto-relay workspace: re-exports each layer so that the workspace's
//! benches and examples (run from the root with `cargo bench` and `cargo run --example ...`)
//! can reach every crate.
#![forbid(unsafe_code)]

pub use mtproto_crypto as crypto;
