//! `log-key`: makes a key that signs the log's checkpoints, and prints it
//! (the `LOG_SIGNING_KEY` of the command API) and its verifier key (what
//! auditors are given).

use clap::Parser;
use shared::checkpoint::NoteSigner;

/// Generates an Ed25519 checkpoint signing key in the signed-note formats,
/// or shows the verifier key of one.
#[derive(Parser)]
#[command(name = "log-key", version, about)]
struct Args {
    /// The key's name, usually the log's origin (no spaces, no `+`).
    #[arg(long, default_value = "research-records.example/log")]
    name: String,
    /// Writes the new private key to this file (mode 600) instead of
    /// printing it.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Prints the verifier key of the private key in this file, and nothing
    /// else.
    #[arg(long)]
    verifier_of: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    use anyhow::Context;

    let args = Args::parse();
    if let Some(path) = &args.verifier_of {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let signer = NoteSigner::parse(&text).context("not a signed-note private key")?;
        println!("{}", signer.verifier().to_text());
        return Ok(());
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("the system's random source failed: {e}"))?;
    let signer = NoteSigner::new(&args.name, seed)
        .map_err(|e| anyhow::anyhow!("{e}: the name may hold no space and no +"))?;
    match &args.out {
        Some(path) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(file, "{}", signer.to_private_text())?;
        }
        None => println!("LOG_SIGNING_KEY={}", signer.to_private_text()),
    }
    println!("verifier key: {}", signer.verifier().to_text());
    Ok(())
}
