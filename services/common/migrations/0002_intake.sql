-- Intake, production grade: the richer lead, the consent ledger, idempotency keys, API clients and
-- signed-request replay protection.

ALTER TABLE leads
    ADD COLUMN phone              text CHECK (phone ~ '^\+[1-9][0-9]{1,14}$'),
    ADD COLUMN utm                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(utm) = 'object'),
    ADD COLUMN locale             text CHECK (length(locale) <= 35),
    ADD COLUMN timezone           text CHECK (length(timezone) <= 64),
    ADD COLUMN metadata           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    -- The consent ledger: who agreed (as seen by intake: client IP and user agent), to which words, when.
    ADD COLUMN consent_ip         inet,
    ADD COLUMN consent_user_agent text CHECK (length(consent_user_agent) <= 512),
    ADD COLUMN consent_recorded_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN client_id          uuid,
    ADD COLUMN request_id         text CHECK (length(request_id) <= 128);

-- API clients. Only the SHA-256 of a key is stored: keys are 256-bit random, so a fast hash is as
-- strong as a slow one, and lookups go by the public prefix.
CREATE TABLE api_clients (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$'),
    key_prefix text NOT NULL UNIQUE CHECK (key_prefix ~ '^[0-9a-f]{12}$'),
    key_hash   text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    scopes     text[] NOT NULL CHECK (scopes <@ ARRAY['leads:write', 'leads:read', 'admin']::text[]
                                      AND cardinality(scopes) >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

ALTER TABLE leads ADD FOREIGN KEY (client_id) REFERENCES api_clients (id) ON DELETE SET NULL;

-- A retried POST with the same Idempotency-Key gets the first answer. Scoped by client (or by
-- 'public:<ip>' for browser forms); the row is claimed first, so concurrent retries serialize on it.
CREATE TABLE idempotency_keys (
    scope        text NOT NULL CHECK (length(scope) <= 128),
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash text NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    status       integer NOT NULL CHECK (status IN (200, 202)),
    lead_id      uuid NOT NULL REFERENCES leads (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    duplicate    boolean NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_lead_idx ON idempotency_keys (lead_id);

-- Signatures seen within the tolerance window: a replayed signed request is rejected.
CREATE TABLE used_signatures (
    signature text PRIMARY KEY CHECK (signature ~ '^[0-9a-f]{64}$'),
    seen_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX used_signatures_seen_at_idx ON used_signatures (seen_at);

CREATE INDEX leads_client_idx ON leads (client_id) WHERE client_id IS NOT NULL;
