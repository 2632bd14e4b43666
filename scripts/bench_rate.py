"""Driver of scripts/bench-rate: each measurement runs in a child process;
wall time and the child's peak RSS come from wait4."""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

from bench_ingest import machine, run_measured

# Per-unit prices for the default meters, the same in Tally's plan and in
# DuckDB's price table (DuckDB prices raw meters, Tally rated ones).
PRICES = [
    ("instance.hours", "instance", "0.02"),
    ("vcpu.hours", "vcpus", "0.01"),
    ("ram.gib_hours", "memory", "0.004"),
    ("disk.root.gib_hours", "disk.root.size", "0.0001"),
    ("volume.gib_hours", "volume.size", "0.00014"),
    ("image.gib_hours", "image.size", "0.00002"),
    ("floating_ip.hours", "ip.floating", "0.005"),
    ("network.egress.gb", "network.outgoing.bytes", "0.01"),
    ("object_storage.gib_hours", "storage.objects.size", "0.00003"),
]


def plan_toml():
    rules = "".join(
        f'[[versions.rules]]\nmeter = "{m}"\ncharge = {{ type = "per_unit", unit_price = "{p}" }}\n'
        for m, _, p in PRICES)
    return ('id = "bench"\ncurrency = "EUR"\n[[versions]]\neffective_from = "2026-01-01T00:00:00Z"\n' + rules)


DUCKDB_SQL = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute("CREATE TABLE prices (meter VARCHAR, unit_price DECIMAL(18,6))")
con.executemany("INSERT INTO prices VALUES (?, ?)", %(prices)r)
con.execute('''
COPY (
  WITH dedup AS (
    SELECT source, id, time, project_id, resource_id, meter, volume
    FROM read_parquet('%(glob)s')
    WHERE time >= TIMESTAMPTZ '2026-10-01 00:00:00+00' AND time < TIMESTAMPTZ '2026-11-01 00:00:00+00'
    QUALIFY row_number() OVER (PARTITION BY source, id ORDER BY received_at) = 1
  )
  SELECT d.project_id, d.resource_id, d.meter, date_trunc('hour', d.time) AS period_start,
         sum(d.volume) AS quantity, count(*) AS raw_count,
         sum(d.volume) * any_value(p.unit_price) AS amount
  FROM dedup d LEFT JOIN prices p ON p.meter = d.meter
  GROUP BY d.project_id, d.resource_id, d.meter, period_start
) TO '%(out)s' (FORMAT parquet)
''')
print(con.execute("SELECT count(*) FROM read_parquet('%(out)s')").fetchone()[0])
"""


def generated_month(tally, bench_dir, instances, minutes, keep):
    """A data directory holding October 2026 of `instances` instances polled
    every `minutes` minutes (gen | ingest, no file kept); with `keep`, one
    generated earlier is reused. Returns (directory, records)."""
    data = os.path.join(bench_dir, f"rate-{instances}x{minutes}")
    marker = os.path.join(data, "bench-generated")
    if not (keep and os.path.exists(marker)):
        shutil.rmtree(data, ignore_errors=True)
        print(f"==> generating {instances} instances, polled every {minutes} min, into {data}", file=sys.stderr)
        start = time.monotonic()
        gen = subprocess.Popen([tally, "gen", "--instances", instances, "--days", "31",
                                "--interval-minutes", minutes, "--seed", "42", "--start", "2026-10-01"],
                               stdout=subprocess.PIPE)
        ingest = subprocess.run([tally, "--data-dir", data, "ingest", "--output", "json", "-"],
                                stdin=gen.stdout, stdout=subprocess.PIPE, check=True)
        gen.stdout.close()
        gen.wait()
        accepted = json.loads(ingest.stdout)["accepted"]
        print(f"    {accepted} records in {time.monotonic() - start:.0f} s", file=sys.stderr)
        with open(marker, "w") as f:
            f.write(str(accepted))
    with open(marker) as f:
        return data, int(f.read())


def median_run(runs):
    """The run of median time (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return dict(ordered[(len(ordered) - 1) // 2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tally", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--sizes", default="2800:60 10000:20")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="pairs of runs per size (Tally, then DuckDB); the median of each is reported")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "runs": []}
    for size in a.sizes.split():
        instances, minutes = size.split(":")
        data, records = generated_month(a.tally, a.dir, instances, minutes, a.keep)
        plan = os.path.join(a.dir, "bench-plan.toml")
        with open(plan, "w") as f:
            f.write(plan_toml())
        subprocess.run([a.tally, "--data-dir", data, "plan", "apply", "--default", plan], check=True,
                       stdout=subprocess.DEVNULL)

        # Each repetition after the first starts from the billing database
        # the first one started from: otherwise the cells of earlier runs
        # stay for the hour before superseded runs are cleaned, and every
        # later run inserts into a larger table.
        db = os.path.join(data, "tally.db")
        # The write-ahead log holds committed pages too, until a checkpoint.
        kept = [f for f in (db, db + "-wal") if os.path.exists(f)]
        if a.repeat > 1:
            for f in kept:
                shutil.copyfile(f, f + ".bench-start")
        tally_runs, duck_runs = [], []
        glob = os.path.join(data, "raw", "segments", "*", "*.parquet")
        out_path = os.path.join(a.dir, f"duckdb-lines-{instances}x{minutes}.parquet")
        code = DUCKDB_SQL % {"prices": [(r, p) for _, r, p in PRICES], "glob": glob, "out": out_path}
        try:
            for rep in range(a.repeat):
                if rep > 0:
                    for suffix in ("-wal", "-shm"):
                        if os.path.exists(db + suffix):
                            os.remove(db + suffix)
                    for f in kept:
                        shutil.copyfile(f + ".bench-start", f)
                print(f"==> [{rep + 1}/{a.repeat}] tally rate --period 2026-10 ({records} records)", file=sys.stderr)
                secs, rss, out = run_measured([a.tally, "--data-dir", data, "rate", "--period", "2026-10",
                                               "--output", "json"])
                run = json.loads(out)
                tally_runs.append({"seconds": round(secs, 2),
                                   "records_per_second": round(run["records_read"] / secs),
                                   "peak_rss_mib": round(rss), "records_read": run["records_read"],
                                   "lines": run["lines"]})
                if rep + 1 < a.repeat:
                    # The restored database will not know this run: its files go too.
                    shutil.rmtree(os.path.join(data, "rated", run["run_id"]), ignore_errors=True)

                print(f"==> [{rep + 1}/{a.repeat}] DuckDB, same Parquet files", file=sys.stderr)
                dsecs, drss, dout = run_measured([sys.executable, "-c", code])
                duck_runs.append({"seconds": round(dsecs, 2), "records_per_second": round(records / dsecs),
                                  "peak_rss_mib": round(drss), "lines": int(dout.strip().splitlines()[-1])})
        finally:
            for f in kept:
                if os.path.exists(f + ".bench-start"):
                    os.remove(f + ".bench-start")
        tally, duck = median_run(tally_runs), median_run(duck_runs)
        secs, dsecs = tally["seconds"], duck["seconds"]
        tally["all_seconds"] = [r["seconds"] for r in tally_runs]
        duck["all_seconds"] = [r["seconds"] for r in duck_runs]
        results["runs"].append({"instances": int(instances), "poll_minutes": int(minutes), "records": records,
                                "tally": tally, "duckdb": duck,
                                "time_ratio_tally_over_duckdb": round(secs / dsecs, 2)})
        print(json.dumps(results["runs"][-1]), file=sys.stderr)

    print(json.dumps(results, indent=2))
    print("\n| records | engine | seconds (median) | all runs s | records/s | peak RSS MiB | lines | time ratio tally/DuckDB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        t, d = r["tally"], r["duckdb"]
        runs = lambda e: ", ".join(str(x) for x in e["all_seconds"])
        print(f"| {r['records']} | tally rate | {t['seconds']} | {runs(t)} | {t['records_per_second']} | {t['peak_rss_mib']} | {t['lines']} | {r['time_ratio_tally_over_duckdb']} |")
        print(f"| {r['records']} | DuckDB SQL | {d['seconds']} | {runs(d)} | {d['records_per_second']} | {d['peak_rss_mib']} | {d['lines']} | |")


if __name__ == "__main__":
    main()
