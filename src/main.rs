//! The `ncalm` command line over the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    restore_default_sigpipe();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Of an MPI job's ranks, the one that failed has said why.
        Err(e) if e.is::<ncalm::distributed::FailedElsewhere>() => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `ncalm stats DIR | head` would end in a panic on the closed pipe; a
/// command-line tool should end quietly instead, as other Unix tools do.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: installing the default disposition for SIGPIPE before any thread starts.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
