-- Batch jobs (issue 6): reconciliation of leads never enrolled, daily rollups, indexes for retention.

-- When the scheduler handled the lead (set by enroll_lead even when no Sequence matched): a lead
-- accepted long ago with enrolled_at still NULL was lost on its way and is re-published by retry-failed.
ALTER TABLE leads ADD COLUMN IF NOT EXISTS enrolled_at timestamptz;
-- When retry-failed last re-published the lead, so a lead is re-published at most once per age.
ALTER TABLE leads ADD COLUMN IF NOT EXISTS republished_at timestamptz;
-- Leads older than a day when this migration runs were handled by the scheduler long ago (or never
-- will be); reconciliation covers what arrives from now on instead of replaying history into
-- Sequences created since.
UPDATE leads SET enrolled_at = created_at WHERE enrolled_at IS NULL AND created_at < now() - interval '1 day';
CREATE INDEX IF NOT EXISTS leads_unenrolled_idx ON leads (created_at) WHERE enrolled_at IS NULL;

-- retry-failed: queued messages whose dispatch command may have been lost, and the SMTP duplicate
-- window (sending for too long). 0001's messages_in_flight_idx serves both; these are narrower.
CREATE INDEX IF NOT EXISTS messages_queued_idx ON messages (updated_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS messages_sending_idx ON messages (sending_at) WHERE status = 'sending';

-- aggregate-stats reads enrollments by day; purge deletes expired duplicate-window entries by age.
CREATE INDEX IF NOT EXISTS enrollments_created_at_idx ON enrollments (created_at);
CREATE INDEX IF NOT EXISTS lead_identities_accepted_at_idx ON lead_identities (accepted_at);

-- Daily rollups, recomputed idempotently by `healingwork job aggregate-stats`. One row per UTC day,
-- Sequence, revision and step. The entry counters (leads_accepted, enrolled) are kept on the row of the
-- first step (position 0) and are 0 elsewhere, so a sum over steps counts each lead once.
CREATE TABLE IF NOT EXISTS daily_stats (
    day            date NOT NULL,
    sequence_id    uuid NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    revision       integer NOT NULL,
    step_position  integer NOT NULL CHECK (step_position >= 0),
    leads_accepted integer NOT NULL DEFAULT 0 CHECK (leads_accepted >= 0),
    enrolled       integer NOT NULL DEFAULT 0 CHECK (enrolled >= 0),
    sent           integer NOT NULL DEFAULT 0 CHECK (sent >= 0),
    failed         integer NOT NULL DEFAULT 0 CHECK (failed >= 0),
    dead           integer NOT NULL DEFAULT 0 CHECK (dead >= 0),
    unique_opens   integer NOT NULL DEFAULT 0 CHECK (unique_opens >= 0),
    unique_clicks  integer NOT NULL DEFAULT 0 CHECK (unique_clicks >= 0),
    unsubscribes   integer NOT NULL DEFAULT 0 CHECK (unsubscribes >= 0),
    bounces        integer NOT NULL DEFAULT 0 CHECK (bounces >= 0),
    complaints     integer NOT NULL DEFAULT 0 CHECK (complaints >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sequence_id, day, revision, step_position),
    CHECK (step_position = 0 OR (leads_accepted = 0 AND enrolled = 0))
);
CREATE INDEX IF NOT EXISTS daily_stats_day_idx ON daily_stats (day);
