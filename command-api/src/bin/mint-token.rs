//! `mint-token`: prints a bearer token for development and tests.

use clap::Parser;
use shared::auth::{claims_for, mint, Role};

/// Mints an HS256 bearer token signed with JWT_SECRET.
#[derive(Parser)]
#[command(name = "mint-token", version, about)]
struct Args {
    /// The principal (`sub`), recorded as the actor of every event.
    #[arg(long)]
    sub: String,
    /// Roles, comma separated: writer, reviewer, reader, auditor, admin.
    #[arg(long, value_delimiter = ',', default_value = "reader")]
    roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: i64,
    /// Limit the token to these study ids (comma separated).
    #[arg(long, value_delimiter = ',')]
    studies: Vec<uuid::Uuid>,
    /// Shared secret of the services.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: String,
}

fn main() {
    let args = Args::parse();
    let mut roles = Vec::new();
    for raw in &args.roles {
        match Role::parse(raw.trim()) {
            Some(r) => roles.push(r),
            None => {
                eprintln!("mint-token: unknown role {raw:?} (use writer, reviewer, reader, auditor, admin)");
                std::process::exit(2);
            }
        }
    }
    let mut claims = claims_for(&args.sub, &roles, args.ttl);
    if !args.studies.is_empty() {
        claims.studies = Some(args.studies);
    }
    println!("{}", mint(args.secret.as_bytes(), &claims));
}
