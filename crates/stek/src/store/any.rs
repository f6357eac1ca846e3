//! A store chosen by URL at run time: `redis://HOST:PORT` (`rediss://` with TLS),
//! `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER` (`rediss+sentinel://`: the primary that
//! Redis Sentinel names) or `etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` with TLS).

use std::time::Duration;

use stek_core::Slot;
use tokio::sync::watch;

use super::{
    Created, EtcdStore, Found, LoadedAccess, RedisStore, Replaced, Seen, Store, StoreError,
};

/// One of the shared stores.
#[derive(Debug)]
pub enum AnyStore {
    /// Redis (a primary for generators, a read replica per site for agents).
    Redis(RedisStore),
    /// etcd.
    Etcd(EtcdStore),
}

impl AnyStore {
    /// Connects to the store named by `url` for an agent: a bad URL fails now, an unreachable
    /// store does not (the agent starts, serves what it can and follows the failure policy).
    pub async fn connect_lazy(url: &str) -> Result<AnyStore, StoreError> {
        Self::connect_lazy_with(url, &LoadedAccess::default()).await
    }

    /// [`AnyStore::connect_lazy`] with TLS and credentials.
    pub async fn connect_lazy_with(
        url: &str,
        access: &LoadedAccess,
    ) -> Result<AnyStore, StoreError> {
        if is_redis(url) {
            Ok(AnyStore::Redis(RedisStore::connect_lazy_with(url, access)?))
        } else {
            Self::connect_with(url, access).await
        }
    }

    /// Connects to the store named by `url`. Redis must be reachable now; etcd connects on first
    /// use (and fails over between its endpoints).
    pub async fn connect(url: &str) -> Result<AnyStore, StoreError> {
        Self::connect_with(url, &LoadedAccess::default()).await
    }

    /// [`AnyStore::connect`] with TLS and credentials.
    pub async fn connect_with(url: &str, access: &LoadedAccess) -> Result<AnyStore, StoreError> {
        if is_redis(url) {
            Ok(AnyStore::Redis(
                RedisStore::connect_with(url, access).await?,
            ))
        } else if url.starts_with("etcd://") || url.starts_with("etcds://") {
            Ok(AnyStore::Etcd(EtcdStore::connect_with(url, access)?))
        } else {
            // The URL is left out: it may carry a password.
            Err(StoreError::BadUrl {
                reason: "unknown scheme: use redis[s]://HOST:PORT, \
                         redis[s]+sentinel://HOST:PORT[,HOST:PORT...]/MASTER or \
                         etcd[s]://HOST:PORT[,HOST:PORT...]"
                    .to_owned(),
                source: None,
            })
        }
    }
}

impl AnyStore {
    /// For an agent: whether its credentials let it write to the store, which it never needs.
    /// `Ok(None)` where stek does not check (Redis here; etcd without a user, where etcd has no
    /// authentication and anyone may write). See [`EtcdStore::can_write`].
    pub async fn can_write_needlessly(&self) -> Result<Option<bool>, StoreError> {
        match self {
            AnyStore::Etcd(s) if s.has_user() => s.can_write().await.map(Some),
            _ => Ok(None),
        }
    }
}

/// Whether `url` names a Redis (a server, or the primary that sentinels name).
fn is_redis(url: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis+sentinel://",
        "rediss+sentinel://",
    ]
    .iter()
    .any(|s| url.starts_with(s))
}

impl Store for AnyStore {
    async fn create(
        &self,
        group: &str,
        slot: Slot,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<Created, StoreError> {
        match self {
            AnyStore::Redis(s) => s.create(group, slot, record, expires_at).await,
            AnyStore::Etcd(s) => s.create(group, slot, record, expires_at).await,
        }
    }

    async fn replace(
        &self,
        group: &str,
        slot: Slot,
        seen: &Seen,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<Replaced, StoreError> {
        match self {
            AnyStore::Redis(s) => s.replace(group, slot, seen, record, expires_at).await,
            AnyStore::Etcd(s) => s.replace(group, slot, seen, record, expires_at).await,
        }
    }

    async fn read_window(
        &self,
        group: &str,
        first: Slot,
        last: Slot,
    ) -> Result<Vec<(Slot, Found)>, StoreError> {
        match self {
            AnyStore::Redis(s) => s.read_window(group, first, last).await,
            AnyStore::Etcd(s) => s.read_window(group, first, last).await,
        }
    }

    fn changes(&self, group: &str) -> Option<watch::Receiver<u64>> {
        match self {
            AnyStore::Redis(s) => s.changes(group),
            AnyStore::Etcd(s) => s.changes(group),
        }
    }

    async fn remove_before(&self, group: &str, slot: Slot) -> Result<u64, StoreError> {
        match self {
            AnyStore::Redis(s) => s.remove_before(group, slot).await,
            AnyStore::Etcd(s) => s.remove_before(group, slot).await,
        }
    }

    async fn survey(&self) -> Result<Option<super::Survey>, StoreError> {
        match self {
            AnyStore::Redis(s) => s.survey().await,
            AnyStore::Etcd(s) => s.survey().await,
        }
    }

    async fn server_time(&self) -> Result<Option<Duration>, StoreError> {
        match self {
            AnyStore::Redis(s) => s.server_time().await.map(Some),
            AnyStore::Etcd(s) => s.server_time().await.map(Some),
        }
    }
}
