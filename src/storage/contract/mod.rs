//! The repository contract: what every implementation of the repository traits must do,
//! written once against the traits ([`super::TaskRepo`], [`super::BatchRepo`],
//! [`super::DeliveryRepo`], [`super::AccessRepo`], [`super::IdempotencyRepo`],
//! [`super::LimitsRepo`], [`super::StatsRepo`], [`super::RetentionRepo`],
//! [`super::CopyRepo`], [`super::BudgetRepo`]) and run on each backend.
//!
//! Each check is a `pub async fn` taking the narrowest trait object it needs and panicking
//! when the implementation breaks the contract. [`repo_contract_tests!`](crate::repo_contract_tests)
//! turns every check into a `#[tokio::test]` on a fresh repository, so a backend runs the
//! whole suite with one line (the SQLite one is in `tests/it/queue.rs`):
//!
//! ```ignore
//! darkroom::repo_contract_tests!(sqlite_memory, || async {
//!     Box::new(SqliteRepo::in_memory().await.unwrap())
//! });
//! ```

pub mod access;
pub mod batches;
pub mod budgets;
pub mod claim_order;
pub mod copy;
pub mod deliveries;
pub mod failover;
pub mod idempotency;
pub mod limits;
pub mod restore;
pub mod retention;
pub mod stats;
pub mod stats_rollup;
pub mod tasks;

use crate::domain::TaskId;
use crate::storage::NewTask;

/// A queued task of provider `kie` with the given owner, priority and creation time.
pub fn new_task(owner: Option<&str>, priority: i32, created_at: i64) -> NewTask {
    NewTask {
        id: TaskId::new(),
        provider: "kie".into(),
        model: "google/nano-banana-edit".into(),
        prompt: "p".into(),
        source: "s".into(),
        image_url: "https://example.com/a.png".into(),
        input_urls: vec!["https://example.com/a.png".into()],
        aspect_ratio: "1:1".into(),
        output_format: "png".into(),
        priority,
        batch_id: None,
        owner: owner.map(str::to_owned),
        callback_token_hash: String::new(),
        created_at,
        retry_of: None,
        webhook_url: None,
        fallback: None,
    }
}

/// Runs every contract check as its own `#[tokio::test]`, each on a fresh repository.
///
/// `$backend` names the generated test module; `$fresh` is a closure (or `async fn`)
/// returning a future of a handle to a new, empty repository: anything that derefs to a
/// type implementing every repository trait (a `Box`, an `Arc`, or a guard that also owns
/// the repository's temporary directory). Adding a backend is one line:
/// `darkroom::repo_contract_tests!(postgres, || async { … });`.
#[macro_export]
macro_rules! repo_contract_tests {
    ($backend:ident, $fresh:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::repo_contract_tests!(@cases $fresh;
                tasks::insert_and_get_round_trip,
                tasks::insert_is_all_or_nothing,
                tasks::claims_by_priority_then_age,
                tasks::claims_are_per_provider_and_bounded,
                tasks::one_owners_big_batch_does_not_starve_another,
                claim_order::claims_follow_the_ranking_of_the_whole_queue,
                tasks::queue_positions_follow_the_claim_order,
                tasks::backoff_keeps_a_task_out_of_claims_until_its_time,
                tasks::guarded_update_changes_nothing_when_the_state_differs,
                tasks::stale_workers_writes_are_refused_and_lapsed_leases_reclaimed,
                tasks::leases_extend_and_release_only_for_their_holder,
                tasks::provider_ids_are_unique_and_set_once,
                tasks::callbacks_make_a_live_task_due,
                tasks::listing_filters_and_pages,
                tasks::in_flight_counts_and_health,
                restore::restore_writes_whole_rows_and_never_overwrites,
                failover::only_tasks_whose_create_was_never_made_move,
                failover::the_default_decides_for_requests_that_said_nothing,
                failover::a_task_never_returns_to_a_provider_it_left,
                failover::a_held_task_moves_only_under_its_lease_and_a_claimed_one_not_at_all,
                failover::moves_take_the_highest_priority_and_oldest_first_up_to_the_limit,
                batches::batch_round_trip_and_listing,
                batches::batch_counts_follow_task_states,
                deliveries::deliveries_wait_for_a_final_task,
                deliveries::a_delivery_is_claimed_once_per_attempt,
                deliveries::a_running_attempt_extends_its_lease_while_it_holds_it,
                deliveries::retries_come_back_when_due_and_finished_ones_do_not,
                access::keys_are_created_and_revoked,
                access::uploads_have_owners,
                access::unfinished_tasks_are_counted_per_owner,
                access::server_secrets_are_stored_once,
                access::concurrent_first_webhook_secret_calls_agree,
                access::rotation_keeps_the_previous_secret_for_a_while,
                idempotency::idempotency_keys_are_reserved_once_and_replay_their_answer,
                idempotency::released_and_abandoned_idempotency_keys_are_free_again,
                idempotency::expired_idempotency_keys_are_taken_over_and_purged,
                idempotency::concurrent_claims_on_one_idempotency_key_have_one_winner,
                idempotency::tasks_and_their_answer_are_written_together,
                limits::a_limited_claim_never_exceeds_the_create_window,
                limits::the_in_flight_cap_counts_tasks_at_the_provider,
                limits::a_pause_is_shared_and_only_extended,
                limits::a_pause_is_lifted_only_by_its_own_code,
                limits::concurrent_limited_claims_take_exactly_the_window,
                limits::a_create_slot_given_back_is_claimed_again,
                limits::a_create_counts_from_when_it_is_sent,
                budgets::credits_are_reserved_within_every_budget_once_per_task,
                budgets::settling_replaces_the_estimate_by_what_was_used,
                budgets::each_utc_day_is_counted_apart,
                budgets::budgets_are_set_changed_removed_and_waiters_woken,
                budgets::concurrent_reservations_never_exceed_a_budget,
                stats::stats_count_tasks_of_the_window_by_state_code_provider_and_bucket,
                stats::stats_percentiles_are_nearest_rank,
                retention::expired_and_kept_tasks_split_at_the_cutoff,
                retention::deleting_takes_final_tasks_their_deliveries_and_emptied_batches,
                retention::old_uploads_are_listed_and_forgotten,
                retention::objects_in_use_are_found_by_key_and_url,
                copy::rows_are_read_in_key_order_and_never_overwritten,
                copy::tasks_are_read_by_id_and_written_whole,
                stats::stats_histogram_buckets_are_the_domains,
                stats_rollup::stats_rollup_agrees_with_the_tasks_after_a_run_a_restore_and_deletions,
            );
        }
    };
    (@cases $fresh:expr; $($suite:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let repo = ($fresh)().await;
                $crate::storage::contract::$suite::$case(&*repo).await;
            }
        )*
    };
}
