//! `multicloud-agent`: parses the command line. `run` builds one validated
//! [`Config`], logs it once, and hands it to the [`App`]; every other command
//! is `multicloud_agent::cli::execute`.

use anyhow::Result;
use clap::Parser as _;
use multicloud_agent::app::App;
use multicloud_agent::cli::args::{Cli, Command};
use multicloud_agent::config::Config;

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let config = Config::from_args(*args)?;
            config.log_format.init();
            // Paths and settings only: no key, token or certificate content.
            tracing::info!(config = %config.to_json(), "starting the agent");
            for notice in &config.ignored_flags {
                tracing::warn!("{notice}");
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async { App::build(config).await?.run().await })
        }
        other => multicloud_agent::cli::execute(other),
    }
}
