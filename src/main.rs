use std::process::ExitCode;

use clap::Parser;
use cloudimage_operator::cli::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = cloudimage_operator::run::init_logging(&args) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    match cloudimage_operator::run::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
