//! Record history: what each write did to a record's visible state, kept so that the state
//! before it can be recovered. The trash and point-in-time restore are both built on it.
//!
//! A history entry is an *undo*: the visible values the write replaced, not the ones it
//! wrote. Rewinding a record to a moment therefore needs only the entries written after that
//! moment, applied newest first to its current state ([`rewind`]); anything older may be
//! pruned without breaking a rewind to any moment the remaining entries cover. A delete's
//! undo holds every visible value: it is the trash's copy of the record.
//!
//! Only visible changes are recorded. A write that changes nothing a reader sees (a value
//! hidden by a newer delete, a second delete of a deleted record) leaves no entry.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// A record's visible state: its visible fields, or `None` when it is deleted or absent.
pub type Visible = Option<Map<String, Value>>;

/// What a write did to the record's visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ChangeKind {
    /// The record became visible (new, or revived after a delete).
    Created,
    /// Some visible values changed.
    Changed,
    /// The record stopped being visible.
    Deleted,
}

impl ChangeKind {
    /// The storage code of the kind (a small integer column).
    pub const fn code(self) -> i16 {
        match self {
            Self::Created => 0,
            Self::Changed => 1,
            Self::Deleted => 2,
        }
    }

    pub const fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Self::Created),
            1 => Some(Self::Changed),
            2 => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// How to undo one write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undo {
    pub kind: ChangeKind,
    /// The values the write replaced (every visible value for a delete; none for a create).
    #[serde(rename = "v", default, skip_serializing_if = "Map::is_empty")]
    pub values: Map<String, Value>,
    /// Fields the write added that the record did not have before.
    #[serde(rename = "u", default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
}

impl Undo {
    /// The undo of a write that took the record from `before` to `after`; `None` when no
    /// visible value changed. Takes `before` by value: the values the write replaced move
    /// into the undo (a delete's are the whole record).
    pub fn of(before: Visible, after: &Visible) -> Option<Self> {
        match (before, after) {
            (None, None) => None,
            (None, Some(_)) => Some(Self {
                kind: ChangeKind::Created,
                values: Map::new(),
                unset: Vec::new(),
            }),
            (Some(before), None) => Some(Self {
                kind: ChangeKind::Deleted,
                values: before,
                unset: Vec::new(),
            }),
            (Some(before), Some(after)) => {
                let unset: Vec<String> = after
                    .keys()
                    .filter(|name| !before.contains_key(*name))
                    .cloned()
                    .collect();
                let values: Map<String, Value> = before
                    .into_iter()
                    .filter(|(name, value)| after.get(name) != Some(value))
                    .collect();
                (!values.is_empty() || !unset.is_empty()).then_some(Self {
                    kind: ChangeKind::Changed,
                    values,
                    unset,
                })
            }
        }
    }

    /// The storage encoding of the values and unset names (the kind is its own column):
    /// `{"v":{…},"u":[…]}`, each left out when empty. Written from borrows: this runs for
    /// every visible change.
    pub fn encode_body(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Map::is_empty")]
            v: &'a Map<String, Value>,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            u: &'a [String],
        }
        serde_json::to_string(&Body {
            v: &self.values,
            u: &self.unset,
        })
        .unwrap_or_else(|_| "{}".to_owned())
    }

    pub fn decode(kind: ChangeKind, body: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            v: Map<String, Value>,
            #[serde(default)]
            u: Vec<String>,
        }
        let body: Body = serde_json::from_str(body).map_err(|e| format!("history entry: {e}"))?;
        Ok(Self {
            kind,
            values: body.v,
            unset: body.u,
        })
    }

    /// The state before the write, given the state after it.
    pub fn undo(&self, after: Visible) -> Visible {
        match self.kind {
            ChangeKind::Created => None,
            ChangeKind::Deleted => Some(self.values.clone()),
            ChangeKind::Changed => {
                // A change always leaves a visible record; `after` is `None` only when the
                // entries between are missing (purged), and then the values are all we know.
                let mut state = after.unwrap_or_default();
                for name in &self.unset {
                    state.remove(name);
                }
                for (name, value) in &self.values {
                    state.insert(name.clone(), value.clone());
                }
                Some(state)
            }
        }
    }
}

/// The state a record had before the writes whose undos are given, newest first.
pub fn rewind<'a>(current: Visible, undos: impl IntoIterator<Item = &'a Undo>) -> Visible {
    undos.into_iter().fold(current, |state, undo| undo.undo(state))
}

/// The writes that take a record from `current` back to `target`, as a plan the caller turns
/// into server-stamped mutations.
#[derive(Debug, Clone, PartialEq)]
pub enum Revert {
    /// Nothing to do.
    Same,
    /// Delete the record (it was created after the moment).
    Delete,
    /// Write these values; with `clear_first`, delete the record first in the same apply
    /// (it has fields the target did not, and a field cannot be unset otherwise).
    Write {
        values: Map<String, Value>,
        clear_first: bool,
        /// The record is deleted now and comes back.
        revive: bool,
    },
}

impl Revert {
    pub fn between(current: &Visible, target: &Visible) -> Self {
        match (current, target) {
            (None, None) => Self::Same,
            (Some(_), None) => Self::Delete,
            (None, Some(target)) => Self::Write {
                values: target.clone(),
                clear_first: false,
                revive: true,
            },
            (Some(current), Some(target)) => {
                let extra: BTreeSet<&String> = current.keys().filter(|k| !target.contains_key(*k)).collect();
                if !extra.is_empty() {
                    return Self::Write {
                        values: target.clone(),
                        clear_first: true,
                        revive: false,
                    };
                }
                let values: Map<String, Value> = target
                    .iter()
                    .filter(|(name, value)| current.get(*name) != Some(*value))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                if values.is_empty() {
                    Self::Same
                } else {
                    Self::Write {
                        values,
                        clear_first: false,
                        revive: false,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn state(value: Value) -> Visible {
        match value {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    #[test]
    fn undo_of_each_kind() {
        let a = state(json!({"title": "a", "n": 1}));
        let b = state(json!({"title": "b", "n": 1, "tag": "x"}));
        assert_eq!(Undo::of(None, &None), None);
        assert_eq!(Undo::of(a.clone(), &a), None);
        assert_eq!(Undo::of(None, &a).map(|u| u.kind), Some(ChangeKind::Created));
        let deleted = Undo::of(a.clone(), &None).expect("a delete is a change");
        assert_eq!(deleted.kind, ChangeKind::Deleted);
        assert_eq!(Some(deleted.values.clone()), a);
        let changed = Undo::of(a.clone(), &b).expect("a change");
        assert_eq!(changed.kind, ChangeKind::Changed);
        assert_eq!(Value::Object(changed.values.clone()), json!({"title": "a"}));
        assert_eq!(changed.unset, vec!["tag".to_owned()]);
        assert_eq!(changed.undo(b.clone()), a);
        assert_eq!(deleted.undo(None), a);
    }

    #[test]
    fn body_round_trips() {
        let undo = Undo::of(
            state(json!({"t": "a\"b", "x": null})),
            &state(json!({"t": "c", "y": 2})),
        )
        .expect("a change");
        let back = Undo::decode(undo.kind, &undo.encode_body()).expect("decodes");
        assert_eq!(back, undo);
        assert_eq!(
            Undo::decode(ChangeKind::Created, "{}").expect("empty body"),
            Undo::of(None, &state(json!({"a": 1}))).expect("create")
        );
    }

    #[test]
    fn revert_prefers_the_smallest_write() {
        let now = state(json!({"title": "b", "n": 1}));
        let then = state(json!({"title": "a", "n": 1}));
        assert_eq!(Revert::between(&now, &now), Revert::Same);
        assert_eq!(Revert::between(&now, &None), Revert::Delete);
        assert_eq!(
            Revert::between(&now, &then),
            Revert::Write {
                values: state(json!({"title": "a"})).expect("object"),
                clear_first: false,
                revive: false
            }
        );
        let added = state(json!({"title": "a", "n": 1, "tag": "x"}));
        assert_eq!(
            Revert::between(&added, &then),
            Revert::Write {
                values: then.clone().expect("object"),
                clear_first: true,
                revive: false
            }
        );
        assert!(matches!(
            Revert::between(&None, &then),
            Revert::Write { revive: true, .. }
        ));
    }

    fn arb_state() -> impl Strategy<Value = Visible> {
        let field = prop_oneof![
            Just(json!(null)),
            (0..3i32).prop_map(|n| json!(n)),
            "[ab]{0,2}".prop_map(Value::from)
        ];
        proptest::option::weighted(0.8, proptest::collection::btree_map("[a-d]", field, 0..4))
            .prop_map(|m| m.map(|m| m.into_iter().collect()))
    }

    proptest! {
        /// Any sequence of visible states, recorded as undos, rewinds to each earlier state.
        #[test]
        fn rewind_recovers_every_earlier_state(states in proptest::collection::vec(arb_state(), 1..8)) {
            let mut undos = Vec::new();
            for pair in states.windows(2) {
                if let Some(undo) = Undo::of(pair[0].clone(), &pair[1]) {
                    undos.push(Some(undo));
                } else {
                    undos.push(None);
                }
            }
            let last = states.last().cloned().flatten();
            for (i, expected) in states.iter().enumerate() {
                let later: Vec<&Undo> = undos[i..].iter().rev().flatten().collect();
                prop_assert_eq!(&rewind(last.clone(), later), expected);
            }
        }

        /// Applying a revert's plan to the current state yields the target.
        #[test]
        fn revert_reaches_the_target(current in arb_state(), target in arb_state()) {
            let reached = match Revert::between(&current, &target) {
                Revert::Same => current.clone(),
                Revert::Delete => None,
                Revert::Write { values, clear_first, .. } => {
                    let mut state = if clear_first { Map::new() } else { current.clone().unwrap_or_default() };
                    state.extend(values);
                    Some(state)
                }
            };
            prop_assert_eq!(reached, target);
        }
    }
}
