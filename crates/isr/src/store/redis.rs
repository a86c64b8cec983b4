//! The shared store: Redis, for several isr nodes behind one load balancer.
//!
//! Layout under the configured prefix `P` (one Redis database may hold several sites):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:e:{key}` | hash | `gen`, `meta` (JSON), `id`, `br`, `gz` (bodies), `tags` |
//! | `P:keys` | sorted set (all scores 0) | every key, for prefix scans (`ZRANGEBYLEX`) |
//! | `P:t:{tag}` | set | the keys carrying a tag |
//! | `P:marks` | hash | the tag clock: target name → `"stale_at expire_at"` |
//! | `P:version` | counter | bumped with every mark, so a node can tell it missed one |
//! | `P:lease:{key}` | string with a TTL | the token of the node regenerating `key` |
//! | channel `P:events` | pub/sub | `m VERSION STALE EXPIRE NAME` and `s GENERATION KEY` |
//!
//! Writes that must be atomic (an entry with its tag index; a mark with its version and
//! its announcement) are Lua scripts. Keys are computed inside the scripts, so this layout
//! needs a single Redis (or a primary with replicas), not Redis Cluster.
//!
//! Redis being away never stops a node: every call is bounded by `CALL_TIMEOUT` (1 s), and
//! after a failure the adapter answers "unavailable" at once for `RETRY_AFTER` (1 s) instead
//! of making every request wait for Redis. The connection manager reconnects with backoff;
//! the subscriber resubscribes and resynchronises the tag clock on every (re)connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::{broadcast, mpsc};

use super::{Lease, LeaseGuard, Store, StoreError, StoreEvent, StoreFuture, StoreStats};
use crate::entry::{Entry, Meta};
use crate::policy::Mark;

/// The longest any single Redis call may take before it counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// After a failed call, how long calls fail at once before Redis is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(1000);
/// How long a regeneration lease lasts unless renewed (renewed every third of it).
const LEASE_TTL: Duration = Duration::from_millis(3000);

const PUT: &str = r"
local p, k = ARGV[1], ARGV[2]
local ek = p .. ':e:' .. k
local old = redis.call('HGET', ek, 'gen')
if old and tonumber(old) > tonumber(ARGV[3]) then return 0 end
local oldtags = redis.call('HGET', ek, 'tags')
if oldtags then
  for t in string.gmatch(oldtags, '[^\n]+') do redis.call('SREM', p .. ':t:' .. t, k) end
end
redis.call('HSET', ek, 'gen', ARGV[3], 'meta', ARGV[4], 'id', ARGV[5], 'br', ARGV[6], 'gz', ARGV[7], 'tags', ARGV[8])
for t in string.gmatch(ARGV[8], '[^\n]+') do redis.call('SADD', p .. ':t:' .. t, k) end
redis.call('ZADD', p .. ':keys', 0, k)
redis.call('PUBLISH', p .. ':events', 's ' .. ARGV[3] .. ' ' .. k)
return 1
";

const PUT_MARK: &str = r"
local p, name = ARGV[1], ARGV[2]
local s, e = tonumber(ARGV[3]), tonumber(ARGV[4])
local old = redis.call('HGET', p .. ':marks', name)
if old then
  local os_, oe = string.match(old, '(%d+) (%d+)')
  s = math.max(s, tonumber(os_))
  e = math.max(e, tonumber(oe))
end
local mark = string.format('%.0f %.0f', s, e)
redis.call('HSET', p .. ':marks', name, mark)
local v = redis.call('INCR', p .. ':version')
redis.call('PUBLISH', p .. ':events', 'm ' .. v .. ' ' .. mark .. ' ' .. name)
return v
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Entries, the tag clock and regeneration leases in one Redis shared by every node.
pub struct RedisStore {
    shared: Arc<Shared>,
    events: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
}

struct Shared {
    prefix: String,
    con: ConnectionManager,
    put: Script,
    put_mark: Script,
    renew: Script,
    release: Script,
    /// Unix ms before which calls fail at once (Redis failed recently).
    down_until: AtomicU64,
    /// Whether the last call failed (to log the change of state once, not per call).
    down: AtomicBool,
    /// Keys whose new page another node just stored (wakes nodes waiting on a lease).
    stored: broadcast::Sender<Arc<str>>,
    /// This process's lease tokens: `pid-start-n`.
    token_base: String,
    tokens: AtomicU64,
}

impl RedisStore {
    /// Connects lazily to `url` (a node starts even while Redis is down) and starts the
    /// subscriber that keeps this node's tag clock in step with the others.
    pub fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Failed(format!("redis url {url}: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let con = client
            .get_connection_manager_lazy(config)
            .map_err(|e| StoreError::Failed(format!("redis {url}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            prefix: prefix.to_string(),
            con,
            put: Script::new(PUT),
            put_mark: Script::new(PUT_MARK),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            down_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            stored: broadcast::channel(1024).0,
            token_base: format!("{}-{}", std::process::id(), unix_ms()),
            tokens: AtomicU64::new(0),
        });
        tokio::spawn(subscribe(client, shared.clone(), tx));
        Ok(RedisStore {
            shared,
            events: Mutex::new(Some(rx)),
        })
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    /// Runs one Redis call, bounded in time, failing at once while Redis is known down.
    async fn call<T, F>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if unix_ms() < self.down_until.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("redis is not reachable".into()));
        }
        let result = match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if !is_connection_error(&e) => {
                return Err(StoreError::Failed(format!("redis {what}: {e}")))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        };
        match result {
            Ok(v) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis is reachable again");
                }
                Ok(v)
            }
            Err(why) => {
                self.down_until.store(
                    unix_ms() + RETRY_AFTER.as_millis() as u64,
                    Ordering::Relaxed,
                );
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %why, retry_in = ?RETRY_AFTER, "redis is unavailable; serving from memory and the origin until it returns");
                }
                Err(StoreError::Unavailable(format!("redis {what}: {why}")))
            }
        }
    }

    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

fn corrupt(key: &str, what: &str) -> StoreError {
    StoreError::Failed(format!("redis entry {key}: {what}"))
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            let ek = s.key("e", key);
            let fields: Vec<Option<Vec<u8>>> = s
                .call("get", async {
                    redis::cmd("HMGET")
                        .arg(&ek)
                        .arg(&["meta", "id", "br", "gz"])
                        .query_async(&mut con)
                        .await
                })
                .await?;
            let mut it = fields.into_iter();
            let (Some(Some(meta)), Some(Some(id)), Some(br), Some(gz)) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Ok(None);
            };
            let meta = Meta::from_bytes(&meta).map_err(|e| corrupt(key, &e.to_string()))?;
            let variant = |present: bool, body: Option<Vec<u8>>| match (present, body) {
                (true, Some(b)) => Ok(Some(Bytes::from(b))),
                (true, None) => Err(corrupt(key, "a body variant is missing")),
                (false, _) => Ok(None),
            };
            let br = variant(meta.br, br)?;
            let gz = variant(meta.gzip, gz)?;
            Ok(Some(Entry::new(meta, Bytes::from(id), br, gz)))
        })
    }

    fn get_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Meta>> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            let meta: Option<Vec<u8>> = s
                .call("get_meta", con.hget(s.key("e", key), "meta"))
                .await?;
            meta.map(|m| Meta::from_bytes(&m).map_err(|e| corrupt(key, &e.to_string())))
                .transpose()
        })
    }

    fn put<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            let (identity, br, gzip) = (entry.identity(), entry.br(), entry.gzip());
            let mut inv = s.put.prepare_invoke();
            inv.arg(&s.prefix)
                .arg(key)
                .arg(entry.meta.generated)
                .arg(entry.meta.to_bytes())
                .arg(identity.as_ref())
                .arg(br.as_deref().unwrap_or_default())
                .arg(gzip.as_deref().unwrap_or_default())
                .arg(entry.meta.tags.join("\n"));
            let written: i64 = s.call("put", inv.invoke_async(&mut con)).await?;
            Ok(written == 1)
        })
    }

    fn keys_with_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            let mut keys: Vec<String> = s
                .call("keys_with_tag", con.smembers(s.key("t", tag)))
                .await?;
            keys.sort();
            Ok(keys)
        })
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            // `[prefix` .. `[prefix\xff`: every member starting with prefix (keys are
            // UTF-8, which never contains the byte 0xff).
            let mut max = format!("[{prefix}").into_bytes();
            max.push(0xff);
            let keys: Vec<String> = s
                .call("keys_with_prefix", async {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(format!("{}:keys", s.prefix))
                        .arg(format!("[{prefix}"))
                        .arg(max)
                        .query_async(&mut con)
                        .await
                })
                .await?;
            Ok(keys)
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Meta)>> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            // ZRANGEBYLEX bounds: `(` exclusive, `[` inclusive.
            let min = match super::list_start(prefix, after) {
                std::ops::Bound::Excluded(a) => format!("({a}"),
                _ => format!("[{prefix}"),
            };
            let mut max = format!("[{prefix}").into_bytes();
            max.push(0xff);
            let keys: Vec<String> = s
                .call("list", async {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(format!("{}:keys", s.prefix))
                        .arg(&min)
                        .arg(&max)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit)
                        .query_async(&mut con)
                        .await
                })
                .await?;
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.hget(s.key("e", k), "meta");
            }
            let metas: Vec<Option<Vec<u8>>> = s.call("list", pipe.query_async(&mut con)).await?;
            Ok(keys
                .into_iter()
                .zip(metas)
                .filter_map(|(k, m)| Some((k, Meta::from_bytes(&m?).ok()?)))
                .collect())
        })
    }

    fn stats(&self) -> StoreFuture<'_, StoreStats> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            let (entries, info): (u64, String) = s
                .call("stats", async {
                    redis::pipe()
                        .zcard(format!("{}:keys", s.prefix))
                        .cmd("INFO")
                        .arg("memory")
                        .query_async(&mut con)
                        .await
                })
                .await?;
            let bytes = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            Ok(StoreStats { entries, bytes })
        })
    }

    fn put_mark<'a>(&'a self, name: &'a str, mark: Mark) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            let mut inv = s.put_mark.prepare_invoke();
            inv.arg(&s.prefix)
                .arg(name)
                .arg(mark.stale_at)
                .arg(mark.expire_at);
            let _version: u64 = s.call("put_mark", inv.invoke_async(&mut con)).await?;
            Ok(())
        })
    }

    fn load_marks(&self) -> StoreFuture<'_, Vec<(String, Mark)>> {
        Box::pin(async move { Ok(load_marks(&self.shared).await?.1) })
    }

    fn lease<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Lease> {
        Box::pin(async move {
            let s = &self.shared;
            let mut con = s.con();
            let lease_key = s.key("lease", key);
            let token = format!(
                "{}-{}",
                s.token_base,
                s.tokens.fetch_add(1, Ordering::Relaxed)
            );
            let taken: Option<String> = s
                .call("lease", async {
                    redis::cmd("SET")
                        .arg(&lease_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(LEASE_TTL.as_millis() as u64)
                        .query_async(&mut con)
                        .await
                })
                .await?;
            if taken.is_none() {
                return Ok(Lease::Elsewhere);
            }
            let renewer = {
                let (s, lease_key, token) = (s.clone(), lease_key.clone(), token.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(LEASE_TTL / 3).await;
                        let mut con = s.con();
                        let mut inv = s.renew.key(&lease_key);
                        inv.arg(&token).arg(LEASE_TTL.as_millis() as u64);
                        let renewed: Result<i64, _> =
                            s.call("renew lease", inv.invoke_async(&mut con)).await;
                        if !matches!(renewed, Ok(1)) {
                            tracing::warn!(key = %lease_key, "lost the regeneration lease; another node may regenerate this page too");
                            return;
                        }
                    }
                })
            };
            let s = s.clone();
            Ok(Lease::Held(LeaseGuard::new(move || {
                renewer.abort();
                tokio::spawn(async move {
                    let mut con = s.con();
                    let mut inv = s.release.key(&lease_key);
                    inv.arg(&token);
                    let _: Result<i64, _> =
                        s.call("release lease", inv.invoke_async(&mut con)).await;
                });
            })))
        })
    }

    fn wait_for_lease<'a>(&'a self, key: &'a str, at_most: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let s = &self.shared;
            let lease_key = s.key("lease", key);
            let mut stored = s.stored.subscribe();
            let deadline = tokio::time::Instant::now() + at_most;
            loop {
                let mut con = s.con();
                let held: bool = s.call("wait", con.exists(&lease_key)).await?;
                if !held {
                    return Ok(());
                }
                // Woken by the holder's announcement, or polling in case it was missed
                // (or the holder died and its lease expired).
                let poll = tokio::time::sleep(Duration::from_millis(50));
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return Ok(()),
                    () = poll => {}
                    done = wait_stored(&mut stored, key) => if done { return Ok(()) },
                }
            }
        })
    }

    fn events(&self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Completes with `true` when another node announces a new page for `key` (or `false`
/// when announcements were lost and the caller should check for itself).
async fn wait_stored(rx: &mut broadcast::Receiver<Arc<str>>, key: &str) -> bool {
    loop {
        match rx.recv().await {
            Ok(k) if &*k == key => return true,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return false,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// The version counter and every mark, read together.
async fn load_marks(s: &Shared) -> Result<(u64, Vec<(String, Mark)>), StoreError> {
    let mut con = s.con();
    let (version, marks): (Option<u64>, Vec<(String, String)>) = s
        .call("load marks", async {
            redis::pipe()
                .atomic()
                .get(format!("{}:version", s.prefix))
                .hgetall(format!("{}:marks", s.prefix))
                .query_async(&mut con)
                .await
        })
        .await?;
    let marks = marks
        .into_iter()
        .filter_map(|(name, v)| parse_mark(&v).map(|m| (name, m)))
        .collect();
    Ok((version.unwrap_or(0), marks))
}

fn parse_mark(text: &str) -> Option<Mark> {
    let (s, e) = text.split_once(' ')?;
    Some(Mark {
        stale_at: s.parse().ok()?,
        expire_at: e.parse().ok()?,
    })
}

/// One message on the events channel.
#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    Mark {
        version: u64,
        mark: Mark,
        name: &'a str,
    },
    Stored {
        generated: u64,
        key: &'a str,
    },
}

fn parse_message(text: &str) -> Option<Message<'_>> {
    let (kind, rest) = text.split_once(' ')?;
    match kind {
        "m" => {
            let mut parts = rest.splitn(4, ' ');
            let version = parts.next()?.parse().ok()?;
            let stale_at = parts.next()?.parse().ok()?;
            let expire_at = parts.next()?.parse().ok()?;
            let name = parts.next()?;
            Some(Message::Mark {
                version,
                mark: Mark {
                    stale_at,
                    expire_at,
                },
                name,
            })
        }
        "s" => {
            let (generated, key) = rest.split_once(' ')?;
            Some(Message::Stored {
                generated: generated.parse().ok()?,
                key,
            })
        }
        _ => None,
    }
}

/// Keeps this node's tag clock and memory tier in step with the cluster, forever:
/// subscribe, resynchronise the whole clock (pub/sub keeps no history, so anything
/// published while this node was away is read back from `P:marks`), then apply each
/// message; a gap in the mark versions triggers another resynchronisation.
async fn subscribe(
    client: redis::Client,
    s: Arc<Shared>,
    events: mpsc::UnboundedSender<StoreEvent>,
) {
    let channel = format!("{}:events", s.prefix);
    let mut backoff = Duration::from_millis(100);
    let mut was_connected = false;
    let mut failures = 0u32;
    loop {
        let subscribed = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let why = match tokio::time::timeout(CALL_TIMEOUT, subscribed).await {
            Ok(Ok(ps)) => Ok(ps),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer".to_string()),
        };
        let ps = match why {
            Ok(ps) => ps,
            Err(why) => {
                // Said once per outage; the retries go on quietly (every second at most).
                if failures == 0 {
                    tracing::warn!(error = %why, "cannot subscribe to redis invalidations; retrying until it answers");
                } else {
                    tracing::debug!(error = %why, retry_in = ?backoff, "redis subscription retry failed");
                }
                failures += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(mut seen) = resync(&s, &events).await else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        if was_connected {
            tracing::info!(
                version = seen,
                "resubscribed to redis invalidations and resynchronised the tag clock"
            );
        }
        was_connected = true;
        failures = 0;
        backoff = Duration::from_millis(100);
        let mut stream = ps.into_on_message();
        use futures_util::StreamExt;
        while let Some(msg) = stream.next().await {
            let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
                continue;
            };
            match parse_message(text) {
                Some(Message::Mark {
                    version,
                    mark,
                    name,
                }) => {
                    let _ = events.send(StoreEvent::Mark {
                        name: name.to_string(),
                        mark,
                    });
                    if version > seen + 1 {
                        tracing::info!(
                            expected = seen + 1,
                            got = version,
                            "missed an invalidation; resynchronising the tag clock"
                        );
                        match resync(&s, &events).await {
                            Some(v) => seen = v.max(version),
                            None => break,
                        }
                    } else {
                        seen = seen.max(version);
                    }
                }
                Some(Message::Stored { generated, key }) => {
                    let key: Arc<str> = key.into();
                    let _ = s.stored.send(key.clone());
                    let _ = events.send(StoreEvent::Stored { key, generated });
                }
                None => tracing::debug!(message = text, "ignored an unknown redis event"),
            }
        }
        tracing::error!("lost the redis invalidation subscription; reconnecting");
    }
}

/// Reads every mark back and hands it to the engine; returns the version read.
async fn resync(s: &Shared, events: &mpsc::UnboundedSender<StoreEvent>) -> Option<u64> {
    match load_marks(s).await {
        Ok((version, marks)) => {
            for (name, mark) in marks {
                let _ = events.send(StoreEvent::Mark { name, mark });
            }
            Some(version)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the tag clock from redis");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_names_with_spaces() {
        assert_eq!(
            parse_message("m 7 100 0 t:a tag with spaces"),
            Some(Message::Mark {
                version: 7,
                mark: Mark {
                    stale_at: 100,
                    expire_at: 0
                },
                name: "t:a tag with spaces"
            })
        );
        assert_eq!(
            parse_message("s 1700000000000 /blog/a?x=1"),
            Some(Message::Stored {
                generated: 1_700_000_000_000,
                key: "/blog/a?x=1"
            })
        );
        assert_eq!(parse_message("x 1 2"), None);
        assert_eq!(parse_message("m nope"), None);
        assert_eq!(
            parse_mark("12 34"),
            Some(Mark {
                stale_at: 12,
                expire_at: 34
            })
        );
    }
}
