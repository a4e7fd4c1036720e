//! Sync health: order-independent digests of a user's records, per collection, that the
//! server keeps up to date with every write and a client computes over its replica.
//!
//! A live record hashes to 128 bits of SHA-256 over its collection, id, visible field names
//! with their stamps, and tombstone stamp ([`record_hash`]); a deleted record counts as
//! nothing. A collection's digest is the XOR of its records' hashes, so a write changes it
//! by `old ^ new` and reading it costs one row. Values are not hashed, only their stamps:
//! an end-to-end encrypted replica holds plaintext where the server holds ciphertext, and a
//! value is fixed by its stamp (the merge keeps one value per stamp).
//!
//! To find what differs, both sides split a collection into buckets by a hash of the id
//! ([`bucket_of`]) and compare bucket digests; only the records of differing buckets are
//! fetched again.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// An XOR of record hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub u128);

impl Digest {
    pub const EMPTY: Digest = Digest(0);

    /// Adds or removes one record's hash (XOR is its own inverse).
    pub fn toggle(&mut self, hash: u128) {
        self.0 ^= hash;
    }

    /// The two halves as stored in two signed 64-bit columns.
    pub fn to_halves(self) -> (i64, i64) {
        (self.0 as u64 as i64, (self.0 >> 64) as u64 as i64)
    }

    pub fn from_halves(lo: i64, hi: i64) -> Self {
        Self(u128::from(lo as u64) | (u128::from(hi as u64) << 64))
    }

    pub fn parse(hex: &str) -> Option<Self> {
        (hex.len() == 32)
            .then(|| u128::from_str_radix(hex, 16).ok())
            .flatten()
            .map(Self)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("expected 32 hex digits"))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Digest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("128 bits as 32 lowercase hex digits"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Digest {}

/// The hash of a live record: `visible` are its visible fields' names and stamps (in any
/// order), `tombstone` its deletion stamp if it has one. Hash a deleted record as nothing.
pub fn record_hash<'a>(
    collection: &str,
    id: &str,
    visible: impl IntoIterator<Item = (&'a str, &'a str)>,
    tombstone: Option<&str>,
) -> u128 {
    let mut fields: Vec<(&str, &str)> = visible.into_iter().collect();
    fields.sort_unstable();
    let mut hasher = Sha256::new();
    // Lengths first: no two different records can write the same bytes.
    for part in [collection, id] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update((fields.len() as u64).to_le_bytes());
    for (name, stamp) in fields {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((stamp.len() as u64).to_le_bytes());
        hasher.update(stamp.as_bytes());
    }
    match tombstone {
        Some(t) => {
            hasher.update([1]);
            hasher.update(t.as_bytes());
        }
        None => hasher.update([0]),
    }
    let out = hasher.finalize();
    u128::from_le_bytes(out[..16].try_into().expect("16 of 32 bytes"))
}

/// The hash of a stored record (0 when deleted or never written).
pub fn stored_hash(collection: &str, id: &str, record: &crate::sync::StoredRecord) -> u128 {
    if record.seq.0 == 0 || record.record.is_deleted() {
        return 0;
    }
    let stamps: Vec<(&str, String)> = record
        .record
        .visible_fields()
        .map(|(name, field)| (name.as_str(), field.hlc.to_string()))
        .collect();
    let tombstone = record.record.tombstone.as_ref().map(ToString::to_string);
    record_hash(
        collection,
        id,
        stamps.iter().map(|(n, s)| (*n, s.as_str())),
        tombstone.as_deref(),
    )
}

/// The hash of a record as the feed shows it (0 when deleted).
pub fn view_hash(view: &crate::api::RecordView) -> u128 {
    if view.deleted {
        return 0;
    }
    let tombstone = view.tombstone.as_ref().map(ToString::to_string);
    record_hash(
        &view.collection,
        &view.id,
        view.fields.keys().map(|name| {
            (
                name.as_str(),
                view.stamps.get(name).and_then(|s| s.as_str()).unwrap_or(""),
            )
        }),
        tombstone.as_deref(),
    )
}

/// Most buckets a collection may be split into.
pub const MAX_BUCKETS: u32 = 4096;

/// The bucket of a record among `buckets` (a power of two, at most [`MAX_BUCKETS`]).
pub fn bucket_of(collection: &str, id: &str, buckets: u32) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update((collection.len() as u64).to_le_bytes());
    hasher.update(collection.as_bytes());
    hasher.update(id.as_bytes());
    let out = hasher.finalize();
    u32::from_le_bytes(out[..4].try_into().expect("4 of 32 bytes")) % buckets.max(1)
}

/// A sensible split for a collection of `records`: about 64 records a bucket.
pub fn buckets_for(records: u64) -> u32 {
    let wanted = records.div_ceil(64).clamp(1, u64::from(MAX_BUCKETS)) as u32;
    wanted.next_power_of_two().min(MAX_BUCKETS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_field_order_and_sees_every_part() {
        let a = record_hash("m", "1", [("a", "s1"), ("b", "s2")], None);
        assert_eq!(a, record_hash("m", "1", [("b", "s2"), ("a", "s1")], None));
        for other in [
            record_hash("m", "2", [("a", "s1"), ("b", "s2")], None),
            record_hash("n", "1", [("a", "s1"), ("b", "s2")], None),
            record_hash("m", "1", [("a", "s1"), ("b", "s3")], None),
            record_hash("m", "1", [("a", "s1")], None),
            record_hash("m", "1", [("a", "s1"), ("b", "s2")], Some("t")),
            // The same bytes split differently.
            record_hash("m1", "", [("a", "s1"), ("b", "s2")], None),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn digests_are_order_independent_and_round_trip() {
        let hashes = [1u128 << 100 | 7, 42, u128::MAX];
        let mut forward = Digest::EMPTY;
        hashes.iter().for_each(|h| forward.toggle(*h));
        let mut backward = Digest::EMPTY;
        hashes.iter().rev().for_each(|h| backward.toggle(*h));
        assert_eq!(forward, backward);
        backward.toggle(42);
        backward.toggle(42);
        assert_eq!(forward, backward, "removing and adding again");
        let (lo, hi) = forward.to_halves();
        assert_eq!(Digest::from_halves(lo, hi), forward);
        assert_eq!(Digest::parse(&forward.to_string()), Some(forward));
        assert_eq!(Digest::parse("xyz"), None);
    }

    #[test]
    fn buckets_spread_and_stay_in_range() {
        let mut counts = [0u32; 16];
        for i in 0..1600 {
            counts[bucket_of("messages", &format!("m{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (60..160).contains(&c)), "{counts:?}");
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(64), 1);
        assert_eq!(buckets_for(65), 2);
        assert_eq!(buckets_for(10_000_000), MAX_BUCKETS);
    }
}
