-- The read tables' hot rows (a study's and a subject's, rewritten by every
-- event of theirs) are updated in place: nothing indexes a column that
-- changes with them, and their pages keep room for the next version, so
-- PostgreSQL makes each update a HOT update (no new index entries, a fraction
-- of the WAL, and less for the standby to replay). What changed after a
-- position is read from the log itself (`events`, by its primary key), not
-- from an index on the read tables' positions.
DROP INDEX read_model.studies_by_position;
DROP INDEX read_model.subjects_by_position;
DROP INDEX read_model.observations_by_position;
ALTER TABLE read_model.studies SET (fillfactor = 50);
ALTER TABLE read_model.subjects SET (fillfactor = 50);
