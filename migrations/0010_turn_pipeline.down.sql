-- Refused while work is recorded and not done: updates not yet run, replies not yet
-- sent would be lost. Stop every `serve` that has TELEGRAM_BOT_TOKEN, let them empty
-- (`/metrics`: botdb_inbox_depth and botdb_outbox_depth at 0), then roll back. Sent and
-- failed replies are history: they go with the table.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM inbox) OR EXISTS (SELECT 1 FROM outbox WHERE state IN ('pending', 'sending')) THEN
        RAISE EXCEPTION 'the inbox or the outbox holds work not done (updates not yet run, replies not yet sent): '
            'stop the bots that use them and let them empty before rolling back 0010';
    END IF;
END
$$;

DROP TABLE outbox;
DROP TABLE inbox;
