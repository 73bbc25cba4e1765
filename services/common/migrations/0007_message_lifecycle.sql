-- A message's life: how many times a person replayed it from the dead letters. A replay resets
-- `attempts`, so (replays, attempts) names an attempt uniquely; the ids and event keys of what a
-- transition announces derive from it (services/common/message_lifecycle/announcements.py).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS replays integer NOT NULL DEFAULT 0 CHECK (replays >= 0);
