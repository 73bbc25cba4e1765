-- Outgoing webhook endpoints can be updated (PATCH /v1/webhook-endpoints/{id}) and their signing
-- secret rotated (POST .../rotate-secret).
ALTER TABLE webhook_endpoints
    -- The secret before the last rotation (encrypted like secret_ciphertext, same associated data):
    -- deliveries are signed with it too until previous_secret_expires_at, so receivers can switch.
    ADD COLUMN previous_secret_ciphertext bytea,
    ADD COLUMN previous_secret_expires_at timestamptz,
    -- When an admin last enabled the endpoint again: a delivery created before that which fails for its
    -- whole schedule no longer disables it (the failure state was reset).
    ADD COLUMN enabled_at timestamptz,
    ADD CONSTRAINT webhook_endpoints_previous_secret_check
        CHECK ((previous_secret_ciphertext IS NULL) = (previous_secret_expires_at IS NULL));
