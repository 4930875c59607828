//! The `spafit` binary.

mod cli;

use clap::Parser;

fn main() {
    if let Err(e) = cli::Cli::parse().run() {
        eprintln!("spafit: {e}");
        std::process::exit(1);
    }
}
