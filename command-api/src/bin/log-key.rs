//! `log-key`: makes a key that signs the log's checkpoints, and prints it
//! (the `LOG_SIGNING_KEY` of the command API) and its verifier key (what
//! auditors are given).

use clap::Parser;
use shared::checkpoint::NoteSigner;

/// Generates an Ed25519 checkpoint signing key in the signed-note formats.
#[derive(Parser)]
#[command(name = "log-key", version, about)]
struct Args {
    /// The key's name, usually the log's origin (no spaces, no `+`).
    #[arg(long, default_value = "research-records.example/log")]
    name: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("the system's random source failed: {e}"))?;
    let signer = NoteSigner::new(&args.name, seed)
        .map_err(|e| anyhow::anyhow!("{e}: the name may hold no space and no +"))?;
    println!("LOG_SIGNING_KEY={}", signer.to_private_text());
    println!("verifier key: {}", signer.verifier().to_text());
    Ok(())
}
