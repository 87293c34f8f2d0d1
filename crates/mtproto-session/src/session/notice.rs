//! The relay's sealed notices: bad_msg_notification and bad_server_salt.

use serde::{Deserialize, Serialize};

use crate::{wire::Bytes, BadMsgCode, EnvelopeError, ServerSalt};

/// A server's notice about a bad message (MTProto's `bad_server_salt` and
/// `bad_msg_notification`), sent as the body of a server envelope (msg_id ≡ 3 mod 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "_", rename_all = "snake_case")]
pub enum Notice {
    /// The salt was wrong; here is the current one (code 48).
    BadServerSalt {
        /// The rejected message.
        bad_msg_id: u64,
        /// Its seq_no.
        bad_msg_seqno: u32,
        /// 48.
        error_code: u32,
        /// The salt to use.
        new_server_salt: Bytes,
    },
    /// Another msg_id or seq_no rule was broken.
    BadMsgNotification {
        /// The rejected message.
        bad_msg_id: u64,
        /// Its seq_no.
        bad_msg_seqno: u32,
        /// The MTProto code.
        error_code: u32,
    },
}

impl Notice {
    /// The notice that answers `err`, if it is a bad-message error.
    pub fn for_error(err: &EnvelopeError, current_salt: ServerSalt) -> Option<Self> {
        let EnvelopeError::BadMsg {
            code,
            bad_msg_id,
            bad_msg_seqno,
        } = *err
        else {
            return None;
        };
        Some(if code == BadMsgCode::BadServerSalt {
            Self::BadServerSalt {
                bad_msg_id,
                bad_msg_seqno,
                error_code: code.code(),
                new_server_salt: Bytes(current_salt.0.to_vec()),
            }
        } else {
            Self::BadMsgNotification {
                bad_msg_id,
                bad_msg_seqno,
                error_code: code.code(),
            }
        })
    }

    /// The rejected message's id.
    pub fn bad_msg_id(&self) -> u64 {
        match self {
            Self::BadServerSalt { bad_msg_id, .. } | Self::BadMsgNotification { bad_msg_id, .. } => {
                *bad_msg_id
            }
        }
    }

    /// The MTProto code, if known.
    pub fn code(&self) -> Option<BadMsgCode> {
        match self {
            Self::BadServerSalt { error_code, .. } | Self::BadMsgNotification { error_code, .. } => {
                BadMsgCode::from_code(*error_code)
            }
        }
    }
}
