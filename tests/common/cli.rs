//! Runs the real `journey` binary the way a user does, without the settings
//! a developer's shell may carry (store, config file, pseudonym key), so a
//! test sees only what it passes.

// Each test binary includes this file and uses part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

/// `journey` from the crate root with a clean environment; add arguments
/// and variables, then run it.
pub fn journey_binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_journey"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("JOURNEY_STORE")
        .env_remove("JOURNEY_CONFIG")
        .env_remove("JOURNEY_PSEUDONYM_KEY")
        .env_remove("JOURNEY_NOW")
        .env_remove("JOURNEY_STATE_CACHE_MB")
        .env_remove("JOURNEY_KEEP_VERSIONS");
    cmd
}

/// [`journey_binary`] on one store: `journey --store STORE`.
pub fn journey_command(store: &str) -> Command {
    let mut cmd = journey_binary();
    cmd.arg("--store").arg(store);
    cmd
}

/// `journey --store STORE ARGS…`, run to completion.
pub fn journey(store: &str, args: &[&str]) -> Output {
    journey_command(store)
        .args(args)
        .output()
        .expect("run journey")
}

/// Standard output of a run that must have succeeded; on failure the
/// panic shows the command's standard error.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "journey failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A local port free at the moment of asking, for a `journey serve --addr`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
