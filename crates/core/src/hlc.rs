//! Hybrid logical clocks: the stamp every field write carries.
//!
//! Wire format (fixed; never change it): `"<ms:15 digits>-<counter:5 digits>-<node>"`, e.g.
//! `"001764172800000-00003-laptop"`, node `[A-Za-z0-9_-]{1,64}`. The fixed-width numbers make
//! string order equal stamp order, so the database and any client can compare stamps as
//! strings. [`Hlc`]'s `Ord` is that same order.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use thiserror::Error;

/// Largest value of the 15-digit millisecond part (year ~33658).
pub const MAX_MS: u64 = 999_999_999_999_999;
/// Largest value of the 5-digit counter.
pub const MAX_COUNTER: u32 = 99_999;
pub const MAX_NODE_LEN: usize = 64;

/// A stamp. Ordered by (ms, counter, node), exactly like its string form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    ms: u64,
    counter: u32,
    /// Shared: every field a write sets carries a copy of its stamp.
    node: Arc<str>,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum HlcError {
    #[error("stamp must look like 001764172800000-00003-node")]
    Malformed,
    #[error("node must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    BadNode,
    #[error("stamp counter overflowed; the clock is running too far ahead")]
    CounterOverflow,
}

impl Hlc {
    pub fn new(ms: u64, counter: u32, node: impl Into<String>) -> Result<Self, HlcError> {
        let node = node.into();
        if ms > MAX_MS || counter > MAX_COUNTER {
            return Err(HlcError::Malformed);
        }
        validate_node(&node)?;
        Ok(Self {
            ms,
            counter,
            node: node.into(),
        })
    }

    pub fn ms(&self) -> u64 {
        self.ms
    }

    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// The device (or server) that made the stamp.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The smallest stamp of `node` that is greater than both `self` and wall time `now_ms`.
    pub fn successor(&self, now_ms: u64, node: &str) -> Result<Self, HlcError> {
        validate_node(node)?;
        let (ms, counter) = if now_ms > self.ms {
            (now_ms, 0)
        } else if self.counter < MAX_COUNTER {
            (self.ms, self.counter + 1)
        } else if self.ms < MAX_MS {
            (self.ms + 1, 0)
        } else {
            return Err(HlcError::CounterOverflow);
        };
        let node = if *self.node == *node {
            self.node.clone()
        } else {
            node.into()
        };
        Ok(Self { ms, counter, node })
    }
}

pub fn validate_node(node: &str) -> Result<(), HlcError> {
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_LEN
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(HlcError::BadNode) }
}

impl Hlc {
    /// Appends the stamp's text (its `Display` form) to `out`. Every stored field writes its
    /// stamp, so this skips the formatting machinery: both numbers have fixed widths
    /// (`ms` ≤ [`MAX_MS`], `counter` ≤ [`MAX_COUNTER`], enforced at construction).
    pub fn write_text(&self, out: &mut Vec<u8>) {
        let mut numbers = [b'-'; 22];
        fill_digits(&mut numbers[..15], self.ms);
        fill_digits(&mut numbers[16..21], u64::from(self.counter));
        out.extend_from_slice(&numbers);
        out.extend_from_slice(self.node.as_bytes());
    }
}

/// Writes `n` as decimal digits filling `slot`, zero-padded on the left.
fn fill_digits(slot: &mut [u8], mut n: u64) {
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:015}-{:05}-{}", self.ms, self.counter, self.node)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({self})")
    }
}

impl FromStr for Hlc {
    type Err = HlcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() < 23 || bytes[15] != b'-' || bytes[21] != b'-' {
            return Err(HlcError::Malformed);
        }
        let digits = |range: std::ops::Range<usize>| -> Result<u64, HlcError> {
            let part = &s[range];
            if part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse().map_err(|_| HlcError::Malformed)
            } else {
                Err(HlcError::Malformed)
            }
        };
        let ms = digits(0..15)?;
        let counter = u32::try_from(digits(16..21)?).map_err(|_| HlcError::Malformed)?;
        Hlc::new(ms, counter, &s[22..])
    }
}

impl Serialize for Hlc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hlc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Hlc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^\d{15}-\d{5}-[A-Za-z0-9_-]{1,64}$"))
            .examples(["001764172800000-00003-laptop"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Hlc {}

/// A device's clock: issues strictly increasing stamps and moves past every stamp it has seen
/// (the HLC receive rule), so a write made after seeing a value wins over it whatever the
/// wall clock says.
#[derive(Debug, Clone)]
pub struct HlcClock {
    node: String,
    last: Option<Hlc>,
}

impl HlcClock {
    pub fn new(node: impl Into<String>) -> Result<Self, HlcError> {
        let node = node.into();
        validate_node(&node)?;
        Ok(Self { node, last: None })
    }

    /// A fresh stamp above every stamp issued or observed so far.
    pub fn tick(&mut self, now_ms: u64) -> Result<Hlc, HlcError> {
        let next = match &self.last {
            Some(last) => last.successor(now_ms, &self.node)?,
            None => Hlc::new(now_ms.min(MAX_MS), 0, self.node.clone())?,
        };
        self.last = Some(next.clone());
        Ok(next)
    }

    /// Moves the clock past a stamp seen from elsewhere.
    pub fn observe(&mut self, seen: &Hlc) {
        if self.last.as_ref().is_none_or(|last| seen > last) {
            self.last = Some(seen.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_wire_form_round_trips() {
        let hlc: Hlc = "001764172800000-00003-laptop".parse().expect("parse");
        assert_eq!(
            (hlc.ms(), hlc.counter(), hlc.node()),
            (1_764_172_800_000, 3, "laptop")
        );
        assert_eq!(hlc.to_string(), "001764172800000-00003-laptop");
    }

    proptest! {
        #[test]
        fn write_text_is_the_display_form(ms in 0..=MAX_MS, counter in 0..=MAX_COUNTER, node in "[A-Za-z0-9_-]{1,64}") {
            let hlc = Hlc::new(ms, counter, &node).expect("valid");
            let mut text = Vec::new();
            hlc.write_text(&mut text);
            prop_assert_eq!(String::from_utf8(text).expect("ascii"), hlc.to_string());
        }
    }

    #[test]
    fn malformed_stamps_are_refused() {
        for bad in [
            "",
            "1764172800000-00003-laptop",
            "001764172800000-3-laptop",
            "001764172800000-00003-",
            "001764172800000-00003-lap top",
            "00176417280000x-00003-laptop",
            "+01764172800000-00003-laptop",
            &format!("001764172800000-00003-{}", "n".repeat(65)),
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_clock_moves_past_what_it_observes() {
        let mut clock = HlcClock::new("phone").expect("clock");
        let a = clock.tick(1_000).expect("tick");
        let b = clock.tick(1_000).expect("tick");
        assert!(b > a);
        let remote: Hlc = "000000000005000-00007-laptop".parse().expect("parse");
        clock.observe(&remote);
        let c = clock.tick(1_000).expect("tick");
        assert!(
            c > remote,
            "{c} must beat {remote} although the wall clock is behind"
        );
        assert_eq!(c.node(), "phone");
    }

    fn stamp() -> impl Strategy<Value = Hlc> {
        (0u64..=MAX_MS, 0u32..=MAX_COUNTER, "[A-Za-z0-9_-]{1,12}")
            .prop_map(|(ms, counter, node)| Hlc::new(ms, counter, node).expect("valid"))
    }

    proptest! {
        /// Any text where a stamp belongs (a push's `hlc`, a stored field): parsed or
        /// refused, never a panic; whatever parses prints back as itself.
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC{0,90}", digits in "[0-9]{10,20}-[0-9]{1,7}-[A-Za-z0-9_-]{0,70}") {
            for candidate in [text.as_str(), digits.as_str()] {
                if let Ok(hlc) = candidate.parse::<Hlc>() {
                    prop_assert_eq!(hlc.to_string().parse::<Hlc>().ok(), Some(hlc));
                }
            }
        }

        #[test]
        fn string_order_is_stamp_order(a in stamp(), b in stamp()) {
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
            prop_assert_eq!(a.to_string().parse::<Hlc>().expect("parse"), a);
        }

        #[test]
        fn ticks_are_strictly_increasing(nows in proptest::collection::vec(0u64..10_000, 1..50)) {
            let mut clock = HlcClock::new("n").expect("clock");
            let mut last: Option<Hlc> = None;
            for now in nows {
                let next = clock.tick(now).expect("tick");
                prop_assert!(last.as_ref().is_none_or(|l| next > *l));
                last = Some(next);
            }
        }
    }
}
