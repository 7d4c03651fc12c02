use std::{io::IsTerminal as _, process::ExitCode};

use clap::{Parser as _, error::ErrorKind};
use knock_userspace::{
    cli::{self, Cli, Command},
    config::{Config, LogFormat},
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::from(2);
        }
        Err(err) => {
            // One line: clap's first paragraph names the problem (sometimes
            // over several lines); the usage it appends is one --help away.
            let rendered = err.render().to_string();
            let problem = rendered.split("\n\n").next().unwrap_or("invalid arguments");
            let problem: Vec<&str> =
                problem.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            eprintln!("knock-xdp: {}", problem.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Attach { .. }) {
        quiet_on_closed_pipe();
    }
    // The config file may set the log level and format; a broken one is
    // reported by the command itself, so here it only falls back.
    let config = Config::load(cli.config.as_deref()).unwrap_or_default();
    let format = cli.log_format.map(Into::into).or(config.log_format).unwrap_or(LogFormat::Human);
    init_logging(cli.verbose, cli.quiet, config.log_level.as_deref(), format);
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("knock-xdp: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command that prints and exits ends quietly when its reader goes away
/// (`knock-xdp status | head -1`), as `cat` and every Unix filter do. Rust
/// starts with SIGPIPE ignored, which turns a closed pipe into an EPIPE that
/// `println!` panics on (and third-party writers such as the completion
/// generator `expect`); restoring the default action handles every writer
/// at once, present and future. The daemon (`attach`) keeps SIGPIPE ignored:
/// a control client, a scraper or a log reader that hangs up must never
/// kill it.
fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn init_logging(verbose: u8, quiet: u8, configured: Option<&str>, format: LogFormat) {
    let level = match (verbose, quiet) {
        (0, 0) => configured.unwrap_or("info"),
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A log line that cannot be written is dropped: tracing-subscriber would
    // otherwise report it with eprintln!, which panics when stderr is a
    // closed pipe (`knock-xdp attach 2>&1 | head` killed the daemon).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
