//! `multicloud-agent`: the node-local agent's command line.

use multicloud_agent::{crd, keys};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use multicloud_core::token::Scope;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "multicloud-agent", version, about = "Istio Multicloud node-local agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the federation Ed25519 keypair at PATH (if absent) and print its public key (PEM).
    Keygen {
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the IstioMulticloud CRD (YAML), as deploy/ carries it.
    Crd,
    /// Mint a federation token signed with the key at PATH.
    Token {
        #[arg(long)]
        key: PathBuf,
        /// This cluster's UUID (the token's `sub`).
        #[arg(long)]
        sub: String,
        /// The remote cluster's UUID (the token's `aud`).
        #[arg(long)]
        aud: String,
        /// `private-multicluster` or `api`.
        #[arg(long, default_value = "private-multicluster")]
        scope: String,
        /// Lifetime in seconds (at most 60 for metadata tokens).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { key } => {
            let k = keys::load_or_generate(&key)?;
            print!("{}", multicloud_core::pem::ed25519_public_key_to_pem(&k.verifying_key()));
        }
        Command::Crd => print!("{}", crd::crd_yaml()),
        Command::Token { key, sub, aud, scope, ttl } => {
            let scope = Scope::parse(&scope).with_context(|| format!("unknown scope {scope:?}: use private-multicluster or api"))?;
            for (name, v) in [("--sub", &sub), ("--aud", &aud)] {
                anyhow::ensure!(multicloud_core::metadata::is_uuid(v), "{name} {v:?} is not a cluster UUID");
            }
            anyhow::ensure!(
                scope != Scope::PrivateMulticluster || (1..=keys::MAX_METADATA_TOKEN_TTL_SECS).contains(&ttl),
                "--ttl must be 1-60 s for metadata tokens"
            );
            let k = keys::load_or_generate(&key)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
            println!("{}", keys::mint(&k, &sub, &aud, scope, now, ttl));
        }
    }
    Ok(())
}
