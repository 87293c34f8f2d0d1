//! Identifiers: msg_id (time-based, parity by sender), seq_no, session id, server salt, client id.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::{BadMsgCode, Error, Result, UnixTime};

/// Seconds into the past a received msg_id may lie (MTProto: 300).
pub const MSG_ID_MAX_PAST_SECS: u64 = 300;
/// Seconds into the future a received msg_id may lie (MTProto: 30).
pub const MSG_ID_MAX_FUTURE_SECS: u64 = 30;

/// A 64-bit MTProto message id: about `unixtime · 2^32`, the low two bits saying who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MsgId(pub u64);

/// Who created a message id: it fixes the id's two low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Client ids are divisible by 4.
    Client,
    /// Server ids are 1 mod 4 for a response to a client message, 3 mod 4 otherwise.
    Server {
        /// Whether the message answers a client message.
        response: bool,
    },
}

impl Sender {
    const fn low_bits(self) -> u64 {
        match self {
            Self::Client => 0,
            Self::Server { response: true } => 1,
            Self::Server { response: false } => 3,
        }
    }
}

impl MsgId {
    /// The unix time (seconds) the id carries.
    pub const fn secs(self) -> u64 {
        self.0 >> 32
    }

    /// Checks a received id from `from` against the time window around `now` (MTProto
    /// "Detailed Description": at most 300 s in the past, 30 s in the future) and its low bits.
    ///
    /// # Errors
    /// Code 18 (low bits), 16 (too old) or 17 (too far ahead).
    pub fn validate(self, from: Sender, now: UnixTime) -> core::result::Result<(), BadMsgCode> {
        let bits_ok = match from {
            Sender::Client => self.0.is_multiple_of(4),
            Sender::Server { .. } => self.0 % 4 == 1 || self.0 % 4 == 3,
        };
        if !bits_ok || self.0 & 0xffff_ffff == 0 {
            return Err(BadMsgCode::MsgIdBadLowBits);
        }
        let now = now.as_secs();
        if self.secs() + MSG_ID_MAX_PAST_SECS < now {
            return Err(BadMsgCode::MsgIdTooLow);
        }
        if self.secs() > now + MSG_ID_MAX_FUTURE_SECS {
            return Err(BadMsgCode::MsgIdTooHigh);
        }
        Ok(())
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Makes strictly increasing msg_ids from the time it is given, even when that time steps back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgIdGen {
    last: u64,
}

impl MsgIdGen {
    /// A generator that has issued nothing.
    pub const fn new() -> Self {
        Self { last: 0 }
    }

    /// The next id for `sender` at `now`: `(secs << 32) | (nanos << 2) | parity`, or the last id
    /// plus 4 when the clock has not moved past it.
    #[must_use]
    pub fn next(&mut self, sender: Sender, now: UnixTime) -> MsgId {
        let bits = sender.low_bits();
        let fresh = (now.as_secs() << 32) | ((u64::from(now.subsec_nanos()) << 2) & 0xffff_fffc) | bits;
        let fresh = if fresh & 0xffff_ffff & !3 == 0 {
            fresh | 4
        } else {
            fresh
        };
        let id = if fresh > self.last {
            fresh
        } else {
            // Keep the parity: step to the next id above `last` with the same low bits.
            ((self.last | 3) + 1) | bits
        };
        self.last = id;
        MsgId(id)
    }

    /// A generator that continues after `last` (a stored session's).
    pub const fn resume(last: u64) -> Self {
        Self { last }
    }

    /// The last id issued.
    pub const fn last(&self) -> MsgId {
        MsgId(self.last)
    }
}

/// Counts content-related messages to give MTProto seq_nos: `2n + 1` for a content-related
/// message (then `n += 1`), `2n` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqNoGen {
    content_sent: u32,
}

impl SeqNoGen {
    /// A counter that continues after `content_sent` content-related messages.
    pub const fn resume(content_sent: u32) -> Self {
        Self { content_sent }
    }

    /// How many content-related messages were numbered.
    pub const fn content_sent(&self) -> u32 {
        self.content_sent
    }

    /// The seq_no for the next message.
    #[must_use]
    pub fn next(&mut self, content_related: bool) -> u32 {
        let base = self.content_sent.wrapping_mul(2);
        if content_related {
            self.content_sent = self.content_sent.wrapping_add(1);
            base | 1
        } else {
            base
        }
    }

    /// Moves the counter up (never down) so that the next content-related seq_no is the highest
    /// odd number at most `max_next`: for a session whose counter went back (code 32).
    ///
    /// ```
    /// let mut g = mtproto_session::SeqNoGen::resume(3); // next: 7
    /// g.skip_to(100);
    /// assert_eq!(g.next(true), 99);
    /// g.skip_to(50); // never back
    /// assert_eq!(g.next(true), 101);
    /// ```
    pub fn skip_to(&mut self, max_next: u32) {
        self.content_sent = self.content_sent.max(max_next.saturating_sub(1) / 2);
    }
}

macro_rules! id8 {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 8]);

        impl $name {
            /// As MTProto's little-endian `long`.
            pub const fn to_u64(self) -> u64 {
                u64::from_le_bytes(self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }
    };
}

id8!(
    /// A session id: 8 random bytes chosen at the end of the handshake.
    SessionId
);
id8!(
    /// A server salt: 8 random bytes, rotated on a schedule.
    ServerSalt
);

/// The name a user registers under (`client_id` in the API): 1 to 64 characters from
/// `[A-Za-z0-9_.-]`, so that it is safe in keys, logs and URLs.
///
/// Names are case-insensitive: `Bob`, `BOB` and `bob` are one name, kept in lower case (so no
/// one can register a look-alike of someone else's name by changing case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ClientId(String);

impl ClientId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 64;

    /// Checks and wraps a client id.
    ///
    /// ```
    /// use mtproto_session::ClientId;
    /// assert!(ClientId::new("user123").is_ok());
    /// assert!(ClientId::new("no spaces").is_err());
    /// assert_eq!(ClientId::new("Bob")?, ClientId::new("bob")?);
    /// assert_eq!(ClientId::new("BOB")?.as_str(), "bob");
    /// # Ok::<(), mtproto_session::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Malformed`] when empty, too long, or with other characters.
    pub fn new(id: &str) -> Result<Self> {
        let ok = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(id.to_ascii_lowercase()))
        } else {
            Err(Error::Malformed {
                field: "client_id",
                reason: "1-64 characters of A-Z a-z 0-9 _ - .",
            })
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_parity_and_time() {
        let mut g = MsgIdGen::new();
        let now = UnixTime::from_nanos(1_705_754_876_213_096_000);
        let c = g.next(Sender::Client, now);
        assert_eq!(c.0 % 4, 0);
        assert_eq!(c.secs(), 1_705_754_876);
        assert_eq!(g.next(Sender::Server { response: true }, now).0 % 4, 1);
        assert_eq!(g.next(Sender::Server { response: false }, now).0 % 4, 3);
        assert!(c.validate(Sender::Client, now).is_ok());
        assert_eq!(
            c.validate(Sender::Server { response: true }, now),
            Err(BadMsgCode::MsgIdBadLowBits)
        );
        assert_eq!(
            c.validate(Sender::Client, now.plus_secs(301)),
            Err(BadMsgCode::MsgIdTooLow)
        );
        assert!(c.validate(Sender::Client, now.plus_secs(300)).is_ok());
        assert_eq!(
            MsgId((now.as_secs() + 31) << 32 | 4).validate(Sender::Client, now),
            Err(BadMsgCode::MsgIdTooHigh)
        );
        // Low 32 bits of zero are not a valid id.
        assert!(MsgId(now.as_secs() << 32).validate(Sender::Client, now).is_err());
    }

    #[test]
    fn seq_nos_count_content_messages() {
        let mut s = SeqNoGen::default();
        assert_eq!(
            [s.next(true), s.next(true), s.next(false), s.next(true)],
            [1, 3, 4, 5]
        );
    }

    #[test]
    fn client_ids_are_checked() {
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new(&"a".repeat(65)).is_err());
        assert!(ClientId::new("ünï").is_err());
        assert!(serde_json::from_str::<ClientId>("\"a/b\"").is_err());
        let upper: ClientId = serde_json::from_str("\"Relay\"").unwrap();
        assert_eq!(upper.as_str(), "relay");
    }
}
