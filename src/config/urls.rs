//! `DATABASE_URL`: parsing it into the driver's options, and showing it without its
//! password, whichever way the password was written.
//!
//! A password can sit in the URL's user info (`postgres://u:pw@h/db`, possibly
//! percent-encoded) or in its query (`?password=pw`, a form libpq and sqlx accept, and
//! `sslpassword`). Every form is redacted in what botdb shows ([`redact_url`]) and
//! scrubbed from any driver message that might echo it ([`scrub`]). Query parameters
//! sqlx does not know are not handed to it: sqlx logs an unknown parameter's value at
//! WARN, and such a parameter may be a secret (`sslpassword`).

use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

use crate::config::network;
use crate::error::{Error, Result};

/// What a malformed URL should look like instead.
pub(super) const URL_FORM: &str = "postgres://user:password@host:port/dbname";

/// The query parameters sqlx understands; any other is dropped (with a warning naming
/// only its key) before the URL reaches sqlx.
const KNOWN_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// `true` for query keys whose value is a secret.
fn is_secret_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

/// Accepts the reference's SQLAlchemy schemes (`postgresql+asyncpg://`, ...) as
/// `postgresql://`.
pub(super) fn normalize_scheme(url: &str) -> String {
    for prefix in [
        "postgresql+asyncpg://",
        "postgresql+psycopg://",
        "postgresql+psycopg2://",
    ] {
        if let Some(rest) = url.strip_prefix(prefix) {
            return format!("postgresql://{rest}");
        }
    }
    url.to_string()
}

/// Every form in which `url` carries a secret: the user-info password as written and
/// decoded, and the value of every `*password*` query parameter, as written and
/// decoded. Used to scrub messages.
pub(super) fn secrets_in(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut both = |raw: &str| {
        if raw.is_empty() {
            return;
        }
        out.push(raw.to_string());
        let decoded = percent_encoding_decode(raw);
        if decoded != raw {
            out.push(decoded);
        }
    };
    if let Some(pw) = parsed.password() {
        both(pw);
    }
    if let Some(query) = parsed.query() {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && is_secret_key(&percent_encoding_decode(key))
            {
                both(value);
                both(&value.replace('+', " "));
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn percent_encoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// `text` with every secret of `secrets` replaced by `***`.
pub(crate) fn scrub(text: &str, secrets: &[SecretString]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        let s = secret.expose_secret();
        if !s.is_empty() {
            out = out.replace(s, "***");
        }
    }
    out
}

/// Parses a URL into the driver's options. Errors name `DATABASE_URL` and never repeat
/// the URL or any password in it.
pub(super) fn parse_url(url: &str) -> Result<PgConnectOptions> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| Error::config("DATABASE_URL", format!("expected {URL_FORM}: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(Error::config(
            "DATABASE_URL",
            format!("expected {URL_FORM}: unsupported scheme {:?}", parsed.scheme()),
        ));
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if !pairs.is_empty() {
        let (mut known, unknown): (Vec<_>, Vec<_>) = pairs
            .into_iter()
            // libpq's socket settings are botdb's to apply (`url_params`), not sqlx's.
            .filter(|(k, _)| !network::URL_PARAMS.contains(&k.as_str()))
            .partition(|(k, _)| KNOWN_PARAMS.contains(&k.as_str()));
        let root_cert = known
            .iter()
            .find(|(k, _)| matches!(k.as_str(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .map(|(_, v)| v.clone());
        if let Some(cert) = &root_cert {
            readable_file("DATABASE_URL", "sslrootcert", std::path::Path::new(cert))?;
            // As libpq: `require` with a root certificate verifies the CA.
            for (k, v) in known.iter_mut() {
                if matches!(k.as_str(), "sslmode" | "ssl-mode") && v == "require" {
                    *v = "verify-ca".into();
                }
            }
        }
        for (key, _) in &unknown {
            // The key only: its value may be a secret.
            tracing::warn!(parameter = %key, "DATABASE_URL: ignoring a parameter botdb does not know");
        }
        if known.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(known);
        }
    }
    let secrets: Vec<SecretString> = secrets_in(url).into_iter().map(SecretString::from).collect();
    PgConnectOptions::from_str(parsed.as_str()).map_err(|e| {
        Error::config(
            "DATABASE_URL",
            format!("expected {URL_FORM}: {}", scrub(&e.to_string(), &secrets)),
        )
    })
}

/// The values of libpq's socket parameters (`keepalives*`, `tcp_user_timeout`) in
/// `url`'s query, in order.
pub(super) fn network_params(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .map(|parsed| {
            parsed
                .query_pairs()
                .into_owned()
                .filter(|(k, _)| network::URL_PARAMS.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

/// `url` safe to print: the user-info password and every `*password*` query value
/// replaced by `***`. An unparsable URL is not shown at all.
pub(super) fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(unparsable URL)".to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if pairs.iter().any(|(k, _)| is_secret_key(k)) {
        let shown: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| {
                if is_secret_key(&k) {
                    (k, "***".into())
                } else {
                    (k, v)
                }
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(shown);
    }
    // `***` in the query is shown percent-encoded by the serializer; show it plainly.
    parsed.to_string().replace("%2A%2A%2A", "***")
}

/// `path` names a file this process can read, else an error naming `key`.
pub(super) fn readable_file(key: &'static str, what: &str, path: &std::path::Path) -> Result<()> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| Error::config(key, format!("{what} {} cannot be read: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::ConnectOptions;

    const PW: &str = "top$ecret/99";

    /// Every way of writing `PW` into a URL that sqlx accepts.
    fn forms() -> Vec<String> {
        let enc = "top%24ecret%2F99";
        vec![
            format!("postgres://u:{enc}@h:5432/db"),
            format!("postgres://u@h:5432/db?password={enc}"),
            format!("postgres://u@h:5432/db?sslmode=disable&password={enc}"),
            format!("postgres://u@h/db?application_name=x&password={enc}&sslmode=prefer"),
            format!("postgresql://u:{enc}@h/db?password={enc}"),
            format!("postgres://u@h/db?sslpassword={enc}"),
            format!("postgres://u@h/db?PassWord={enc}"),
        ]
    }

    #[test]
    fn every_password_form_is_redacted_and_found() {
        for url in forms() {
            let shown = redact_url(&url);
            assert!(!shown.contains("ecret"), "{url} shown as {shown}");
            assert!(shown.contains("***"), "{shown}");
            let secrets = secrets_in(&url);
            assert!(secrets.iter().any(|s| s == PW), "{url}: {secrets:?}");
            let scrubbed = scrub(
                &format!("failed for {PW} and {}", "top%24ecret%2F99"),
                &secrets.into_iter().map(SecretString::from).collect::<Vec<_>>(),
            );
            assert!(!scrubbed.contains("ecret"), "{scrubbed}");
        }
    }

    #[test]
    fn the_password_in_the_query_reaches_the_driver() {
        let o = parse_url("postgres://u@h:5432/db?password=pw-in-query&sslmode=disable").unwrap();
        assert_eq!(
            o.to_url_lossy()
                .password()
                .map(percent_encoding_decode)
                .as_deref(),
            Some("pw-in-query")
        );
    }

    #[test]
    fn unknown_parameters_are_not_handed_to_the_driver() {
        let o = parse_url("postgres://u@h/db?sslpassword=abc&connect_timeout=3").unwrap();
        assert!(!o.to_url_lossy().as_str().contains("abc"));
    }
}
