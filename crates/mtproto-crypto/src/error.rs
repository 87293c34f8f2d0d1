//! The one error type of this crate.

/// Every way an operation of this crate can fail, sorted by who is at fault.
///
/// Decryption failures are deliberately collapsed into [`Error::Decrypt`]: whatever went wrong
/// (length, key id, msg_key, padding bounds), the caller learns only that the packet is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- malformed input -----------------------------------------------------------------
    /// A byte string had the wrong length for the value it should hold.
    #[error("{what} must be {expected} bytes, got {got}")]
    InvalidLength {
        /// The value being parsed.
        what: &'static str,
        /// The length received.
        got: usize,
        /// The length required.
        expected: usize,
    },
    /// A text value that must be hex held something other than a hex digit (`0-9`, `a-f`,
    /// `A-F`): a sign, a `0x` prefix, whitespace, a separator.
    #[error("{what} must be hex digits only; byte {position} is not one")]
    InvalidHexDigit {
        /// The value being parsed.
        what: &'static str,
        /// Byte offset of the first offending byte.
        position: usize,
    },
    /// A buffer handed to a block cipher was not a whole number of 16-byte blocks.
    #[error("buffer of {got} bytes is not a multiple of the 16-byte AES block")]
    NotBlockAligned {
        /// The length received.
        got: usize,
    },

    // --- a peer breaking the protocol ---------------------------------------------------
    /// A packet failed to decrypt or authenticate. Opaque on purpose: no padding or MAC oracle.
    #[error("message rejected")]
    Decrypt,
    /// A Diffie-Hellman group or public value failed a required check.
    #[error("Diffie-Hellman check failed: {check}")]
    BadDh {
        /// Which check failed (a fixed string, never secret data).
        check: &'static str,
    },
    /// An X25519 agreement produced a low-order (all-zero) shared secret.
    #[error("peer identity key is a low-order point")]
    LowOrderPoint,
    /// An Ed25519 signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// A proof-of-work challenge could not be factored into two primes below 2^32.
    #[error("pq is not a product of two primes below 2^32")]
    BadPq,

    // --- limits ------------------------------------------------------------------------------
    /// A plaintext or padding length is outside what the framing allows.
    #[error("{what} is {got} bytes, allowed {min}..={max}")]
    LengthOutOfRange {
        /// The value being checked.
        what: &'static str,
        /// The length received.
        got: usize,
        /// The minimum allowed.
        min: usize,
        /// The maximum allowed.
        max: usize,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
