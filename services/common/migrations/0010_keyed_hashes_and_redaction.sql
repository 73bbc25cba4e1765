-- Complete erasure (issue 15, item 5): keyed address hashes and no addresses in stored texts.
--
-- Address hashes become HMAC-SHA256 under SUPPRESSION_HASH_KEY, computed by intake (the key never
-- reaches the database). Existing hashes are unkeyed SHA-256 and marked so (`keyed = false`):
--   * leads: intake rehashes them from the address they still hold (services/intake/hash_upgrade.py,
--     at start-up and periodically), so every lead ends keyed;
--   * suppressions: those whose address still has a lead are rehashed the same way; the others (their
--     address is gone, e.g. erased) cannot be, and stay matchable during the transition through the
--     unkeyed hash of a lead's address computed on the spot (LEAD_IS_SUPPRESSED_SQL), never stored.
--     Erasing such an address again replaces its unkeyed row by a keyed one.
-- The trigger keeps filling an unkeyed hash only when a writer gives none (an intake of the previous
-- release during a rolling upgrade); the rehash picks those up.
ALTER TABLE leads ADD COLUMN IF NOT EXISTS email_hash_keyed boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS leads_unkeyed_hash_idx ON leads (id) WHERE NOT email_hash_keyed;

CREATE OR REPLACE FUNCTION leads_set_email_hash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email_hash IS NULL
       OR (TG_OP = 'UPDATE' AND NEW.email_normalized IS DISTINCT FROM OLD.email_normalized
           AND NEW.email_hash IS NOT DISTINCT FROM OLD.email_hash) THEN
        NEW.email_hash := encode(sha256(convert_to(NEW.email_normalized, 'UTF8')), 'hex');
        NEW.email_hash_keyed := false;
    END IF;
    RETURN NEW;
END $$;

ALTER TABLE suppressions ADD COLUMN IF NOT EXISTS keyed boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS suppressions_unkeyed_idx ON suppressions (email_hash) WHERE NOT keyed;

-- Texts written before write-time redaction: address-shaped tokens become "redacted" (the same rule as
-- services/common/redaction.py), and stored click URLs lose their query and fragment.
UPDATE events SET detail = regexp_replace(detail, '[^[:space:]<>()\[\]\\,;:"@]{1,64}@[^[:space:]<>()\[\]\\,;:"@'']{1,255}', 'redacted', 'g')
    WHERE detail LIKE '%@%';
UPDATE events SET detail = split_part(split_part(detail, '#', 1), '?', 1)
    WHERE type = 'clicked' AND (detail LIKE '%?%' OR detail LIKE '%#%');
UPDATE messages SET
    last_error = regexp_replace(last_error, '[^[:space:]<>()\[\]\\,;:"@]{1,64}@[^[:space:]<>()\[\]\\,;:"@'']{1,255}', 'redacted', 'g'),
    smtp_response = regexp_replace(smtp_response, '[^[:space:]<>()\[\]\\,;:"@]{1,64}@[^[:space:]<>()\[\]\\,;:"@'']{1,255}', 'redacted', 'g')
    WHERE last_error LIKE '%@%' OR smtp_response LIKE '%@%';
UPDATE suppressions SET detail = regexp_replace(detail, '[^[:space:]<>()\[\]\\,;:"@]{1,64}@[^[:space:]<>()\[\]\\,;:"@'']{1,255}', 'redacted', 'g')
    WHERE detail LIKE '%@%';
-- Erased addresses keep no diagnostic at all.
UPDATE suppressions SET detail = '' WHERE reason = 'erased' AND detail <> '';
