//! `messages`: append, live history (newest first), soft delete, count.
//!
//! A history is one dialogue's: a user in a chat ([`Dialogue`]; a bare user id means the
//! user's private chat). Every history read is bounded twice, in rows (`limit`) and in
//! bytes of content (`max_bytes`, the newest message always included), inside the
//! query: a read of many users at once stays within `users x max_bytes`.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::config::Limits;
use crate::error::Result;
use crate::model::{
    Budget, Dialogue, Message, MessageCounts, NewMessage, RequestKey, check_history_limit, check_user_id,
};
use crate::repo::user_fk;

/// Appends one message. `content_length` is computed (characters) by the database.
///
/// # Errors
/// [`Error::NotFound`](crate::Error::NotFound) when the user does not exist; nothing is
/// written.
pub async fn append<'e>(ex: impl PgExecutor<'e>, msg: &NewMessage) -> Result<Message> {
    let (id, content_length, created_at, seq): (Uuid, i32, chrono::DateTime<chrono::Utc>, i64) =
        sqlx::query_as(
            "INSERT INTO messages (id, user_id, chat_id, role, content, content_length) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, content_length, created_at, seq",
        )
        .bind(msg.id)
        .bind(msg.user_id)
        .bind(msg.chat_id)
        .bind(msg.role.as_str())
        .bind(msg.content.as_str())
        .bind(i32::try_from(msg.content.char_len()).unwrap_or(i32::MAX))
        .fetch_one(ex)
        .await
        .map_err(user_fk(msg.user_id))?;
    Ok(Message {
        id,
        user_id: msg.user_id,
        chat_id: msg.chat_id,
        role: msg.role,
        content: msg.content.as_str().to_owned(),
        content_length,
        created_at,
        deleted_at: None,
        seq,
    })
}

/// The dialogue's live (not deleted) messages, newest first, at most `limit` (1 to
/// [`MAX_HISTORY_RANGE`](crate::model::MAX_HISTORY_RANGE)'s end) and at most the default
/// [`Limits::max_history_bytes`] of content. Messages written in one transaction come
/// back in the reverse of the order they were written.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id or limit.
pub async fn history<'e>(
    ex: impl PgExecutor<'e>,
    dialogue: impl Into<Dialogue>,
    limit: i64,
) -> Result<Vec<Message>> {
    history_within(ex, dialogue, limit, Limits::default().max_history_bytes).await
}

/// [`history`] with its byte bound: as many of the newest `limit` messages as fit in
/// `max_bytes` of content (the newest always comes back, whatever its size).
///
/// # Errors
/// As [`history`].
pub async fn history_within<'e>(
    ex: impl PgExecutor<'e>,
    dialogue: impl Into<Dialogue>,
    limit: i64,
    max_bytes: usize,
) -> Result<Vec<Message>> {
    let dialogue = dialogue.into().checked()?;
    let limit = check_history_limit("limit", limit)?;
    read_history(ex, dialogue, Some(limit), max_bytes).await
}

/// The dialogue's live messages, newest first, as many as the user's
/// `max_history_messages` setting says ([`DEFAULT_MAX_HISTORY`](crate::model::DEFAULT_MAX_HISTORY)
/// when they have no settings row) and at most `max_bytes` of content. One statement.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id.
pub async fn history_per_settings<'e>(
    ex: impl PgExecutor<'e>,
    dialogue: impl Into<Dialogue>,
    max_bytes: usize,
) -> Result<Vec<Message>> {
    let dialogue = dialogue.into().checked()?;
    read_history(ex, dialogue, None, max_bytes).await
}

/// The statement every single-dialogue history read runs ([`history`],
/// [`history_within`], [`history_per_settings`]): `$1` user id, `$2` chat id, `$3` limit
/// (NULL: the user's `max_history_messages`), `$4` the limit without a settings row,
/// `$5` the byte bound. Public so that benchmarks can `EXPLAIN` exactly what botdb runs.
pub const HISTORY_SQL: &str = "SELECT id, user_id, chat_id, role, content, content_length, created_at, deleted_at, seq FROM ( \
             SELECT m.*, \
                    sum(octet_length(m.content)) OVER w AS running_bytes, \
                    row_number() OVER w AS n \
               FROM messages m \
              WHERE m.user_id = $1 AND m.chat_id = $2 AND m.deleted_at IS NULL \
             WINDOW w AS (ORDER BY m.created_at DESC, m.seq DESC) \
              ORDER BY m.created_at DESC, m.seq DESC \
              LIMIT COALESCE($3, (SELECT s.max_history_messages FROM user_settings s WHERE s.user_id = $1), $4) \
         ) h \
         WHERE h.running_bytes <= $5 OR h.n = 1 \
         ORDER BY h.created_at DESC, h.seq DESC";

/// One dialogue's history: the first `limit` rows of the partial index
/// `ix_messages_dialogue_live`, cut where their running size passes `max_bytes`.
/// `octet_length` reads a TOASTed value's size without fetching it, so rows past the
/// byte bound are never detoasted.
async fn read_history<'e>(
    ex: impl PgExecutor<'e>,
    dialogue: Dialogue,
    limit: Option<i32>,
    max_bytes: usize,
) -> Result<Vec<Message>> {
    Ok(sqlx::query_as::<_, Message>(HISTORY_SQL)
        .bind(dialogue.user_id)
        .bind(dialogue.chat_id)
        .bind(limit.map(i64::from))
        .bind(i64::from(crate::model::DEFAULT_MAX_HISTORY))
        .bind(bytes_param(max_bytes))
        .fetch_all(ex)
        .await?)
}

fn bytes_param(max_bytes: usize) -> i64 {
    i64::try_from(max_bytes).unwrap_or(i64::MAX)
}

/// Soft-deletes the dialogue's whole live history (`deleted_at = now()`); rows are kept.
/// Returns how many messages were hidden.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id.
pub async fn clear_history<'e>(ex: impl PgExecutor<'e>, dialogue: impl Into<Dialogue>) -> Result<u64> {
    let dialogue = dialogue.into().checked()?;
    Ok(sqlx::query(
        "UPDATE messages SET deleted_at = now() \
          WHERE user_id = $1 AND chat_id = $2 AND deleted_at IS NULL",
    )
    .bind(dialogue.user_id)
    .bind(dialogue.chat_id)
    .execute(ex)
    .await?
    .rows_affected())
}

/// How many live and soft-deleted messages the user has, in all their chats.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id.
pub async fn count<'e>(ex: impl PgExecutor<'e>, user_id: i64) -> Result<MessageCounts> {
    check_user_id(user_id)?;
    let (live, deleted): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) \
           FROM messages WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(ex)
    .await?;
    Ok(MessageCounts { live, deleted })
}

/// A request key written with rows of [`append_many`]: the rows that carry it are
/// written only if this statement takes the key (a copy that committed it before, or
/// commits it first, wins; these rows are then left out).
#[derive(Clone, Copy, Debug)]
pub struct RowKey<'a> {
    /// The key.
    pub key: &'a RequestKey,
    /// What to record as the request's outcome.
    pub outcome: &'a serde_json::Value,
}

/// Appends many messages (of different users, or a user's messages in order) in ONE
/// statement: one round trip and one commit for all. Rows keep the order of `msgs`
/// (their `seq` follows it). `keys` is empty, or holds each row's request key (rows of
/// one request share theirs): a key is recorded in the same statement, and its rows
/// are written only if it was not taken before, and only for the user who took it:
/// when rows of two users carry the same fresh key, the first in `msgs` takes it and
/// the other's rows are left out (alone, that request then finds the key another
/// user's: [`Conflict`](crate::Error::Conflict)).
///
/// A message is not written, its slot in the result `None`, when its user does not
/// exist as of the statement's snapshot, when its key was already taken, or when
/// another transaction holds the user's row in a way that would make the insert wait
/// (`FOR UPDATE`, a key change, a delete): the statement first takes the `FOR KEY SHARE`
/// lock the foreign-key check needs on every user row it can get at once (`SKIP
/// LOCKED`), so one locked user never holds up the others.
///
/// # Errors
/// Database errors; on an error nothing is written.
pub async fn append_many<'e>(
    ex: impl PgExecutor<'e>,
    msgs: &[&NewMessage],
    keys: &[Option<RowKey<'_>>],
) -> Result<Vec<Option<Message>>> {
    let ids: Vec<Uuid> = msgs.iter().map(|m| m.id).collect();
    let users: Vec<i64> = msgs.iter().map(|m| m.user_id).collect();
    let chats: Vec<i64> = msgs.iter().map(|m| m.chat_id).collect();
    let roles: Vec<&str> = msgs.iter().map(|m| m.role.as_str()).collect();
    let contents: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
    let lengths: Vec<i32> = msgs
        .iter()
        .map(|m| i32::try_from(m.content.char_len()).unwrap_or(i32::MAX))
        .collect();
    let key_of = |i: usize| keys.get(i).copied().flatten();
    let scopes: Vec<Option<&str>> = (0..msgs.len())
        .map(|i| key_of(i).map(|k| k.key.scope()))
        .collect();
    let names: Vec<Option<&str>> = (0..msgs.len()).map(|i| key_of(i).map(|k| k.key.key())).collect();
    let outcomes: Vec<Option<String>> = (0..msgs.len())
        .map(|i| key_of(i).map(|k| k.outcome.to_string()))
        .collect();
    let rows: Vec<(Uuid, i32, chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "WITH r AS MATERIALIZED ( \
             SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::int4[], \
                                  $7::text[], $8::text[], $9::text[]) WITH ORDINALITY \
                    AS r(id, user_id, chat_id, role, content, content_length, kscope, kkey, outcome, ord)), \
         free AS MATERIALIZED ( \
             SELECT u.id FROM users u WHERE u.id = ANY($2::int8[]) FOR KEY SHARE SKIP LOCKED), \
         claimed AS ( \
             INSERT INTO request_keys (scope, key, user_id, outcome) \
             SELECT DISTINCT ON (kscope, kkey) kscope, kkey, user_id, outcome::jsonb FROM r \
              WHERE kkey IS NOT NULL AND user_id IN (SELECT id FROM free) \
              ORDER BY kscope, kkey, ord \
             ON CONFLICT (scope, key) DO NOTHING \
             RETURNING scope, key, user_id) \
         INSERT INTO messages (id, user_id, chat_id, role, content, content_length) \
         SELECT r.id, r.user_id, r.chat_id, r.role, r.content, r.content_length FROM r \
          WHERE r.user_id IN (SELECT id FROM free) \
            AND (r.kkey IS NULL OR EXISTS (SELECT 1 FROM claimed c \
                                            WHERE c.scope = r.kscope AND c.key = r.kkey \
                                              AND c.user_id = r.user_id)) \
          ORDER BY r.ord \
         RETURNING id, content_length, created_at, seq",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&chats)
    .bind(&roles)
    .bind(&contents)
    .bind(&lengths)
    .bind(&scopes)
    .bind(&names)
    .bind(&outcomes)
    .fetch_all(ex)
    .await?;
    let mut written: std::collections::HashMap<Uuid, (i32, chrono::DateTime<chrono::Utc>, i64)> = rows
        .into_iter()
        .map(|(id, len, at, seq)| (id, (len, at, seq)))
        .collect();
    Ok(msgs
        .iter()
        .map(|m| {
            written
                .remove(&m.id)
                .map(|(content_length, created_at, seq)| Message {
                    id: m.id,
                    user_id: m.user_id,
                    chat_id: m.chat_id,
                    role: m.role,
                    content: m.content.as_str().to_owned(),
                    content_length,
                    created_at,
                    deleted_at: None,
                    seq,
                })
        })
        .collect())
}

/// The messages with these ids (any state, soft-deleted included), in the order asked;
/// `None` for an id with no row.
///
/// # Errors
/// Database errors.
pub async fn by_ids<'e>(ex: impl PgExecutor<'e>, ids: &[Uuid]) -> Result<Vec<Option<Message>>> {
    let rows: Vec<Message> = sqlx::query_as(
        "SELECT id, user_id, chat_id, role, content, content_length, created_at, deleted_at, seq \
           FROM messages WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(ex)
    .await?;
    let mut by_id: std::collections::HashMap<Uuid, Message> = rows.into_iter().map(|m| (m.id, m)).collect();
    Ok(ids.iter().map(|id| by_id.remove(id)).collect())
}

#[derive(sqlx::FromRow)]
struct Ranked {
    ord: i64,
    #[sqlx(flatten)]
    message: Message,
}

/// The statement of [`history_many`] (what a batch of `GetHistory` requests runs): `$1`
/// user ids, `$2` chat ids, `$3` limits (NULL: the user's `max_history_messages`), `$4`
/// the limit without a settings row, `$5` the byte bound per dialogue. Public so that
/// benchmarks can `EXPLAIN` exactly what botdb runs.
pub const HISTORY_MANY_SQL: &str = "SELECT q.ord, m.id, m.user_id, m.chat_id, m.role, m.content, m.content_length, \
                m.created_at, m.deleted_at, m.seq \
           FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) WITH ORDINALITY AS q(user_id, chat_id, lim, ord) \
           CROSS JOIN LATERAL ( \
                SELECT h.* FROM ( \
                    SELECT x.*, \
                           sum(octet_length(x.content)) OVER w AS running_bytes, \
                           row_number() OVER w AS n \
                      FROM messages x \
                     WHERE x.user_id = q.user_id AND x.chat_id = q.chat_id AND x.deleted_at IS NULL \
                    WINDOW w AS (ORDER BY x.created_at DESC, x.seq DESC) \
                     ORDER BY x.created_at DESC, x.seq DESC \
                     LIMIT COALESCE(q.lim, \
                           (SELECT s.max_history_messages FROM user_settings s WHERE s.user_id = q.user_id), $4) \
                ) h \
                WHERE h.running_bytes <= $5 OR h.n = 1 \
           ) m \
          ORDER BY q.ord, m.created_at DESC, m.seq DESC";

/// The live history of several dialogues in ONE query: for each `(dialogue, limit)`,
/// its messages newest first, at most `limit` (`None`: the user's
/// `max_history_messages`) and at most `max_bytes` of content per dialogue. Ids and
/// limits must already be checked.
///
/// # Errors
/// Database errors.
pub async fn history_many<'e>(
    ex: impl PgExecutor<'e>,
    requests: &[(Dialogue, Option<i32>)],
    max_bytes: usize,
) -> Result<Vec<Vec<Message>>> {
    let users: Vec<i64> = requests.iter().map(|r| r.0.user_id).collect();
    let chats: Vec<i64> = requests.iter().map(|r| r.0.chat_id).collect();
    let limits: Vec<Option<i64>> = requests.iter().map(|r| r.1.map(i64::from)).collect();
    let rows: Vec<Ranked> = sqlx::query_as(HISTORY_MANY_SQL)
        .bind(&users)
        .bind(&chats)
        .bind(&limits)
        .bind(i64::from(crate::model::DEFAULT_MAX_HISTORY))
        .bind(bytes_param(max_bytes))
        .fetch_all(ex)
        .await?;
    let mut out: Vec<Vec<Message>> = requests.iter().map(|_| Vec::new()).collect();
    for row in rows {
        if let Some(slot) = usize::try_from(row.ord - 1).ok().and_then(|i| out.get_mut(i)) {
            slot.push(row.message);
        }
    }
    Ok(out)
}

/// A dialogue's context for the model: its live messages, newest first, as many as fit
/// in the budget's characters (their `content_length` summed from the newest) and at
/// most its `max_messages` (`None`: the user's `max_history_messages`), and at most
/// the default [`Limits::max_history_bytes`] of content. The newest messages that fit,
/// without a gap: a message that does not fit ends the context, even if an older,
/// shorter one would (so a single newest message longer than the budget gives an empty
/// context). One statement that reads the rows it returns and at most one more
/// (`EXPLAIN` shows it), whatever the length of the history.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id.
pub async fn context<'e>(
    ex: impl PgExecutor<'e>,
    dialogue: impl Into<Dialogue>,
    budget: Budget,
) -> Result<Vec<Message>> {
    let dialogue = dialogue.into().checked()?;
    let mut found = context_many(ex, &[(dialogue, budget)], Limits::default().max_history_bytes).await?;
    Ok(found.pop().unwrap_or_default())
}

/// The SQL of [`context_many`] (tests `EXPLAIN` it): `$1` users, `$2` chats, `$3` message
/// limits (NULL: the user's setting), `$4` the default limit, `$5` character budgets,
/// `$6` the byte bound.
///
/// A recursive walk down `ix_messages_dialogue_live`, one index probe per message: the
/// seed takes each dialogue's newest live message, each step the next older one of the
/// dialogues still within their bounds. A window function (as in [`history_many`])
/// would read all `max_messages` rows before cutting at the budget; this stops at the
/// first message that does not fit.
pub const CONTEXT_SQL: &str = "\
WITH RECURSIVE q AS MATERIALIZED ( \
    SELECT w.user_id, w.chat_id, w.max_chars, w.ord, \
           COALESCE(w.max_messages, \
                    (SELECT s.max_history_messages FROM user_settings s WHERE s.user_id = w.user_id), \
                    $4)::int8 AS max_messages \
      FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $5::int8[]) WITH ORDINALITY \
           AS w(user_id, chat_id, max_messages, max_chars, ord)), \
h AS ( \
    SELECT q.ord, q.max_messages, q.max_chars, 1::int8 AS n, \
           m.content_length::int8 AS chars, octet_length(m.content)::int8 AS bytes, \
           m.id, m.user_id, m.chat_id, m.role, m.content, m.content_length, m.created_at, m.deleted_at, m.seq \
      FROM q CROSS JOIN LATERAL ( \
           SELECT x.id, x.user_id, x.chat_id, x.role, x.content, x.content_length, x.created_at, x.deleted_at, x.seq \
             FROM messages x \
            WHERE x.user_id = q.user_id AND x.chat_id = q.chat_id AND x.deleted_at IS NULL \
            ORDER BY x.created_at DESC, x.seq DESC \
            LIMIT 1) m \
    UNION ALL \
    SELECT h.ord, h.max_messages, h.max_chars, h.n + 1, \
           h.chars + m.content_length, h.bytes + octet_length(m.content), \
           m.id, m.user_id, m.chat_id, m.role, m.content, m.content_length, m.created_at, m.deleted_at, m.seq \
      FROM h CROSS JOIN LATERAL ( \
           SELECT x.id, x.user_id, x.chat_id, x.role, x.content, x.content_length, x.created_at, x.deleted_at, x.seq \
             FROM messages x \
            WHERE x.user_id = h.user_id AND x.chat_id = h.chat_id AND x.deleted_at IS NULL \
              AND (x.created_at, x.seq) < (h.created_at, h.seq) \
            ORDER BY x.created_at DESC, x.seq DESC \
            LIMIT 1) m \
     WHERE h.n < h.max_messages AND h.chars <= h.max_chars AND h.bytes <= $6) \
SELECT h.ord, h.id, h.user_id, h.chat_id, h.role, h.content, h.content_length, h.created_at, h.deleted_at, h.seq \
  FROM h \
 WHERE h.chars <= h.max_chars AND h.bytes <= $6 \
 ORDER BY h.ord, h.n";

/// The contexts of several dialogues in ONE query ([`context`] for each, batched like
/// [`history_many`]), each within its budget and within `max_bytes` of content. Ids
/// must already be checked.
///
/// # Errors
/// Database errors.
pub async fn context_many<'e>(
    ex: impl PgExecutor<'e>,
    wanted: &[(Dialogue, Budget)],
    max_bytes: usize,
) -> Result<Vec<Vec<Message>>> {
    let users: Vec<i64> = wanted.iter().map(|w| w.0.user_id).collect();
    let chats: Vec<i64> = wanted.iter().map(|w| w.0.chat_id).collect();
    let limits: Vec<Option<i64>> = wanted.iter().map(|w| w.1.max_messages.map(i64::from)).collect();
    let chars: Vec<i64> = wanted.iter().map(|w| w.1.max_chars).collect();
    let rows: Vec<Ranked> = sqlx::query_as(CONTEXT_SQL)
        .bind(&users)
        .bind(&chats)
        .bind(&limits)
        .bind(i64::from(crate::model::DEFAULT_MAX_HISTORY))
        .bind(&chars)
        .bind(bytes_param(max_bytes))
        .fetch_all(ex)
        .await?;
    let mut out: Vec<Vec<Message>> = wanted.iter().map(|_| Vec::new()).collect();
    for row in rows {
        if let Some(slot) = usize::try_from(row.ord - 1).ok().and_then(|i| out.get_mut(i)) {
            slot.push(row.message);
        }
    }
    Ok(out)
}

/// Physically removes at most `batch` messages soft-deleted before `before`, oldest
/// deletion first, in one short statement; returns how many. Only soft-deleted rows
/// are ever removed (the statement's own condition, not the caller's). Rows another
/// transaction holds are skipped (`SKIP LOCKED`), so the purge never waits; and a
/// live message is never locked by it, so a turn never waits for the purge. Call it in
/// a loop, each call its own transaction, until it returns less than `batch`.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a batch outside 1 to
/// 100,000; database errors.
pub async fn purge_deleted<'e>(
    ex: impl PgExecutor<'e>,
    before: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64> {
    if !(1..=100_000).contains(&batch) {
        return Err(crate::error::Error::invalid(
            "batch",
            format!("expected 1 to 100000, got {batch}"),
        ));
    }
    Ok(sqlx::query(
        "DELETE FROM messages WHERE ctid = ANY (ARRAY( \
             SELECT ctid FROM messages \
              WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
              ORDER BY deleted_at LIMIT $2 \
              FOR UPDATE SKIP LOCKED)) \
           AND deleted_at IS NOT NULL AND deleted_at < $1",
    )
    .bind(before)
    .bind(batch)
    .execute(ex)
    .await?
    .rows_affected())
}

/// How many messages were soft-deleted before `before` (what a purge to `before` has
/// left to remove), counted on the purge's partial index.
///
/// # Errors
/// Database errors.
pub async fn count_deleted_before<'e>(
    ex: impl PgExecutor<'e>,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<u64> {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE deleted_at IS NOT NULL AND deleted_at < $1")
            .bind(before)
            .fetch_one(ex)
            .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
