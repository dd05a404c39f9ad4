use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ncalm::cli::Cli::parse();
    match ncalm::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
