-- The preference page (issue 17): a Sequence's display name and unsubscribe scope per revision, and the
-- Sequences an address has left while staying subscribed to the rest.

ALTER TABLE sequence_revisions
    ADD COLUMN display_name      text CHECK (length(display_name) BETWEEN 1 AND 100),
    ADD COLUMN unsubscribe_scope text NOT NULL DEFAULT 'Global' CHECK (unsubscribe_scope IN ('Global', 'Sequence'));

-- "This address left this Sequence": a suppression scoped to one Sequence. Keyed by the address hash like
-- suppressions (it outlives the lead's erasure: the address must not be enrolled again by a new lead);
-- the scheduler enrolls no address into a Sequence it left, and the dispatcher skips a queued step of it.
CREATE TABLE sequence_unsubscribes (
    email_hash  text NOT NULL CHECK (email_hash ~ '^[0-9a-f]{64}$'),
    sequence_id uuid NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    detail      text NOT NULL DEFAULT '' CHECK (length(detail) <= 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email_hash, sequence_id)
);
