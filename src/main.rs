//! The `jobd` binary: parses the command line, sets up logging, and calls the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use jobd::config::{Cli, Command, Config, TokenCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands talk to a running jobd: they need none of its configuration.
    match cli.command {
        Command::Submit { connection, args } => {
            return jobd::client::run(jobd::client::submit(connection, args)).into();
        }
        Command::Jobs { connection, command } => {
            return jobd::client::run(jobd::client::jobs(connection, command)).into();
        }
        Command::Queues { connection, command } => {
            return jobd::client::run(jobd::client::queues(connection, command)).into();
        }
        Command::Stats { connection, watch } => {
            return jobd::client::run(jobd::client::stats(connection, watch)).into();
        }
        _ => {}
    }
    // A new token needs no configuration: it is printed for the operator to add.
    if let Command::Token(TokenCommand::New { name, scopes, options }) = &cli.command {
        return match jobd::server::new_token_line(name, scopes, options) {
            Ok(line) => {
                println!("{line}");
                // What each side needs, on stderr so that `>> tokens` takes the line alone.
                eprintln!(
                    "jobd: append the line to the token file (tokens_file), then start jobd or reload it with \
                     SIGHUP; the client commands take the same line (or its third column, the token) with \
                     --token-file"
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("jobd: {error}");
                ExitCode::from(2)
            }
        };
    }
    let (server, probe) = match cli.command {
        Command::Serve(server) => (server, None),
        Command::CheckConfig { probe, server } => (server, Some(probe)),
        Command::Token(_)
        | Command::Submit { .. }
        | Command::Jobs { .. }
        | Command::Queues { .. }
        | Command::Stats { .. } => {
            return ExitCode::SUCCESS;
        }
    };
    jobd::telemetry::init(server.log_format);
    let config = match Config::load(server.settings, server.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("jobd: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    match probe {
        Some(probe) => check_config(&config, probe),
        None => match jobd::server::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "jobd failed");
                eprintln!("jobd: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The settings `serve` takes that the printed configuration lacks: those unset, with no
/// default (`tokens_file`, `tls_cert`), which TOML cannot print as a value.
fn unset_settings(printed: &str) -> Vec<String> {
    use clap::CommandFactory as _;
    let printed: toml::Table = toml::from_str(printed).unwrap_or_default();
    let command = Cli::command();
    let Some(serve) = command.find_subcommand("serve") else { return Vec::new() };
    serve
        .get_arguments()
        .filter(|argument| !argument.is_hide_set())
        .map(|argument| argument.get_id().to_string())
        .filter(|id| !matches!(id.as_str(), "config" | "log_format" | "help") && !printed.contains_key(id))
        .collect()
}

/// `jobd check-config`: checks the configuration (and the store with `probe`), then
/// prints the effective settings and the file they were read from.
fn check_config(config: &Config, probe: bool) -> ExitCode {
    match jobd::server::check(config, probe).map(|()| toml::to_string(config)) {
        // Not a configuration to fix, perhaps: a service it names is down or unreachable.
        Err(unreachable @ jobd::server::ServeError::Unreachable { .. }) => {
            eprintln!("jobd: {unreachable}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("jobd: invalid configuration: {error}");
            ExitCode::from(2)
        }
        Ok(Ok(text)) => {
            let source = match &config.config_file {
                Some(path) => format!("read from {}", path.display()),
                None => "no configuration file was found; built-in defaults, flags and JOBD_* variables".to_owned(),
            };
            println!("# configuration is valid ({source}); effective settings:\n{text}");
            let unset = unset_settings(&text);
            if !unset.is_empty() {
                println!("# not set: {}", unset.join(", "));
            }
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("jobd: cannot print the configuration: {error}");
            ExitCode::FAILURE
        }
    }
}
