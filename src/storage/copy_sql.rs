//! The SQL of [`CopyRepo`](super::copy::CopyRepo), written once for both backends
//! (`QueryBuilder` numbers the placeholders for each): counting, reading a table in key
//! order after a cursor, and writing whole rows [`ROWS_PER_STATEMENT`] to a statement with
//! `INSERT … ON CONFLICT DO NOTHING RETURNING` the keys written, then one query for which of
//! the others the target holds.

use sqlx::Connection as _;
use std::collections::HashSet;

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use super::copy::{Added, Cell, CellRow, Columns, Kind, Table};
use super::{RepoError, Task};
use crate::domain::TaskId;

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn columns_of(table: Table) -> Result<Columns, RepoError> {
    table.columns().ok_or_else(|| RepoError::Corrupt {
        id: table.name().to_owned(),
        message: "tasks are copied as tasks (tasks_after, add_tasks), not as rows".to_owned(),
    })
}

/// A row's key for a person: its key cells joined by `/`.
fn key_text(table: Table, row: &CellRow) -> String {
    let parts: Vec<String> = row
        .iter()
        .take(table.key_len())
        .map(ToString::to_string)
        .collect();
    parts.join("/")
}

fn push_cell<DB>(q: &mut QueryBuilder<DB>, cell: &Cell)
where
    DB: Database,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<Vec<u8>>: for<'t> Encode<'t, DB> + Type<DB>,
{
    match cell {
        Cell::Int(v) => q.push_bind(*v),
        Cell::Text(v) => q.push_bind(v.clone()),
        Cell::Bytes(v) => q.push_bind(v.clone()),
    };
}

/// `(k1 > a1 OR (k1 = a1 AND (k2 > a2 OR …)))`: the key columns after the key of `after`.
fn push_after<DB>(q: &mut QueryBuilder<DB>, keys: &[(&str, Kind)], after: &[Cell])
where
    DB: Database,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<Vec<u8>>: for<'t> Encode<'t, DB> + Type<DB>,
{
    let (Some(((column, _), rest)), Some((value, values))) =
        (keys.split_first(), after.split_first())
    else {
        // Past the last key column: nothing is after an equal key.
        q.push("1 = 0");
        return;
    };
    q.push(format_args!("({column} > "));
    push_cell(q, value);
    q.push(format_args!(" OR ({column} = "));
    push_cell(q, value);
    q.push(" AND ");
    push_after(q, rest, values);
    q.push("))");
}

pub(super) async fn count_rows<DB>(pool: &Pool<DB>, table: Table) -> Result<u64, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let row = QueryBuilder::<DB>::new(format!("SELECT COUNT(*) AS n FROM {}", table.name()))
        .build()
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0))
}

/// `SELECT * FROM tasks WHERE id > after ORDER BY id LIMIT limit`; the backend reads the
/// rows as tasks.
pub(super) fn tasks_after_sql<DB>(after: Option<&TaskId>, limit: usize) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new("SELECT * FROM tasks");
    if let Some(after) = after {
        q.push(" WHERE id > ").push_bind(after.as_str().to_owned());
    }
    q.push(" ORDER BY id LIMIT ").push_bind(limit_of(limit));
    q
}

pub(super) async fn rows_after<DB>(
    pool: &Pool<DB>,
    table: Table,
    after: Option<&CellRow>,
    limit: usize,
) -> Result<Vec<CellRow>, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    Option<Vec<u8>>: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let columns = columns_of(table)?;
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let keys = &columns[..table.key_len()];
    let mut q =
        QueryBuilder::<DB>::new(format!("SELECT {} FROM {}", names.join(", "), table.name()));
    if let Some(after) = after {
        q.push(" WHERE ");
        push_after(&mut q, keys, after);
    }
    let order: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
    q.push(format_args!(" ORDER BY {} LIMIT ", order.join(", ")))
        .push_bind(limit_of(limit));
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            columns
                .iter()
                .map(|(name, kind)| {
                    Ok(match kind {
                        Kind::Int => Cell::Int(row.try_get(*name)?),
                        Kind::Text => Cell::Text(row.try_get(*name)?),
                        Kind::Bytes => Cell::Bytes(row.try_get(*name)?),
                    })
                })
                .collect()
        })
        .collect()
}

/// Rows written per statement: both backends cap the values one statement binds (SQLite
/// at 32,766), and a task binds 38.
const ROWS_PER_STATEMENT: usize = 200;

/// A row's key as one string (key columns are text), to match rows with returned keys.
fn key_of(table: Table, row: &CellRow) -> String {
    let parts: Vec<String> = row
        .iter()
        .take(table.key_len())
        .map(ToString::to_string)
        .collect();
    parts.join("\u{1f}")
}

/// The keys (as [`key_of`] makes them) of `rows` (key columns `keys`, read as text).
fn keys_of_rows<R: Row>(rows: &[R], keys: &[&str]) -> Result<HashSet<String>, sqlx::Error>
where
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    rows.iter()
        .map(|row| {
            let parts = keys
                .iter()
                .map(|k| row.try_get::<String, _>(*k))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(parts.join("\u{1f}"))
        })
        .collect()
}

/// Which rows of `table` whose first key column is one of `firsts` the database holds: the
/// keys, as [`key_of`] makes them.
async fn held_keys<DB>(
    conn: &mut DB::Connection,
    table: &str,
    keys: &[&str],
    firsts: &[Cell],
) -> Result<HashSet<String>, sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<Vec<u8>>: for<'t> Encode<'t, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    if firsts.is_empty() {
        return Ok(HashSet::new());
    }
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {} FROM {table} WHERE {} IN (",
        keys.join(", "),
        keys[0]
    ));
    for (i, cell) in firsts.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        push_cell(&mut q, cell);
    }
    q.push(")");
    let rows = q.build().fetch_all(conn).await?;
    keys_of_rows(&rows, keys)
}

/// [`CopyRepo::add_rows`] on `pool` (the SQLite writer's, or PostgreSQL's).
pub(super) async fn add_rows<DB>(
    conn: &mut DB::Connection,
    table: Table,
    rows: &[CellRow],
) -> Result<Added, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<Vec<u8>>: for<'t> Encode<'t, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let columns = columns_of(table)?;
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let keys = &names[..table.key_len()];
    if let Some(row) = rows.iter().find(|row| row.len() != columns.len()) {
        return Err(RepoError::Corrupt {
            id: key_text(table, row),
            message: format!(
                "{} values for the {} columns of {}",
                row.len(),
                columns.len(),
                table.name()
            ),
        });
    }
    let mut added = Added::default();
    let mut tx = conn.begin().await?;
    // A row that needs its task is written only when the target holds the task.
    let mut writable: Vec<&CellRow> = rows.iter().collect();
    if let Some(column) = table.task_column() {
        let tasks: Vec<Cell> = rows.iter().map(|row| row[column].clone()).collect();
        let held = held_keys::<DB>(&mut tx, "tasks", &["id"], &tasks).await?;
        writable.retain(|row| {
            let found = held.contains(&row[column].to_string());
            if !found {
                added.refused.push((
                    key_text(table, row),
                    "its task is not in the target".to_owned(),
                ));
            }
            found
        });
    }
    for chunk in writable.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<DB>::new(format!(
            "INSERT INTO {} ({}) ",
            table.name(),
            names.join(", ")
        ));
        q.push_values(chunk, |mut values, row| {
            for cell in row.iter() {
                match cell {
                    Cell::Int(v) => values.push_bind(*v),
                    Cell::Text(v) => values.push_bind(v.clone()),
                    Cell::Bytes(v) => values.push_bind(v.clone()),
                };
            }
        });
        q.push(format_args!(
            " ON CONFLICT DO NOTHING RETURNING {}",
            keys.join(", ")
        ));
        let returned = q.build().fetch_all(&mut *tx).await?;
        let inserted = keys_of_rows(&returned, keys)?;
        added.inserted += inserted.len() as u64;
        let rest: Vec<&&CellRow> = chunk
            .iter()
            .filter(|row| !inserted.contains(&key_of(table, row)))
            .collect();
        let firsts: Vec<Cell> = rest.iter().map(|row| row[0].clone()).collect();
        let held = held_keys::<DB>(&mut tx, table.name(), keys, &firsts).await?;
        for row in rest {
            if held.contains(&key_of(table, row)) {
                added.present += 1;
            } else {
                added.refused.push((
                    key_text(table, row),
                    "a unique value of it is held by another row of the target".to_owned(),
                ));
            }
        }
    }
    tx.commit().await?;
    Ok(added)
}

/// [`CopyRepo::add_tasks`] on `pool` (the SQLite writer's, or PostgreSQL's); `list` turns a
/// list into its stored form.
pub(super) async fn add_tasks<DB, L>(
    conn: &mut DB::Connection,
    tasks: &[Task],
    list: impl Fn(&[String]) -> L + Copy,
) -> Result<Added, sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i32: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    Option<Vec<u8>>: for<'t> Encode<'t, DB> + Type<DB>,
    L: for<'t> Encode<'t, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let mut added = Added::default();
    let mut tx = conn.begin().await?;
    for chunk in tasks.chunks(ROWS_PER_STATEMENT) {
        let mut q = super::update_sql::restore_insert::<DB, L>(chunk, list);
        q.push(" RETURNING id");
        let returned = q.build().fetch_all(&mut *tx).await?;
        let inserted = keys_of_rows(&returned, &["id"])?;
        added.inserted += inserted.len() as u64;
        let rest: Vec<&Task> = chunk
            .iter()
            .filter(|t| !inserted.contains(t.id.as_str()))
            .collect();
        let ids: Vec<Cell> = rest
            .iter()
            .map(|t| Cell::Text(Some(t.id.as_str().to_owned())))
            .collect();
        let held = held_keys::<DB>(&mut tx, "tasks", &["id"], &ids).await?;
        for task in rest {
            if held.contains(task.id.as_str()) {
                added.present += 1;
            } else {
                added.refused.push((
                    task.id.as_str().to_owned(),
                    format!(
                        "another task of the target has its provider id {}",
                        task.provider_task_id.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
    }
    tx.commit().await?;
    Ok(added)
}
