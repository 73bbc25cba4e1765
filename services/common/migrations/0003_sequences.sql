-- Sequences as Kubernetes resources: revisions keyed by metadata.generation, revision policies, send
-- windows, sender overrides; message ids derive from (enrollment, step, revision).

-- Issue 3 adds this column in its own migration; IF NOT EXISTS keeps either order safe.
ALTER TABLE leads ADD COLUMN IF NOT EXISTS timezone text;

ALTER TABLE sequence_revisions
    ADD COLUMN send_window     jsonb,
    ADD COLUMN from_email      text CHECK (length(from_email) BETWEEN 3 AND 254),
    ADD COLUMN from_name       text CHECK (length(from_name) BETWEEN 1 AND 100),
    ADD COLUMN revision_policy text NOT NULL DEFAULT 'Latest' CHECK (revision_policy IN ('Latest', 'Pinned')),
    -- The resource's metadata.generation that produced the revision (NULL when applied from a file).
    ADD COLUMN generation      bigint CHECK (generation >= 1);

-- Under revisionPolicy Latest an enrollment can reach the same position again in a later revision, so a
-- step is identified by (enrollment, revision, position), like the message id.
ALTER TABLE messages DROP CONSTRAINT messages_enrollment_id_step_position_key;
ALTER TABLE messages ADD CONSTRAINT messages_enrollment_revision_step_key UNIQUE (enrollment_id, revision, step_position);


-- The lead's time zone, captured at enrollment, so the due scan reads nothing but enrollments and the
-- (small) sequence tables: its cost follows the due work, not the number of leads.
ALTER TABLE enrollments ADD COLUMN timezone text;
