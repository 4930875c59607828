//! The `spafit` command line. Training, evaluation and benchmarking commands arrive with the
//! training issue; until then the binary only reports what it can do.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("-h") | Some("--help") => {
            println!("spafit {}", env!("CARGO_PKG_VERSION"));
            println!(
                "Parameter-efficient fine-tuning (SPAFIT, BitFit, LoRA, full) of BERT encoders."
            );
            println!();
            println!("The engine core (CPU backend, autograd) is in place; the train, eval,");
            println!("predict, gradcheck, bench and demo commands are not implemented yet.");
        }
        Some("--version") => println!("spafit {}", env!("CARGO_PKG_VERSION")),
        Some(other) => {
            eprintln!(
                "spafit: unknown command `{other}` (no commands are implemented yet; see --help)"
            );
            std::process::exit(2);
        }
    }
}
