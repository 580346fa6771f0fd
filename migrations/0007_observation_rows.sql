-- An observation's row no longer keeps its view's state beside its
-- document: the document holds every field of the state but the authors
-- (who recorded or corrected the values, for the two-person rule), which
-- get a column of their own. The row shrinks by about half.
ALTER TABLE read_model.observations ADD COLUMN authors json;
UPDATE read_model.observations SET authors = convert_from(state, 'UTF8')::json -> 'authors';
UPDATE read_model.observations SET authors = '[]' WHERE authors IS NULL;
ALTER TABLE read_model.observations ALTER COLUMN authors SET NOT NULL;
ALTER TABLE read_model.observations DROP COLUMN state;
