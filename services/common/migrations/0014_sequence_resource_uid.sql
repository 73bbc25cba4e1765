-- The uid of the Kubernetes object that produced a revision (NULL when applied from a file), so a stale
-- generation of the same object is told apart from a new object under the same name (issue 14).
ALTER TABLE sequence_revisions ADD COLUMN IF NOT EXISTS resource_uid text;
