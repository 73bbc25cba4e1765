-- Outgoing webhooks (Standard Webhooks): the endpoints an admin registered and every delivery to them.
-- The `webhooks` service fans each event out into one delivery row per subscribed endpoint, then
-- delivers due rows with retries on a schedule kept here (services/outgoing_webhooks/).

CREATE TABLE webhook_endpoints (
    id                uuid PRIMARY KEY,
    url               text NOT NULL CHECK (length(url) <= 2048 AND url ~ '^https?://'),
    events            text[] NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 64),
    description       text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    -- The signing secret, AES-256-GCM encrypted under a key derived from HMAC_SECRET (the endpoint's id
    -- is the associated data): a database dump alone does not give the secrets away.
    secret_ciphertext bytea NOT NULL,
    status            text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason   text CHECK (length(disabled_reason) <= 500),
    disabled_at       timestamptz,
    last_success_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- One event to one endpoint. `id` is the `webhook-id` (the same on every attempt); the body is kept as
-- signed so a retry sends the same bytes. Only the last attempt's outcome is kept (status code, the
-- first KiB of the response body, the error).
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL CHECK (length(event_type) <= 100),
    body             bytea NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    response_status  integer CHECK (response_status BETWEEN 100 AND 599),
    response_body    text CHECK (octet_length(response_body) <= 1024),
    last_error       text CHECK (length(last_error) <= 500),
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (endpoint_id, event_id)
);
-- The delivery loop's claim: due pending rows in order.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- GET /v1/webhook-endpoints/{id}/deliveries, newest first.
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
