-- An observation's row keeps its document and nothing the document already
-- holds: not its view's state (the document has every field of it but the
-- authors, who recorded or corrected the values, for the two-person rule:
-- they get a column of their own), nor a copy of its values (the rare
-- query for a new minimum, maximum or latest value reads them from the
-- document). The row shrinks by about two thirds.
ALTER TABLE read_model.observations ADD COLUMN authors json;
UPDATE read_model.observations SET authors = convert_from(state, 'UTF8')::json -> 'authors';
UPDATE read_model.observations SET authors = '[]' WHERE authors IS NULL;
ALTER TABLE read_model.observations ALTER COLUMN authors SET NOT NULL;
ALTER TABLE read_model.observations DROP COLUMN state, DROP COLUMN "values";
