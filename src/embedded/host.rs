//! What a throwaway cluster needs of this machine: PostgreSQL's server binaries, a free
//! port, and, when botdb runs as root, the unprivileged OS user the server runs as.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

pub(super) const INSTALL_HINT: &str = "install PostgreSQL's server package (Debian/Ubuntu: `apt install postgresql`; \
     Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`), put its bin directory on \
     PATH or in BOTDB_PG_BINDIR, or point botdb at a running server with DATABASE_URL";

#[derive(Clone, Debug)]
pub(super) struct RunAs {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

pub(super) fn embedded_error(message: String) -> Error {
    Error::config("embedded PostgreSQL", message)
}

pub(super) fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| embedded_error(format!("path {} is not UTF-8", path.display())))
}

pub(super) fn free_port() -> Result<u16> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| embedded_error(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// [`installed_bindir`], through the symbolic links some systems put on PATH (Debian's
/// `/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb`): the real directory
/// also holds the other tools of that version (`pg_basebackup` for a standby).
pub(super) fn find_bindir() -> Result<PathBuf> {
    let dir = installed_bindir()?;
    Ok(std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
        .filter(|real| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| real.join(b).is_file())
        })
        .unwrap_or(dir))
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`: `BOTDB_PG_BINDIR`,
/// then `PATH`, then `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` (newest).
fn installed_bindir() -> Result<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("BOTDB_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(embedded_error(format!(
                "BOTDB_PG_BINDIR={} does not hold initdb, pg_ctl and postgres; {INSTALL_HINT}",
                dir.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if complete(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if complete(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().split('.').next()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        embedded_error(format!(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; {INSTALL_HINT}"
        ))
    })
}

/// `None` when this process may run the server itself; the unprivileged user to run it
/// as when this process is root.
pub(super) fn run_as_user() -> Result<Option<RunAs>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = std::env::var("BOTDB_PG_OS_USER").unwrap_or_else(|_| "postgres".to_string());
    match nix::unistd::User::from_name(&name) {
        Ok(Some(user)) if !user.uid.is_root() => Ok(Some(RunAs {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        _ => Err(embedded_error(format!(
            "botdb runs as root and PostgreSQL refuses to; no unprivileged OS user {name:?} to run it as \
             (create one, e.g. `useradd --system postgres`, or name one in BOTDB_PG_OS_USER, or run botdb as \
             an ordinary user)"
        ))),
    }
}
