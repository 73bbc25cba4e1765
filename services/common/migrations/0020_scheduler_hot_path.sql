-- The scheduler's due loop, measured (docs/performance.md, "The due drain's writes and the facts' index").
--
-- 1. messages.lead_id needs no foreign key of its own: every message belongs to an enrollment
--    (messages_enrollment_id_fkey, ON DELETE CASCADE) and is created from that enrollment's row, whose
--    lead_id has its key (enrollments_lead_id_fkey, ON DELETE CASCADE); erasing a lead still deletes
--    its messages, through its enrollments. The check cost a row lock on the lead per message queued
--    (about a tenth of a scheduler batch).
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_lead_id_fkey;

-- 2. A lead's newest events, with their type and id in the index: the facts query cuts each lead's
--    window of events and keeps the types its conditions read from the index alone, and reads the
--    rows of only the events it keeps. Same columns and order as the index it replaces, so every
--    other reader is served as before.
CREATE INDEX IF NOT EXISTS events_lead_recent_idx ON events (lead_id, occurred_at DESC) INCLUDE (type, id);
DROP INDEX IF EXISTS events_lead_occurred_idx;
