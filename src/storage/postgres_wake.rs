//! The queue's wake-up and the change feed on PostgreSQL. Every insert of tasks sends
//! `NOTIFY darkroom_queue` in its transaction (delivered at commit), and one `LISTEN`
//! connection per instance turns each notification into a wake of that instance's
//! dispatcher. So a task queued through any instance sharing the database is picked up at
//! once, not at the next poll. The dispatcher's periodic poll stays as the fallback (a
//! notification sent while the listener was reconnecting is not replayed; the poll finds
//! that work). The same connection listens on `darkroom_events`, the task changes every
//! instance's transactions announce ([`super::feed`]); this instance's own are dropped
//! here, and after a reconnection the feed says changes may have been missed.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};

use super::RepoError;
use super::feed::{Change, ChangeFeed, FeedEvent};
use super::postgres::PgRepo;
use super::repo::Task;

/// The channel inserts notify and listeners listen on.
pub(super) const QUEUE_CHANNEL: &str = "darkroom_queue";
/// The channel task changes are announced on.
pub(super) const EVENTS_CHANNEL: &str = "darkroom_events";

/// The connection setting the change trigger reads as the announcing instance.
pub(super) const ORIGIN_SETTING: &str = "darkroom.origin";

/// Listens on [`QUEUE_CHANNEL`] and [`EVENTS_CHANNEL`] with a connection of `pool` until
/// the pool closes, waking `wake` on every queue notification and after every
/// reconnection, and sending every change not made under `origin` to `changes`.
pub(super) fn spawn_listener(
    pool: PgPool,
    origin: String,
    wake: Arc<Notify>,
    changes: broadcast::Sender<FeedEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // When the last session lost its connection: what was announced from then until
        // the next session listens is read back by the feed's followers.
        let mut lost_at: Option<i64> = None;
        loop {
            if pool.is_closed() {
                return;
            }
            let failure = match listen(&pool, &origin, &wake, &changes, &mut lost_at).await {
                Ok(()) => return,
                Err(Lost::Connection) => "the connection was lost".to_owned(),
                Err(Lost::Failed(e)) => e.to_string(),
            };
            lost_at.get_or_insert_with(crate::clock::now_ms);
            let message = format!("the queue listener (LISTEN {QUEUE_CHANNEL}) failed: {failure}");
            if let Some(repeated) = crate::log_throttle::errors().admit(&message) {
                tracing::warn!(error = %message, repeated, "queue wake-ups fall back to polling until the listener reconnects");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Why a listening session ended.
enum Lost {
    /// The connection closed under it.
    Connection,
    Failed(sqlx::Error),
}

/// One listening session: returns `Ok` when the pool closed, `Err` when listening failed
/// or its connection was lost. Once it listens, it says that changes since `lost_at` may
/// have been missed, and clears it.
async fn listen(
    pool: &PgPool,
    origin: &str,
    wake: &Notify,
    changes: &broadcast::Sender<FeedEvent>,
    lost_at: &mut Option<i64>,
) -> Result<(), Lost> {
    let mut listener = PgListener::connect_with(pool).await.map_err(Lost::Failed)?;
    listener
        .listen_all([QUEUE_CHANNEL, EVENTS_CHANNEL])
        .await
        .map_err(Lost::Failed)?;
    // Whatever was announced before this session began went to nobody here; whatever was
    // queued meanwhile sent its notification to nobody, so look now.
    let _ = changes.send(FeedEvent::Missed {
        since: lost_at.take(),
    });
    wake.notify_one();
    loop {
        match listener.try_recv().await {
            Ok(Some(note)) if note.channel() == EVENTS_CHANNEL => {
                match Change::parse(note.payload()) {
                    Some(change) if change.origin == origin => {}
                    // No receiver is not an error: nobody follows the feed.
                    Some(change) => drop(changes.send(FeedEvent::Changed(change))),
                    None => tracing::warn!(
                        payload = note.payload(),
                        "a notification on {EVENTS_CHANNEL} is not a task change; ignored"
                    ),
                }
            }
            Ok(Some(_)) => wake.notify_one(),
            // The connection was lost: a new session listens again (PgListener would
            // reconnect by itself, but without telling when it listens again, which the
            // read-back of missed changes needs).
            Ok(None) => return Err(Lost::Connection),
            Err(sqlx::Error::PoolClosed) => return Ok(()),
            Err(e) => return Err(Lost::Failed(e)),
        }
    }
}

#[async_trait::async_trait]
impl ChangeFeed for PgRepo {
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<FeedEvent>> {
        Some(self.changes.subscribe())
    }

    async fn changed_since(&self, since: i64, limit: usize) -> Result<Vec<Task>, RepoError> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE updated_at >= $1 ORDER BY updated_at, id LIMIT $2",
        )
        .bind(since)
        .bind(super::postgres::as_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        super::postgres_rows::tasks_from_rows(&rows)
    }
}
