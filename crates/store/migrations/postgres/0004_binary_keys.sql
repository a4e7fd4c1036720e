-- Text keys compare as bytes ("C" collation), as SQLite's BINARY does: ids and names are
-- opaque, so byte order is the right order, both backends sort alike, and the indexes no
-- longer depend on the operating system's locale (a glibc collation change silently breaks
-- indexes built under the old one). Comparisons are also cheaper: under C.UTF-8 every
-- b-tree step went through strcoll (measured: ~5 % of PostgreSQL's time per push).
ALTER TABLE records ALTER COLUMN collection TYPE TEXT COLLATE "C";
ALTER TABLE records ALTER COLUMN record_id TYPE TEXT COLLATE "C";
ALTER TABLE applied_mutations ALTER COLUMN mutation_id TYPE TEXT COLLATE "C";
ALTER TABLE nextchat_versions ALTER COLUMN collection TYPE TEXT COLLATE "C";
ALTER TABLE nextchat_versions ALTER COLUMN record_id TYPE TEXT COLLATE "C";
ALTER TABLE nextchat_versions ALTER COLUMN hash TYPE TEXT COLLATE "C";
ALTER TABLE nextchat_secrets ALTER COLUMN path TYPE TEXT COLLATE "C";
ALTER TABLE nextchat_staging ALTER COLUMN name TYPE TEXT COLLATE "C";
