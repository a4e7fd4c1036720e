//! Records and their merge: a last-writer-wins map per field plus a tombstone, a state-based
//! CRDT. [`Record::merge`] is commutative, associative and idempotent (property-tested below),
//! so every replica that has seen the same writes holds the same record.
//!
//! Visibility is derived, never stored: a field is visible when its stamp is above the
//! tombstone's; a record is deleted when it has a tombstone and no visible field. A write
//! older than the tombstone therefore never revives a record, and a newer one does. Values
//! hidden by a tombstone are dropped (their stamps stay, for merging): a deleted conversation
//! does not linger in the database.

use crate::hlc::Hlc;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub value: Value,
    pub hlc: Hlc,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub fields: BTreeMap<String, Field>,
    pub tombstone: Option<Hlc>,
}

impl Record {
    /// Joins `other` into `self`.
    pub fn merge(&mut self, other: &Record) {
        for (name, theirs) in &other.fields {
            match self.fields.get_mut(name) {
                Some(ours) => {
                    if wins(theirs, ours) {
                        *ours = theirs.clone();
                    }
                }
                None => {
                    self.fields.insert(name.clone(), theirs.clone());
                }
            }
        }
        if let Some(theirs) = &other.tombstone
            && self.tombstone.as_ref().is_none_or(|ours| theirs > ours)
        {
            self.tombstone = Some(theirs.clone());
        }
        self.drop_hidden_values();
    }

    pub fn is_visible(&self, field: &Field) -> bool {
        self.tombstone.as_ref().is_none_or(|t| field.hlc > *t)
    }

    pub fn is_deleted(&self) -> bool {
        self.tombstone.is_some() && !self.fields.values().any(|f| self.is_visible(f))
    }

    pub fn visible_fields(&self) -> impl Iterator<Item = (&String, &Field)> {
        self.fields.iter().filter(|(_, f)| self.is_visible(f))
    }

    /// The highest stamp anywhere in the record.
    pub fn max_hlc(&self) -> Option<&Hlc> {
        self.fields
            .values()
            .map(|f| &f.hlc)
            .chain(self.tombstone.as_ref())
            .max()
    }

    fn drop_hidden_values(&mut self) {
        if let Some(tombstone) = &self.tombstone {
            for field in self.fields.values_mut() {
                if field.hlc < *tombstone {
                    field.value = Value::Null;
                }
            }
        }
    }
}

/// Whether `a` beats `b` for the same field: the higher stamp; on equal stamps (one device
/// sending two values under one stamp, a client bug) the larger value, so the choice does not
/// depend on arrival order.
pub fn wins(a: &Field, b: &Field) -> bool {
    match a.hlc.cmp(&b.hlc) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => canonical(&a.value) > canonical(&b.value),
    }
}

/// serde_json's map is ordered by key, so this string is canonical.
pub fn canonical(value: &Value) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hlc(ms: u64, node: &str) -> Hlc {
        Hlc::new(ms, 0, node).expect("hlc")
    }

    fn field(value: Value, ms: u64, node: &str) -> Field {
        Field {
            value,
            hlc: hlc(ms, node),
        }
    }

    #[test]
    fn a_delete_hides_older_writes_and_a_newer_write_revives() {
        let mut record = Record::default();
        record.merge(&Record {
            fields: [("title".into(), field("a".into(), 10, "x"))].into(),
            tombstone: None,
        });
        record.merge(&Record {
            fields: BTreeMap::new(),
            tombstone: Some(hlc(20, "y")),
        });
        assert!(record.is_deleted());
        assert_eq!(
            record.fields["title"].value,
            Value::Null,
            "hidden values are dropped"
        );
        // An older write (made before the delete) never revives.
        record.merge(&Record {
            fields: [("body".into(), field("b".into(), 15, "z"))].into(),
            tombstone: None,
        });
        assert!(record.is_deleted());
        // A newer one does, showing only what was written after the delete.
        record.merge(&Record {
            fields: [("body".into(), field("c".into(), 25, "z"))].into(),
            tombstone: None,
        });
        assert!(!record.is_deleted());
        let visible: Vec<_> = record
            .visible_fields()
            .map(|(k, f)| (k.as_str(), f.value.clone()))
            .collect();
        assert_eq!(visible, vec![("body", Value::from("c"))]);
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let field =
            (0u64..6, prop::sample::select(vec!["a", "b", "c"]), 0u8..4).prop_map(|(ms, node, v)| Field {
                value: if v == 0 { Value::Null } else { Value::from(v) },
                hlc: Hlc::new(ms, 0, node).expect("hlc"),
            });
        let fields = prop::collection::btree_map(prop::sample::select(vec!["x", "y", "z"]), field, 0..3)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        let tombstone =
            prop::option::of((0u64..6, prop::sample::select(vec!["a", "b"])).prop_map(|(ms, n)| hlc(ms, n)));
        (fields, tombstone).prop_map(|(fields, tombstone)| {
            let mut record = Record { fields, tombstone };
            record.drop_hidden_values();
            record
        })
    }

    fn merged(a: &Record, b: &Record) -> Record {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn merge_is_commutative(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab);
        }
    }
}
