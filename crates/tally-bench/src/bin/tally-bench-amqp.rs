//! `tally-bench-amqp`: the notification consumption benchmark
//! (`scripts/bench-amqp`).
//!
//! Publishes N legacy Nova notifications (oslo v2 envelopes) twice to the
//! same broker: once into a queue drained by a bare lapin consume-and-ack
//! loop (with Tally's default prefetch, one multiple ack per default
//! batch of messages: the pattern Tally's consumer uses), once to an exchange a `tally serve` consumes
//! into durable records. Times both from the first delivery to the last
//! acknowledgement (Tally: until `/metrics` counts N stored). A run is
//! several rounds, each the bare loop then Tally, because on a small shared
//! machine the broker's own rate moves by a fifth from one minute to the
//! next; it prints one JSON object per round and a last one with the median
//! ratio.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Notifications consumed per second: Tally against a bare lapin loop.
#[derive(Parser, Debug)]
struct Args {
    /// Broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Notifications per run.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// The `tally` binary (release).
    #[arg(long)]
    tally: std::path::PathBuf,
    /// Scratch directory for Tally's data.
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Rounds (bare loop, then Tally) measured; the median ratio is the
    /// figure.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

fn notification(i: u64) -> Vec<u8> {
    let message = serde_json::json!({
        "message_id": format!("bench-{i}"),
        "publisher_id": "compute.bench",
        "event_type": "compute.instance.exists",
        "priority": "INFO",
        "timestamp": "2026-10-01 00:00:00.000000",
        "payload": {
            "tenant_id": format!("project-{}", i % 1000),
            "user_id": "u",
            "instance_id": format!("vm-{}", i % 50_000),
            "instance_type": "m1.small",
            "instance_type_id": 2,
            "vcpus": 1,
            "memory_mb": 2048,
            "root_gb": 20,
            "state": "active",
        }
    });
    serde_json::json!({"oslo.version": "2.0", "oslo.message": message.to_string()})
        .to_string()
        .into_bytes()
}

/// CPU time (user and system) a process has used so far, from
/// `/proc/PID/stat`; 0 where that cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the
    // state; utime and stime are the 14th and 15th fields overall.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let clock = 100.0; // USER_HZ on Linux
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / clock,
        _ => 0.0,
    }
}

async fn publish(
    channel: &lapin::Channel,
    exchange: &str,
    key: &str,
    n: u64,
) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        pending.push(
            channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &notification(i),
                    BasicProperties::default(),
                )
                .await?,
        );
        if pending.len() == 10_000 {
            for c in pending.drain(..) {
                c.await?;
            }
        }
    }
    for c in pending {
        c.await?;
    }
    Ok(())
}

/// One round's figures.
struct Round {
    /// Seconds the bare loop took.
    bare_seconds: f64,
    /// Seconds the consumer of `tally serve` took.
    consumer_seconds: f64,
    /// CPU seconds `tally serve` used meanwhile.
    consumer_cpu_seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let n = args.messages as f64;
    let mut ratios = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let r = measure_round(&args, &conn, &channel, round).await?;
        let ratio = (n / r.consumer_seconds) / (n / r.bare_seconds);
        ratios.push(ratio);
        println!(
            "{}",
            serde_json::json!({
                "round": round,
                "messages": args.messages,
                "bare_lapin_s": r.bare_seconds,
                "bare_lapin_per_s": n / r.bare_seconds,
                "tally_s": r.consumer_seconds,
                "tally_per_s": n / r.consumer_seconds,
                "tally_cpu_s": r.consumer_cpu_seconds,
                "tally_cpu_us_per_message": r.consumer_cpu_seconds * 1e6 / n,
                "records": args.messages * 4,
                "ratio_tally_to_bare": ratio,
            })
        );
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    println!(
        "{}",
        serde_json::json!({
            "rounds": ratios.len(),
            "ratios": ratios,
            "median_ratio_tally_to_bare": median,
            "min_ratio": sorted.first(),
            "max_ratio": sorted.last(),
        })
    );
    Ok(())
}

/// The bare loop, then Tally, on `args.messages` notifications each.
async fn measure_round(
    args: &Args,
    conn: &Connection,
    channel: &lapin::Channel,
    round: u32,
) -> anyhow::Result<Round> {
    let suffix = std::process::id();
    let (bare_q, tally_q, exchange) = (
        format!("bench.bare.{suffix}.{round}"),
        format!("bench.tally.{suffix}.{round}"),
        format!("bench-nova-{suffix}-{round}"),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };

    // The bare loop.
    channel
        .queue_declare(bare_q.as_str().into(), durable, FieldTable::default())
        .await?;
    eprintln!(
        "round {round}: publishing {} notifications for the bare loop",
        args.messages
    );
    publish(channel, "", &bare_q, args.messages).await?;
    let consumer_channel = conn.create_channel().await?;
    // The same window and ack interval as Tally's defaults, so that the
    // two consumers differ only in what they do with a message.
    let defaults = tally_amqp::AmqpConfig::default();
    consumer_channel
        .basic_qos(defaults.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            bare_q.as_str().into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = 0u64;
    let mut started = None;
    while let Some(d) = consumer.next().await {
        let d = d?;
        started.get_or_insert_with(Instant::now);
        got += 1;
        if got.is_multiple_of(defaults.batch_max as u64) || got == args.messages {
            consumer_channel
                .basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
        if got == args.messages {
            break;
        }
    }
    let bare_s = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    channel
        .queue_delete(bare_q.as_str().into(), QueueDeleteOptions::default())
        .await?;

    // Tally.
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(tally_q.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            tally_q.as_str().into(),
            exchange.as_str().into(),
            "notifications.info".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "round {round}: publishing {} notifications for tally",
        args.messages
    );
    publish(channel, &exchange, "notifications.info", args.messages).await?;
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let config = args.dir.join("tally.toml");
    std::fs::write(
        &config,
        format!(
            "[amqp]\nurl = \"{}\"\nqueue = \"{tally_q}\"\ndead_letter_queue = \"{tally_q}.dead\"\nexchanges = [\"{exchange}\"]\nrouting_keys = [\"notifications.info\"]\n",
            args.amqp
        ),
    )?;
    let port = 18_000 + (suffix % 1000) as u16 + round as u16;
    let mut child = std::process::Command::new(&args.tally)
        .args(["--config"])
        .arg(&config)
        .args(["--data-dir"])
        .arg(args.dir.join("data"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("TALLY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start tally serve")?;
    let http = reqwest::Client::new();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let stored = |text: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("tally_amqp_messages_total") && l.contains("outcome=\"stored\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let pid = child.id();
    let mut first = None;
    let mut cpu_at_first = 0.0;
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(&metrics).send().await
            && let Ok(text) = r.text().await
        {
            done = stored(&text);
            if done > 0 && first.is_none() {
                first = Some(Instant::now());
                cpu_at_first = cpu_seconds(pid);
            }
            if done >= args.messages {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tally_s = first.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let tally_cpu_s = cpu_seconds(pid) - cpu_at_first;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    channel
        .queue_delete(tally_q.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = channel
        .queue_delete(
            format!("{tally_q}.dead").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    anyhow::ensure!(
        done >= args.messages,
        "tally stored {done} of {} messages",
        args.messages
    );
    Ok(Round {
        bare_seconds: bare_s,
        consumer_seconds: tally_s,
        consumer_cpu_seconds: tally_cpu_s,
    })
}
