//! A bounded replay window of received msg_ids with their seq_nos.

use serde::{Deserialize, Serialize};

use crate::{BadMsgCode, MsgId};

/// How many received ids a session remembers. Telethon keeps 500; a relay client has only a few
/// requests in flight, so 128 covers any reordering it causes, and an id below the window is
/// refused (code 20) rather than risk accepting a duplicate. Small, because the relay stores the
/// window with every request it accepts.
pub const REPLAY_WINDOW: usize = 128;

/// The furthest a request's seq_no may run ahead of the highest one accepted before (of a new
/// session: ahead of 0). A client counts 2 per request, so this allows 2,048 requests lost in
/// flight; without it one request with seq_no 2^32-1 would leave no seq_no for the next one
/// and make the session (and the name bound to it) unusable forever.
pub const MAX_SEQ_NO_STEP: u32 = 4096;

/// What [`ReplayWindow::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: accept (then [`ReplayWindow::record`] it).
    Fresh,
    /// Seen before: a resend or a replay; never process it twice.
    Duplicate,
}

/// The last [`REPLAY_WINDOW`] received msg_ids and their seq_nos. An id below every remembered
/// one, once the window is full, is refused with code 20: it cannot be told whether it was seen.
///
/// Kept as one sorted vector (at most 1.5 KB): cloning it, which the relay does for every request
/// it accepts, is a single copy rather than a tree of allocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    seen: Vec<(u64, u32)>,
}

/// Stored compactly: base64 of `(msg_id u64 LE ‖ seq_no u32 LE)*`, 12 bytes an entry.
impl Serialize for ReplayWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut raw = Vec::with_capacity(self.seen.len() * 12);
        for (id, seq) in &self.seen {
            raw.extend_from_slice(&id.to_le_bytes());
            raw.extend_from_slice(&seq.to_le_bytes());
        }
        s.serialize_str(&crate::wire::b64(&raw))
    }
}

impl<'de> Deserialize<'de> for ReplayWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let raw = crate::wire::from_b64(&text).ok_or_else(|| serde::de::Error::custom("invalid base64"))?;
        if raw.len() % 12 != 0 || raw.len() / 12 > REPLAY_WINDOW {
            return Err(serde::de::Error::custom("replay window: bad length"));
        }
        let mut seen = Vec::with_capacity(raw.len() / 12);
        for e in raw.chunks_exact(12) {
            let (id, seq) = e.split_at(8);
            let id = u64::from_le_bytes(id.try_into().map_err(serde::de::Error::custom)?);
            let seq = u32::from_le_bytes(seq.try_into().map_err(serde::de::Error::custom)?);
            seen.push((id, seq));
        }
        seen.sort_unstable_by_key(|e| e.0);
        seen.dedup_by_key(|e| e.0);
        Ok(Self { seen })
    }
}

impl ReplayWindow {
    /// Checks `(msg_id, seq_no)` without recording it: duplicate, too old, and MTProto's seq_no
    /// order rules (codes 32/33): a message with a higher msg_id must not have a lower seq_no, and
    /// two content-related (odd) messages must not share one; a seq_no more than
    /// [`MAX_SEQ_NO_STEP`] above every accepted one is refused (33) and not recorded.
    ///
    /// # Errors
    /// Code 20, 32 or 33.
    pub fn check(&self, msg_id: MsgId, seq_no: u32) -> Result<Verdict, BadMsgCode> {
        let id = msg_id.0;
        let pos = match self.seen.binary_search_by_key(&id, |e| e.0) {
            Ok(_) => return Ok(Verdict::Duplicate),
            Err(pos) => pos,
        };
        if self.seen.len() >= REPLAY_WINDOW && pos == 0 {
            return Err(BadMsgCode::MsgTooOld);
        }
        let odd = seq_no & 1 == 1;
        // Entries are ordered by msg_id with seq_nos that never decrease: the last is the highest.
        let highest = self.seen.last().map_or(0, |e| e.1);
        if seq_no > highest.saturating_add(MAX_SEQ_NO_STEP) {
            return Err(BadMsgCode::SeqNoTooHigh);
        }
        if let Some(&(_, prev)) = pos.checked_sub(1).and_then(|p| self.seen.get(p)) {
            if prev > seq_no || (prev == seq_no && odd) {
                return Err(BadMsgCode::SeqNoTooLow);
            }
        }
        if let Some(&(_, next)) = self.seen.get(pos) {
            if next < seq_no || (next == seq_no && odd) {
                return Err(BadMsgCode::SeqNoTooHigh);
            }
        }
        Ok(Verdict::Fresh)
    }

    /// Records an id that passed [`ReplayWindow::check`], evicting the lowest when full.
    pub fn record(&mut self, msg_id: MsgId, seq_no: u32) {
        match self.seen.binary_search_by_key(&msg_id.0, |e| e.0) {
            Ok(i) => {
                if let Some(e) = self.seen.get_mut(i) {
                    e.1 = seq_no;
                }
            }
            Err(i) => self.seen.insert(i, (msg_id.0, seq_no)),
        }
        if self.seen.len() > REPLAY_WINDOW {
            let extra = self.seen.len() - REPLAY_WINDOW;
            self.seen.drain(..extra);
        }
    }

    /// The remembered `(msg_id, seq_no)` pairs, lowest msg_id first.
    pub fn entries(&self) -> &[(u64, u32)] {
        &self.seen
    }

    /// A window holding `entries`, or `None` unless they are at most [`REPLAY_WINDOW`], with
    /// strictly increasing msg_ids and seq_nos that never decrease (as [`ReplayWindow::check`]
    /// would have let them in).
    pub fn from_entries(entries: Vec<(u64, u32)>) -> Option<Self> {
        let ordered = entries.windows(2).all(|w| match w {
            [a, b] => a.0 < b.0 && a.1 <= b.1,
            _ => true,
        });
        (ordered && entries.len() <= REPLAY_WINDOW).then_some(Self { seen: entries })
    }

    /// Whether `msg_id` is remembered.
    pub fn contains(&self, msg_id: MsgId) -> bool {
        self.seen.binary_search_by_key(&msg_id.0, |e| e.0).is_ok()
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_no_that_leaves_no_room_is_refused_and_not_recorded() {
        let mut w = ReplayWindow::default();
        let id = |n: u64| MsgId((1_800_000_000u64 << 32) | (n << 2));
        assert_eq!(w.check(id(1), u32::MAX), Err(BadMsgCode::SeqNoTooHigh));
        assert_eq!(w.check(id(1), MAX_SEQ_NO_STEP + 1), Err(BadMsgCode::SeqNoTooHigh));
        assert_eq!(w.check(id(1), MAX_SEQ_NO_STEP - 1), Ok(Verdict::Fresh));
        w.record(id(1), 1);
        // The refused request left nothing behind: the next ordinary one goes through.
        assert_eq!(w.check(id(2), u32::MAX - 2), Err(BadMsgCode::SeqNoTooHigh));
        assert_eq!(w.check(id(2), 3), Ok(Verdict::Fresh));
        w.record(id(2), 3);
        assert_eq!(w.check(id(3), 3 + MAX_SEQ_NO_STEP), Ok(Verdict::Fresh));
    }
}
