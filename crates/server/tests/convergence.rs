//! Convergence: simulated devices doing random upserts, deletes and offline periods against
//! the real server, in random orders, many schedules per run. Every schedule checks that
//!
//! 1. all devices end with identical state, equal to an order-independent reference (the
//!    highest stamp per field, the highest delete per record, computed here independently);
//! 2. every value that lost is in the conflict list, unless its writer's successor had seen it
//!    (or wrote the same value).
//!
//! Seeds are printed on failure: `NEXTSYNC_CONVERGENCE_SEED=<seed>` replays one schedule;
//! `NEXTSYNC_CONVERGENCE_SCHEDULES=<n>` sets how many run (default 1500 on SQLite, 300 on
//! PostgreSQL).

use nextsync_core::account::Email;
use nextsync_core::hlc::{Hlc, HlcClock};
use nextsync_core::ids::{DeviceId, UserId};
use nextsync_core::secret::Secret;
use nextsync_core::time::Timestamp;
use nextsync_store::accounts::{NewDevice, NewRefreshToken, NewUser};
use nextsync_testkit::{TestDb, TestServer, both_backends};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// xorshift64*: small, seedable, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const RECORDS: [&str; 3] = ["r0", "r1", "r2"];
const FIELDS: [&str; 2] = ["title", "body"];

#[derive(Debug, Clone)]
struct WriteLog {
    device: usize,
    record: &'static str,
    /// None for a delete.
    field: Option<&'static str>,
    value: Option<String>,
    hlc: Hlc,
    /// Stamps (as "record/field@stamp") the writer had seen when it wrote.
    knew: Arc<HashSet<String>>,
}

struct Device {
    node: String,
    token: String,
    clock: HlcClock,
    drift_ms: i64,
    online: bool,
    cursor: Option<String>,
    base_seq: u64,
    outbox: Vec<Value>,
    /// Local replica, from pulls: record -> record view.
    state: BTreeMap<String, Value>,
    knew: HashSet<String>,
}

fn seen_key(record: &str, field: &str, hlc: &str) -> String {
    format!("{record}/{field}@{hlc}")
}

struct Schedule<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    seed: u64,
}

impl Schedule<'_> {
    async fn pull(&self, device: &mut Device) {
        loop {
            let mut url = format!("{}/v1/sync/pull?limit=2", self.base);
            if let Some(cursor) = &device.cursor {
                url.push_str(&format!("&since={cursor}"));
            }
            let body: Value = self
                .http
                .get(url)
                .bearer_auth(&device.token)
                .send()
                .await
                .expect("pull")
                .json()
                .await
                .expect("json");
            let changes = body["changes"]
                .as_array()
                .unwrap_or_else(|| panic!("seed {}: pull failed: {body}", self.seed));
            for change in changes {
                let id = change["id"].as_str().expect("id").to_owned();
                for (field, stamp) in change["stamps"].as_object().expect("stamps") {
                    let stamp = stamp.as_str().expect("stamp");
                    device.clock.observe(&stamp.parse().expect("hlc"));
                    device.knew.insert(seen_key(&id, field, stamp));
                }
                if let Some(t) = change["tombstone"].as_str() {
                    device.clock.observe(&t.parse().expect("hlc"));
                }
                device.base_seq = device.base_seq.max(change["seq"].as_u64().expect("seq"));
                device.state.insert(
                    id,
                    json!({"fields": change["fields"], "deleted": change["deleted"]}),
                );
            }
            device.cursor = Some(body["cursor"].as_str().expect("cursor").to_owned());
            if body["has_more"] != true {
                return;
            }
        }
    }

    async fn push(&self, device: &mut Device) {
        if device.outbox.is_empty() {
            return;
        }
        let mutations = std::mem::take(&mut device.outbox);
        let response = self
            .http
            .post(format!("{}/v1/sync/push", self.base))
            .bearer_auth(&device.token)
            .json(&json!({ "mutations": mutations }))
            .send()
            .await
            .expect("push");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert!(status.is_success(), "seed {}: push failed: {body}", self.seed);
    }
}

async fn run_schedule(
    http: &reqwest::Client,
    base: &str,
    tokens: &[String],
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng(seed.max(1));
    let schedule = Schedule { http, base, seed };
    let start = Timestamp::now().as_millis() as u64;
    let mut devices: Vec<Device> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| Device {
            node: format!("dev{i}"),
            token: token.clone(),
            clock: HlcClock::new(format!("dev{i}")).expect("clock"),
            drift_ms: rng.below(4000) as i64 - 2000,
            online: true,
            cursor: None,
            base_seq: 0,
            outbox: Vec::new(),
            state: BTreeMap::new(),
            knew: HashSet::new(),
        })
        .collect();
    let mut log: Vec<WriteLog> = Vec::new();
    let steps = 20 + rng.below(30);
    for step in 0..steps {
        let d = rng.below(devices.len() as u64) as usize;
        let device = &mut devices[d];
        let now = (start as i64 + device.drift_ms + step as i64 * 3) as u64;
        match rng.below(10) {
            0..=4 => {
                let record = RECORDS[rng.below(RECORDS.len() as u64) as usize];
                let field = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                let value = format!("{}-{step}-{}", device.node, rng.below(3));
                let hlc = device.clock.tick(now).expect("tick");
                device.knew.insert(seen_key(record, field, &hlc.to_string()));
                log.push(WriteLog {
                    device: d,
                    record,
                    field: Some(field),
                    value: Some(value.clone()),
                    hlc: hlc.clone(),
                    knew: Arc::new(device.knew.clone()),
                });
                device.outbox.push(json!({
                    "mutation_id": format!("{seed}-{step}"), "collection": "notes", "id": record, "op": "upsert",
                    "fields": {field: value}, "hlc": hlc.to_string(), "base_seq": device.base_seq,
                }));
            }
            5 => {
                let record = RECORDS[rng.below(RECORDS.len() as u64) as usize];
                let hlc = device.clock.tick(now).expect("tick");
                log.push(WriteLog {
                    device: d,
                    record,
                    field: None,
                    value: None,
                    hlc: hlc.clone(),
                    knew: Arc::new(device.knew.clone()),
                });
                device.outbox.push(json!({
                    "mutation_id": format!("{seed}-{step}"), "collection": "notes", "id": record, "op": "delete",
                    "hlc": hlc.to_string(), "base_seq": device.base_seq,
                }));
            }
            6 | 7 if device.online => schedule.push(device).await,
            8 if device.online => schedule.pull(device).await,
            _ => device.online = !device.online,
        }
    }
    // Everyone comes back, sends what it has, then catches up.
    for device in &mut devices {
        device.online = true;
        schedule.push(device).await;
    }
    for device in &mut devices {
        schedule.pull(device).await;
    }

    // 1. Identical, and equal to the order-independent reference.
    let reference = reference_state(&log);
    for device in &devices {
        if device.state != reference {
            return Err(format!(
                "seed {seed}: {} ended with\n{:#?}\nexpected\n{:#?}",
                device.node, device.state, reference
            ));
        }
    }

    // 2. Every lost value is accounted for.
    let conflicts: Value = http
        .get(format!("{base}/v1/conflicts"))
        .bearer_auth(&devices[0].token)
        .send()
        .await
        .expect("conflicts")
        .json()
        .await
        .expect("json");
    let listed: HashSet<(String, String, String)> = conflicts["conflicts"]
        .as_array()
        .expect("list")
        .iter()
        .flat_map(|c| {
            ["kept", "lost"].map(|side| {
                (
                    format!(
                        "{}/{}",
                        c["id"].as_str().unwrap_or_default(),
                        c["field"].as_str().unwrap_or_default()
                    ),
                    c[side]["value"].to_string(),
                    c[side]["hlc"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect();
    for w in log.iter().filter(|w| w.field.is_some()) {
        let field = w.field.expect("upsert");
        let value = Value::String(w.value.clone().expect("value"));
        let final_value = reference.get(w.record).and_then(|r| r["fields"].get(field));
        if final_value == Some(&value) {
            continue;
        }
        let me = seen_key(w.record, field, &w.hlc.to_string());
        let superseded_knowingly = log.iter().any(|later| {
            later.record == w.record
                && later.hlc > w.hlc
                && (later.field.is_none() || later.field == Some(field))
                && (later.knew.contains(&me)
                    || later.device == w.device
                    || later.value.as_ref() == w.value.as_ref())
        });
        let listed = listed.contains(&(
            format!("{}/{field}", w.record),
            value.to_string(),
            w.hlc.to_string(),
        ));
        if !superseded_knowingly && !listed {
            return Err(format!(
                "seed {seed}: the value {value} ({}) of {}/{field} was lost silently; conflicts: {conflicts:#}",
                w.hlc, w.record
            ));
        }
    }
    Ok(())
}

/// Highest stamp per field, highest delete per record; visible = above the delete.
fn reference_state(log: &[WriteLog]) -> BTreeMap<String, Value> {
    let mut fields: HashMap<(&str, &str), (&Hlc, &str)> = HashMap::new();
    let mut deletes: HashMap<&str, &Hlc> = HashMap::new();
    for w in log {
        match (w.field, &w.value) {
            (Some(field), Some(value)) => {
                let entry = fields.entry((w.record, field)).or_insert((&w.hlc, value));
                if w.hlc > *entry.0 {
                    *entry = (&w.hlc, value);
                }
            }
            _ => {
                let entry = deletes.entry(w.record).or_insert(&w.hlc);
                if w.hlc > **entry {
                    *entry = &w.hlc;
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for record in RECORDS {
        let touched = deletes.contains_key(record) || fields.keys().any(|(r, _)| *r == record);
        if !touched {
            continue;
        }
        let tombstone = deletes.get(record);
        let mut visible = serde_json::Map::new();
        for ((r, field), (hlc, value)) in &fields {
            if *r == record && tombstone.is_none_or(|t| *hlc > *t) {
                visible.insert((*field).to_owned(), Value::String((*value).to_owned()));
            }
        }
        let deleted = tombstone.is_some() && visible.is_empty();
        out.insert(record.to_owned(), json!({"fields": visible, "deleted": deleted}));
    }
    out
}

/// A user with `devices` signed-in devices, made straight in the store (no Argon2 per schedule).
async fn account(server: &TestServer, n: u64, devices: usize) -> Vec<String> {
    let store = &server.state.store;
    let user = NewUser {
        id: UserId::new(),
        email: Email::parse(&format!("user{n}@example.org")).expect("email"),
        password_hash: Secret::new("$argon2id$unused"),
        created_at: Timestamp::now(),
    };
    store.create_user(&user, None).await.expect("user");
    // Half the accounts have their digests from the start, so every write of the schedule
    // maintains them (checked at the end); the others compute theirs at the end.
    if n.is_multiple_of(2) {
        store.digests(user.id).await.expect("digests");
    }
    let mut tokens = Vec::new();
    for i in 0..devices {
        let device = NewDevice {
            kind: Default::default(),
            user_id: user.id,
            device_id: DeviceId::new(),
            name: format!("dev{i}"),
            refresh: NewRefreshToken {
                hash: nextsync_core::ids::TokenHash([i as u8; 32]),
                created_at: Timestamp::now(),
                expires_at: Timestamp::now().plus_secs(3600),
            },
        };
        store.add_device(&device).await.expect("device");
        let token = server
            .state
            .tokens
            .issue(user.id, device.device_id, Timestamp::now())
            .expect("token");
        tokens.push(token.expose().to_owned());
    }
    tokens
}

both_backends!(devices_converge_and_lose_nothing_silently);

async fn devices_converge_and_lose_nothing_silently(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let http = nextsync_testkit::client();
    let default_count = match db.backend {
        nextsync_testkit::Backend::Sqlite => 1500,
        nextsync_testkit::Backend::Postgres => 300,
    };
    let fixed_seed = std::env::var("NEXTSYNC_CONVERGENCE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let count = match fixed_seed {
        Some(_) => 1,
        None => std::env::var("NEXTSYNC_CONVERGENCE_SCHEDULES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_count),
    };
    let base_seed = fixed_seed.unwrap_or_else(|| Timestamp::now().as_millis() as u64);
    eprintln!("convergence: {count} schedules from seed {base_seed}");
    let mut tasks = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    for n in 0..count {
        let seed = base_seed.wrapping_add(n);
        let devices = 3 + (seed % 3) as usize;
        let tokens = account(&server, n, devices).await;
        let (http, base) = (http.clone(), server.base_url.clone());
        tasks.spawn(async move { run_schedule(&http, &base, &tokens, seed).await });
        // Bounded parallelism: enough to interleave, little enough to stay fast.
        while tasks.len() >= 8 {
            if let Some(Err(e)) = tasks.join_next().await.map(|r| r.expect("task")) {
                failures.push(e);
            }
        }
    }
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.expect("task") {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} schedules failed; first:\n{}",
        failures.len(),
        failures[0]
    );
    // What `nextsync admin verify` checks: every invariant of the store holds after all of
    // that, the digests kept write by write equal to a recomputation.
    let report = server.state.store.check().await.expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.digests_checked, count.div_ceil(2));
}
