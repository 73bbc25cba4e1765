-- Sequences that react (issue 16): conditions, waits, goals, A/B variants and custom events.

-- What the scheduler must look at for a revision: rules (conditions or variants) to load, and whether
-- an event for a lead must wake that lead's enrollments (an exitWhen or a waitFor).
ALTER TABLE sequence_revisions
    ADD COLUMN IF NOT EXISTS has_rules        boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS reacts_to_events boolean NOT NULL DEFAULT false;

-- The resolved bodies of each A/B variant of a step (what it overrides; NULL keeps the step's).
CREATE TABLE IF NOT EXISTS sequence_step_variants (
    sequence_id uuid NOT NULL,
    revision    integer NOT NULL,
    position    integer NOT NULL,
    name        text NOT NULL,
    weight      integer NOT NULL CHECK (weight BETWEEN 1 AND 1000),
    subject     text CHECK (length(subject) BETWEEN 1 AND 998),
    html        text,
    text        text,
    PRIMARY KEY (sequence_id, revision, position, name),
    FOREIGN KEY (sequence_id, revision, position)
        REFERENCES sequence_steps (sequence_id, revision, position) ON DELETE CASCADE
);

-- The variant a message was sent with (NULL: the step has none).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS variant text;

-- resume_at: the due time an event's wake-up moved forward (restored when nothing happened);
-- wait_deadline: when a waitFor step stops waiting; exit_reason: why an enrollment ended early.
ALTER TABLE enrollments
    ADD COLUMN IF NOT EXISTS resume_at     timestamptz,
    ADD COLUMN IF NOT EXISTS wait_deadline timestamptz,
    ADD COLUMN IF NOT EXISTS exit_reason   text CHECK (exit_reason IN ('goal'));
-- An event wakes only its lead's enrollments.
CREATE INDEX IF NOT EXISTS enrollments_lead_active_idx ON enrollments (lead_id) WHERE status = 'active';

-- Custom events (POST /v1/leads/{id}/events) and the scheduler's own records (a skipped or failed step,
-- an exit) live in events too, so a lead's timeline shows them. Custom types are lower-case names;
-- the API refuses the platform's own names.
ALTER TABLE events
    ADD COLUMN IF NOT EXISTS properties    jsonb CHECK (jsonb_typeof(properties) = 'object'),
    ADD COLUMN IF NOT EXISTS enrollment_id uuid;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type ~ '^[a-z][a-z0-9_.-]{0,63}$');
-- A condition reads a lead's newest events first.
CREATE INDEX IF NOT EXISTS events_lead_occurred_idx ON events (lead_id, occurred_at DESC);

-- The scope of the custom events API.
ALTER TABLE api_clients DROP CONSTRAINT IF EXISTS api_clients_scopes_check;
ALTER TABLE api_clients ADD CONSTRAINT api_clients_scopes_check CHECK (
    scopes <@ ARRAY['leads:write', 'leads:read', 'events:write', 'admin']::text[] AND cardinality(scopes) >= 1);

-- An event a condition may react to wakes the lead's active enrollments of revisions that react to
-- events (indexed by lead; nothing polls every enrollment): their next_run_at moves to now, the old
-- due time kept in resume_at, and the scheduler's next tick evaluates exitWhen and waitFor for them.
-- A trigger, so no writer of events (tracking, webhooks, the events API) can forget it. The row lock
-- of an enrollment being processed by the ticker makes this wait for that transaction, then apply to
-- the enrollment as the ticker left it (which is why the WHERE does not test next_run_at: a due
-- enrollment being sent right now is matched, and its next due time is seen after the wait).
CREATE OR REPLACE FUNCTION events_wake_enrollments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE enrollments e
    SET resume_at = CASE WHEN e.next_run_at > now() THEN COALESCE(e.resume_at, e.next_run_at) ELSE e.resume_at END,
        next_run_at = LEAST(e.next_run_at, now()),
        updated_at = now()
    FROM sequence_revisions r
    WHERE e.lead_id = NEW.lead_id AND e.status = 'active'
      AND r.sequence_id = e.sequence_id AND r.revision = e.revision AND r.reacts_to_events;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS events_wake ON events;
CREATE TRIGGER events_wake AFTER INSERT ON events FOR EACH ROW
    WHEN (NEW.type NOT IN ('sent', 'failed', 'dead', 'skipped', 'replayed',
                           'step.skipped', 'step.failed', 'enrollment.exited'))
    EXECUTE FUNCTION events_wake_enrollments();

-- Daily rollups of what conditions did: steps skipped (when false, a wait timed out with onTimeout
-- skip), steps failed by a condition that could not be evaluated, enrollments that reached their goal.
ALTER TABLE daily_stats
    ADD COLUMN IF NOT EXISTS skipped           integer NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    ADD COLUMN IF NOT EXISTS condition_failures integer NOT NULL DEFAULT 0 CHECK (condition_failures >= 0),
    ADD COLUMN IF NOT EXISTS exited_goal       integer NOT NULL DEFAULT 0 CHECK (exited_goal >= 0);

-- Per A/B variant of a step and UTC day: what a user compares to pick the winner.
CREATE TABLE IF NOT EXISTS daily_variant_stats (
    day           date NOT NULL,
    sequence_id   uuid NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    revision      integer NOT NULL,
    step_position integer NOT NULL CHECK (step_position >= 0),
    variant       text NOT NULL,
    sent          integer NOT NULL DEFAULT 0 CHECK (sent >= 0),
    unique_opens  integer NOT NULL DEFAULT 0 CHECK (unique_opens >= 0),
    unique_clicks integer NOT NULL DEFAULT 0 CHECK (unique_clicks >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sequence_id, day, revision, step_position, variant)
);
CREATE INDEX IF NOT EXISTS daily_variant_stats_day_idx ON daily_variant_stats (day);
