-- Double opt-in (issue 15): a lead that must confirm its address by email enrolls only once confirmed.
--
-- The consent record gains the confirmation: when, from which IP, with which user agent. A lead with
-- confirmation_required enrolls nowhere until confirmed_at is set; a Sequence revision with
-- double_opt_in enrolls only confirmed leads. Unconfirmed leads are purged after
-- CONFIRMATION_EXPIRY_HOURS (services/jobs/purge.py).

ALTER TABLE leads
    ADD COLUMN IF NOT EXISTS confirmation_required  boolean NOT NULL DEFAULT false,
    -- The last time a confirmation email was queued for the lead (the resend cool-down counts from it).
    ADD COLUMN IF NOT EXISTS confirmation_sent_at   timestamptz,
    ADD COLUMN IF NOT EXISTS confirmed_at           timestamptz,
    ADD COLUMN IF NOT EXISTS confirmed_ip           inet,
    ADD COLUMN IF NOT EXISTS confirmed_user_agent   text CHECK (length(confirmed_user_agent) <= 512);

-- The purge of expired unconfirmed leads reads this (and nothing else scans unconfirmed leads).
CREATE INDEX IF NOT EXISTS leads_unconfirmed_idx ON leads (created_at)
    WHERE confirmation_required AND confirmed_at IS NULL;

ALTER TABLE sequence_revisions ADD COLUMN IF NOT EXISTS double_opt_in boolean NOT NULL DEFAULT false;

-- One row per confirmation email: queued by intake (with its command in the outbox, one transaction),
-- claimed (sending) and recorded (sent, failed, skipped) by the dispatcher. Not a sequence message:
-- no enrollment, no step, no tracking.
CREATE TABLE IF NOT EXISTS confirmation_emails (
    id         uuid PRIMARY KEY,
    lead_id    uuid NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    status     text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'skipped')),
    detail     text NOT NULL DEFAULT '' CHECK (length(detail) <= 1000),
    queued_at  timestamptz NOT NULL DEFAULT now(),
    sending_at timestamptz,
    sent_at    timestamptz,
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS confirmation_emails_lead_idx ON confirmation_emails (lead_id);
