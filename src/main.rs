//! `switchboard`: parses the command line and hands over to the library.

use clap::Parser;

/// mimalloc instead of glibc's allocator: hyper's read buffers and the per-message strings sent
/// glibc into its slow paths (`malloc_consolidate`, `unlink_chunk`; ~10 % of a Telegram run's
/// samples). Figures: docs/BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // The PDF reader's child process (see `knowledge::pdf_worker`): no runtime, no threads, no
    // configuration; it limits itself before it reads the file.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            switchboard::knowledge::pdf_worker::WORKER_ARG,
        ))
    {
        return switchboard::knowledge::pdf_worker::child_main();
    }
    // Before any SQLite connection opens (SQLite takes these settings only before it starts).
    switchboard::store::sqlite_alloc::configure();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = switchboard::cli::Cli::parse();
    match runtime.block_on(switchboard::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
