//! `nextsync-bench nextchat`: an unmodified NextChat's WebDAV sync against a real
//! `nextsync serve` process (the release binary next to this one), for whole states of the
//! sizes NEXTCHAT.md §4.4 estimates: time and the server's peak memory for the first upload
//! into an empty account, a download, and a re-upload of the same state (what every later
//! sync sends). Baseline, in the same run: parsing and re-serializing the same JSON in this
//! process, the least any whole-state server does with it.

use crate::median;
use crate::realtime::Server;
use nextsync_testkit::Api;
use serde_json::{Value, json};
use std::time::Instant;

/// A deterministic stand-in for prose: words from a small list, `bytes` long.
fn prose(seed: usize, bytes: usize) -> String {
    const WORDS: [&str; 16] = [
        "the",
        "model",
        "answer",
        "context",
        "because",
        "function",
        "returns",
        "value",
        "and",
        "we",
        "should",
        "consider",
        "a",
        "different",
        "approach,",
        "here.",
    ];
    let mut text = String::with_capacity(bytes + 16);
    let mut i = seed;
    while text.len() < bytes {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(WORDS[(i >> 33) % WORDS.len()]);
        text.push(' ');
    }
    text.truncate(bytes);
    text
}

fn nanoid(prefix: char, n: usize) -> String {
    format!("{prefix}{n:020}")
}

/// A NextChat state of `sessions` × `messages` (user turns ~300 B, assistant turns ~1.5 KB,
/// a ~770 B session shell, ~30 KB of fixed settings: NEXTCHAT.md §4.4).
pub(crate) fn state(sessions: usize, messages: usize) -> Value {
    let models: Vec<Value> = (0..164)
        .map(|i| {
            json!({"name": format!("model-{i}"), "available": true, "sorted": i,
                   "provider": {"id": "openai", "providerName": "OpenAI", "providerType": "openai", "sorted": 1}})
        })
        .collect();
    let sessions: Vec<Value> = (0..sessions)
        .map(|s| {
            let list: Vec<Value> = (0..messages)
                .map(|m| {
                    let user = m % 2 == 0;
                    let mut message = json!({
                        "id": nanoid('m', s * 1000 + m),
                        "role": if user { "user" } else { "assistant" },
                        "content": prose(s * 1000 + m, if user { 300 } else { 1500 }),
                        "date": format!("5/{}/2024, {}:{:02}:00 PM", 1 + s % 28, 1 + m % 12, m % 60),
                    });
                    if !user {
                        message["streaming"] = json!(false);
                        message["model"] = json!("gpt-4o-mini");
                    }
                    message
                })
                .collect();
            json!({
                "id": nanoid('s', s), "topic": format!("Conversation {s}"), "memoryPrompt": "",
                "messages": list, "stat": {"tokenCount": 0, "wordCount": 0, "charCount": 0},
                "lastUpdate": 1_715_612_600_000_u64 + s as u64, "lastSummarizeIndex": 0,
                "mask": {"id": 100000, "avatar": "gpt-bot", "name": "New Conversation", "context": [],
                         "syncGlobalConfig": true, "lang": "en", "builtin": false, "createdAt": 1_715_612_600_000_u64,
                         "modelConfig": {"model": "gpt-4o-mini", "providerName": "OpenAI", "temperature": 0.5,
                                         "top_p": 1, "max_tokens": 4000, "presence_penalty": 0,
                                         "frequency_penalty": 0, "sendMemory": true, "historyMessageCount": 4,
                                         "compressMessageLengthThreshold": 1000, "template": "{{input}}"}},
            })
        })
        .collect();
    json!({
        "chat-next-web-store": {"sessions": sessions, "currentSessionIndex": 0, "lastInput": "",
                                "lastUpdateTime": 0, "_hasHydrated": true},
        "access-control": {"provider": "OpenAI", "openaiUrl": "https://api.openai.com", "openaiApiKey": "",
                           "accessCode": "", "lastUpdateTime": 0, "_hasHydrated": true},
        "app-config": {"theme": "auto", "submitKey": "Enter", "fontSize": 14, "models": models,
                       "lastUpdateTime": 0, "_hasHydrated": true},
        "mask-store": {"masks": {}, "lastUpdateTime": 0, "_hasHydrated": true},
        "prompt-store": {"counter": 0, "prompts": {}, "lastUpdateTime": 0, "_hasHydrated": true},
    })
}

struct Sample {
    secs: f64,
    peak_mib: f64,
}

/// Times `request`; the server's peak memory above `idle_kib` (its peak is reset first).
async fn measure<F, Fut>(server: &Server, idle_kib: u64, request: F) -> anyhow::Result<Sample>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    server.reset_peak()?;
    let start = Instant::now();
    request().await?;
    let secs = start.elapsed().as_secs_f64();
    let peak = server.peak_rss_kib()?;
    Ok(Sample {
        secs,
        peak_mib: peak.saturating_sub(idle_kib) as f64 / 1024.0,
    })
}

async fn dav(api: &Api, authorization: &str, body: Option<String>) -> anyhow::Result<()> {
    let url = format!(
        "{}/api/webdav/chatgpt-next-web/backup.json?endpoint=https%3A%2F%2Fdav.example.com%2F",
        api.base_url
    );
    let request = match body {
        Some(body) => api
            .http
            .put(url)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body),
        None => api.http.get(url),
    };
    let response = request.header("authorization", authorization).send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(())
}

/// A server process on `dir`, waited on until its allocations from start-up settle.
async fn fresh_server(dir: &std::path::Path) -> anyhow::Result<(Server, u64)> {
    let args: Vec<String> = vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--bind".into(),
        "127.0.0.1:0".into(),
    ];
    let server = Server::spawn(&args)?;
    let (status, _) = server.api().get("/readyz", None).await;
    anyhow::ensure!(status.is_success(), "server not ready: {status}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let idle = server.rss_kib()?;
    Ok((server, idle))
}

pub(crate) async fn bench_nextchat(shapes: &[(usize, usize)], rounds: usize) -> anyhow::Result<()> {
    println!("### NextChat WebDAV sync (SQLite, release server process)\n");
    println!(
        "| state | JSON | baseline: parse + serialize in-process | first upload | download | re-upload (unchanged) |"
    );
    println!("|---|---|---|---|---|---|");
    for &(sessions, messages) in shapes {
        let text = state(sessions, messages).to_string();
        let (mut base, mut first, mut down, mut again) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let parsed: Value = serde_json::from_str(&text)?;
            let out = serde_json::to_vec(&parsed)?;
            base.push(t.elapsed().as_secs_f64());
            drop((parsed, out));

            // Each operation runs in a fresh process on the same data dir, so its peak is its
            // own and not memory the allocator kept from the one before.
            let dir = tempfile::tempdir()?;
            let (server, idle) = fresh_server(dir.path()).await?;
            let api = server.api();
            let email = "bench@example.org";
            let session = api.register(email).await;
            let (_, created) = api
                .post("/v1/app-passwords", session.token(), json!({"label": "bench"}))
                .await;
            let password = created["password"].as_str().unwrap_or_default().to_owned();
            let authorization = format!(
                "Basic {}",
                base64_encode(format!("{email}:{password}").as_bytes())
            );
            first.push(measure(&server, idle, || dav(&api, &authorization, Some(text.clone()))).await?);
            drop(server);
            let (server, idle) = fresh_server(dir.path()).await?;
            let api = server.api();
            down.push(measure(&server, idle, || dav(&api, &authorization, None)).await?);
            drop(server);
            let (server, idle) = fresh_server(dir.path()).await?;
            let api = server.api();
            again.push(measure(&server, idle, || dav(&api, &authorization, Some(text.clone()))).await?);
        }
        let secs = |s: &[Sample]| median(&s.iter().map(|x| x.secs).collect::<Vec<_>>());
        let peak = |s: &[Sample]| median(&s.iter().map(|x| x.peak_mib).collect::<Vec<_>>());
        let baseline = median(&base);
        let cell = |s: &[Sample]| {
            format!(
                "{:.2} s ({:.0}× baseline), peak +{:.0} MiB",
                secs(s),
                secs(s) / baseline,
                peak(s)
            )
        };
        println!(
            "| {sessions}×{messages} | {:.1} MB | {:.3} s | {} | {} | {} |",
            text.len() as f64 / 1e6,
            baseline,
            cell(&first),
            cell(&down),
            cell(&again),
        );
    }
    println!(
        "\nMedians of {rounds} rounds. Each operation runs in a fresh server process on the round's data dir; its peak is the process's resident set (VmHWM) above its idle size."
    );
    Ok(())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
