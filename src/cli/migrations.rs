//! `botdb migrate | rollback | current | history | check`: the reference's operator
//! verbs (`make db-migrate`, `db-rollback`, `db-current`, and autogenerate's diff).

use std::process::ExitCode;

use botdb::Config;
use botdb::migrate::{self, MigrationStatus};
use botdb::takeover::{self, Found};
use sqlx::{Connection, PgConnection};

async fn connect(config: &Config) -> anyhow::Result<PgConnection> {
    migrate::connect_to(config)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", config.redacted_url()))
}

fn line(s: &MigrationStatus) -> String {
    format!("{:04} {}", s.version, s.description)
}

pub async fn migrate(config: &Config, to: Option<i64>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let mut conn = connect(config).await?;
    if dry_run {
        let plan = takeover::plan(&mut conn, to).await;
        let _ = conn.close().await;
        print!("{}", plan?);
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let done = takeover::migrate(&mut conn, to, &config.migrate).await;
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
            Some(ms) => println!("applied {} ({ms:.1} ms)", line(s)),
            None => println!("applied {}", line(s)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(config: &Config, steps: usize) -> anyhow::Result<ExitCode> {
    let mut conn = connect(config).await?;
    let reverted = migrate::downgrade_with(&mut conn, steps, &config.migrate).await;
    let _ = conn.close().await;
    let reverted = reverted?;
    if reverted.is_empty() {
        println!("nothing to roll back");
    }
    for s in &reverted {
        println!("reverted {}", line(s));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn current(config: &Config) -> anyhow::Result<ExitCode> {
    let mut conn = connect(config).await?;
    let current = migrate::current(&mut conn).await?;
    let _ = conn.close().await;
    match current {
        Some(s) if Some(s.version) == migrate::head() => println!("{} (head)", line(&s)),
        Some(s) => println!("{} (head is {:04})", line(&s), migrate::head().unwrap_or(0)),
        None => println!("no migration applied"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn history(config: &Config) -> anyhow::Result<ExitCode> {
    let mut conn = connect(config).await?;
    let history = migrate::history(&mut conn).await?;
    let _ = conn.close().await;
    println!(
        "{:<8}{:<40}{:<10}{:<22}took",
        "version", "description", "status", "applied at (UTC)"
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
            "{:<8}{:<40}{:<10}{:<22}{took}",
            format!("{:04}", s.version),
            s.description,
            status,
            at
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn check(config: &Config) -> anyhow::Result<ExitCode> {
    let report = botdb::catalog::check(config).await?;
    for s in &report.mismatched {
        if s.unknown_to_this_build {
            println!("unknown    migration {}: applied, but not in this build", line(s));
        } else {
            println!("edited     migration {}: changed after it was applied", line(s));
        }
    }
    for s in &report.pending {
        println!("pending    migration {}", line(s));
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
        println!(
            "ok: {} matches the migrations' schema (head {:04})",
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
