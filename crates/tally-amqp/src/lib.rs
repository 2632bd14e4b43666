//! The notification consumer: OpenStack notifications from RabbitMQ into
//! the raw usage store.
//!
//! Tally never competes for the services' own queues (`notifications.info`
//! is Ceilometer's): it declares its own durable queue and binds it to the
//! services' exchanges with the configured routing keys. Messages are taken
//! with a bounded prefetch, decoded by the OpenStack decoder, appended to
//! the store, and acknowledged only once their records are durable, so a
//! crash means redelivery, which the store's dedupe absorbs. A message Tally
//! cannot decode goes to a dead-letter queue with the reason in its headers;
//! event types Tally does not bill are acknowledged and counted by type.
//! Connection failures are retried with backoff.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use tally_collect::Decoder;
use tally_collect::openstack::{self, OpenStackDecoder};
use tally_store::RawStore;

/// How long the consumer sleeps between looks for more deliveries while it
/// gathers a batch: at tens of thousands of messages a second, a few dozen
/// arrive in that time.
const GATHER_PAUSE: Duration = Duration::from_millis(1);

/// Records how long a batch spent in `stage` (ended now) in
/// `tally_amqp_stage_seconds`, and returns now: the start of the next stage.
fn stage_done(stage: &'static str, since: Instant) -> Instant {
    let now = Instant::now();
    metrics::histogram!("tally_amqp_stage_seconds", "stage" => stage)
        .record((now - since).as_secs_f64());
    now
}

/// `[amqp]`: where notifications come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AmqpConfig {
    /// Broker URL (`amqp://user:password@host:5672/%2f`); empty: no consumer.
    pub url: String,
    /// Tally's own durable queue.
    pub queue: String,
    /// Where undecodable messages go, with the reason in headers.
    pub dead_letter_queue: String,
    /// The services' exchanges to bind to.
    pub exchanges: Vec<String>,
    /// Routing keys bound on each exchange.
    pub routing_keys: Vec<String>,
    /// Whether the exchanges are durable: must match how the services
    /// declare them (oslo.messaging's `amqp_durable_queues`, false by
    /// default).
    pub exchange_durable: bool,
    /// Unacknowledged messages the broker may send ahead.
    pub prefetch: u16,
    /// Messages appended and acknowledged together.
    pub batch_max: usize,
    /// How long a batch waits for more messages, in milliseconds.
    pub batch_wait_ms: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: String::new(),
            queue: "tally.notifications".into(),
            dead_letter_queue: "tally.notifications.dead".into(),
            exchanges: [
                "nova",
                "cinder",
                "openstack",
                "neutron",
                "glance",
                "swift",
                "ceilometer",
            ]
            .map(String::from)
            .to_vec(),
            routing_keys: [
                "notifications.info",
                "versioned_notifications.info",
                "metering.sample",
            ]
            .map(String::from)
            .to_vec(),
            exchange_durable: false,
            // A window of six batches: with two, the broker stopped
            // sending whenever a batch was being made durable (see the
            // stage timings in docs/benchmarks.md).
            prefetch: 3000,
            batch_max: 500,
            batch_wait_ms: 50,
        }
    }
}

/// Why one consuming session ended.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The broker connection or a channel operation failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The store refused the records (they were not acknowledged).
    #[error("store: {0}")]
    Store(#[from] tally_store::StoreError),
    /// The consumer was cancelled by the broker.
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

/// Consumes until `shutdown` resolves, reconnecting with backoff (1 s,
/// doubling to 30 s) after any failure.
pub async fn run(store: RawStore, config: AmqpConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            result = consume(&store, &config) => {
                match result {
                    Ok(()) => backoff = Duration::from_secs(1),
                    Err(e) => {
                        metrics::counter!("tally_amqp_reconnects_total").increment(1);
                        tracing::warn!(error = %e, retry_in = ?backoff, "notification consumer stopped; reconnecting");
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One session: connect, declare, bind, consume until an error.
async fn consume(store: &RawStore, config: &AmqpConfig) -> Result<(), ConsumerError> {
    let conn = Connection::connect(&config.url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(config.queue.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_declare(
            config.dead_letter_queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    for exchange in &config.exchanges {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: config.exchange_durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for key in &config.routing_keys {
            channel
                .queue_bind(
                    config.queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            "tally".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %config.queue, exchanges = ?config.exchanges, "consuming notifications");
    let wait = Duration::from_millis(config.batch_wait_ms.max(1));
    // Two stages in one task: the next batch is gathered and decoded while
    // the previous one is made durable (an fdatasync, off this thread), and
    // batches are stored and acknowledged strictly in order, so a multiple
    // ack never covers a message that is not durable yet.
    let (decoded_tx, mut decoded_rx) = tokio::sync::mpsc::channel::<DecodedBatch>(1);
    let gather = async move {
        loop {
            // A batch: the first message whenever it comes, then whatever
            // arrives within the wait, up to the batch size.
            let idle = Instant::now();
            let Some(first) = consumer.next().await else {
                return Err(ConsumerError::Cancelled);
            };
            let mut batch = vec![first?];
            let started = stage_done("wait", idle);
            let deadline = tokio::time::Instant::now() + wait;
            // Take the deliveries that have arrived, then sleep a moment
            // and take the next ones, rather than awaiting each: awaiting
            // one delivery at a time woke this task, and so a thread, for
            // every message (a tenth of the consumer's CPU went to thread
            // switches). A batch waits at most `batch_wait_ms` as before.
            while batch.len() < config.batch_max {
                match consumer.next().now_or_never() {
                    Some(Some(d)) => batch.push(d?),
                    Some(None) => return Err(ConsumerError::Cancelled),
                    None => {
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            break;
                        }
                        tokio::time::sleep(GATHER_PAUSE.min(deadline - now)).await;
                    }
                }
            }
            let gathered = stage_done("gather", started);
            let decoded = decode_batch(store, batch);
            let queued = stage_done("decode", gathered);
            if decoded_tx.send(decoded).await.is_err() {
                // The writing stage stopped; its error ends the session.
                return Ok(());
            }
            stage_done("queued", queued);
        }
    };
    let write = async {
        while let Some(decoded) = decoded_rx.recv().await {
            commit_batch(store, &channel, config, decoded).await?;
        }
        Ok::<(), ConsumerError>(())
    };
    tokio::try_join!(gather, write)?;
    Ok(())
}

/// A batch of deliveries, decoded.
struct DecodedBatch {
    records: Vec<tally_core::UsageRecord>,
    /// Messages that became records: counted as stored once they are.
    stored_messages: u64,
    /// Messages that cannot be read, with why.
    dead: Vec<(Bytes, tally_collect::ElementError)>,
    /// The last delivery's tag: acknowledging it acknowledges the batch.
    last_tag: Option<u64>,
}

fn decode_batch(store: &RawStore, batch: Vec<lapin::message::Delivery>) -> DecodedBatch {
    let received_at = Utc::now().trunc_subsecs(6);
    let last_tag = batch.last().map(|d| d.delivery_tag);
    // A Nova notification becomes up to four records.
    let mut records = Vec::with_capacity(batch.len() * 4);
    let mut dead = Vec::new();
    let mut stored_messages = 0;
    for d in batch {
        // The delivery's buffer becomes the records' shared payload as it is.
        let bytes = Bytes::from(d.data);
        match OpenStackDecoder.decode(&bytes, received_at) {
            Ok(r) if r.is_empty() => {
                let event_type = openstack::ignored(&bytes)
                    .map(|(t, _)| t)
                    .unwrap_or_else(|| "unknown".into());
                metrics::counter!("tally_amqp_messages_total", "outcome" => "ignored").increment(1);
                store.counters().ignored(1);
                metrics::counter!("tally_amqp_ignored_total", "event_type" => event_type)
                    .increment(1);
            }
            Ok(r) => {
                stored_messages += 1;
                records.extend(r);
            }
            Err(e) => {
                metrics::counter!("tally_amqp_messages_total", "outcome" => "dead_lettered")
                    .increment(1);
                store.counters().dead_lettered(1);
                dead.push((bytes, e));
            }
        }
    }
    DecodedBatch {
        records,
        stored_messages,
        dead,
        last_tag,
    }
}

async fn commit_batch(
    store: &RawStore,
    channel: &lapin::Channel,
    config: &AmqpConfig,
    batch: DecodedBatch,
) -> Result<(), ConsumerError> {
    // Durable first, acknowledged after: a crash in between redelivers the
    // batch, and the store's dedupe counts it once.
    let started = Instant::now();
    let appended = store.append(batch.records).await;
    stage_done("durable", started);
    if let Err(e) = appended {
        if let Some(last) = batch.last_tag {
            channel
                .basic_nack(
                    last,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await?;
        }
        return Err(e.into());
    }
    metrics::counter!("tally_amqp_messages_total", "outcome" => "stored")
        .increment(batch.stored_messages);
    for (bytes, e) in batch.dead {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-tally-reason".into(),
            AMQPValue::LongString(e.message.clone().into()),
        );
        headers.insert(
            "x-tally-code".into(),
            AMQPValue::LongString(e.code.as_str().to_string().into()),
        );
        tracing::warn!(reason = %e.message, "notification dead-lettered");
        channel
            .basic_publish(
                "".into(),
                config.dead_letter_queue.as_str().into(),
                BasicPublishOptions::default(),
                &bytes,
                BasicProperties::default()
                    .with_headers(headers)
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
    }
    if let Some(last) = batch.last_tag {
        let started = Instant::now();
        channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await?;
        stage_done("ack", started);
    }
    Ok(())
}
