//! Randomized schedules of several SDK clients that go offline and online, edit the same
//! records and fields, delete, and run on clocks minutes apart: at the end every replica
//! equals the server, record for record, and no value anyone typed vanished silently: each
//! is the final value, or was overwritten by a device that showed it when it wrote, or is
//! in the conflict list.
//!
//! Each schedule is a seed: a failure prints it, and `NEXTSYNC_SEED=<seed>` replays exactly
//! that one. `NEXTSYNC_SCHEDULES` runs more (default 200).

use nextsync_client::{Client, Options, Query};
use nextsync_core::api::Secret;
use nextsync_testkit::{Api, PASSWORD, TestDb, TestServer};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const CLIENTS: usize = 4;
const RECORDS: u64 = 5;
const STEPS: u64 = 40;

/// A small deterministic generator (xorshift64*), so a seed replays a schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

type Visible = BTreeMap<String, Map<String, Value>>;

async fn visible(client: &Client, collection: &str) -> Visible {
    client
        .list(Query {
            collection: Some(collection.into()),
            ..Query::default()
        })
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.id, r.fields))
        .collect()
}

async fn server_state(api: &Api, token: &str, collection: &str) -> Visible {
    let mut state = Visible::new();
    for r in 0..RECORDS {
        let (status, body) = api
            .get(&format!("/v1/records/{collection}/r{r}"), Some(token))
            .await;
        if status == 200 && body["deleted"] == json!(false) {
            let fields = body["fields"].as_object().expect("fields").clone();
            state.insert(format!("r{r}"), fields);
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_under_random_offline_schedules_and_skewed_clocks() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let owner = api.register("random@example.org").await;

    let dirs: Vec<tempfile::TempDir> = (0..CLIENTS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut clients = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        // Clocks from 4 minutes behind to 4 minutes ahead (the server refuses 10).
        let skew_ms = (i as i64 - 1) * 160_000 - 80_000;
        let clock = Arc::new(move || {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("time")
                .as_millis() as i64;
            (now + skew_ms) as u64
        });
        let options = Options {
            device_name: format!("device {i}"),
            clock,
            ..Options::default()
        };
        let client = Client::open(&dir.path().join("replica.sqlite3"), options).expect("open");
        client
            .login(&server.base_url, "random@example.org", Secret::new(PASSWORD))
            .await
            .expect("login");
        clients.push(client);
    }

    let schedules: u64 = std::env::var("NEXTSYNC_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let seeds: Vec<u64> = match std::env::var("NEXTSYNC_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let base = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("time")
                .as_nanos() as u64;
            (0..schedules).map(|n| base.wrapping_add(n)).collect()
        }
    };
    let mut writes = 0;
    let mut conflicts = 0;
    // NEXTSYNC_TRACE=1 prints every step (with NEXTSYNC_SEED, one schedule's story).
    let trace = std::env::var("NEXTSYNC_TRACE").is_ok();
    for seed in &seeds {
        let collection = format!("c{seed}");
        let mut rng = Rng::new(*seed);
        let mut online = [true; CLIENTS];
        // Every value written, and those a device overwrote or deleted while it showed them.
        let mut written: Vec<(String, String, String)> = Vec::new();
        let mut knowingly: HashSet<(String, String, String)> = HashSet::new();
        for step in 0..STEPS {
            let c = rng.below(CLIENTS as u64) as usize;
            let client = &clients[c];
            let id = format!("r{}", rng.below(RECORDS));
            match rng.below(10) {
                0..=4 => {
                    let mut fields = Map::new();
                    for f in 0..2 {
                        if rng.below(2) == 0 || f == 1 && fields.is_empty() {
                            fields.insert(format!("f{f}"), json!(format!("{c}:{step}")));
                        }
                    }
                    let shown = client
                        .get(&collection, &id)
                        .await
                        .expect("get")
                        .filter(|r| !r.deleted);
                    for (name, value) in &fields {
                        if let Some(old) = shown
                            .as_ref()
                            .and_then(|r| r.fields.get(name))
                            .and_then(Value::as_str)
                        {
                            knowingly.insert((id.clone(), name.clone(), old.to_owned()));
                        }
                        let value = value.as_str().expect("string").to_owned();
                        written.push((id.clone(), name.clone(), value));
                    }
                    if trace {
                        eprintln!(
                            "{step}: client {c} put {id} {fields:?} (shown {:?})",
                            shown.as_ref().map(|r| &r.fields)
                        );
                    }
                    client.put(&collection, &id, fields).await.expect("put");
                    writes += 1;
                }
                5 => {
                    let shown = client
                        .get(&collection, &id)
                        .await
                        .expect("get")
                        .filter(|r| !r.deleted);
                    for (name, old) in shown.iter().flat_map(|r| r.fields.iter()) {
                        if let Some(old) = old.as_str() {
                            knowingly.insert((id.clone(), name.clone(), old.to_owned()));
                        }
                    }
                    if trace {
                        eprintln!(
                            "{step}: client {c} delete {id} (shown {:?})",
                            shown.as_ref().map(|r| &r.fields)
                        );
                    }
                    client.delete(&collection, &id).await.expect("delete");
                    writes += 1;
                }
                6..=8 if online[c] => {
                    if trace {
                        eprintln!("{step}: client {c} syncs");
                    }
                    client
                        .sync()
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed}: sync of client {c}: {e}"));
                }
                6..=8 => {}
                _ => {
                    online[c] = !online[c];
                    if trace {
                        eprintln!("{step}: client {c} online: {}", online[c]);
                    }
                }
            }
        }
        // Everyone comes back: two rounds bring every write to every replica.
        for _ in 0..2 {
            for (c, client) in clients.iter().enumerate() {
                client
                    .sync()
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: final sync of client {c}: {e}"));
            }
        }
        let expected = server_state(&api, &owner.access, &collection).await;
        for (c, client) in clients.iter().enumerate() {
            let status = client.status().await.expect("status");
            assert_eq!(
                (status.outbox, status.unconfirmed, status.rejected),
                (0, 0, 0),
                "seed {seed}: client {c} has writes left"
            );
            assert_eq!(
                visible(client, &collection).await,
                expected,
                "seed {seed}: client {c} differs from the server"
            );
            // The digests say the same, stamps included (every 10th schedule: it reads the
            // whole account).
            if seed.is_multiple_of(10) {
                let health = client.verify(false).await.expect("verify");
                assert!(health.ok, "seed {seed}: client {c}: {health:?}");
            }
        }
        // Nothing typed vanished without a trace.
        let (status, listed) = api.get("/v1/conflicts", Some(&owner.access)).await;
        assert_eq!(status, 200);
        let mut in_conflicts = HashSet::new();
        for c in listed["conflicts"].as_array().expect("conflicts") {
            if c["collection"] != json!(collection) {
                continue;
            }
            if trace {
                eprintln!(
                    "conflict {}.{}: kept {} lost {}",
                    c["id"], c["field"], c["kept"], c["lost"]
                );
            }
            for side in ["kept", "lost"] {
                if let Some(value) = c[side]["value"].as_str() {
                    let id = c["id"].as_str().unwrap_or_default().to_owned();
                    let field = c["field"].as_str().unwrap_or_default().to_owned();
                    in_conflicts.insert((id, field, value.to_owned()));
                }
            }
        }
        for entry in &written {
            let (id, field, value) = entry;
            let is_final = expected
                .get(id)
                .and_then(|f| f.get(field))
                .and_then(Value::as_str)
                == Some(value.as_str());
            assert!(
                is_final || knowingly.contains(entry) || in_conflicts.contains(entry),
                "seed {seed}: {collection}/{id} field {field} value {value:?} was lost without a conflict"
            );
        }
        conflicts += in_conflicts.len();
    }
    eprintln!(
        "{} schedules, {writes} writes, {conflicts} conflict sides: every replica equal to the server, nothing lost silently",
        seeds.len()
    );
    // What `nextsync admin verify` checks, after all of that.
    let report = server.state.store.check().await.expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        writes > seeds.len() as u64 * STEPS / 3,
        "the schedules wrote too little to mean anything"
    );
}
