-- The hot rows (a study's, a subject's and the projection's checkpoint,
-- rewritten by nearly every event) leave a dead version behind at each
-- update. HOT pruning reclaims space inside a page, but only VACUUM tells
-- the free space map, so without it every update that does not fit its page
-- extends the table and adds an index entry: a study table of five rows
-- grew to 31 MB in ten minutes of load, and every read of it slowed down.
-- The default trigger (50 dead rows plus a fifth of the table) scales with
-- the table; these tables are small and hot, so they are vacuumed after a
-- fixed number of dead rows, however few rows they hold. Autovacuum must be
-- on (docs/operations.md); a rebuild copies these settings.
ALTER TABLE read_model.studies SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
ALTER TABLE read_model.subjects SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
ALTER TABLE read_model.checkpoint SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
