//! `tally gen`: write generated usage to a file or standard output.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Days, NaiveDate, Utc};
use tally_gen::{GenConfig, Shape, write_ndjson};

/// Arguments of `tally gen`.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Instances over the period (volumes, IPs, images scale with it).
    #[arg(long, default_value_t = 100)]
    pub instances: u32,
    /// Days of usage.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Seed: the same seed and start give the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First day (UTC, YYYY-MM-DD). Default: `days` days before today.
    #[arg(long)]
    pub start: Option<NaiveDate>,
    /// Polling interval in minutes.
    #[arg(long, default_value_t = 60)]
    pub interval_minutes: u32,
    /// What the lines are: `cloudevents` (one record each) or `openstack`
    /// (notifications and Ceilometer samples in oslo.messaging envelopes,
    /// as a cloud sends them; ingest with `--format openstack`).
    #[arg(long, value_enum, default_value_t = ShapeArg::Cloudevents)]
    pub shape: ShapeArg,
    /// Output file (.gz and .zst are compressed); default: standard output.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

impl GenArgs {
    /// The generator settings these arguments describe.
    pub fn config(&self) -> GenConfig {
        let start = self.start.unwrap_or_else(|| {
            Utc::now()
                .date_naive()
                .checked_sub_days(Days::new(u64::from(self.days)))
                .expect("date in range")
        });
        GenConfig {
            instances: self.instances,
            days: self.days,
            seed: self.seed,
            start: DateTime::from_naive_utc_and_offset(
                start.and_hms_opt(0, 0, 0).expect("midnight"),
                Utc,
            ),
            interval_minutes: self.interval_minutes,
            shape: match self.shape {
                ShapeArg::Cloudevents => Shape::CloudEvents,
                ShapeArg::Openstack => Shape::OpenStack,
            },
        }
    }
}

/// `--shape` of `tally gen`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeArg {
    /// CloudEvents 1.0.
    Cloudevents,
    /// OpenStack notifications and Ceilometer samples.
    Openstack,
}

/// Runs `tally gen`.
pub fn run(args: GenArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    let n = match &args.out {
        None => {
            let stdout = std::io::stdout();
            let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
            let n = write_ndjson(cfg, &mut w)?;
            w.flush()?;
            n
        }
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let name = path.to_string_lossy();
            let w = BufWriter::with_capacity(1 << 20, file);
            if name.ends_with(".gz") {
                let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
                let n = write_ndjson(cfg, &mut enc)?;
                enc.finish()?.flush()?;
                n
            } else if name.ends_with(".zst") {
                let mut enc = zstd::stream::write::Encoder::new(w, 3)?;
                let n = write_ndjson(cfg, &mut enc)?;
                enc.finish()?.flush()?;
                n
            } else {
                let mut w = w;
                let n = write_ndjson(cfg, &mut w)?;
                w.flush()?;
                n
            }
        }
    };
    if let Some(p) = &args.out {
        eprintln!("wrote {n} events to {}", p.display());
    }
    Ok(())
}
