//! A push, validated and planned: everything `sync::apply` decides without I/O.
//!
//! [`Mutation::validate`] turns a wire mutation into a checked one (names, sizes, stamp, clock
//! skew); [`plan`] applies a batch to the records it touches, in order, assigning each changed
//! record one fresh seq and answering every mutation. The store runs the plan's reads and
//! writes in one transaction around it.

use crate::api::{MutationIn, MutationResult, MutationStatus, OpName};
use crate::hlc::{Hlc, HlcError};
use crate::ids::Seq;
use crate::sync::{ConflictDraft, Op, StoredRecord, Write};
use serde_json::Value;
use std::collections::HashMap;

/// Limits on what one push may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLimits {
    pub max_mutations: usize,
    /// Serialized JSON size of one field value.
    pub max_field_bytes: usize,
    /// How far ahead of the server's clock a stamp may be.
    pub max_clock_skew_ms: u64,
}

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            max_mutations: 1000,
            max_field_bytes: 1024 * 1024,
            max_clock_skew_ms: 10 * 60 * 1000,
        }
    }
}

/// A record's address within one user's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub collection: String,
    pub id: String,
}

/// A condition on the record's current state (the records API's `If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The record exists (not deleted) at exactly this seq.
    Seq(Seq),
    /// The record exists and is not deleted (`If-Match: *`).
    Exists,
    /// The record is at exactly this seq, deleted or not (the server's own restores, which
    /// must not overwrite a write they did not see).
    Unchanged(Seq),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub mutation_id: String,
    pub key: RecordKey,
    pub op: Op,
    /// `None`: the server stamps the write above everything in the record (records API,
    /// conflict resolution).
    pub hlc: Option<Hlc>,
    pub base_seq: Option<Seq>,
    pub precondition: Option<Precondition>,
}

/// Why a mutation was refused; `too_large` ones are 413, the rest 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
    pub too_large: bool,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
        too_large: false,
    }
}

pub fn validate_collection(name: &str) -> Result<(), Invalid> {
    let mut bytes = name.bytes();
    let ok = name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_collection",
            format!("collection {name:?} must match [a-z][a-z0-9_-]{{0,63}}"),
        ))
    }
}

pub fn validate_record_id(id: &str) -> Result<(), Invalid> {
    let len = id.chars().count();
    if (1..=128).contains(&len) && !id.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(invalid(
            "invalid_id",
            "record ids are 1 to 128 printable characters",
        ))
    }
}

pub fn validate_fields(fields: &serde_json::Map<String, Value>, limits: &SyncLimits) -> Result<(), Invalid> {
    for (name, value) in fields {
        // No control characters: a conflict keeps the field name as text, and PostgreSQL's
        // text refuses NUL, which would fail that push with a 500 on every retry.
        let len = name.chars().count();
        if !(1..=128).contains(&len) || name.chars().any(char::is_control) {
            return Err(invalid(
                "invalid_field",
                "field names are 1 to 128 printable characters",
            ));
        }
        let size = json_len(value);
        if size > limits.max_field_bytes {
            return Err(Invalid {
                code: "field_too_large",
                message: format!(
                    "field {name:?} is {size} bytes; the limit is {}",
                    limits.max_field_bytes
                ),
                too_large: true,
            });
        }
    }
    Ok(())
}

/// Bytes of `value` as compact JSON, counted without building the text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a `Value` into a writer that never fails cannot fail.
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

impl Mutation {
    /// Checks a pushed mutation against the rules and `limits`; `now_ms` is the server clock.
    pub fn validate(wire: MutationIn, limits: &SyncLimits, now_ms: u64) -> Result<Self, Invalid> {
        let id_len = wire.mutation_id.chars().count();
        if !(1..=128).contains(&id_len) || wire.mutation_id.chars().any(char::is_control) {
            return Err(invalid(
                "invalid_mutation_id",
                "mutation_id must be 1 to 128 printable characters",
            ));
        }
        validate_collection(&wire.collection)?;
        validate_record_id(&wire.id)?;
        let hlc: Hlc = wire
            .hlc
            .parse()
            .map_err(|e: HlcError| invalid("invalid_hlc", e.to_string()))?;
        if hlc.ms() > now_ms.saturating_add(limits.max_clock_skew_ms) {
            return Err(invalid(
                "clock_skew",
                format!(
                    "stamp {hlc} is more than {} s ahead of the server's clock; fix the device's clock",
                    limits.max_clock_skew_ms / 1000
                ),
            ));
        }
        let op = match (wire.op, wire.fields) {
            (OpName::Upsert, Some(fields)) if !fields.is_empty() => {
                validate_fields(&fields, limits)?;
                Op::Upsert(fields)
            }
            (OpName::Upsert, _) => {
                return Err(invalid(
                    "invalid_op",
                    "an upsert needs a non-empty `fields` object",
                ));
            }
            (OpName::Delete, None) => Op::Delete,
            (OpName::Delete, Some(_)) => return Err(invalid("invalid_op", "a delete takes no `fields`")),
        };
        Ok(Self {
            mutation_id: wire.mutation_id,
            key: RecordKey {
                collection: wire.collection,
                id: wire.id,
            },
            op,
            hlc: Some(hlc),
            base_seq: wire.base_seq,
            precondition: None,
        })
    }
}

/// What a push does, decided; the store writes it in the same transaction it read in.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub results: Vec<MutationResult>,
    /// Records to store, each with its new seq.
    pub changed: Vec<(RecordKey, StoredRecord)>,
    pub conflicts: Vec<(RecordKey, ConflictDraft)>,
    /// Mutation ids to remember (of device writes), with the seq answered for them.
    pub applied: Vec<(String, Seq)>,
    /// The user's feed head after the push.
    pub head: Seq,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    /// A precondition failed; nothing is written. Carries the record's current state.
    PreconditionFailed {
        key: RecordKey,
        current: Option<Box<StoredRecord>>,
    },
    Clock(HlcError),
}

/// Applies `mutations` in order to `records` (the touched records as stored; absent ones are
/// new); the changed ones move out of `records` into the plan. `seen` maps mutation ids applied before to their seq. `head` is the user's current
/// feed head, read under the per-user lock.
pub fn plan(
    head: Seq,
    mutations: Vec<Mutation>,
    records: &mut HashMap<RecordKey, StoredRecord>,
    seen: &HashMap<String, Seq>,
    now_ms: u64,
    server_node: &str,
) -> Result<Plan, PlanError> {
    let mut plan = Plan {
        head,
        ..Plan::default()
    };
    let mut batch_ids: HashMap<String, Seq> = HashMap::new();
    let mut new_seq: HashMap<RecordKey, Seq> = HashMap::new();
    for m in mutations {
        if let Some(seq) = seen.get(&m.mutation_id).or_else(|| batch_ids.get(&m.mutation_id)) {
            plan.results
                .push(result(&m.mutation_id, MutationStatus::Duplicate, *seq));
            continue;
        }
        let record = records.entry(m.key.clone()).or_default();
        let exists = record.seq > Seq(0) && !record.record.is_deleted();
        let precondition_holds = match m.precondition {
            None => true,
            Some(Precondition::Exists) => exists,
            Some(Precondition::Seq(seq)) => exists && record.seq == seq,
            Some(Precondition::Unchanged(seq)) => record.seq == seq,
        };
        if !precondition_holds {
            let current = (record.seq > Seq(0)).then(|| Box::new(record.clone()));
            return Err(PlanError::PreconditionFailed {
                key: m.key.clone(),
                current,
            });
        }
        let hlc = match &m.hlc {
            Some(hlc) => hlc.clone(),
            None => match record.record.max_hlc() {
                Some(top) => top.successor(now_ms, server_node),
                None => Hlc::new(now_ms, 0, server_node),
            }
            .map_err(PlanError::Clock)?,
        };
        let seq = new_seq.get(&m.key).copied().unwrap_or(Seq(plan.head.0 + 1));
        let mut conflicts = Vec::new();
        let changed = record.apply(
            Write {
                op: m.op,
                hlc: &hlc,
                base_seq: m.base_seq,
            },
            seq,
            &mut conflicts,
        );
        if changed && !new_seq.contains_key(&m.key) {
            plan.head = seq;
            new_seq.insert(m.key.clone(), seq);
        }
        plan.conflicts
            .extend(conflicts.into_iter().map(|c| (m.key.clone(), c)));
        plan.results
            .push(result(&m.mutation_id, MutationStatus::Applied, record.seq));
        // Server-made writes carry ids nobody can retry with: nothing to remember.
        if m.hlc.is_some() {
            plan.applied.push((m.mutation_id.clone(), record.seq));
        }
        batch_ids.insert(m.mutation_id, record.seq);
    }
    let mut changed: Vec<_> = new_seq.into_iter().collect();
    changed.sort_by_key(|(_, seq)| *seq);
    plan.changed = changed
        .into_iter()
        .filter_map(|(key, _)| records.remove(&key).map(|r| (key, r)))
        .collect();
    Ok(plan)
}

fn result(mutation_id: &str, status: MutationStatus, seq: Seq) -> MutationResult {
    MutationResult {
        mutation_id: mutation_id.to_owned(),
        status,
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(id: &str, record: &str, hlc: &str, fields: Option<Value>) -> MutationIn {
        MutationIn {
            mutation_id: id.into(),
            collection: "sessions".into(),
            id: record.into(),
            op: if fields.is_some() {
                OpName::Upsert
            } else {
                OpName::Delete
            },
            fields: fields.map(|f| f.as_object().expect("object").clone()),
            hlc: hlc.into(),
            base_seq: None,
        }
    }

    const NOW: u64 = 1_764_172_800_000;

    #[test]
    fn json_len_counts_the_compact_text() {
        for value in [
            json!(null),
            json!("quote \" backslash \\ newline \n control \u{1} é 😀"),
            json!({"b": [1, 2.5, -3], "a": {"nested": true}}),
        ] {
            assert_eq!(json_len(&value), value.to_string().len(), "{value}");
        }
    }

    fn valid(w: &MutationIn) -> Mutation {
        Mutation::validate(w.clone(), &SyncLimits::default(), NOW).expect("valid")
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let limits = SyncLimits {
            max_field_bytes: 10,
            ..SyncLimits::default()
        };
        let ok = wire("m1", "r1", "001764172800000-00000-laptop", Some(json!({"t": 1})));
        assert!(Mutation::validate(ok.clone(), &limits, NOW).is_ok());
        let cases = [
            (
                MutationIn {
                    collection: "Sessions".into(),
                    ..ok.clone()
                },
                "invalid_collection",
            ),
            (
                MutationIn {
                    id: String::new(),
                    ..ok.clone()
                },
                "invalid_id",
            ),
            (
                MutationIn {
                    mutation_id: String::new(),
                    ..ok.clone()
                },
                "invalid_mutation_id",
            ),
            (
                MutationIn {
                    hlc: "yesterday".into(),
                    ..ok.clone()
                },
                "invalid_hlc",
            ),
            (
                MutationIn {
                    hlc: "001764173500000-00000-laptop".into(),
                    ..ok.clone()
                },
                "clock_skew",
            ),
            (
                MutationIn {
                    fields: Some(serde_json::Map::new()),
                    ..ok.clone()
                },
                "invalid_op",
            ),
            (
                MutationIn {
                    fields: json!({"t": "a long long value"}).as_object().cloned(),
                    ..ok.clone()
                },
                "field_too_large",
            ),
            (
                MutationIn {
                    op: OpName::Delete,
                    ..ok.clone()
                },
                "invalid_op",
            ),
            (
                MutationIn {
                    fields: json!({"a\u{0}b": 1}).as_object().cloned(),
                    ..ok.clone()
                },
                "invalid_field",
            ),
            (
                MutationIn {
                    fields: json!({"line\nbreak": 1}).as_object().cloned(),
                    ..ok.clone()
                },
                "invalid_field",
            ),
        ];
        for (mutation, code) in cases {
            assert_eq!(
                Mutation::validate(mutation, &limits, NOW).expect_err(code).code,
                code
            );
        }
    }

    #[test]
    fn a_batch_gives_each_changed_record_one_seq_and_answers_duplicates() {
        let mutations = vec![
            valid(&wire(
                "m1",
                "a",
                "001764172800000-00000-laptop",
                Some(json!({"t": 1})),
            )),
            valid(&wire(
                "m2",
                "b",
                "001764172800000-00001-laptop",
                Some(json!({"t": 2})),
            )),
            valid(&wire(
                "m3",
                "a",
                "001764172800000-00002-laptop",
                Some(json!({"u": 3})),
            )),
            valid(&wire(
                "m1",
                "a",
                "001764172800000-00003-laptop",
                Some(json!({"t": 9})),
            )),
            valid(&wire(
                "m0",
                "c",
                "001764172800000-00004-laptop",
                Some(json!({"t": 0})),
            )),
        ];
        let seen = HashMap::from([("m0".to_owned(), Seq(3))]);
        let mut records = HashMap::new();
        let plan = plan(Seq(7), mutations, &mut records, &seen, NOW, "server").expect("plan");
        let seqs: Vec<_> = plan.results.iter().map(|r| (r.status, r.seq.0)).collect();
        use MutationStatus::*;
        assert_eq!(
            seqs,
            vec![
                (Applied, 8),
                (Applied, 9),
                (Applied, 8),
                (Duplicate, 8),
                (Duplicate, 3)
            ]
        );
        assert_eq!(plan.head, Seq(9));
        let changed: Vec<_> = plan
            .changed
            .iter()
            .map(|(k, r)| (k.id.as_str(), r.seq.0))
            .collect();
        assert_eq!(changed, vec![("a", 8), ("b", 9)]);
        assert_eq!(plan.applied.len(), 3);
    }

    #[test]
    fn a_failed_precondition_reports_the_current_record() {
        let mut records = HashMap::new();
        let first = valid(&wire(
            "m1",
            "a",
            "001764172800000-00000-laptop",
            Some(json!({"t": 1})),
        ));
        let done = plan(Seq(0), vec![first], &mut records, &HashMap::new(), NOW, "server").expect("plan");
        let mut stored: HashMap<_, _> = done.changed.into_iter().collect();
        let put = Mutation {
            mutation_id: "m2".into(),
            key: RecordKey {
                collection: "sessions".into(),
                id: "a".into(),
            },
            op: Op::Upsert(json!({"t": 2}).as_object().cloned().expect("object")),
            hlc: None,
            base_seq: None,
            precondition: Some(Precondition::Seq(Seq(5))),
        };
        match plan(
            Seq(1),
            vec![put.clone()],
            &mut stored.clone(),
            &HashMap::new(),
            NOW,
            "server",
        ) {
            Err(PlanError::PreconditionFailed {
                current: Some(current),
                ..
            }) => assert_eq!(current.seq, Seq(1)),
            other => panic!("{other:?}"),
        }
        let put = Mutation {
            precondition: Some(Precondition::Seq(Seq(1))),
            ..put
        };
        let done = plan(Seq(1), vec![put], &mut stored, &HashMap::new(), NOW, "server").expect("plan");
        let (_, record) = &done.changed[0];
        assert_eq!(record.visible().0["t"], json!(2));
        assert!(record.record.fields["t"].hlc.node() == "server");
        assert!(record.record.fields["t"].hlc.to_string().as_str() > "001764172800000-00000-laptop");
    }
}
