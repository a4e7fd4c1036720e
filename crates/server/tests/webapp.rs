//! The web app in a real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from `tests/webapp/`; no browser is downloaded), against the real server on a free port.
//! The flows and checks are in `tests/webapp/e2e.mjs`; screenshots of every page at 360 and
//! 1280 px land in `target/webapp-screenshots/`.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci --prefix crates/server/tests/webapp`; so it
//! is `#[ignore]`d (counted as not run by `cargo test`) and `.ci/run` installs all three and
//! runs it with `--include-ignored`, where anything missing fails it.
//!
//! The script can ask for the server to go away and come back (a line `STOP-SERVER` on its
//! output, answered `STOPPED`; then `START-SERVER`, answered `STARTED`, same port and data):
//! the page must notice, and resume from its cursor when the server is back.

use nextsync_testkit::{TestDb, TestServer};
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
    let mut server = Some(TestServer::start(config.clone()).await);
    let base_url = server.as_ref().map(|s| s.base_url.clone()).unwrap_or_default();
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/webapp-screenshots");
    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("e2e.mjs"))
        .arg(&base_url)
        .arg(db.data_dir())
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut input = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    // A hung browser or script fails the test instead of holding CI.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    while let Some(line) = tokio::time::timeout_at(deadline, lines.next_line())
        .await
        .expect("the browser checks took over 5 minutes")
        .expect("read")
    {
        println!("{line}");
        match line.as_str() {
            "STOP-SERVER" => {
                if let Some(running) = server.take() {
                    running.stop().await.expect("graceful stop");
                }
                input.write_all(b"STOPPED\n").await.expect("answer");
            }
            "START-SERVER" => {
                server = Some(TestServer::start(config.clone()).await);
                input.write_all(b"STARTED\n").await.expect("answer");
            }
            _ => {}
        }
    }
    let status = tokio::time::timeout_at(deadline, node.wait())
        .await
        .expect("node did not exit")
        .expect("node exits");
    assert!(
        status.success(),
        "the browser checks failed (see their output above)"
    );
}
