-- The results of a batch's items committed so far, keyed by the item's
-- index: each one is written in the same transaction as the item's events,
-- so a batch whose process died before its answer was stored is resumed by
-- a retry with the same Idempotency-Key (the items journaled here are not
-- run again) instead of running twice.
ALTER TABLE idempotency_keys ADD COLUMN progress jsonb;
