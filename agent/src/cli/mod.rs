//! The agent binary's command line: the flags ([`args`]), `run`'s
//! validated configuration (`crate::config`), and every other command:
//! `status` ([`status`]), `check` ([`check`]: its inputs from
//! [`check_kube`] with `--kubernetes`, its network probes in [`probes`]),
//! `install` ([`install`], applying deploy/'s component patches with
//! [`component`]), `crd`, `keygen`, `token` ([`execute`]).
//! How `status` and `check` print and exit: [`report`].

pub mod args;
pub mod check;
pub mod check_kube;
pub mod component;
pub mod install;
pub mod probes;
pub mod report;
pub mod status;

use crate::{crd, keys};
use anyhow::{Context as _, Result};
use args::Command;
use check_kube::CheckInputError;
use multicloud_core::token::Scope;

/// Runs every command but `run` (which `main` builds into an
/// [`crate::app::App`]). `status` and `check` exit with their own codes.
pub fn execute(command: Command) -> Result<()> {
    match command {
        Command::Run(_) => anyhow::bail!("`run` is started by main with its Config"),
        Command::Keygen { key } => {
            let k = keys::load_or_generate(&key)?;
            print!("{}", multicloud_core::pem::ed25519_public_key_to_pem(&k.verifying_key()));
        }
        Command::Crd => print!("{}", crd::crd_yaml()),
        Command::Install(args) => print!("{}", install::render(&args)?),
        Command::Status { agent, output } => std::process::exit(status::status(&agent, output)),
        Command::Check { peer, agent, standalone, key, kubernetes, kube, api_host_override, output } => {
            let source = if kubernetes {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                check::CheckSource::Kubernetes(rt.block_on(async {
                    let client = kube::Client::try_default().await.map_err(|e| {
                        CheckInputError::new(
                            "KubeconfigInvalid",
                            format!("cannot build a Kubernetes client: {e}"),
                            "run in the cluster or set KUBECONFIG",
                        )
                    })?;
                    let opts = kube.options().map_err(|e| CheckInputError::new("FlagsInvalid", format!("{e:#}"), "fix the flag"))?;
                    check_kube::check_inputs(client, &opts, &peer).await
                }))
            } else {
                check::CheckSource::Standalone { file: standalone.as_deref(), key: key.as_deref().unwrap_or(std::path::Path::new("")) }
            };
            let args = check::CheckArgs { peer: &peer, agent: &agent, source, api_host_override: &api_host_override };
            std::process::exit(check::check(&args, output))
        }
        Command::RotateKey { step, key, kubernetes, namespace, min_wait_seconds } => {
            use crate::keys::RotationStep;
            let min_wait = std::time::Duration::from_secs(min_wait_seconds.unwrap_or(match step {
                RotationStep::Stage => 0,
                RotationStep::Promote => 90,
                RotationStep::Finish => 660,
            }));
            let ring = match key {
                Some(path) if !kubernetes => {
                    let files = keys::KeyFiles::new(&path);
                    let ring = keys::rotate(&files.load()?, step, files.since_last_change(), min_wait)?;
                    files.store(&ring)?;
                    ring
                }
                _ => {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async {
                        let client = kube::Client::try_default().await.context("cannot build a Kubernetes client (KUBECONFIG)")?;
                        let opts = crate::kube::KubeOptions { namespace, ..crate::kube::KubeOptions::default() };
                        crate::kube::key_secret::SecretKeyStore::new(client, &opts).rotate(step, min_wait).await
                    })?
                }
            };
            println!("{step:?}: signing with the key published as authnKeyPub; {} more published", ring.additional_pems().len());
            print!("{}", ring.current_pem());
            for k in ring.additional_pems() {
                print!("{k}");
            }
        }
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
