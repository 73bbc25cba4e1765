-- Signed requests (scheme v2): the nonces each client used within the timestamp tolerance. The replay
-- cache is keyed on (client, nonce), so two legitimate bodiless requests in the same second (same
-- timestamp, same empty body) do not collide the way two identical v1 signatures did.
CREATE TABLE used_request_nonces (
    client_id uuid NOT NULL,
    nonce     text NOT NULL CHECK (nonce ~ '^[A-Za-z0-9_-]{16,64}$'),
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, nonce)
);
CREATE INDEX used_request_nonces_seen_at_idx ON used_request_nonces (seen_at);
