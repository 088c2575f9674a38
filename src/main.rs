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
        Command::Stats { connection, watch } => {
            return jobd::client::run(jobd::client::stats(connection, watch)).into();
        }
        _ => {}
    }
    // A new token needs no configuration: it is printed for the operator to add.
    if let Command::Token(TokenCommand::New { name, scopes, allowed_key_prefixes }) = &cli.command {
        return match jobd::server::new_token_line(name, scopes, allowed_key_prefixes.as_deref()) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("jobd: {error}");
                ExitCode::from(2)
            }
        };
    }
    jobd::telemetry::init(cli.log_format);
    let config = match Config::load(cli.settings, cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("jobd: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig { probe } => {
            match jobd::server::check(&config, probe).map(|()| toml::to_string(&config)) {
                Err(error) => {
                    eprintln!("jobd: invalid configuration: {error}");
                    ExitCode::from(2)
                }
                Ok(Ok(text)) => {
                    println!("# configuration is valid; effective settings:\n{text}");
                    ExitCode::SUCCESS
                }
                Ok(Err(error)) => {
                    eprintln!("jobd: cannot print the configuration: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token(_) | Command::Submit { .. } | Command::Jobs { .. } | Command::Stats { .. } => ExitCode::SUCCESS,
        Command::Serve => match jobd::server::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "jobd failed");
                eprintln!("jobd: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
