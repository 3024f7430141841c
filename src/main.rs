//! `journey`: the command-line edge of the ledger. Parses flags, sets up
//! logging and hands off to library code; errors become `anyhow` here only.

mod cli;

use clap::Parser;

/// Replays allocate and free millions of short-lived rows and strings;
/// mimalloc keeps that cheap where glibc's allocator spends its time
/// consolidating free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    // Piped into `head`, a command should stop quietly instead of panicking
    // on a closed stdout. Servers keep Rust's default (SIGPIPE ignored,
    // writes fail with EPIPE) so a vanished client cannot kill them.
    #[cfg(unix)]
    if !args.command.serves_http() {
        // SAFETY: called before any thread is started; restores the
        // platform default disposition of one signal.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Before any connection opens: SQLite's page caches then come from
    // mimalloc too (see the function's docs for the memory it saves).
    let sqlite_allocator = journey_ledger::store::sqlite_raw::allocate_through_global_allocator();
    cli::init_tracing(args.verbose);
    if !sqlite_allocator {
        tracing::warn!("SQLite was initialized early and keeps the C library's malloc");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(args))
}
