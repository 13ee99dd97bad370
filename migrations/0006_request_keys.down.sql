-- Without the table, copies of an update are handled again (at least once, not exactly
-- once).
DROP TABLE request_keys;
