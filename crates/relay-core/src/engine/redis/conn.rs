//! Connections: one Redis or a Cluster, with timeouts, and the wake-up subscription.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Listens for wake-ups on `channel`, reconnecting (to the next of `urls`) whenever the
/// subscription ends. A classic `PUBLISH` reaches every node of a cluster, so one node is enough.
pub(super) async fn subscribe(urls: Vec<String>, channel: String, notifier: Arc<OnceLock<Arc<Notifier>>>) {
    let mut attempt = 0usize;
    loop {
        let url = urls.get(attempt % urls.len().max(1)).cloned().unwrap_or_default();
        attempt += 1;
        let subscribed = async {
            let mut pubsub = redis::Client::open(url.as_str())?.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(mut pubsub) => {
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    if let (Ok(client), Some(notifier)) = (msg.get_payload::<String>(), notifier.get()) {
                        // A hint only: the mailbox in Redis stays the truth.
                        notifier.notify(&client);
                    }
                }
                tracing::warn!(%url, "redis wake-up subscription ended; reconnecting");
            }
            Err(e) => tracing::warn!(%url, error = %e, "redis wake-up subscription failed; retrying"),
        }
        // Until it is back, long-polls fall back to their timeout.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// How long to wait for a connection to Redis before the request is refused (503).
pub(super) const REDIS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long to wait for Redis to answer a command or script before the request is refused.
pub(super) const REDIS_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl RedisEngine {
    /// Connects to one Redis at `url` (e.g. `redis://127.0.0.1:6379/0`); `prefix` namespaces
    /// the keys. Subscribes to the wake-up channel so long-polls on this node wake for sends on
    /// any node.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, EngineError> {
        let client = redis::Client::open(url).map_err(storage)?;
        // The crate's defaults wait minutes between reconnection attempts, and forever for an
        // answer: while Redis is away, requests would hang instead of being refused.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_max_delay(1000)
            .set_connection_timeout(REDIS_CONNECT_TIMEOUT)
            .set_response_timeout(REDIS_RESPONSE_TIMEOUT);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(storage)?;
        let engine = Self::build(Conn::Single(conn), false, vec![url.to_owned()], prefix);
        engine.upgrade_layout().await?;
        Ok(engine)
    }

    /// Connects to a Redis Cluster through any of its `nodes` (e.g. `redis://10.0.0.5:7000`);
    /// the client learns the rest of the cluster and follows slot moves and failovers.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when no node can be reached.
    pub async fn connect_cluster(nodes: &[String], prefix: &str) -> Result<Self, EngineError> {
        // Slot moves and failovers are retried (the crate's defaults, about 4 s to ride out a
        // promotion); a node that does not answer at all is given up on after the timeouts.
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(REDIS_CONNECT_TIMEOUT)
            .response_timeout(REDIS_RESPONSE_TIMEOUT)
            .build()
            .map_err(storage)?;
        let conn = client.get_async_connection().await.map_err(storage)?;
        let engine = Self::build(Conn::Cluster(conn), true, nodes.to_vec(), prefix);
        engine.upgrade_layout().await?;
        Ok(engine)
    }

    pub(super) fn build(conn: Conn, cluster: bool, urls: Vec<String>, prefix: &str) -> Self {
        let notifier: Arc<OnceLock<Arc<Notifier>>> = Arc::new(OnceLock::new());
        let subscriber = tokio::spawn(subscribe(urls, format!("{prefix}:wake"), notifier.clone()));
        Self {
            conn,
            cluster,
            prefix: prefix.to_owned(),
            notifier,
            trips: Arc::new(AtomicU64::new(0)),
            scripts: Scripts {
                put_pending: Script::new(PUT_PENDING),
                advance_pending: Script::new(ADVANCE_PENDING),
                take_pending: Script::new(TAKE_PENDING),
                purge_handshakes: Script::new(PURGE_HANDSHAKES),
                create_account: Script::new(CREATE_ACCOUNT),
                take_over_account: Script::new(TAKE_OVER_ACCOUNT),
                commit: Script::new(COMMIT),
                take_prekey: Script::new(TAKE_PREKEY),
                deliver: Script::new(DELIVER),
                scan_expired: Script::new(SCAN_EXPIRED),
                remove_expired: Script::new(REMOVE_EXPIRED),
                purge_account: Script::new(PURGE_ACCOUNT),
            },
            subscriber,
            sweep: tokio::sync::Mutex::new(0),
            account_sweep: tokio::sync::Mutex::new(0),
        }
    }

    pub(super) fn trip(&self) -> Conn {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.conn.clone()
    }
}
