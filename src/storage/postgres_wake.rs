//! The queue's wake-up on PostgreSQL: every insert of tasks sends `NOTIFY darkroom_queue`
//! in its transaction (delivered at commit), and one `LISTEN` connection per instance turns
//! each notification into a wake of that instance's dispatcher. So a task queued through
//! any instance sharing the database is picked up at once, not at the next poll. The
//! dispatcher's periodic poll stays as the fallback (a notification sent while the
//! listener was reconnecting is not replayed; the poll finds that work).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

/// The channel inserts notify and listeners listen on.
pub(super) const QUEUE_CHANNEL: &str = "darkroom_queue";

/// Listens on [`QUEUE_CHANNEL`] with a connection of `pool` until the pool closes, waking
/// `wake` on every notification and after every reconnection.
pub(super) fn spawn_listener(pool: PgPool, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if pool.is_closed() {
                return;
            }
            match listen(&pool, &wake).await {
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
async fn listen(pool: &PgPool, wake: &Notify) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(QUEUE_CHANNEL).await?;
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => wake.notify_one(),
            // The connection was lost and is being reopened: whatever was queued meanwhile
            // sent its notification to nobody, so look now.
            Ok(None) => wake.notify_one(),
            Err(sqlx::Error::PoolClosed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
