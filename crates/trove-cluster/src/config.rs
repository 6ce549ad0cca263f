//! [`ClusterConfig`]: what every node of a cluster must agree on, stored
//! once as JSON under key `config` of the `trove_C_config` KV bucket.
//! [`ensure`] is create-or-check: the first node creates it with a KV
//! `create` (succeeds only if absent), so of two racing first nodes one
//! writes and the other reads what it wrote and checks it.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, bounded, classify};
use crate::names::{CONFIG_KEY, PARTITIONS_MAX};
use crate::{Nats, open_kv};

/// The stored config is at most this many bytes (read as hostile: a
/// larger value is [`ClusterError::Malformed`], never parsed).
pub const CONFIG_BYTES_MAX: usize = 4096;

/// The config format this build writes and understands.
pub const CONFIG_FORMAT: u32 = 1;

/// What every node of a cluster must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// [`CONFIG_FORMAT`]: a node refuses a format it does not know.
    pub format: u32,
    /// The game the cluster's journal frames hold (its registry name).
    pub game: String,
    /// The game's event record size in bytes (frames are decoded with it).
    pub record_size: u32,
    /// Number of partitions, fixed when the cluster is created:
    /// `partition = shard_of(world, partitions)`.
    pub partitions: u32,
    /// Worlds (hunts) a partition holds at most.
    pub worlds_max: u64,
    /// Events of each producer's history kept for exactly-once
    /// (`EngineConfig::dedup_window_events`): a partition's dedup state
    /// moves with it, so every owner keeps the same window.
    pub dedup_window_events: u64,
    /// Producers a partition remembers (`EngineConfig::dedup_producers_max`).
    pub dedup_producers_max: u64,
}

impl ClusterConfig {
    /// Checks the fields a node could not work with.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |field: &'static str, found: String, wanted: &str| {
            Err(ClusterError::ConfigMismatch { field, found, wanted: wanted.to_string() })
        };
        if self.format != CONFIG_FORMAT {
            return bad("format", self.format.to_string(), &CONFIG_FORMAT.to_string());
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return bad("partitions", self.partitions.to_string(), &format!("1..={PARTITIONS_MAX}"));
        }
        Ok(())
    }

    /// The first field where `self` (the cluster's) differs from `wanted`
    /// (this node's), as [`ClusterError::ConfigMismatch`].
    fn check(&self, wanted: &ClusterConfig) -> Result<(), ClusterError> {
        let fields: [(&'static str, String, String); 7] = [
            ("format", self.format.to_string(), wanted.format.to_string()),
            ("game", self.game.clone(), wanted.game.clone()),
            ("record_size", self.record_size.to_string(), wanted.record_size.to_string()),
            ("partitions", self.partitions.to_string(), wanted.partitions.to_string()),
            ("worlds_max", self.worlds_max.to_string(), wanted.worlds_max.to_string()),
            ("dedup_window_events", self.dedup_window_events.to_string(), wanted.dedup_window_events.to_string()),
            ("dedup_producers_max", self.dedup_producers_max.to_string(), wanted.dedup_producers_max.to_string()),
        ];
        for (field, found, want) in fields {
            if found != want {
                return Err(ClusterError::ConfigMismatch { field, found, wanted: want });
            }
        }
        Ok(())
    }
}

/// Parses a stored config (hostile bytes: bounded, typed errors).
pub fn parse(bytes: &[u8]) -> Result<ClusterConfig, ClusterError> {
    let malformed = |message: String| ClusterError::Malformed { what: "cluster config".to_string(), message };
    if bytes.len() > CONFIG_BYTES_MAX {
        return Err(malformed(format!("{} bytes, over the limit of {CONFIG_BYTES_MAX}", bytes.len())));
    }
    serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))
}

/// Creates the cluster's config as `wanted` if there is none, else reads
/// it and checks it equals `wanted`. Returns the cluster's config.
pub async fn ensure(nats: &Nats, wanted: &ClusterConfig) -> Result<ClusterConfig, ClusterError> {
    wanted.validate()?;
    let what = "cluster config";
    let timeout = nats.request_timeout();
    let store = open_kv(
        nats.jetstream(),
        timeout,
        kv::Config {
            bucket: nats.names().config_bucket(),
            history: 1,
            max_value_size: CONFIG_BYTES_MAX as i32,
            num_replicas: nats.replicas(),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let json = serde_json::to_vec(wanted).expect("a config serialises");
    let created = bounded(what, timeout * 2, async {
        match store.create(CONFIG_KEY, json.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(classify(what, &e, timeout)),
        }
    })
    .await?;
    if created {
        return Ok(wanted.clone());
    }
    let stored =
        bounded(what, timeout, async { store.get(CONFIG_KEY).await.map_err(|e| classify(what, &e, timeout)) }).await?;
    let Some(stored) = stored else {
        // Created by another and deleted since: nobody deletes it, so this
        // is a hand-made bucket.
        return Err(ClusterError::Malformed {
            what: what.to_string(),
            message: "the config key exists but holds no value".to_string(),
        });
    };
    let cluster = parse(&stored)?;
    cluster.check(wanted)?;
    Ok(cluster)
}

/// The cluster's config, if it has been created (read only: nothing is
/// created; for `trove replay --cluster` and for a node that adopts the
/// partition count it was not given).
pub async fn read(nats: &Nats) -> Result<Option<ClusterConfig>, ClusterError> {
    let what = "cluster config";
    let timeout = nats.request_timeout();
    let bucket = nats.names().config_bucket();
    let store = bounded(what, timeout, async {
        match nats.jetstream().get_key_value(bucket.as_str()).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket => Ok(None),
            Err(e) => Err(classify(what, &e, timeout)),
        }
    })
    .await?;
    let Some(store) = store else { return Ok(None) };
    let stored =
        bounded(what, timeout, async { store.get(CONFIG_KEY).await.map_err(|e| classify(what, &e, timeout)) }).await?;
    stored.map(|bytes| parse(&bytes)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig {
            format: 1,
            game: "treasure-hunt".to_string(),
            record_size: 32,
            partitions: 8,
            worlds_max: 1024,
            dedup_window_events: 65_536,
            dedup_producers_max: 1024,
        }
    }

    #[test]
    fn the_json_is_the_designs() {
        let json = serde_json::to_string(&config()).unwrap();
        assert_eq!(
            json,
            r#"{"format":1,"game":"treasure-hunt","record_size":32,"partitions":8,"worlds_max":1024,"dedup_window_events":65536,"dedup_producers_max":1024}"#
        );
        assert_eq!(parse(json.as_bytes()).unwrap(), config());
        // A config without the dedup bounds (written before they were
        // recorded) is refused, not read with bounds of zero.
        let old = r#"{"format":1,"game":"treasure-hunt","record_size":32,"partitions":8,"worlds_max":1024}"#;
        assert!(matches!(parse(old.as_bytes()), Err(ClusterError::Malformed { .. })));
    }

    #[test]
    fn hostile_bytes_are_typed_errors() {
        for bad in [&b""[..], b"{", b"null", b"{\"format\":1}", b"\xff\xfe", &[b' '; CONFIG_BYTES_MAX + 1]] {
            assert!(matches!(parse(bad), Err(ClusterError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn a_mismatch_names_the_field() {
        let mut other = config();
        other.partitions = 16;
        match config().check(&other) {
            Err(ClusterError::ConfigMismatch { field: "partitions", found, wanted }) => {
                assert_eq!((found.as_str(), wanted.as_str()), ("8", "16"));
            }
            r => panic!("{r:?}"),
        }
        assert!(config().check(&config()).is_ok());
        let mut other = config();
        other.dedup_window_events = 0;
        assert!(matches!(
            config().check(&other),
            Err(ClusterError::ConfigMismatch { field: "dedup_window_events", .. })
        ));
    }
}
