//! `weft`: the mesh's command line.

mod identity;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "weft", version, about = "Weft service mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or rotate the mesh's trust anchor and issuer.
    #[command(subcommand)]
    Identity(identity::Command),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Identity(c) => identity::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
