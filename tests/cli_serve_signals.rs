//! `journey serve` as a process manager runs it: the port is bound before
//! anything slow, and SIGTERM (what Kubernetes and systemd send on every
//! deploy) drains and exits cleanly, like Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use journey_ledger::testing::temp_sqlite;

#[path = "common/cli.rs"]
mod cli;

fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("journey serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let (_dir, store) = temp_sqlite();
    let addr = format!("127.0.0.1:{}", cli::free_port());
    let mut child = cli::journey_command(&store)
        .args(["serve", "--addr", &addr])
        .env("JOURNEY_API_KEYS", "ops:admin:ops-admin-key-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut serving = false;
    for line in stdout.lines() {
        if line.unwrap().starts_with("Press Ctrl-C") {
            serving = true;
            break;
        }
    }
    assert!(serving, "the server printed its banner");
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut conn,
        b"GET /readyz HTTP/1.1\r\nHost: journey\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_for_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("finishing requests in flight"), "{stderr}");
}

#[test]
fn a_port_in_use_fails_before_the_demo_imports() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, store) = temp_sqlite();
    let started = Instant::now();
    let out = cli::journey_command(&store)
        .args(["serve", "--demo", "--addr", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("listening on {addr}")), "{stderr}");
    assert!(
        !stdout.contains("demo: imported"),
        "nothing imported first: {stdout}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
