//! The deployment files as an operator uses them: the systemd unit passes
//! `systemd-analyze verify` without a single warning, and the Dockerfile passes a linter (no
//! container engine runs on the CI machine to build it) and keeps what README promises: two
//! stages, a non-root user, the data volume, a health check.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nextsync");

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
#[ignore = "needs systemd-analyze; run with --include-ignored"]
fn the_systemd_unit_verifies_without_a_warning() {
    // verify checks that ExecStart exists: point it at the binary just built.
    let unit = read("deploy/nextsync.service").replace("/usr/local/bin/nextsync", BIN);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nextsync.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (install systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown or misspelt key is only a warning to systemd, with exit status 0.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
#[ignore = "needs node and `npm ci --prefix deploy/lint`; run with --include-ignored"]
fn the_dockerfile_passes_the_linter() {
    let lint = repo("deploy/lint/node_modules/.bin/dockerfile-utils");
    let out = Command::new(&lint)
        .arg("lint")
        .arg(repo("Dockerfile"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `npm ci --prefix deploy/lint`)", lint.display()));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_builds_in_two_stages_and_runs_unprivileged_with_a_volume_and_a_health_check() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let starting = |word: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(word))
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(starting("FROM ").len(), 2, "a build stage and a run stage");
    assert!(starting("FROM ")[0].ends_with("AS build"));
    assert!(
        starting("COPY --from=build ").len() == 1,
        "only the binary crosses over"
    );
    let user = starting("USER ");
    assert!(
        user.len() == 1 && !["USER root", "USER 0"].contains(&user[0]),
        "{user:?}"
    );
    assert!(
        starting("VOLUME ")
            .iter()
            .any(|l| l.contains("/var/lib/nextsync"))
    );
    assert!(starting("HEALTHCHECK ").len() == 1 && dockerfile.contains("/readyz"));
    assert!(
        dockerfile.contains("--locked"),
        "the image builds from Cargo.lock"
    );
}

#[test]
fn the_unit_runs_sandboxed_in_its_state_directory() {
    let unit = read("deploy/nextsync.service");
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=nextsync",
        "Environment=NEXTSYNC_DATA_DIR=/var/lib/nextsync",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.lines().any(|l| l.trim() == setting), "missing {setting}");
    }
}
