//! Task SQL written once for every backend (the guarded update, the whole-row restore):
//! `QueryBuilder` numbers the placeholders for each (`?` or `$n`), and only the way a list
//! is stored differs (JSON text on SQLite, `TEXT[]` on PostgreSQL), so the caller says how
//! to bind one.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{ProviderMove, Task, TaskUpdate};
use crate::domain::{TaskId, TaskState};

/// `UPDATE tasks SET … WHERE id = … AND state = from [AND lease_owner = lease] RETURNING *`
/// with the fields `update` sets; `list` turns a list into its stored form.
pub(super) fn guarded_update<DB, L>(
    id: &TaskId,
    from: TaskState,
    lease: Option<&str>,
    update: &TaskUpdate,
    now: i64,
    list: impl Fn(&[String]) -> L,
) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    L: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new("UPDATE tasks SET updated_at = ");
    q.push_bind(now);
    if let Some(state) = update.state {
        q.push(", state = ").push_bind(state.as_str().to_owned());
    }
    if let Some(run_at) = update.run_at {
        q.push(", run_at = ").push_bind(run_at);
    }
    if update.release_lease {
        q.push(", lease_owner = NULL, lease_until = NULL");
    }
    if update.add_attempt {
        q.push(", attempts = attempts + 1");
    }
    if let Some(hash) = &update.callback_token_hash {
        q.push(", callback_token_hash = ").push_bind(hash.clone());
    }
    if let Some(pid) = &update.provider_task_id {
        q.push(", provider_task_id = ").push_bind(pid.clone());
    }
    for (column, values) in [
        ("result_source_urls", &update.result_source_urls),
        ("result_keys", &update.result_keys),
        ("result_urls", &update.result_urls),
    ] {
        if let Some(values) = values {
            q.push(format_args!(", {column} = "))
                .push_bind(list(values));
        }
    }
    if let Some(credits) = update.credits {
        q.push(", credits = ").push_bind(credits);
    }
    if let Some(cost) = update.cost_time_ms {
        q.push(", cost_time_ms = ").push_bind(cost);
    }
    if let Some(error) = &update.error {
        let (code, message) = error.clone().unzip();
        q.push(", error_code = ").push_bind(code);
        q.push(", error_message = ").push_bind(message);
    }
    if let Some(at) = update.submitted_at {
        q.push(", submitted_at = ").push_bind(at);
    }
    if let Some(at) = update.completed_at {
        q.push(", completed_at = ").push_bind(at);
    }
    if let Some(answers) = update.missing_answers {
        q.push(", missing_answers = ").push_bind(i64::from(answers));
    }
    if update.pin_provider {
        q.push(", fallback = 0");
    }
    q.push(" WHERE id = ").push_bind(id.as_str().to_owned());
    push_state_is(&mut q, from);
    if let Some(worker) = lease {
        q.push(" AND lease_owner = ").push_bind(worker.to_owned());
    }
    q.push(" RETURNING *");
    q
}

/// `UPDATE tasks SET provider = to, … WHERE (the move's guard) RETURNING *`: the tasks
/// `mv` allows go to its provider, queued and due now, attempts and error cleared, the
/// provider they left appended to `moved_from`. The guard is written twice (in the
/// statement and in the subquery that picks at most `limit`), so a row another instance
/// claimed meanwhile is re-checked (PostgreSQL) and left alone.
pub(super) fn provider_move<DB>(mv: &ProviderMove<'_>) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    fn guard<DB>(q: &mut QueryBuilder<DB>, mv: &ProviderMove<'_>)
    where
        DB: Database,
        i64: for<'t> Encode<'t, DB> + Type<DB>,
        String: for<'t> Encode<'t, DB> + Type<DB>,
    {
        let state = if mv.held.is_some() {
            TaskState::Submitting
        } else {
            TaskState::Queued
        };
        q.push("provider = ").push_bind(mv.from.to_owned());
        push_state_is(q, state);
        q.push(" AND provider_task_id IS NULL AND submitted_at IS NULL AND callback_at IS NULL");
        q.push(" AND COALESCE(fallback, ")
            .push_bind(i64::from(mv.by_default))
            .push(") = 1");
        q.push(" AND ',' || moved_from || ',' NOT LIKE ")
            .push_bind(format!("%,{},%", mv.to));
        if let Some((id, worker)) = mv.held {
            q.push(" AND id = ").push_bind(id.as_str().to_owned());
            q.push(" AND lease_owner = ").push_bind(worker.to_owned());
        }
    }
    let mut q = QueryBuilder::new("UPDATE tasks SET provider = ");
    q.push_bind(mv.to.to_owned());
    q.push(", model = ").push_bind(mv.model.to_owned());
    q.push(", state = ")
        .push_bind(TaskState::Queued.as_str().to_owned());
    q.push(", run_at = ").push_bind(mv.now);
    q.push(", updated_at = ").push_bind(mv.now);
    q.push(", attempts = 0, lease_owner = NULL, lease_until = NULL, callback_token_hash = ''");
    q.push(", error_code = NULL, error_message = NULL");
    q.push(", moved_from = CASE WHEN moved_from = '' THEN ")
        .push_bind(mv.from.to_owned())
        .push(" ELSE moved_from || ',' || ")
        .push_bind(mv.from.to_owned())
        .push(" END");
    q.push(", move_reason = ").push_bind(mv.reason.to_owned());
    q.push(", moved_at = ").push_bind(mv.now);
    q.push(" WHERE ");
    guard(&mut q, mv);
    q.push(" AND id IN (SELECT id FROM tasks WHERE ");
    guard(&mut q, mv);
    q.push(" ORDER BY priority DESC, created_at ASC LIMIT ")
        .push_bind(i64::try_from(mv.limit).unwrap_or(i64::MAX));
    q.push(") RETURNING *");
    q
}

/// `INSERT INTO tasks (every column) VALUES (…), … ON CONFLICT DO NOTHING`: whole task
/// rows written as they are (reindex, migrate-db), each unless its id or its provider id
/// is taken; `list` turns a list into its stored form. A task binds 38 values: callers
/// keep `tasks` short enough for the backend's cap on values per statement.
pub(super) fn restore_insert<DB, L>(
    tasks: &[Task],
    list: impl Fn(&[String]) -> L,
) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    i32: for<'t> Encode<'t, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    L: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new(
        "INSERT INTO tasks (id, state, provider, model, prompt, source, image_url, input_urls,
             aspect_ratio, output_format, priority, batch_id, owner, attempts, run_at,
             lease_owner, lease_until, provider_task_id, callback_token_hash, callback_at,
             result_source_urls, result_keys, result_urls, credits, cost_time_ms,
             error_code, error_message, created_at, updated_at, submitted_at, completed_at,
             retry_of, webhook_url, missing_answers, fallback, moved_from, move_reason, moved_at) ",
    );
    q.push_values(tasks, |mut values, t| {
        values
            .push_bind(t.id.as_str().to_owned())
            .push_bind(t.state.as_str().to_owned())
            .push_bind(t.provider.clone())
            .push_bind(t.model.clone())
            .push_bind(t.prompt.clone())
            .push_bind(t.source.clone())
            .push_bind(t.image_url.clone())
            .push_bind(list(&t.input_urls))
            .push_bind(t.aspect_ratio.clone())
            .push_bind(t.output_format.clone())
            .push_bind(t.priority)
            .push_bind(t.batch_id.clone())
            .push_bind(t.owner.clone())
            .push_bind(i64::from(t.attempts))
            .push_bind(t.run_at)
            .push_bind(t.lease_owner.clone())
            .push_bind(t.lease_until)
            .push_bind(t.provider_task_id.clone())
            .push_bind(t.callback_token_hash.clone())
            .push_bind(t.callback_at)
            .push_bind(list(&t.result_source_urls))
            .push_bind(list(&t.result_keys))
            .push_bind(list(&t.result_urls))
            .push_bind(t.credits)
            .push_bind(t.cost_time_ms)
            .push_bind(t.error_code.clone())
            .push_bind(t.error_message.clone())
            .push_bind(t.created_at)
            .push_bind(t.updated_at)
            .push_bind(t.submitted_at)
            .push_bind(t.completed_at)
            .push_bind(t.retry_of.as_ref().map(|id| id.as_str().to_owned()))
            .push_bind(t.webhook_url.clone())
            .push_bind(i64::from(t.missing_answers))
            .push_bind(t.failover.allowed_int())
            .push_bind(t.failover.left_text())
            .push_bind(t.failover.reason.clone())
            .push_bind(t.failover.moved_at);
    });
    q.push(" ON CONFLICT DO NOTHING");
    q
}

/// ` AND state = 'queued'`: the guard's state written as a literal (one of our own names),
/// never bound. SQLite checks a bound value against a partial index's predicate
/// (`tasks_claim`: `state = 'queued'`) when it plans the statement, and then prepares the
/// statement again for every new value bound: a quarter of the engine's CPU time went to
/// that. A literal makes one cached statement per state instead.
fn push_state_is<DB: Database>(q: &mut QueryBuilder<DB>, state: TaskState) {
    q.push(format_args!(" AND state = '{}'", state.as_str()));
}
