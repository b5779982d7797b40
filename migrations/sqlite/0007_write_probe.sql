-- /readyz proves the database accepts writes by inserting a row here inside a transaction
-- it rolls back: the table stays empty.
CREATE TABLE write_probe (
    filler BLOB NOT NULL
);
