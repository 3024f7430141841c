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
    cli::init_tracing(args.verbose);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(args))
}
