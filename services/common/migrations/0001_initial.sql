-- healingwork schema, version 1. Constraints carry the invariants; partial indexes serve the hot queries.

CREATE TABLE leads (
    id                  uuid PRIMARY KEY,
    email               text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    email_normalized    text NOT NULL CHECK (email_normalized = lower(email_normalized)),
    first_name          text CHECK (length(first_name) <= 100),
    last_name           text CHECK (length(last_name) <= 100),
    source              text NOT NULL CHECK (source ~ '^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$'),
    tags                text[] NOT NULL DEFAULT '{}',
    consent_marketing   boolean NOT NULL,
    consent_text        text CHECK (length(consent_text) <= 2000),
    consent_captured_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leads_email_normalized_idx ON leads (email_normalized);
CREATE INDEX leads_created_at_idx ON leads (created_at);

-- The duplicate window: one row per normalized address, pointing at the last accepted lead.
-- The foreign key is deferred because the identity is claimed before the lead row is written.
CREATE TABLE lead_identities (
    email_normalized text PRIMARY KEY,
    lead_id          uuid NOT NULL REFERENCES leads (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    accepted_at      timestamptz NOT NULL
);

CREATE TABLE sequences (
    id               uuid PRIMARY KEY,
    namespace        text NOT NULL,
    name             text NOT NULL,
    current_revision integer NOT NULL CHECK (current_revision >= 1),
    paused           boolean NOT NULL DEFAULT false,
    deleted_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, name)
);

-- Immutable: a changed spec is a new revision; enrollments point at the revision they run.
CREATE TABLE sequence_revisions (
    sequence_id     uuid NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    revision        integer NOT NULL CHECK (revision >= 1),
    spec            jsonb NOT NULL,
    trigger_sources text[] NOT NULL DEFAULT '{}',
    trigger_tags    text[] NOT NULL DEFAULT '{}',
    trigger_all     boolean NOT NULL DEFAULT false,
    require_consent boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sequence_id, revision)
);

CREATE TABLE sequence_steps (
    sequence_id uuid NOT NULL,
    revision    integer NOT NULL,
    position    integer NOT NULL CHECK (position >= 0),
    name        text NOT NULL,
    delay_s     bigint NOT NULL CHECK (delay_s >= 0),
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 998),
    html        text,
    text        text,
    PRIMARY KEY (sequence_id, revision, position),
    UNIQUE (sequence_id, revision, name),
    FOREIGN KEY (sequence_id, revision) REFERENCES sequence_revisions (sequence_id, revision) ON DELETE CASCADE,
    CHECK (html IS NOT NULL OR text IS NOT NULL)
);

CREATE TABLE enrollments (
    id          uuid PRIMARY KEY,
    lead_id     uuid NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sequence_id uuid NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    revision    integer NOT NULL,
    next_step   integer NOT NULL DEFAULT 0 CHECK (next_step >= 0),
    next_run_at timestamptz,
    status      text NOT NULL CHECK (status IN ('active', 'completed', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (lead_id, sequence_id),
    FOREIGN KEY (sequence_id, revision) REFERENCES sequence_revisions (sequence_id, revision),
    CHECK ((status = 'active') = (next_run_at IS NOT NULL))
);
CREATE INDEX enrollments_due_idx ON enrollments (next_run_at) WHERE status = 'active';
CREATE INDEX enrollments_sequence_idx ON enrollments (sequence_id, status);

-- One row per enrollment step; its id is derived from (enrollment, step) so a repeated emission is a no-op.
CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    enrollment_id   uuid NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    lead_id         uuid NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    sequence_id     uuid NOT NULL,
    revision        integer NOT NULL,
    step_position   integer NOT NULL CHECK (step_position >= 0),
    status          text NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'retrying', 'dead', 'skipped')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz,
    last_error      text,
    smtp_response   text,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    sending_at      timestamptz,
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enrollment_id, step_position),
    FOREIGN KEY (sequence_id, revision, step_position)
        REFERENCES sequence_steps (sequence_id, revision, position),
    CHECK ((status = 'retrying') = (next_attempt_at IS NOT NULL)),
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX messages_retry_due_idx ON messages (next_attempt_at) WHERE status = 'retrying';
CREATE INDEX messages_in_flight_idx ON messages (updated_at) WHERE status IN ('queued', 'sending');
CREATE INDEX messages_lead_idx ON messages (lead_id);

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  uuid REFERENCES messages (id) ON DELETE CASCADE,
    lead_id     uuid NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    type        text NOT NULL CHECK (type IN (
                    'sent', 'retrying', 'dead', 'skipped', 'opened', 'clicked', 'unsubscribed', 'bounced', 'complained')),
    detail      text NOT NULL DEFAULT '',
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_message_idx ON events (message_id);
CREATE INDEX events_occurred_at_idx ON events (occurred_at);

-- Addresses never to be mailed again. Keyed by the SHA-256 of the normalized address
-- (services.common.identity.email_hash) so an erased lead leaves no readable address behind.
CREATE TABLE suppressions (
    email_hash text PRIMARY KEY CHECK (email_hash ~ '^[0-9a-f]{64}$'),
    reason     text NOT NULL CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'erased', 'manual')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The transactional outbox. Rows are claimed by state (published_at IS NULL), never by id order:
-- ids are taken before commit, so a slow transaction can commit a lower id after a faster one.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text NOT NULL,
    key          text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
