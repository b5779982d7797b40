//! The queue's wake-up and the change feed on PostgreSQL. Every insert of tasks sends
//! `NOTIFY darkroom_queue` in its transaction (delivered at commit), and one `LISTEN`
//! connection per instance turns each notification into a wake of that instance's
//! dispatcher. So a task queued through any instance sharing the database is picked up at
//! once, not at the next poll. The dispatcher's periodic poll stays as the fallback (a
//! notification sent while the listener was reconnecting is not replayed; the poll finds
//! that work). The same connection listens on `darkroom_events`, the task changes
//! instances announce ([`super::feed`]); after a reconnection the feed says changes may
//! have been missed.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};

use async_trait::async_trait;

use super::RepoError;
use super::feed::{Change, ChangeFeed, FeedEvent};
use super::postgres::PgRepo;

/// The channel inserts notify and listeners listen on.
pub(super) const QUEUE_CHANNEL: &str = "darkroom_queue";
/// The channel task changes are announced on.
pub(super) const EVENTS_CHANNEL: &str = "darkroom_events";

/// Listens on [`QUEUE_CHANNEL`] and [`EVENTS_CHANNEL`] with a connection of `pool` until
/// the pool closes, waking `wake` on every queue notification and after every
/// reconnection, and sending every change to `changes`.
pub(super) fn spawn_listener(
    pool: PgPool,
    wake: Arc<Notify>,
    changes: broadcast::Sender<FeedEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if pool.is_closed() {
                return;
            }
            match listen(&pool, &wake, &changes).await {
                Ok(()) => return,
                Err(e) => {
                    let message =
                        format!("the queue listener (LISTEN {QUEUE_CHANNEL}) failed: {e}");
                    if let Some(repeated) = crate::log_throttle::errors().admit(&message) {
                        tracing::warn!(error = %message, repeated, "queue wake-ups fall back to polling until the listener reconnects");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// One listening session: returns `Ok` when the pool closed, `Err` when listening failed.
async fn listen(
    pool: &PgPool,
    wake: &Notify,
    changes: &broadcast::Sender<FeedEvent>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([QUEUE_CHANNEL, EVENTS_CHANNEL]).await?;
    // Whatever was announced before this session began went to nobody here.
    let _ = changes.send(FeedEvent::Missed);
    loop {
        match listener.try_recv().await {
            Ok(Some(note)) if note.channel() == EVENTS_CHANNEL => {
                if let Some(change) = Change::parse(note.payload()) {
                    // No receiver is not an error: nobody follows the feed.
                    let _ = changes.send(FeedEvent::Changed(change));
                }
            }
            Ok(Some(_)) => wake.notify_one(),
            // The connection was lost and is being reopened: whatever was queued meanwhile
            // sent its notification to nobody, so look now, and changes may be lost.
            Ok(None) => {
                wake.notify_one();
                let _ = changes.send(FeedEvent::Missed);
            }
            Err(sqlx::Error::PoolClosed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[async_trait]
impl ChangeFeed for PgRepo {
    async fn announce(&self, change: &Change) -> Result<(), RepoError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::postgres_wake::EVENTS_CHANNEL)
            .bind(change.payload())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<FeedEvent>> {
        Some(self.changes.subscribe())
    }
}
