-- Duplicate submissions of a lead within the duplicate window: counted on the lead, so its timeline
-- folds them into "accepted" whether or not the request carried an Idempotency-Key (before this, only
-- those with a key left a trace, in idempotency_keys).
ALTER TABLE leads
    ADD COLUMN duplicate_count integer NOT NULL DEFAULT 0,
    ADD COLUMN last_duplicate_at timestamptz;
