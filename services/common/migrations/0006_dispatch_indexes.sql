-- The dispatcher updates every message twice (claim, outcome), and each update writes an entry into
-- every index whose predicate the new row matches. messages_in_flight_idx (0001) is read by nothing
-- since 0005's narrower messages_queued_idx and messages_sending_idx serve retry-failed.
DROP INDEX IF EXISTS messages_in_flight_idx;
