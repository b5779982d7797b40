//! `darkroom migrate-db`: copies a darkroom database into another one, SQLite to
//! PostgreSQL or back (or to another database of the same kind), so an operator who
//! started on one machine keeps the history when moving to a cluster.
//!
//! Every table that holds state ([`Table::ALL`]: API keys, webhook and server secrets,
//! uploads, batches, tasks, webhook deliveries, idempotency keys, provider pauses, credit
//! budgets, spend and reservations) is read
//! in key order and written whole, [`Options::batch_size`] rows a transaction, parents
//! before the rows that point at them. A target that already holds rows is refused unless
//! [`Options::allow_non_empty`]; even then only missing rows are added and a row the target
//! holds is never changed, so an interrupted copy is finished by running it again.
//!
//! At the end every table is counted on both sides. The copy is verified when, for each
//! table, every row read was written or already held, the source still holds as many rows
//! as were read (nothing was written to it during the copy), and the target grew by exactly
//! the rows written; with a target that started empty this makes both counts equal.

use crate::progress::Progress;
use crate::storage::copy::{Added, CellRow, NOT_COPIED, Table};
use crate::storage::{Backend, Repo, RepoError, Task};

/// How a copy runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rows read and written per transaction.
    pub batch_size: usize,
    /// Copy into a target that already holds rows (only what it lacks is added).
    pub allow_non_empty: bool,
    /// Draw progress on stderr.
    pub show_progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateDbError {
    #[error(
        "the target database already holds rows ({0}); copy into an empty database, or pass --allow-non-empty to add only the rows it lacks (rows it holds are kept as they are)"
    )]
    NotEmpty(String),
    #[error("reading {table} from the source failed: {error}")]
    Source {
        table: &'static str,
        error: RepoError,
    },
    #[error("writing {table} to the target failed: {error}")]
    Target {
        table: &'static str,
        error: RepoError,
    },
}

/// What happened to one table.
#[derive(Clone, Debug)]
pub struct TableReport {
    pub table: Table,
    /// Rows read from the source.
    pub read: u64,
    /// Rows written to the target.
    pub copied: u64,
    /// Rows whose key the target held already (kept as they were).
    pub present: u64,
    /// Rows neither written nor held, by key, with the reason.
    pub refused: Vec<(String, String)>,
    pub target_before: u64,
    /// The counts at the end.
    pub source_rows: u64,
    pub target_rows: u64,
}

impl TableReport {
    fn new(table: Table, target_before: u64) -> Self {
        Self {
            table,
            read: 0,
            copied: 0,
            present: 0,
            refused: Vec::new(),
            target_before,
            source_rows: 0,
            target_rows: 0,
        }
    }

    fn note(&mut self, read: usize, added: Added) {
        self.read += read as u64;
        self.copied += added.inserted;
        self.present += added.present;
        self.refused.extend(added.refused);
    }

    /// Why this table's copy is not verified (none when it is).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.refused.is_empty() {
            problems.push(format!("{} rows not copied", self.refused.len()));
        }
        if self.source_rows != self.read {
            problems.push(format!(
                "the source changed during the copy: {} rows read, {} now",
                self.read, self.source_rows
            ));
        }
        if self.target_rows != self.target_before + self.copied {
            problems.push(format!(
                "the target changed during the copy: {} rows before, {} written, {} now",
                self.target_before, self.copied, self.target_rows
            ));
        }
        problems
    }
}

/// What a run did, table by table in copy order.
#[derive(Clone, Debug)]
pub struct Report {
    pub tables: Vec<TableReport>,
}

/// Refused rows listed per table at most.
const REFUSED_SHOWN: usize = 20;

impl Report {
    /// Whether every table's copy is verified (see the module).
    pub fn verified(&self) -> bool {
        self.tables.iter().all(|t| t.problems().is_empty())
    }

    /// The summary printed at the end: one line per table, then the verdict.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<20} {:>10} {:>10} {:>10} {:>10}\n",
            "table", "source", "target", "copied", "present"
        );
        for t in &self.tables {
            out.push_str(&format!(
                "{:<20} {:>10} {:>10} {:>10} {:>10}\n",
                t.table.name(),
                t.source_rows,
                t.target_rows,
                t.copied,
                t.present
            ));
        }
        let skipped: Vec<&str> = NOT_COPIED.iter().map(|(name, _)| *name).collect();
        out.push_str(&format!("not copied: {}\n", skipped.join(", ")));
        let rows: u64 = self.tables.iter().map(|t| t.read).sum();
        if self.verified() {
            out.push_str(&format!(
                "verified: the target holds every row of the source ({rows} rows in {} tables)\n",
                self.tables.len()
            ));
            return out;
        }
        out.push_str("NOT verified:\n");
        for t in &self.tables {
            for problem in t.problems() {
                out.push_str(&format!("  {}: {problem}\n", t.table.name()));
            }
            for (key, reason) in t.refused.iter().take(REFUSED_SHOWN) {
                out.push_str(&format!("    {key}: {reason}\n"));
            }
            if t.refused.len() > REFUSED_SHOWN {
                out.push_str(&format!(
                    "    and {} more\n",
                    t.refused.len() - REFUSED_SHOWN
                ));
            }
        }
        out
    }
}

/// Why `from` and `to` cannot be copied between, if they cannot: a URL of neither
/// backend, an SQLite source that does not exist, or one database named twice.
pub fn check_urls(from: &str, to: &str) -> Result<(), String> {
    for (flag, url) in [("--from", from), ("--to", to)] {
        if Backend::of_url(url).is_none() {
            return Err(format!(
                "{flag} must be a database URL: sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ));
        }
    }
    if Backend::of_url(from) == Some(Backend::Sqlite) {
        let path = crate::storage::sqlite_path(from)
            .ok_or_else(|| "--from is not a valid SQLite URL".to_owned())?;
        if !path.is_file() {
            return Err(format!(
                "--from names no SQLite database: {} does not exist",
                path.display()
            ));
        }
    }
    if crate::storage::same_database(from, to) {
        return Err("--from and --to name the same database".to_owned());
    }
    Ok(())
}

/// Copies every table of `source` into `target` (see the module).
pub async fn migrate_db(
    source: &dyn Repo,
    target: &dyn Repo,
    options: &Options,
) -> Result<Report, MigrateDbError> {
    let batch = options.batch_size.max(1);
    let mut reports = Vec::new();
    let mut total = 0;
    for table in Table::ALL {
        total += source
            .count_rows(table)
            .await
            .map_err(|error| source_error(table, error))?;
        let held = target
            .count_rows(table)
            .await
            .map_err(|error| target_error(table, error))?;
        reports.push(TableReport::new(table, held));
    }
    let held: Vec<String> = reports
        .iter()
        .filter(|t| t.target_before > 0)
        .map(|t| format!("{}: {}", t.table.name(), t.target_before))
        .collect();
    if !held.is_empty() && !options.allow_non_empty {
        return Err(MigrateDbError::NotEmpty(held.join(", ")));
    }
    let mut progress = Progress::new("migrate-db", "rows", total, options.show_progress);
    for report in &mut reports {
        let table = report.table;
        if table == Table::Tasks {
            copy_tasks(source, target, batch, report, &mut progress).await?;
        } else {
            copy_rows(source, target, batch, report, &mut progress).await?;
        }
    }
    progress.finish();
    for report in &mut reports {
        let table = report.table;
        report.source_rows = source
            .count_rows(table)
            .await
            .map_err(|error| source_error(table, error))?;
        report.target_rows = target
            .count_rows(table)
            .await
            .map_err(|error| target_error(table, error))?;
    }
    Ok(Report { tables: reports })
}

fn source_error(table: Table, error: RepoError) -> MigrateDbError {
    MigrateDbError::Source {
        table: table.name(),
        error,
    }
}

fn target_error(table: Table, error: RepoError) -> MigrateDbError {
    MigrateDbError::Target {
        table: table.name(),
        error,
    }
}

fn progress_message(report: &TableReport) -> String {
    format!("{}: {} copied", report.table.name(), report.copied)
}

async fn copy_tasks(
    source: &dyn Repo,
    target: &dyn Repo,
    batch: usize,
    report: &mut TableReport,
    progress: &mut Progress,
) -> Result<(), MigrateDbError> {
    let mut last: Option<Task> = None;
    loop {
        let page = source
            .tasks_after(last.as_ref().map(|t| &t.id), batch)
            .await
            .map_err(|error| source_error(Table::Tasks, error))?;
        if page.is_empty() {
            return Ok(());
        }
        let added = target
            .add_tasks(&page)
            .await
            .map_err(|error| target_error(Table::Tasks, error))?;
        report.note(page.len(), added);
        progress.advance(page.len() as u64, &progress_message(report));
        let full = page.len() == batch;
        last = page.into_iter().last();
        if !full {
            return Ok(());
        }
    }
}

async fn copy_rows(
    source: &dyn Repo,
    target: &dyn Repo,
    batch: usize,
    report: &mut TableReport,
    progress: &mut Progress,
) -> Result<(), MigrateDbError> {
    let table = report.table;
    let mut last: Option<CellRow> = None;
    loop {
        let page = source
            .rows_after(table, last.as_ref(), batch)
            .await
            .map_err(|error| source_error(table, error))?;
        if page.is_empty() {
            return Ok(());
        }
        let added = target
            .add_rows(table, &page)
            .await
            .map_err(|error| target_error(table, error))?;
        report.note(page.len(), added);
        progress.advance(page.len() as u64, &progress_message(report));
        let full = page.len() == batch;
        last = page.into_iter().last();
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        read: u64,
        copied: u64,
        present: u64,
        before: u64,
        source: u64,
        target: u64,
    ) -> TableReport {
        TableReport {
            read,
            copied,
            present,
            target_before: before,
            source_rows: source,
            target_rows: target,
            ..TableReport::new(Table::Tasks, before)
        }
    }

    #[test]
    fn a_copy_is_verified_only_when_every_count_agrees() {
        assert!(report(10, 10, 0, 0, 10, 10).problems().is_empty());
        // Into a non-empty target: its own rows stay, held ones are not written again.
        assert!(report(10, 6, 4, 7, 10, 13).problems().is_empty());
        // A row the source gained during the copy.
        assert_eq!(report(10, 10, 0, 0, 11, 10).problems().len(), 1);
        // A row written to the target by someone else.
        assert_eq!(report(10, 10, 0, 0, 10, 11).problems().len(), 1);
        let mut refused = report(10, 9, 0, 0, 10, 9);
        refused.refused.push(("tsk_1".into(), "why".into()));
        assert_eq!(refused.problems(), vec!["1 rows not copied".to_owned()]);
        let text = Report {
            tables: vec![refused],
        }
        .text();
        assert!(text.contains("NOT verified"), "{text}");
        assert!(text.contains("tsk_1: why"), "{text}");
    }

    #[test]
    fn urls_of_other_kinds_and_one_database_twice_are_refused() {
        assert!(check_urls("mysql://h/db", "postgres://h/db").is_err());
        assert!(check_urls("postgres://h/db", "ftp://x").is_err());
        assert!(check_urls("sqlite:///nonexistent/darkroom.db", "postgres://h/db").is_err());
        assert!(check_urls("postgres://a@h:5432/db", "postgres://b:pw@H/db").is_err());
        assert!(check_urls("postgres://h/db", "postgres://h/other").is_ok());
        assert!(check_urls("postgres://h/db", "sqlite://./new.db").is_ok());
    }
}
