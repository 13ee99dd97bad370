//! Several hosts, libpq's way: `postgres://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write`,
//! or `DB_HOST=h1,h2` with `DB_PORT=5432,5433` (or one port for all).
//!
//! The url crate cannot parse a host list as an authority, so the list is split out of
//! the URL here and the rest is parsed as before, with the first host in the list's
//! place: the user info (and so the password, its redaction and scrubbing) is handled
//! by `urls` exactly as for one host. What botdb shows of a several-host URL is the
//! redacted single-host form with the whole list put back.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The query parameter naming the attribute a server must have.
const PARAM: &str = "target_session_attrs";

/// What a server must be for botdb to keep a connection to it (libpq's
/// `target_session_attrs`). The hosts are tried in order for each new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server that accepts the connection (the default).
    #[default]
    Any,
    /// A server that accepts writes: not in recovery, and
    /// `default_transaction_read_only` off.
    ReadWrite,
    /// A server that does not accept writes by default: a standby, or one with
    /// `default_transaction_read_only` on.
    ReadOnly,
    /// A server not in recovery (a primary).
    Primary,
    /// A server in recovery (a standby).
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// libpq's name of the attribute (`read-write`, `prefer-standby`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Every attribute, in libpq's order.
    pub const ALL: [TargetSessionAttrs; 6] = [
        TargetSessionAttrs::Any,
        TargetSessionAttrs::ReadWrite,
        TargetSessionAttrs::ReadOnly,
        TargetSessionAttrs::Primary,
        TargetSessionAttrs::Standby,
        TargetSessionAttrs::PreferStandby,
    ];

    /// Parses `value` as the setting `key`; the error names `key` and the accepted
    /// values.
    pub(super) fn parse_for(key: &'static str, value: &str) -> Result<Self> {
        value.parse().map_err(|()| {
            Error::config(
                key,
                format!(
                    "expected target_session_attrs any, read-write, read-only, primary, standby \
                     or prefer-standby, got {value:?}"
                ),
            )
        })
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let s = s.trim();
        TargetSessionAttrs::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URL taken apart at its host list.
#[derive(Debug)]
pub(super) struct SplitUrl {
    /// The URL with the first host in the list's place and without
    /// `target_session_attrs`: what the driver is given.
    pub(super) first: String,
    /// Every host with its port, when the URL named more than one; empty for one
    /// (the driver's options say which).
    pub(super) hosts: Vec<(String, u16)>,
    /// `target_session_attrs`, if the URL has it.
    pub(super) attrs: Option<TargetSessionAttrs>,
}

/// The pieces of a URL around its host list: `scheme://` + `userinfo@`, the host list,
/// and the rest (`/db?query#fragment`). `None` when the URL has no `://`.
fn pieces(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hosts_at = authority.rfind('@').map_or(0, |at| at + 1);
    Some((&url[..start + hosts_at], &authority[hosts_at..], &rest[end..]))
}

/// The host list of a URL's authority, each host with its port (5432 when none is
/// written). Errors name `DATABASE_URL` and never repeat what was written (a
/// malformed URL may have put part of a password there).
fn parse_host_list(list: &str) -> Result<Vec<(String, u16)>> {
    let bad = |n: usize, what: &str| {
        Error::config(
            "DATABASE_URL",
            format!(
                "expected postgres://user:password@host1:port1,host2:port2/dbname: host {n} of the list {what}"
            ),
        )
    };
    list.split(',')
        .enumerate()
        .map(|(i, entry)| {
            let n = i + 1;
            let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
                let (addr, after) = v6.split_once(']').ok_or_else(|| bad(n, "has an unclosed '['"))?;
                (format!("[{addr}]"), after.strip_prefix(':'))
            } else {
                match entry.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (entry.to_string(), None),
                }
            };
            if host.is_empty() || host == "[]" {
                return Err(bad(n, "is empty"));
            }
            let port = match port {
                None => 5432,
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad(n, "has a port that is not a number from 1 to 65535"))?,
            };
            Ok((host, port))
        })
        .collect()
}

/// Removes `target_session_attrs` from the query of `rest` (`/db?query#fragment`),
/// returning the rest without it and its value.
fn take_attrs(rest: &str) -> Result<(String, Option<TargetSessionAttrs>)> {
    let (before_fragment, fragment) = match rest.find('#') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((path, query)) = before_fragment.split_once('?') else {
        return Ok((rest.to_string(), None));
    };
    let mut attrs = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(key) == PARAM {
            attrs = Some(TargetSessionAttrs::parse_for("DATABASE_URL", &decode(value))?);
        } else {
            kept.push(pair);
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    Ok((format!("{path}{query}{fragment}"), attrs))
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// Takes `url` apart at its host list (see [`SplitUrl`]).
///
/// # Errors
/// [`Error::Config`] naming `DATABASE_URL` for an empty host, a bad port in the list,
/// or an unknown `target_session_attrs`.
pub(super) fn split_url(url: &str) -> Result<SplitUrl> {
    let Some((head, list, rest)) = pieces(url) else {
        return Ok(SplitUrl {
            first: url.to_string(),
            hosts: Vec::new(),
            attrs: None,
        });
    };
    let (rest, attrs) = take_attrs(rest)?;
    if !list.contains(',') {
        return Ok(SplitUrl {
            first: format!("{head}{list}{rest}"),
            hosts: Vec::new(),
            attrs,
        });
    }
    let hosts = parse_host_list(list)?;
    let (host, port) = &hosts[0];
    Ok(SplitUrl {
        first: format!("{head}{host}:{port}{rest}"),
        hosts,
        attrs,
    })
}

/// A stand-in for the host list while the rest of the URL goes through the url crate.
const PLACEHOLDER: &str = "botdb-host-list.invalid";

/// `f` applied to `url` with its host list replaced by one placeholder host, then the
/// list put back: how a several-host URL is redacted or given another database.
/// A URL with one host is handed to `f` as it is.
pub(super) fn map_single(url: &str, f: impl FnOnce(&str) -> String) -> String {
    match pieces(url) {
        Some((head, list, rest)) if list.contains(',') => {
            f(&format!("{head}{PLACEHOLDER}{rest}")).replacen(PLACEHOLDER, list, 1)
        }
        _ => f(url),
    }
}

/// Splits `DB_HOST` (`h1,h2`) and pairs each host with its port from `ports`
/// (`DB_PORT`: one for all, or one per host).
///
/// # Errors
/// [`Error::Config`] naming `DB_HOST` for an empty host, `DB_PORT` when the number of
/// ports is neither one nor the number of hosts.
pub(super) fn parse_parts(host: &str, ports: &[u16]) -> Result<Vec<(String, u16)>> {
    let hosts: Vec<&str> = host.split(',').map(str::trim).collect();
    if let Some(n) = hosts.iter().position(|h| h.is_empty()) {
        return Err(Error::config(
            "DB_HOST",
            format!(
                "expected host names separated by commas: host {} of the list is empty",
                n + 1
            ),
        ));
    }
    let port_of = |i: usize| match ports {
        [one] => Ok(*one),
        many if many.len() == hosts.len() => Ok(many[i]),
        many => Err(Error::config(
            "DB_PORT",
            format!(
                "expected one port for every host or one port for all: {} hosts in DB_HOST, {} ports",
                hosts.len(),
                many.len()
            ),
        )),
    };
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| port_of(i).map(|p| (h.to_string(), p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::urls;
    use super::*;
    use crate::config::Config;

    const PW: &str = "top$ecret/99";
    const ENC: &str = "top%24ecret%2F99";

    #[test]
    fn a_host_list_is_split_and_the_first_host_is_the_drivers() {
        let s = split_url(&format!(
            "postgres://u:{ENC}@h1:5432,h2:5433,[::1]:6000,h4/db?sslmode=disable&target_session_attrs=read-write"
        ))
        .unwrap();
        assert_eq!(
            s.hosts,
            vec![
                ("h1".to_string(), 5432),
                ("h2".to_string(), 5433),
                ("[::1]".to_string(), 6000),
                ("h4".to_string(), 5432)
            ]
        );
        assert_eq!(s.attrs, Some(TargetSessionAttrs::ReadWrite));
        assert_eq!(s.first, format!("postgres://u:{ENC}@h1:5432/db?sslmode=disable"));
        let one = split_url("postgres://u@h:1/db?target_session_attrs=prefer-standby").unwrap();
        assert!(one.hosts.is_empty());
        assert_eq!(one.attrs, Some(TargetSessionAttrs::PreferStandby));
        assert_eq!(one.first, "postgres://u@h:1/db");
        let plain = split_url("postgres://u@h/db").unwrap();
        assert_eq!((plain.first.as_str(), plain.attrs), ("postgres://u@h/db", None));
    }

    #[test]
    fn every_attribute_parses_and_bad_ones_name_the_setting() {
        for a in TargetSessionAttrs::ALL {
            assert_eq!(a.as_str().parse::<TargetSessionAttrs>(), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        assert_eq!(TargetSessionAttrs::default(), TargetSessionAttrs::Any);
        let err = split_url("postgres://u@h1,h2/db?target_session_attrs=writable").unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, message } if key == "DATABASE_URL" && message.contains("writable")),
            "{err:?}"
        );
    }

    #[test]
    fn bad_host_lists_name_the_setting_and_never_the_password() {
        for url in [
            format!("postgres://u:{PW}@h1,/db"),
            format!("postgres://u:{PW}@h1:5432,h2:notaport/db"),
            format!("postgres://u:{PW}@h1:5432,h2:0/db"),
            format!("postgres://u:{PW}@,h2/db"),
            format!("postgres://u:{PW}@h1,[::1/db"),
            // A password with an unencoded '/' and ',' puts part of it in the "list".
            "postgres://u:a,se/cret@h/db".to_string(),
        ] {
            let err = Config::builder().url(&url).build().unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(
                matches!(&err, Error::Config { key, .. } if key == "DATABASE_URL"),
                "{url}: {err:?}"
            );
            assert!(!text.contains("ecret") && !text.contains("se/cret"), "{text}");
        }
        let err = parse_parts("h1,,h3", &[5432]).unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "DB_HOST"),
            "{err:?}"
        );
        let err = parse_parts("h1,h2,h3", &[1, 2]).unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "DB_PORT"),
            "{err:?}"
        );
        assert_eq!(
            parse_parts("h1, h2", &[7]).unwrap(),
            vec![("h1".to_string(), 7), ("h2".to_string(), 7)]
        );
        assert_eq!(
            parse_parts("h1,h2", &[7, 8]).unwrap(),
            vec![("h1".to_string(), 7), ("h2".to_string(), 8)]
        );
    }

    #[test]
    fn every_password_form_is_redacted_with_all_hosts_shown() {
        for url in [
            format!("postgres://u:{ENC}@h1:5432,h2:5433/db"),
            format!("postgres://u@h1:5432,h2:5433/db?password={ENC}&target_session_attrs=read-write"),
            format!("postgres://u:{ENC}@h1:5432,h2:5433/db?sslpassword={ENC}"),
        ] {
            let c = Config::builder().url(&url).build().unwrap();
            for text in [c.redacted_url(), format!("{c:?}"), format!("{c}")] {
                assert!(!text.contains("ecret"), "{text}");
                assert!(text.contains("h1:5432,h2:5433"), "{text}");
                assert!(text.contains("***"), "{text}");
            }
            assert_eq!(c.hosts().len(), 2);
            let secrets = urls::secrets_in(&split_url(&url).unwrap().first);
            assert!(secrets.iter().any(|s| s == PW), "{url}: {secrets:?}");
            let other = c.with_database("other");
            assert_eq!(other.database_name(), "other");
            assert!(
                other.redacted_url().contains("h1:5432,h2:5433/other"),
                "{}",
                other.redacted_url()
            );
            assert!(!other.redacted_url().contains("ecret"));
        }
        let c = Config::builder()
            .url(format!(
                "postgres://u:{ENC}@h1:5432,h2:5433/db?target_session_attrs=read-write"
            ))
            .build()
            .unwrap();
        assert_eq!(
            c.redacted_url(),
            "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write"
        );
        assert_eq!(c.target_session_attrs(), TargetSessionAttrs::ReadWrite);
    }

    #[test]
    fn db_host_and_db_port_take_lists() {
        let from = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> =
                vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Config::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        let c = from(&[
            ("DB_HOST", "h1,h2"),
            ("DB_PORT", "5432,5433"),
            ("DB_PASSWORD", PW),
            ("DB_TARGET_SESSION_ATTRS", "read-write"),
        ])
        .unwrap();
        assert_eq!(c.hosts(), &[("h1".to_string(), 5432), ("h2".to_string(), 5433)]);
        assert_eq!(c.target_session_attrs(), TargetSessionAttrs::ReadWrite);
        assert!(c.chooses_hosts());
        assert_eq!(
            c.redacted_url(),
            "postgres://postgres:***@h1:5432,h2:5433/ai_tg_bot?target_session_attrs=read-write"
        );
        let first = c.connect_options().unwrap();
        assert_eq!((first.get_host(), first.get_port()), ("h1", 5432));
        let c = from(&[("DB_HOST", "h1,h2,h3"), ("DB_PORT", "6000")]).unwrap();
        assert!(c.hosts().iter().all(|(_, p)| *p == 6000) && c.hosts().len() == 3);
        let c = from(&[("DB_HOST", "h1,h2")]).unwrap();
        assert!(c.hosts().iter().all(|(_, p)| *p == 5432));
        // One host, `any`: nothing to choose, everything as before.
        assert!(!from(&[("DB_HOST", "h1")]).unwrap().chooses_hosts());
        for (key, value) in [
            ("DB_PORT", "5432,x"),
            ("DB_PORT", "5432,5433,5434"),
            ("DB_HOST", "h1,"),
            ("DB_TARGET_SESSION_ATTRS", "sometimes"),
        ] {
            let err = from(&[(key, value), ("DB_HOST", "h1,h2")]).unwrap_err();
            assert!(
                matches!(&err, Error::Config { key: k, .. } if k == key),
                "{key}={value}: {err:?}"
            );
        }
        // The URL's attribute wins over DB_TARGET_SESSION_ATTRS.
        let c = from(&[
            (
                "DATABASE_URL",
                "postgres://u@h1,h2/db?target_session_attrs=standby",
            ),
            ("DB_TARGET_SESSION_ATTRS", "read-write"),
        ])
        .unwrap();
        assert_eq!(c.target_session_attrs(), TargetSessionAttrs::Standby);
    }

    #[test]
    fn host_options_share_credentials_and_differ_by_host() {
        let c = Config::builder()
            .url(format!("postgres://u:{ENC}@h1:5432,h2:5433/db?sslmode=disable"))
            .build()
            .unwrap();
        let first = c.connect_options().unwrap();
        assert_eq!((first.get_host(), first.get_port()), ("h1", 5432));
        let all = c.host_options().unwrap();
        let addrs: Vec<(&str, u16)> = all.iter().map(|o| (o.get_host(), o.get_port())).collect();
        assert_eq!(addrs, vec![("h1", 5432), ("h2", 5433)]);
        assert!(
            all.iter()
                .all(|o| o.get_username() == "u" && o.get_database() == Some("db"))
        );
        // One host: one set of options, the attribute `any`.
        let one = Config::builder().url("postgres://u@h:7/db").build().unwrap();
        assert_eq!(one.hosts(), &[("h".to_string(), 7)]);
        assert_eq!(one.target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(one.host_options().unwrap().len(), 1);
    }
}
