//! The scopes a unit of work runs in ([`Database::session`], `autocommit`, `read`,
//! `read_replica`): a connection leased for it, the transaction around it, and what a
//! failure says about the outcome (nothing sent, unknown after a lost COMMIT) and about
//! the connection (never reused once broken; with several hosts, a new search).

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use sqlx::{Connection, PgConnection};

use crate::db::Database;
use crate::db::deadline::Wait;
use crate::db::lease::Lease;
use crate::db::replicas::Replicas;
use crate::error::{Error, Result};

impl Database {
    /// A write whose outcome is unknown may have committed: its users' reads of its
    /// tables go to the primary until their next recorded write.
    fn note_unknown(&self, err: &Error) {
        if let (Some(replicas), Some(acting), true) =
            (&self.replicas, &self.acting_for, err.is_outcome_unknown())
        {
            replicas.record(&acting.users, &acting.tables, None);
        }
    }

    /// With several hosts: forgets the recorded positions when the primary moved.
    fn follow_primary(&self, replicas: &Replicas) {
        if let Some(link) = &self.hosts {
            replicas.follow_primary(link.hosts().moves());
        }
    }

    /// Records the primary's WAL position for the users this handle works for, after a
    /// commit on `conn`; `false` when the connection failed to answer (the commit
    /// stands: their reads go to the primary until their next write).
    async fn note_write(&self, conn: &mut PgConnection) -> bool {
        let (Some(replicas), Some(acting)) = (&self.replicas, &self.acting_for) else {
            return true;
        };
        self.follow_primary(replicas);
        let position = sqlx::query_scalar::<_, i64>(crate::db::replicas::POSITION_SQL).fetch_one(conn);
        match self
            .deadlines
            .within(Wait::RoundTrip, "the WAL position", position)
            .await
            .and_then(|r| r.map_err(Error::from))
        {
            Ok(lsn) => {
                replicas.record(&acting.users, &acting.tables, u64::try_from(lsn).ok());
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "the WAL position after a commit could not be read");
                replicas.record(&acting.users, &acting.tables, None);
                false
            }
        }
    }

    /// A unit of work on `conn` failed with `err`: when the server refused a write as
    /// read-only, the connection is closed instead of reused, parked connections go
    /// back to the pool and every connection open now is checked before its next use.
    /// With several hosts, a lost connection also starts a search for the host that
    /// satisfies `target_session_attrs` (the server may have failed over).
    fn after_failure(&self, conn: &mut Lease, err: &Error) {
        if err.is_read_only() {
            conn.discard();
            self.parking.flush();
            if let Some(link) = &self.hosts {
                link.hosts().suspect();
            }
        }
        self.kick_if_lost(err);
    }

    /// With several hosts, a lost connection starts a search for the host that
    /// satisfies `target_session_attrs`.
    fn kick_if_lost(&self, err: &Error) {
        if matches!(err, Error::Unavailable { .. } | Error::OutcomeUnknown { .. })
            && let Some(link) = &self.hosts
        {
            link.hosts().kick();
        }
    }

    /// The server did not answer `conn` within botdb's deadline (`missed`): the
    /// connection is closed without a word, the parked ones (which share its path)
    /// too, and with several hosts a search for the host begins.
    fn after_missed(&self, conn: &mut Lease, missed: &Error) {
        conn.abandon();
        self.parking.retire();
        self.kick_if_lost(missed);
    }

    /// A connection for one unit of work; with several hosts, a failure to get one
    /// starts a search for the host.
    async fn lease(&self) -> Result<Lease> {
        let leased = self.parking.lease().await;
        if let (Err(Error::Unavailable { .. }), Some(link)) = (&leased, &self.hosts) {
            link.hosts().kick();
        }
        leased
    }

    /// Runs `body` in one transaction: the unit of work.
    ///
    /// `body` gets the transaction's connection and may run any mix of reads and writes
    /// (the repository functions in [`crate::repo`] take it). When `body` returns `Ok`
    /// the transaction is committed and, only once the commit succeeded, the value is
    /// returned: an `Ok` from `session` means committed. When `body` returns `Err` or
    /// panics, the transaction is rolled back before the error is returned or the panic
    /// resumed. When the returned future is dropped before it finishes, the transaction
    /// is rolled back as the connection goes back to the pool.
    ///
    /// ```no_run
    /// # async fn f(db: botdb::Database) -> botdb::Result<()> {
    /// use botdb::{model::Role, repo};
    /// let msg = db.limits().message(42, Role::User, "hello")?;
    /// db.session(async |tx| {
    ///     repo::users::upsert(&mut *tx, 42).await?;
    ///     repo::messages::append(&mut *tx, &msg).await
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `body`'s error (a connection lost while `body` ran is [`Error::Unavailable`]:
    /// COMMIT was never sent, nothing is committed); [`Error::Unavailable`] when no
    /// connection can be had; [`Error::OutcomeUnknown`] when the connection broke while
    /// COMMIT was under way (it may have been committed); [`Error::ShuttingDown`] after
    /// [`close`](Self::close).
    ///
    /// With `DB_STATEMENT_TIMEOUT` set, `body` as a whole, and then COMMIT, each get at
    /// most `DB_STATEMENT_TIMEOUT` + `DB_NETWORK_TIMEOUT` (botdb's own bodies take
    /// milliseconds): past it the connection is closed and the call is
    /// [`Error::Unavailable`] (nothing committed) or, for COMMIT,
    /// [`Error::OutcomeUnknown`]. Work that legitimately takes longer belongs on a
    /// connection of its own ([`pool`](Self::pool)).
    pub async fn session<T, F>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        let mut conn = self.lease().await?;
        let deadlines = self.deadlines.clone();
        // Everything that holds the connection as a transaction happens in this block;
        // what its end means for the connection is applied after it.
        let end = {
            let begun = deadlines.within(Wait::RoundTrip, "BEGIN", conn.begin()).await;
            match begun {
                // Nothing was committed: the transaction never began.
                Err(missed) => End::Missed(missed),
                Ok(Err(e)) => End::NotBegun(Error::from(e)),
                Ok(Ok(mut tx)) => {
                    let ran = deadlines
                        .within(
                            Wait::Work,
                            "the unit of work",
                            AssertUnwindSafe(body(&mut tx)).catch_unwind().map(Ok::<_, Error>),
                        )
                        .await;
                    match ran {
                        // COMMIT was never sent: nothing of the unit is committed, and the
                        // server rolls it back when it notices the connection is gone.
                        Err(missed) => End::Missed(missed),
                        // `Ok::<_, Error>` above: never an inner error.
                        Ok(Err(never)) => End::NotBegun(never),
                        Ok(Ok(Ok(Ok(value)))) => {
                            match deadlines.within(Wait::Work, "COMMIT", tx.commit()).await {
                                Ok(Ok(())) => End::Committed(value),
                                Ok(Err(e)) => End::CommitFailed(Error::from(e).after_send()),
                                // COMMIT was sent and no answer came: it may have committed.
                                Err(missed) => End::CommitMissed(missed),
                            }
                        }
                        Ok(Ok(Ok(Err(err)))) => {
                            match deadlines.within(Wait::RoundTrip, "ROLLBACK", tx.rollback()).await {
                                Ok(Ok(())) => End::RolledBack(err),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "rollback after an error failed; the connection is discarded");
                                    End::RollbackFailed(err, None)
                                }
                                Err(missed) => End::RollbackFailed(err, Some(missed)),
                            }
                        }
                        Ok(Ok(Err(panic))) => {
                            let missed = match deadlines
                                .within(Wait::RoundTrip, "ROLLBACK", tx.rollback())
                                .await
                            {
                                Ok(Ok(())) => None,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "rollback after a panic failed; the connection is discarded");
                                    None
                                }
                                Err(missed) => Some(missed),
                            };
                            End::Panicked(panic, missed)
                        }
                    }
                }
            }
        };
        match end {
            End::Committed(value) => {
                if self.note_write(&mut conn).await {
                    // Committed: the connection is as good as new.
                    conn.clean();
                }
                // Otherwise committed, but the connection failed after: not put back as good.
                Ok(value)
            }
            End::NotBegun(err) => {
                // BEGIN is never refused as read-only: only a lost connection matters.
                self.kick_if_lost(&err);
                Err(err)
            }
            End::Missed(missed) => {
                self.after_missed(&mut conn, &missed);
                Err(missed)
            }
            End::CommitFailed(err) => {
                self.after_failure(&mut conn, &err);
                self.note_unknown(&err);
                Err(err)
            }
            End::CommitMissed(missed) => {
                self.after_missed(&mut conn, &missed);
                let err = missed.after_send();
                self.note_unknown(&err);
                Err(err)
            }
            End::RolledBack(err) => {
                self.after_failure(&mut conn, &err);
                // Rolled back: the connection is as good as new, unless its server
                // refused the write as read-only (then it is closed, `after_failure`).
                if !err.is_read_only() {
                    conn.clean();
                }
                Err(err)
            }
            End::RollbackFailed(err, missed) => {
                self.after_failure(&mut conn, &err);
                if let Some(missed) = missed {
                    self.after_missed(&mut conn, &missed);
                }
                // Not put back as good: it goes through sqlx's (bounded) release check.
                Err(err)
            }
            End::Panicked(panic, missed) => {
                if let Some(missed) = missed {
                    self.after_missed(&mut conn, &missed);
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Runs `body` on one pooled connection without an explicit transaction: each
    /// statement `body` runs is its own (implicit) transaction, committed when it returns.
    ///
    /// For a body of ONE statement this is exactly one transaction, like
    /// [`session`](Self::session), at a third of the round trips (no BEGIN, no COMMIT);
    /// the actors use it for their single-statement requests. For two or more writes
    /// that must succeed or fail together, use [`session`](Self::session). For reads,
    /// use [`read`](Self::read).
    ///
    /// # Errors
    /// `body`'s error; [`Error::OutcomeUnknown`] when the connection broke while the
    /// statement ran (it commits on its own, so it may have); [`Error::Unavailable`]
    /// when no connection can be had (nothing was sent); [`Error::ShuttingDown`] after
    /// [`close`](Self::close).
    pub async fn autocommit<T, F>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        self.on_connection(body, Error::after_send, true).await
    }

    /// Runs read-only `body` on one pooled connection, like
    /// [`autocommit`](Self::autocommit); a lost connection is
    /// [`Error::Unavailable`]: a read commits nothing, so there is no outcome to doubt.
    ///
    /// # Errors
    /// `body`'s error; [`Error::Unavailable`] when no connection can be had or it broke;
    /// [`Error::ShuttingDown`] after [`close`](Self::close).
    pub async fn read<T, F>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        self.on_connection(body, |e| e, false).await
    }

    /// Runs read-only `body` like [`read`](Self::read), on a replica when one has
    /// replayed the last write recorded for `users` to any of `tables` (the tables
    /// `body` reads; waiting up to `DB_REPLICA_WAIT` for it) and lags at most
    /// `DB_REPLICA_MAX_LAG`; otherwise, or when the replica
    /// fails while reading, on the primary. A user reading through botdb's actors
    /// after a write through them always sees that write. Without replicas it is
    /// [`read`](Self::read). `body` may run twice (on a replica, then on the primary),
    /// hence `Clone` (a closure that borrows what it reads is).
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn read_replica<T, F>(&self, users: &[i64], tables: &[&'static str], body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T> + Clone,
    {
        if self.is_closed() {
            // ShuttingDown, as every other read after close.
            return self.read(body).await;
        }
        if let Some(replicas) = &self.replicas {
            self.follow_primary(replicas);
            if let Some(value) = replicas.read(users, tables, &body).await? {
                return Ok(value);
            }
        }
        self.read(body).await
    }

    /// Runs `body` on a leased connection (recording the WAL position after it when it
    /// `writes`); `failed` interprets the body's error (a
    /// failure to get the connection is never passed to it: nothing was sent then).
    async fn on_connection<T, F>(&self, body: F, failed: fn(Error) -> Error, writes: bool) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        let mut conn = self.lease().await?;
        let ran = self
            .deadlines
            .clone()
            .within(Wait::Work, "the statement", body(&mut conn))
            .await;
        let ran = match ran {
            Ok(ran) => ran,
            Err(missed) => {
                // Sent, and no answer: for a write, it may have committed on its own.
                self.after_missed(&mut conn, &missed);
                let e = failed(missed);
                if writes {
                    self.note_unknown(&e);
                }
                return Err(e);
            }
        };
        match ran {
            Ok(value) => {
                if writes && !self.note_write(&mut conn).await {
                    return Ok(value);
                }
                conn.clean();
                Ok(value)
            }
            Err(e) => {
                self.after_failure(&mut conn, &e);
                let e = failed(e);
                if writes {
                    self.note_unknown(&e);
                }
                Err(e)
            }
        }
    }
}

/// How a [`Database::session`] ended, for what it means for its connection.
enum End<T> {
    Committed(T),
    /// BEGIN failed (or a body that could not run).
    NotBegun(Error),
    /// BEGIN or the body got no answer within botdb's deadline: nothing committed.
    Missed(Error),
    /// COMMIT failed: after a lost connection, the outcome is unknown.
    CommitFailed(Error),
    /// COMMIT got no answer within botdb's deadline: the outcome is unknown.
    CommitMissed(Error),
    /// The body's error, rolled back.
    RolledBack(Error),
    /// The body's error; the rollback failed, or got no answer in time (`Some`).
    RollbackFailed(Error, Option<Error>),
    /// The body panicked; the rollback got no answer in time (`Some`).
    Panicked(Box<dyn std::any::Any + Send>, Option<Error>),
}
