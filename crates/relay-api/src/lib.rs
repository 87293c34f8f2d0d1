#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod answers;
mod calls;
mod error;
mod prekeys;
mod time;

pub use answers::{
    AckRef, EntryKind, PeerInfo, PeersAnswer, PollAnswer, PolledEntry, PublishAnswer, SendAnswer,
    MAX_LOOKUP_NAMES, MAX_PEERS_PAGE, NEVER_EXPIRES, OUTCOME_TTL_SECS, STATUS_RECEIVED,
};
pub use calls::{Call, Endpoint, EnvelopeRequest, EnvelopeResponse, U64Field};
pub use error::{ErrorBody, ErrorCode};
pub use prekeys::{
    OneTimePrekeyUpload, PrekeyBundleAnswer, PublishPrekeysAnswer, SignedPrekeyUpload, MAX_ONE_TIME_PREKEYS,
    MAX_PREKEYS_PER_PUBLISH,
};
pub use time::iso8601;
