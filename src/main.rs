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
    // Allowed one CPU (a small VM, a container's quota, `taskset`; the standard library reads
    // the affinity mask and cgroup limits): every task on this thread (tokio's current-thread
    // scheduler) instead of the multi-threaded scheduler with one worker. Same tasks, less
    // scheduling machinery (work-stealing queues, a worker's park and unpark): in the channels
    // bench on one core, ~15 % less CPU per reply on SQLite and PostgreSQL (docs/BENCHMARKS.md,
    // seventeenth step). Nothing here blocks a worker (`block_in_place` is never used: blocking
    // work goes to the blocking pool, which both schedulers have). Tested by
    // `on_one_core_killed_after_ack_the_reply_is_delivered_exactly_once` (tests/process.rs).
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
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
