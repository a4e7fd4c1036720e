//! One write applied to one stored record: the merge of [`crate::record`] plus what the
//! server needs around it: the seq at which each value was written, and the conflicts a
//! write creates.
//!
//! A write is concurrent with the value it replaces (or that beats it) when its writer had not
//! seen that value: its `base_seq` is below the seq at which the value was written, or it loses
//! on stamp. A device has always seen its own writes (same stamp node), and a writer that sends
//! no `base_seq` is taken to have seen everything it overwrites. Concurrent writes with
//! different values keep the loser as a [`ConflictDraft`], so nothing typed is dropped
//! silently. A delete that loses to a newer edit is not a conflict: the edit simply wins.

use crate::hlc::Hlc;
use crate::ids::Seq;
use crate::record::{Field, Record, wins};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A record as stored: the CRDT state plus bookkeeping for conflict detection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredRecord {
    pub record: Record,
    /// Seq at which each field's current value was written.
    pub written: BTreeMap<String, Seq>,
    /// Seq at which the tombstone was written.
    pub tombstone_seq: Option<Seq>,
    /// The record's place in the feed (its latest change).
    pub seq: Seq,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Upsert(Map<String, Value>),
    Delete,
}

#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub op: Op,
    pub hlc: &'a Hlc,
    /// The highest seq the writer had pulled; `None`: assume it had seen everything.
    pub base_seq: Option<Seq>,
}

/// One side of a conflict: a value, or a deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Side {
    pub value: Value,
    pub hlc: Hlc,
    /// True when this side is the record's deletion rather than a value.
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConflictDraft {
    pub field: String,
    pub kept: Side,
    pub lost: Side,
}

impl StoredRecord {
    /// Applies `write`, recording `seq` where it changes anything. Returns whether the stored
    /// state changed; pushes the conflicts it creates onto `conflicts`.
    pub fn apply(&mut self, write: Write<'_>, seq: Seq, conflicts: &mut Vec<ConflictDraft>) -> bool {
        let changed = match write.op {
            Op::Upsert(fields) => {
                let mut changed = false;
                for (name, value) in fields {
                    let incoming = Field {
                        value,
                        hlc: write.hlc.clone(),
                    };
                    changed |= self.apply_field(name, incoming, write.base_seq, seq, conflicts);
                }
                changed
            }
            Op::Delete => self.apply_delete(write.hlc, write.base_seq, seq, conflicts),
        };
        if changed {
            self.seq = seq;
        }
        changed
    }

    fn apply_field(
        &mut self,
        name: String,
        incoming: Field,
        base_seq: Option<Seq>,
        seq: Seq,
        conflicts: &mut Vec<ConflictDraft>,
    ) -> bool {
        let tombstone = self.record.tombstone.clone();
        let hidden_on_arrival = tombstone.as_ref().is_some_and(|t| incoming.hlc < *t);
        let current = self.record.fields.get(&name);
        if current.is_some_and(|c| c.hlc == incoming.hlc && (c.value == incoming.value || hidden_on_arrival))
        {
            return false; // the same write again (a hidden one is stored without its value)
        }
        let incoming_wins = current.is_none_or(|c| wins(&incoming, c));

        if hidden_on_arrival {
            // Written before a delete its writer had not seen: the deletion is kept.
            if let Some(t) = &tombstone
                && t.node() != incoming.hlc.node()
                && !incoming.value.is_null()
            {
                conflicts.push(ConflictDraft {
                    field: name.clone(),
                    kept: Side {
                        value: Value::Null,
                        hlc: t.clone(),
                        deleted: true,
                    },
                    lost: side(&incoming),
                });
            }
        } else if let Some(current) = current.filter(|c| self.record.is_visible(c)) {
            let concurrent = current.hlc.node() != incoming.hlc.node() && current.value != incoming.value;
            if incoming_wins {
                let unseen = base_seq.is_some_and(|b| self.written.get(&name).is_some_and(|w| b < *w));
                if concurrent && unseen {
                    conflicts.push(ConflictDraft {
                        field: name.clone(),
                        kept: side(&incoming),
                        lost: side(current),
                    });
                }
            } else if concurrent {
                conflicts.push(ConflictDraft {
                    field: name.clone(),
                    kept: side(current),
                    lost: side(&incoming),
                });
            }
        }

        if !incoming_wins {
            return false;
        }
        let mut value = incoming.value;
        if hidden_on_arrival {
            value = Value::Null; // kept only as a stamp, like every hidden value
        }
        self.record.fields.insert(
            name.clone(),
            Field {
                value,
                hlc: incoming.hlc,
            },
        );
        self.written.insert(name, seq);
        true
    }

    fn apply_delete(
        &mut self,
        hlc: &Hlc,
        base_seq: Option<Seq>,
        seq: Seq,
        conflicts: &mut Vec<ConflictDraft>,
    ) -> bool {
        if self.record.tombstone.as_ref().is_some_and(|t| t >= hlc) {
            return false;
        }
        for (name, field) in self.record.visible_fields() {
            let unseen = base_seq.is_some_and(|b| self.written.get(name).is_some_and(|w| b < *w));
            if field.hlc < *hlc && unseen && field.hlc.node() != hlc.node() && !field.value.is_null() {
                conflicts.push(ConflictDraft {
                    field: name.clone(),
                    kept: Side {
                        value: Value::Null,
                        hlc: hlc.clone(),
                        deleted: true,
                    },
                    lost: side(field),
                });
            }
        }
        self.record.merge(&Record {
            fields: BTreeMap::new(),
            tombstone: Some(hlc.clone()),
        });
        self.tombstone_seq = Some(seq);
        true
    }

    /// The visible fields, or `None` when the record is deleted or was never written: what
    /// a reader sees, and what the history records changes of.
    pub fn visible_state(&self) -> crate::history::Visible {
        (self.seq > Seq(0) && !self.record.is_deleted()).then(|| {
            self.record
                .visible_fields()
                .map(|(name, field)| (name.clone(), field.value.clone()))
                .collect()
        })
    }

    /// The visible fields as a JSON object, and their stamps.
    pub fn visible(&self) -> (Map<String, Value>, Map<String, Value>) {
        let mut values = Map::new();
        let mut stamps = Map::new();
        for (name, field) in self.record.visible_fields() {
            values.insert(name.clone(), field.value.clone());
            stamps.insert(name.clone(), Value::String(field.hlc.to_string()));
        }
        (values, stamps)
    }

    /// The storage encoding of the fields: `{"name":{"v":value,"h":"stamp","s":seq}}`. This is
    /// a storage format: readers must keep accepting every form ever written.
    pub fn encode_fields(&self) -> String {
        // Written straight into one buffer: this runs for every stored record, and building a
        // `serde_json::Map` first cloned every value.
        let mut out: Vec<u8> = Vec::with_capacity(128 * self.record.fields.len() + 2);
        out.push(b'{');
        for (i, (name, field)) in self.record.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let seq = self.written.get(name).map_or(0, |s| s.0);
            // Writing JSON into a Vec cannot fail; stamps need no escaping.
            let _ = serde_json::to_writer(&mut out, name);
            out.extend_from_slice(br#":{"v":"#);
            let _ = serde_json::to_writer(&mut out, &field.value);
            out.extend_from_slice(br#","h":""#);
            field.hlc.write_text(&mut out);
            out.extend_from_slice(br#"","s":"#);
            let _ = serde_json::to_writer(&mut out, &seq);
            out.push(b'}');
        }
        out.push(b'}');
        String::from_utf8(out).unwrap_or_default()
    }

    /// Rebuilds a stored record from its columns.
    pub fn decode(
        fields: &str,
        tombstone: Option<&str>,
        tombstone_seq: Option<Seq>,
        seq: Seq,
    ) -> Result<Self, String> {
        let parsed: Map<String, Value> = serde_json::from_str(fields).map_err(|e| format!("fields: {e}"))?;
        let mut record = Record::default();
        let mut written = BTreeMap::new();
        for (name, entry) in parsed {
            let hlc: Hlc = entry["h"]
                .as_str()
                .ok_or("field without stamp")?
                .parse()
                .map_err(|e| format!("{e}"))?;
            let value = entry.get("v").cloned().unwrap_or(Value::Null);
            written.insert(name.clone(), Seq(entry["s"].as_u64().unwrap_or(0)));
            record.fields.insert(name, Field { value, hlc });
        }
        record.tombstone = tombstone
            .map(str::parse)
            .transpose()
            .map_err(|e| format!("tombstone: {e}"))?;
        Ok(Self {
            record,
            written,
            tombstone_seq,
            seq,
        })
    }
}

/// A stored record as its columns, for readers that need only some of it: whole-state
/// downloads copy visible values straight from the stored JSON without building a value
/// tree, and decode a whole record only where they must ([`RawRecord::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// `{"name":{"v":value,"h":"stamp","s":seq}}`, as [`StoredRecord::encode_fields`] writes it.
    pub fields: String,
    pub tombstone: Option<String>,
    pub tombstone_seq: Option<Seq>,
    pub seq: Seq,
}

#[derive(Deserialize)]
struct RawField<'a> {
    #[serde(borrow)]
    v: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    h: std::borrow::Cow<'a, str>,
}

impl RawRecord {
    pub fn decode(&self) -> Result<StoredRecord, String> {
        StoredRecord::decode(
            &self.fields,
            self.tombstone.as_deref(),
            self.tombstone_seq,
            self.seq,
        )
    }

    /// The visible fields (stamp above the tombstone) as their stored JSON text, in name
    /// order; empty for a deleted record. Stamps compare as text (their order by design).
    pub fn visible_raw(
        &self,
    ) -> Result<Vec<(std::borrow::Cow<'_, str>, &serde_json::value::RawValue)>, String> {
        let fields: BTreeMap<std::borrow::Cow<'_, str>, RawField<'_>> =
            serde_json::from_str(&self.fields).map_err(|e| format!("fields: {e}"))?;
        Ok(fields
            .into_iter()
            .filter(|(_, f)| self.tombstone.as_deref().is_none_or(|t| f.h.as_ref() > t))
            .map(|(name, f)| (name, f.v))
            .collect())
    }
}

impl From<&StoredRecord> for RawRecord {
    fn from(record: &StoredRecord) -> Self {
        Self {
            fields: record.encode_fields(),
            tombstone: record.record.tombstone.as_ref().map(ToString::to_string),
            tombstone_seq: record.tombstone_seq,
            seq: record.seq,
        }
    }
}

fn side(field: &Field) -> Side {
    Side {
        value: field.value.clone(),
        hlc: field.hlc.clone(),
        deleted: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hlc(ms: u64, node: &str) -> Hlc {
        Hlc::new(ms, 0, node).expect("hlc")
    }

    fn upsert(fields: Value) -> Op {
        Op::Upsert(fields.as_object().expect("object").clone())
    }

    fn apply(
        record: &mut StoredRecord,
        op: &Op,
        stamp: &Hlc,
        base: Option<u64>,
        seq: u64,
    ) -> Vec<ConflictDraft> {
        let mut conflicts = Vec::new();
        record.apply(
            Write {
                op: op.clone(),
                hlc: stamp,
                base_seq: base.map(Seq),
            },
            Seq(seq),
            &mut conflicts,
        );
        conflicts
    }

    #[test]
    fn two_devices_editing_apart_keep_the_later_stamp_and_list_the_loser() {
        let mut r = StoredRecord::default();
        assert!(
            apply(
                &mut r,
                &upsert(json!({"title": "from laptop"})),
                &hlc(10, "laptop"),
                Some(0),
                1
            )
            .is_empty()
        );
        // The phone had not seen seq 1 and writes later: it wins, the laptop's title is kept as lost.
        let c = apply(
            &mut r,
            &upsert(json!({"title": "from phone"})),
            &hlc(20, "phone"),
            Some(0),
            2,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].kept.value.clone(), c[0].lost.value.clone()),
            (json!("from phone"), json!("from laptop"))
        );
        // An older write arriving late loses, and is listed too.
        let c = apply(
            &mut r,
            &upsert(json!({"title": "from tablet"})),
            &hlc(15, "tablet"),
            Some(0),
            3,
        );
        assert_eq!(c[0].lost.value, json!("from tablet"));
        assert_eq!(r.visible().0["title"], json!("from phone"));
        assert_eq!(r.seq, Seq(2), "a losing write changes nothing");
    }

    #[test]
    fn a_writer_that_had_seen_the_value_or_wrote_it_is_no_conflict() {
        let mut r = StoredRecord::default();
        apply(
            &mut r,
            &upsert(json!({"title": "a"})),
            &hlc(10, "laptop"),
            None,
            1,
        );
        assert!(
            apply(
                &mut r,
                &upsert(json!({"title": "b"})),
                &hlc(20, "phone"),
                Some(1),
                2
            )
            .is_empty()
        );
        assert!(
            apply(
                &mut r,
                &upsert(json!({"title": "c"})),
                &hlc(30, "phone"),
                Some(0),
                3
            )
            .is_empty(),
            "own write"
        );
        assert!(
            apply(
                &mut r,
                &upsert(json!({"title": "c"})),
                &hlc(25, "tablet"),
                Some(0),
                4
            )
            .is_empty(),
            "same value"
        );
    }

    #[test]
    fn delete_against_an_unseen_edit_keeps_the_edit_as_lost_in_either_order() {
        // Edit first, then a delete that had not seen it.
        let mut r = StoredRecord::default();
        apply(
            &mut r,
            &upsert(json!({"body": "typed offline"})),
            &hlc(10, "phone"),
            Some(0),
            1,
        );
        let c = apply(&mut r, &Op::Delete, &hlc(20, "laptop"), Some(0), 2);
        assert_eq!(c.len(), 1);
        assert!(c[0].kept.deleted);
        assert_eq!(c[0].lost.value, json!("typed offline"));
        assert!(r.record.is_deleted());
        // Delete first, then the older edit arrives: it does not revive, and is listed.
        let mut r = StoredRecord::default();
        apply(&mut r, &Op::Delete, &hlc(20, "laptop"), Some(0), 1);
        let c = apply(
            &mut r,
            &upsert(json!({"body": "typed offline"})),
            &hlc(10, "phone"),
            Some(0),
            2,
        );
        assert_eq!(c[0].lost.value, json!("typed offline"));
        assert!(r.record.is_deleted());
        assert_eq!(
            r.record.fields["body"].value,
            Value::Null,
            "not stored in clear under the tombstone"
        );
    }

    #[test]
    fn the_storage_encoding_round_trips() {
        let mut r = StoredRecord::default();
        apply(
            &mut r,
            &upsert(json!({"a": {"nested": [1, 2]}, "b": null})),
            &hlc(10, "x"),
            None,
            4,
        );
        apply(&mut r, &Op::Delete, &hlc(5, "y"), None, 5);
        let decoded = StoredRecord::decode(
            &r.encode_fields(),
            r.record.tombstone.as_ref().map(ToString::to_string).as_deref(),
            r.tombstone_seq,
            r.seq,
        )
        .expect("decode");
        assert_eq!(decoded, r);
    }
}
