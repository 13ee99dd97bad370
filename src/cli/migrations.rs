//! `botdb migrate | rollback | current | history | check`: the reference's operator
//! verbs (`make db-migrate`, `db-rollback`, `db-current`, and autogenerate's diff), on
//! botdb's migrations and, given `--app-migrations DIR` (`BOTDB_APP_MIGRATIONS`), the
//! application's beside them.

use std::process::ExitCode;

use botdb::Config;
use botdb::migrate::{self, MigrationSet, MigrationStatus, Migrations};
use botdb::takeover::{self, Found};
use sqlx::{Connection, PgConnection};

async fn connect(config: &Config) -> anyhow::Result<PgConnection> {
    migrate::connect_to(config)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", config.redacted_url()))
}

/// The migrations the configuration names: botdb's, and the application's directory.
async fn migrations(config: &Config) -> anyhow::Result<Migrations> {
    Ok(Migrations::from_config(config).await?)
}

pub async fn migrate(config: &Config, to: Option<i64>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let migrations = migrations(config).await?;
    let mut conn = connect(config).await?;
    if dry_run {
        let plan = takeover::plan_with(&mut conn, &migrations, to).await;
        let _ = conn.close().await;
        print!("{}", plan?);
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let done = takeover::migrate_with(&mut conn, &migrations, to, &config.migrate).await;
    let _ = conn.close().await;
    let done = done?;
    let applied = done.applied;
    if let Found::Reference(_) = &done.plan.found {
        print!("{}", done.plan);
        println!(
            "took over the reference bot's database: {} rows repaired in {:.2?} (short transactions), \
             schema normalised and {} migrations recorded in {:.2?} (one transaction)",
            done.repaired,
            done.repair_time,
            done.plan.record.len(),
            done.normalise_time
        );
    }
    if applied.is_empty() {
        println!("nothing to do: {} is up to date", config.redacted_url());
    }
    for s in &applied {
        match s.execution_ms {
            Some(ms) => println!("applied {} ({ms:.1} ms)", s.label()),
            None => println!("applied {}", s.label()),
        }
    }
    if migrations.app().is_some()
        && let (Some(to), Some(head)) = (to, migrate::head())
        && to < head
    {
        println!(
            "the application's migrations are applied once botdb's are at their head ({head:04}): none was"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(config: &Config, steps: usize) -> anyhow::Result<ExitCode> {
    let migrations = migrations(config).await?;
    let mut conn = connect(config).await?;
    let reverted = migrations.downgrade(&mut conn, steps, &config.migrate).await;
    let _ = conn.close().await;
    let reverted = reverted?;
    if reverted.is_empty() {
        println!("nothing to roll back");
    }
    for s in &reverted {
        println!("reverted {}", s.label());
    }
    Ok(ExitCode::SUCCESS)
}

/// `0006 request keys (head)`, or `... (head is 0007)`.
fn against_head(s: &MigrationStatus, head: Option<i64>) -> String {
    let line = format!("{:04} {}", s.version, s.description);
    match head {
        Some(h) if h == s.version => format!("{line} (head)"),
        Some(h) => format!("{line} (head is {h:04})"),
        None => format!("{line} (not among the migrations given)"),
    }
}

pub async fn current(config: &Config) -> anyhow::Result<ExitCode> {
    let migrations = migrations(config).await?;
    let mut conn = connect(config).await?;
    let current = migrations.current(&mut conn).await;
    let _ = conn.close().await;
    let current = current?;
    if migrations.app().is_none() && current.app.is_none() {
        match &current.botdb {
            Some(s) => println!("{}", against_head(s, migrate::head())),
            None => println!("no migration applied"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    match &current.botdb {
        Some(s) => println!("botdb: {}", against_head(s, migrate::head())),
        None => println!("botdb: no migration applied"),
    }
    match (&current.app, migrations.app()) {
        (Some(s), Some(_)) => println!("app:   {}", against_head(s, migrations.app_head())),
        (Some(s), None) => println!(
            "app:   {:04} {} (the application's migrations were not given: --app-migrations DIR)",
            s.version, s.description
        ),
        (None, _) => println!("app:   no migration applied"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn history(config: &Config) -> anyhow::Result<ExitCode> {
    let migrations = migrations(config).await?;
    let mut conn = connect(config).await?;
    let history = migrations.history(&mut conn).await;
    let _ = conn.close().await;
    let history = history?;
    // sqlx-cli's timestamps are 14 digits.
    let width = history
        .iter()
        .map(|s| format!("{:04}", s.version).len())
        .max()
        .unwrap_or(4)
        .max(7)
        + 1;
    println!(
        "{:<width$}{:<7}{:<40}{:<10}{:<22}took",
        "version", "set", "description", "status", "applied at (UTC)"
    );
    for s in &history {
        let status = match (s.is_applied(), s.checksum_matches, s.unknown_to_this_build) {
            (_, _, true) => "unknown",
            (true, false, _) => "EDITED",
            (true, true, _) => "applied",
            (false, ..) => "pending",
        };
        let at = s
            .installed_on
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let took = s.execution_ms.map(|ms| format!("{ms:.1} ms")).unwrap_or_default();
        println!(
            "{:<width$}{:<7}{:<40}{:<10}{:<22}{took}",
            format!("{:04}", s.version),
            s.set.to_string(),
            s.description,
            status,
            at
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn check(config: &Config) -> anyhow::Result<ExitCode> {
    let migrations = migrations(config).await?;
    let report = botdb::catalog::check_with(config, &migrations).await?;
    for s in &report.mismatched {
        if !s.unknown_to_this_build {
            println!("edited     migration {}: changed after it was applied", s.label());
        } else if s.set == MigrationSet::App && migrations.app().is_none() {
            println!(
                "unknown    migration {}: applied, but the application's migrations were not given \
                 (--app-migrations DIR or BOTDB_APP_MIGRATIONS)",
                s.label()
            );
        } else if s.set == MigrationSet::App {
            println!(
                "unknown    migration {}: applied, but not in the application's migrations",
                s.label()
            );
        } else {
            println!(
                "unknown    migration {}: applied, but not in this build",
                s.label()
            );
        }
    }
    for s in &report.pending {
        println!("pending    migration {}", s.label());
    }
    for d in &report.differences {
        println!("{d}");
    }
    for k in &report.kept {
        println!(
            "kept       {k} (the reference bot's Alembic bookkeeping; drop it once the Python bot is retired)"
        );
    }
    if report.is_clean() {
        let app = match migrations.app_head() {
            Some(h) => format!(", app head {h:04}"),
            None => String::new(),
        };
        println!(
            "ok: {} matches the migrations' schema (head {:04}{app})",
            config.redacted_url(),
            migrate::head().unwrap_or(0)
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let n = report.differences.len() + report.pending.len() + report.mismatched.len();
        eprintln!(
            "{n} difference(s) between {} and the migrations' schema",
            config.redacted_url()
        );
        Ok(ExitCode::from(1))
    }
}
