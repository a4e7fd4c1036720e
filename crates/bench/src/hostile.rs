//! Long hostile-input runs (issue 14) against the release `nextsync` process: the test
//! suite's generator (`nextsync_testkit::fuzz`) with more requests and other seeds, plus the
//! server's memory before and after (it must come back within 20 % of its baseline).

use crate::realtime::Server;
use nextsync_testkit::fuzz;
use std::time::{Duration, Instant};

pub async fn bench_fuzz(requests: u64, seed: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = vec![
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--bind".into(),
        "127.0.0.1:0".into(),
    ];
    let server = Server::spawn(&args)?;
    let api = server.api();
    let target = fuzz::target(&api, "fuzz@example.org").await;
    // Warm up (allocator arenas, statement caches, the sign-in's Argon2 block given back).
    let warm = fuzz::run(&api.http, &target, seed.wrapping_add(1), 3000, 50).await;
    anyhow::ensure!(warm.failures.is_empty(), "warm-up failed: {:?}", warm.failures);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = server.rss_kib()?;
    let started = Instant::now();
    let outcome = fuzz::run(&api.http, &target, seed, requests, (requests / 40).max(10)).await;
    let took = started.elapsed();
    let peak_hint = server.rss_kib()?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = server.rss_kib()?;
    println!("seed {seed}: {}", fuzz::summary(&outcome));
    println!(
        "{:.0} requests/s; server RSS {before} KiB before, {peak_hint} KiB at the end, {after} KiB 7 s later ({:.2}×)",
        outcome.requests as f64 / took.as_secs_f64(),
        after as f64 / before as f64
    );
    for failure in outcome.failures.iter().take(20) {
        println!("FAILED: {failure}");
    }
    anyhow::ensure!(outcome.failures.is_empty(), "{} failures", outcome.failures.len());
    anyhow::ensure!(
        after as f64 <= before as f64 * 1.2,
        "the server's memory did not come back within 20 % of its baseline"
    );
    Ok(())
}
