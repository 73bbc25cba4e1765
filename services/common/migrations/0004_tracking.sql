-- Tracking, unsubscribes, suppressions and the shared send rate (issue 5).

-- Events name everything a reader of stats needs: the message, the lead, the Sequence, its revision
-- and the step. Opens and clicks from mail-privacy proxies and link scanners are kept but flagged
-- (``automated``) so stats can leave them out. ``dedupe_key`` makes events that arrive more than once
-- (a webhook retried by the provider) idempotent.
ALTER TABLE events
    ADD COLUMN sequence_id   uuid,
    ADD COLUMN revision      integer,
    ADD COLUMN step_position integer,
    ADD COLUMN automated     boolean NOT NULL DEFAULT false,
    ADD COLUMN dedupe_key    text UNIQUE;
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'sent', 'failed', 'dead', 'skipped', 'replayed',
    'opened', 'clicked', 'unsubscribed', 'bounced', 'complained'));
CREATE INDEX events_lead_idx ON events (lead_id);

-- Where a suppression came from (an unsubscribe link, a bounce webhook, ...), for support questions.
ALTER TABLE suppressions ADD COLUMN detail text NOT NULL DEFAULT '';

-- A token bucket per SMTP transport shared by every dispatcher replica: each replica leases tokens
-- for a batch in one statement, so the configured messages per second hold across replicas.
CREATE TABLE send_rate_buckets (
    name       text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Dead letters are listed newest first by ``healingwork dlq list``.
CREATE INDEX messages_dead_idx ON messages (updated_at) WHERE status = 'dead';

-- Suppressions and leads.suppressed carry only the address hash; finding the leads of a hash (to
-- cancel their enrollments) needs it on leads too. A trigger keeps it, so no writer of leads can forget.
ALTER TABLE leads ADD COLUMN email_hash text;
CREATE FUNCTION leads_set_email_hash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.email_hash := encode(sha256(convert_to(NEW.email_normalized, 'UTF8')), 'hex');
    RETURN NEW;
END $$;
CREATE TRIGGER leads_email_hash BEFORE INSERT OR UPDATE OF email_normalized ON leads
    FOR EACH ROW EXECUTE FUNCTION leads_set_email_hash();
UPDATE leads SET email_hash = encode(sha256(convert_to(email_normalized, 'UTF8')), 'hex');
ALTER TABLE leads ALTER COLUMN email_hash SET NOT NULL;
CREATE INDEX leads_email_hash_idx ON leads (email_hash);
