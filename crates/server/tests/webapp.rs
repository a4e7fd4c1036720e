//! The web app in a real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from `tests/webapp/`; no browser is downloaded), against the real server on a free port.
//! The flows and checks are in `tests/webapp/e2e.mjs`; screenshots of every page at 360 and
//! 1280 px land in `target/webapp-screenshots/`.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci --prefix crates/server/tests/webapp`; so it
//! is `#[ignore]`d (counted as not run by `cargo test`) and `.ci/run` installs all three and
//! runs it with `--include-ignored`, where anything missing fails it.

use nextsync_testkit::{TestDb, TestServer};
use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node, chromium and the npm packages of tests/webapp; run with --include-ignored"]
async fn the_web_app_works_in_a_real_browser() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/webapp");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix crates/server/tests/webapp` first"
    );
    let db = TestDb::sqlite();
    let mut config = db.config();
    // The reset mail's link must point at this server: take a free port up front.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    config.bind = ([127, 0, 0, 1], port).into();
    config.public_url = format!("http://127.0.0.1:{port}");
    let server = TestServer::start(config).await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/webapp-screenshots");
    let base_url = server.base_url.clone();
    let data_dir = db.data_dir();
    let status = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("e2e.mjs"))
            .arg(&base_url)
            .arg(&data_dir)
            .arg(&shots)
            .status()
    })
    .await
    .expect("join")
    .expect("node runs");
    assert!(
        status.success(),
        "the browser checks failed (see their output above)"
    );
}
