//! [`Cursor`]: an opaque position in one user's feed. It carries the feed's epoch, so a cursor
//! from before a restore or compaction (or from another account) is refused with
//! "resync required" instead of silently missing data. Wire format (opaque to clients, but
//! stable): base64url of `"<epoch>:<seq>"`.

use crate::ids::Seq;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: String,
    pub seq: Seq,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.epoch, self.seq.0))
    }

    /// `None` when `text` is not a cursor at all.
    pub fn decode(text: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (epoch, seq) = raw.rsplit_once(':')?;
        if epoch.is_empty() {
            return None;
        }
        Some(Self {
            epoch: epoch.to_owned(),
            seq: Seq(seq.parse().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_none() {
        let cursor = Cursor {
            epoch: "e1f0".into(),
            seq: Seq(42),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("!!"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("nocolon")), None);
    }

    proptest::proptest! {
        /// Whatever a client sends as `since` or a hello's cursor: an answer, never a panic.
        #[test]
        fn any_text_decodes_or_is_refused(text in "\\PC{0,64}", raw in proptest::collection::vec(proptest::num::u8::ANY, 0..48)) {
            let _ = Cursor::decode(&text);
            let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw));
        }

        #[test]
        fn every_cursor_round_trips(epoch in "[^\\s]{1,40}", seq in proptest::num::u64::ANY) {
            let cursor = Cursor { epoch, seq: Seq(seq) };
            proptest::prop_assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
    }
}
