//! The `scbridge` binary: command line, logging, config, exit codes.
//!
//! Exit codes: 0 clean shutdown or valid config; 1 the service could not
//! start (a local port or file) or its router task ended unexpectedly;
//! 2 invalid config or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use scbridge::config::Config;

/// Bridges one SocketCluster connection to OSC and MQTT.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        env = "SCBRIDGE_CONFIG",
        default_value = "/etc/scbridge/bridge.toml"
    )]
    config: PathBuf,
    /// Log filter, e.g. `info` or `scbridge=debug` (RUST_LOG wins when set).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log lines as text (journald-friendly) or JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (the default).
    Run,
    /// Validate the config, print the resolved routing table, exit 0 or 2.
    Check,
    /// Dry run of one message: which routes match and what would be sent.
    Explain {
        /// Where it comes from: cables_object, cables_trigger, sc_channel,
        /// sc_event, osc or mqtt.
        source: String,
        /// Its topic, trigger name, channel, event, OSC address or MQTT topic.
        name: String,
        /// Its value as JSON (default null; ignored for triggers).
        value: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Text => scbridge::logging::LogFormat::Text,
        LogFormat::Json => scbridge::logging::LogFormat::Json,
    };
    scbridge::logging::init(&cli.log_level, format);

    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("scbridge: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!("{}: ok", cli.config.display());
            print!("{}", scbridge::explain::describe(&config));
            ExitCode::SUCCESS
        }
        Command::Explain { source, name, value } => {
            let Some(kind) = scbridge::explain::source_kind(&source) else {
                eprintln!(
                    "scbridge: unknown source `{source}`; use cables_object, cables_trigger, sc_channel, sc_event, osc or mqtt"
                );
                return ExitCode::from(2);
            };
            let value = match value.map(|text| serde_json::from_str(&text)) {
                None => None,
                Some(Ok(value)) => Some(value),
                Some(Err(err)) => {
                    eprintln!("scbridge: the value is not JSON: {err} (quote strings: '\"text\"')");
                    return ExitCode::from(2);
                }
            };
            print!("{}", scbridge::explain::explain(&config, kind, &name, value));
            ExitCode::SUCCESS
        }
        Command::Run => {
            // One thread: the bridge is I/O-bound, and hopping between worker
            // threads cost about 30% more CPU per message in the benchmark
            // (cross-thread wake-ups) with no gain in latency.
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("scbridge: cannot start the runtime: {err}");
                    return ExitCode::from(1);
                }
            };
            let outcome = runtime.block_on(scbridge::service::run(cli.config.clone(), config));
            // A host-name lookup for an OSC target may still be running in
            // the blocking pool; the exit does not wait out the resolver.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("scbridge: {err}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
