//! A loopback TCP relay in front of a real server (moto, PostgreSQL) that a test can take
//! down and bring back: while down, every open connection is cut and new ones are closed
//! at once, as a server that went away; the server itself, shared with other tests, is
//! never touched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the relay waits for the real server to take a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Outage {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// Bumped at every `down()`: connections opened before it end.
    epoch: watch::Sender<u64>,
}

impl Outage {
    /// Relays connections on a fresh loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (epoch, _) = watch::channel(0u64);
        let (target, flag, epochs) = (target.to_owned(), down.clone(), epoch.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Subscribed before the flag is read: a `down()` between the two is seen by
                // one or the other, so no connection outlives the cut.
                let mut cut = epochs.subscribe();
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    // Given up after 5 s, as darkroom's own connect would be: a connection
                    // the relay accepted but cannot carry is closed, not held open with
                    // nothing behind it.
                    let connect = TcpStream::connect(&target);
                    let Ok(Ok(server)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await
                    else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, down, epoch }
    }

    /// Cuts every open connection and refuses new ones until [`Self::up`].
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    pub fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}
