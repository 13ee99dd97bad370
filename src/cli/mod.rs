//! Command-line interface: parsing (clap) and dispatch. Each command lives in its own
//! module; errors are shown here, at the edge.

mod demo;
mod erase;
mod export;
mod migrations;
mod purge;
mod serve;
mod tour;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use botdb::Config;
use botdb::embedded::EmbeddedPostgres;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// botdb: PostgreSQL persistence for AI chat bots (users, dialogues, settings).
///
/// The database comes from DATABASE_URL, or DB_HOST / DB_PORT / DB_NAME / DB_USER /
/// DB_PASSWORD (a .env file is read too). `demo` and `tour` run on a throwaway local
/// PostgreSQL when none of these is set; `serve` only with `--throwaway-db`.
#[derive(Debug, Parser)]
#[command(name = "botdb", version, about, long_about)]
struct Cli {
    /// Log filter when RUST_LOG is unset (e.g. `info`, `botdb=debug,sqlx=info`).
    #[arg(
        long,
        global = true,
        default_value = "botdb=info,sqlx=warn",
        env = "BOTDB_LOG"
    )]
    log: String,

    /// The application's own migrations directory (sqlx files): migrate, rollback,
    /// current, history and check work on it beside botdb's; `new` creates files in it.
    /// Overrides BOTDB_APP_MIGRATIONS.
    #[arg(long, global = true, value_name = "DIR")]
    app_migrations: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply every pending migration (alembic upgrade head); takes over a database the
    /// reference Python bot made.
    Migrate {
        /// Stop after this version instead of going to head.
        #[arg(long, value_name = "VERSION")]
        to: Option<i64>,
        /// Print what would be done (what was found, recorded, applied); change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Revert the newest migration, or the newest N (alembic downgrade -1).
    Rollback {
        /// How many migrations to revert.
        #[arg(short = 'n', long = "steps", default_value_t = 1)]
        steps: usize,
    },
    /// Show the newest applied migration (alembic current).
    Current,
    /// List every migration, applied (with date) or pending.
    History,
    /// Create the next reversible migration pair in the migrations directory.
    New {
        /// What the migration does, e.g. "add user language".
        name: String,
        /// Where the migrations are [default: the --app-migrations directory if given,
        /// else ./migrations (botdb's own)].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Compare the live schema with the one the migrations define; exit 1 listing each
    /// difference.
    Check,
    /// Many users talking to the bot at once through the actors; then a summary and a
    /// verification of everything acknowledged.
    Demo(demo::DemoArgs),
    /// The reference's example operations, step by step.
    Tour,
    /// The bot on actix-web: POST /telegram/webhook, GET /healthz, GET /metrics.
    Serve(serve::ServeArgs),
    /// Remove messages soft-deleted longer ago than --deleted-before, for good, in small
    /// batches (Ctrl-C stops between batches; run it again to go on).
    Purge(purge::PurgeArgs),
    /// Erase a user for good (messages, settings, keys, user row) and record an audit row
    /// that proves it without naming them (needs BOTDB_AUDIT_KEY).
    EraseUser {
        /// The Telegram user id (a positive whole number).
        #[arg(allow_negative_numbers = true)]
        user_id: i64,
    },
    /// Write everything stored about a user (settings, every message including
    /// soft-deleted ones) as JSON to stdout, streaming.
    ExportUser {
        /// The Telegram user id (a positive whole number).
        #[arg(allow_negative_numbers = true)]
        user_id: i64,
    },
}

/// Parses the command line, runs the command, and turns errors into messages and exit
/// codes: 0 success, 1 `check` found differences, 2 error.
pub fn main() -> ExitCode {
    let mut env_help = String::from("Environment (also read from ./.env):\n");
    for (name, default, meaning) in botdb::config::ENV_VARS {
        env_help.push_str(&format!("  {name:<24} {meaning} [default: {default}]\n"));
    }
    env_help.push_str("  BOTDB_WEBHOOK_SECRET     serve: Telegram's secret_token (required)\n");
    env_help.push_str(
        "  BOTDB_PURGE_AFTER        serve: purge messages soft-deleted longer ago than this, hourly\n",
    );
    env_help.push_str(
        "  BOTDB_KEY_RETENTION_HOURS serve: hours handled update ids are kept; serve's and purge's \
         periods may not be shorter [default: 24]\n",
    );
    let matches = Cli::command().after_long_help(env_help).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    botdb::telemetry::init(&cli.log);
    match run(cli.command, cli.app_migrations) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", explain(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each cause once: botdb's errors already quote their
/// source's text, which `{:#}` would print again.
fn explain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(command: Command, app_migrations: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    if let Command::New { name, dir } = &command {
        let (dir, app) = match (dir, &app_migrations) {
            (Some(dir), _) => (dir.clone(), Some(dir) == app_migrations.as_ref()),
            (None, Some(app)) => (app.clone(), true),
            (None, None) => (PathBuf::from("migrations"), false),
        };
        let (up, down) = botdb::migrate::new_migration(&dir, name)?;
        println!("created {}\ncreated {}", up.display(), down.display());
        if app {
            println!(
                "the application's migrations are read at run time: `botdb --app-migrations {} migrate` applies it",
                dir.display()
            );
        } else {
            println!(
                "botdb's own migrations are embedded at build time: rebuild botdb to apply it \
                 (an application's directory is read at run time: --app-migrations DIR)"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let overrides: Vec<(&str, String)> = app_migrations
        .iter()
        .map(|dir| (botdb::migrate::APP_SETTING, dir.to_string_lossy().into_owned()))
        .collect();
    let config = Config::from_env_with(&overrides).context("reading the configuration")?;
    actix::System::new().block_on(async move {
        match command {
            Command::Migrate { to, dry_run } => migrations::migrate(&config, to, dry_run).await,
            Command::Rollback { steps } => migrations::rollback(&config, steps).await,
            Command::Current => migrations::current(&config).await,
            Command::History => migrations::history(&config).await,
            Command::Check => migrations::check(&config).await,
            Command::Demo(args) => {
                let (config, server) = server_for(&config, !config.server_configured()).await?;
                demo::run(&config, args, server).await
            }
            Command::Tour => {
                let (config, _server) = server_for(&config, !config.server_configured()).await?;
                tour::run(&config).await
            }
            Command::Serve(args) => {
                if args.throwaway_db && config.server_configured() {
                    anyhow::bail!(
                        "--throwaway-db starts a temporary PostgreSQL, but a server is configured \
                         ({}); drop one of the two",
                        config.redacted_url()
                    );
                }
                let (config, server) = server_for(&config, args.throwaway_db).await?;
                serve::run(&config, server.is_some(), args).await
            }
            Command::ExportUser { user_id } => export::run(&config, user_id).await,
            Command::EraseUser { user_id } => erase::run(&config, user_id).await,
            Command::Purge(args) => purge::run(&config, args).await,
            Command::New { .. } => Ok(ExitCode::SUCCESS),
        }
    })
}

/// The configured server, or, when `throwaway`, a throwaway one (returned too, so it
/// lives as long as the caller needs it) with the configured database created.
async fn server_for(config: &Config, throwaway: bool) -> anyhow::Result<(Config, Option<EmbeddedPostgres>)> {
    if !throwaway {
        return Ok((config.clone(), None));
    }
    eprintln!(
        "starting a THROWAWAY PostgreSQL: everything stored is deleted when botdb exits \
         (set DATABASE_URL or DB_* to use a real server)"
    );
    let server = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .context("starting the embedded PostgreSQL")??;
    let name = config.database_name();
    server.create_database(&name).await?;
    Ok((server.config_from(config, &name), Some(server)))
}
