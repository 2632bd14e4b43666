//! `tally ingest`: import event files, locally or through a server.
//!
//! Locally the files are read, decoded on every core and written straight
//! into Parquet segments in large durable batches (no log: the batch is the
//! unit of durability, and the summary is printed only once everything is
//! cataloged). Through a server (`--server`), the files are posted to
//! `POST /v1/events` in NDJSON batches.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use chrono::{SubsecRound, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use tally_collect::files::{FileChunk, ReadError, read_chunks};
use tally_collect::{Decoded, Decoder, FORMATS, decode_elements, decoder_for};
use tally_core::{IngestSummary, UsageRecord};
use tally_db::Database;
use tally_store::{DataDirLock, LockError, LockHolder, RawStore};

use crate::client;
use crate::config::Config;
use crate::output::{OutputFormat, print_summary};

/// Arguments of `tally ingest`.
#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// Files to import: NDJSON or a JSON array of events, plain, gzip or
    /// zstd; `-` reads standard input (`tally gen | tally ingest -`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub remote: client::ServerArgs,
    /// Input format of the files.
    #[arg(long, default_value = "cloudevents")]
    pub format: String,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Records per durable write when importing locally. Two batches are in
    /// memory at once (one written, one filling): this bounds peak memory.
    #[arg(long, default_value_t = 200_000)]
    pub batch_records: usize,
}

const CHUNK_BYTES: usize = 4 << 20;

fn progress_bar(total: u64, output: OutputFormat) -> ProgressBar {
    if output != OutputFormat::Table || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} ({eta} left) {msg}",
        )
        .expect("valid template"),
    );
    pb
}

/// Runs `tally ingest`.
pub async fn run(cfg: Config, mut args: IngestArgs) -> anyhow::Result<ExitCode> {
    let decoder = decoder_for(&args.format).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown --format '{}': use one of {}",
            args.format,
            FORMATS.join(", ")
        )
    })?;
    for p in &mut args.paths {
        if p.as_os_str() == "-" {
            *p = PathBuf::from("/dev/stdin");
        }
        // Pipes and character devices (stdin, a FIFO) are streams too.
        anyhow::ensure!(
            p.exists() && !p.is_dir(),
            "{} is not a readable file",
            p.display()
        );
    }
    let total: u64 = args
        .paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let pb = progress_bar(total, args.output);
    let started = Instant::now();
    let (summary, failure) = match args.remote.connect(&cfg)? {
        Some(server) => remote(&args, &server, &pb).await?,
        None => local(&cfg, &args, decoder, &pb).await?,
    };
    pb.finish_and_clear();
    print_summary(&summary, args.output);
    if args.output == OutputFormat::Table {
        let secs = started.elapsed().as_secs_f64();
        let records = summary.total();
        eprintln!(
            "{records} records in {secs:.1} s ({:.0} records/s)",
            records as f64 / secs.max(1e-9)
        );
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

type Outcome = (IngestSummary, Option<anyhow::Error>);

/// Reads the files in order, numbering elements across all of them, and
/// hands each chunk to `send` (which returns false once nobody listens).
fn read_files(
    paths: &[PathBuf],
    chunk_bytes: usize,
    bytes_read: Arc<AtomicU64>,
    mut send: impl FnMut(FileChunk) -> bool,
) -> anyhow::Result<()> {
    let mut offset = 0u64;
    for path in paths {
        let n = read_chunks(
            path,
            chunk_bytes,
            bytes_read.clone(),
            |mut chunk: FileChunk| {
                chunk.base_index += offset;
                if send(chunk) {
                    Ok(())
                } else {
                    Err("the import stopped")
                }
            },
        )
        .map_err(|e: ReadError<&str>| anyhow::anyhow!("{e}"))?;
        offset += n;
    }
    Ok(())
}

async fn local(
    cfg: &Config,
    args: &IngestArgs,
    decoder: Arc<dyn Decoder>,
    pb: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let holder = LockHolder {
        pid: std::process::id(),
        command: "ingest".into(),
        listen: None,
    };
    let _lock = match DataDirLock::acquire(&cfg.data_dir, &holder) {
        Ok(l) => l,
        Err(LockError::Held { dir, holder }) => {
            let advice = match &holder.listen {
                Some(addr) => format!(
                    "send the files to it instead: tally ingest --server http://{addr} FILE... (its admin key is in {}/admin-key), or stop it first",
                    dir.display()
                ),
                None => "wait for it to finish, or use another --data-dir".into(),
            };
            anyhow::bail!(
                "the data directory {} is in use by `tally {}` (pid {}): {advice}",
                dir.display(),
                holder.command,
                holder.pid
            );
        }
        Err(e) => return Err(e.into()),
    };
    let db = Database::open(&cfg.database_url()).await?;
    let store = RawStore::open(cfg.store_config(), db)
        .await
        .context("cannot open the raw usage store")?;
    let paths = args.paths.clone();
    let batch_records = args.batch_records.max(1);
    let pb2 = pb.clone();
    let store2 = store.clone();
    let handle = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        pipeline(handle, store2, decoder, paths, batch_records, pb2)
    })
    .await
    .context("the import task failed")?;
    store
        .shutdown()
        .await
        .context("cannot close the raw store cleanly")?;
    Ok(outcome)
}

/// Reader thread -> decoder threads -> this thread, which writes batches.
fn pipeline(
    rt: tokio::runtime::Handle,
    store: RawStore,
    decoder: Arc<dyn Decoder>,
    paths: Vec<PathBuf>,
    batch_records: usize,
    pb: ProgressBar,
) -> Outcome {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let (chunk_tx, chunk_rx) = sync_channel::<FileChunk>(4);
    let (decoded_tx, decoded_rx) = sync_channel::<Decoded>(4);
    let reader_bytes = bytes_read.clone();
    let reader = std::thread::spawn(move || {
        read_files(&paths, CHUNK_BYTES, reader_bytes, |chunk| {
            chunk_tx.send(chunk).is_ok()
        })
    });
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk_rx = Arc::new(Mutex::new(chunk_rx));
    let decoders: Vec<_> = (0..workers)
        .map(|_| {
            let rx = chunk_rx.clone();
            let tx = decoded_tx.clone();
            let decoder = decoder.clone();
            std::thread::spawn(move || {
                loop {
                    let chunk = match rx.lock().expect("chunk queue").recv() {
                        Ok(c) => c,
                        Err(_) => return,
                    };
                    let received_at = Utc::now().trunc_subsecs(6);
                    let d = decode_elements(
                        decoder.as_ref(),
                        &chunk.elements,
                        chunk.base_index,
                        received_at,
                    );
                    if tx.send(d).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(decoded_tx);

    let mut summary = IngestSummary::default();
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(batch_records);
    let mut failure: Option<anyhow::Error> = None;
    // One batch is written while the next is decoded: encoding Parquet and
    // decoding JSON then use both cores.
    type Write =
        tokio::task::JoinHandle<Result<tally_store::AppendOutcome, tally_store::StoreError>>;
    let mut in_flight: Option<Write> = None;
    let finish = |w: Write, summary: &mut IngestSummary| -> anyhow::Result<()> {
        let out = rt.block_on(w).context("the write task failed")??;
        summary.accepted += out.accepted;
        summary.duplicates += out.duplicates;
        Ok(())
    };
    let mut write =
        |batch: &mut Vec<UsageRecord>, summary: &mut IngestSummary| -> anyhow::Result<()> {
            if let Some(w) = in_flight.take() {
                finish(w, summary)?;
            }
            let records = std::mem::replace(batch, Vec::with_capacity(batch_records));
            let store = store.clone();
            in_flight = Some(rt.spawn(async move { store.import(records).await }));
            Ok(())
        };
    for decoded in decoded_rx.iter() {
        if failure.is_some() {
            continue; // drain so the workers and reader can finish
        }
        summary.rejected.extend(decoded.rejected);
        batch.extend(decoded.records.into_iter().map(|(_, r)| r));
        pb.set_position(bytes_read.load(Ordering::Relaxed));
        if batch.len() >= batch_records
            && let Err(e) = write(&mut batch, &mut summary)
        {
            failure =
                Some(e.context("writing a batch failed; records of earlier batches are stored"));
        }
    }
    if failure.is_none()
        && !batch.is_empty()
        && let Err(e) = write(&mut batch, &mut summary)
    {
        failure = Some(e.context("writing a batch failed; records of earlier batches are stored"));
    }
    if let Some(w) = in_flight.take()
        && let Err(e) = finish(w, &mut summary)
        && failure.is_none()
    {
        failure =
            Some(e.context("writing the last batch failed; records of earlier batches are stored"));
    }
    for d in decoders {
        let _ = d.join();
    }
    if let Ok(Err(e)) = reader.join()
        && failure.is_none()
    {
        failure = Some(e);
    }
    summary.rejected.sort_by_key(|r| r.index);
    (summary, failure)
}

async fn remote(
    args: &IngestArgs,
    server: &client::Server,
    pb: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let path = format!("/v1/events?format={}", args.format);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FileChunk>(2);
    let paths = args.paths.clone();
    let bytes_read = Arc::new(AtomicU64::new(0));
    let reader_bytes = bytes_read.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_files(&paths, 1 << 20, reader_bytes, |chunk| {
            tx.blocking_send(chunk).is_ok()
        })
    });
    let mut summary = IngestSummary::default();
    let mut failure = None;
    while let Some(chunk) = rx.recv().await {
        for (part_no, part) in chunk.elements.chunks(5000).enumerate() {
            let base = chunk.base_index + (part_no * 5000) as u64;
            let mut body = Vec::with_capacity(part.iter().map(|e| e.len() + 1).sum());
            for e in part {
                body.extend_from_slice(e);
                body.push(b'\n');
            }
            let answer = server
                .json(
                    server
                        .request(reqwest::Method::POST, &path)
                        .header("content-type", "application/x-ndjson")
                        .body(body),
                )
                .await;
            match answer {
                Ok(v) => {
                    let mut s: IngestSummary =
                        serde_json::from_value(v).context("unexpected answer from the server")?;
                    for rej in &mut s.rejected {
                        rej.index += base;
                    }
                    summary.merge(s);
                }
                Err(e) => {
                    failure = Some(e.context(format!(
                        "stopped at record {base}; records before it are stored. Re-run the same command: they will count as duplicates"
                    )));
                    break;
                }
            }
        }
        pb.set_position(bytes_read.load(Ordering::Relaxed));
        if failure.is_some() {
            break;
        }
    }
    drop(rx);
    match reader.await {
        Ok(Err(e)) if failure.is_none() => failure = Some(e),
        _ => {}
    }
    Ok((summary, failure))
}
