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
# DuckDB's price table (DuckDB prices raw meters, Tally rated ones), with
# the rated meter's unit (openstack.toml), which DuckDB's lines carry.
PRICES = [
    ("instance.hours", "instance", "0.02", "hour"),
    ("vcpu.hours", "vcpus", "0.01", "vCPU-hour"),
    ("ram.gib_hours", "memory", "0.004", "GiB-hour"),
    ("disk.root.gib_hours", "disk.root.size", "0.0001", "GiB-hour"),
    ("volume.gib_hours", "volume.size", "0.00014", "GiB-hour"),
    ("image.gib_hours", "image.size", "0.00002", "GiB-hour"),
    ("floating_ip.hours", "ip.floating", "0.005", "hour"),
    ("network.egress.gb", "network.outgoing.bytes", "0.01", "GB"),
    ("object_storage.gib_hours", "storage.objects.size", "0.00003", "GiB-hour"),
]

def plan_toml():
    rules = "".join(
        f'[[versions.rules]]\nmeter = "{m}"\ncharge = {{ type = "per_unit", unit_price = "{p}" }}\n'
        for m, _, p, _ in PRICES)
    return ('id = "bench"\ncurrency = "EUR"\n[[versions]]\neffective_from = "2026-01-01T00:00:00Z"\n' + rules)


# DuckDB's side of the comparison. FULL_COLUMNS makes its lines hold every
# field the issue names for a rated line (project, resource, meter, period
# start and end, quantity, unit, unit price, amount, currency, plan id and
# version, rule, raw record count and the segments read), as Tally's line
# files hold them; without them it is the seven-column query of the earlier
# figures (no period end, unit, price, plan, rule or segments), kept so the
# two can be told apart. Neither writes Tally's extra columns (group,
# attributes of the latest record, error) or its daily summaries.
FULL_COLUMNS = """
         any_value(p.unit) AS unit, any_value(p.unit_price) AS unit_price,
         'EUR' AS currency, 'bench' AS plan_id, 1 AS plan_version, any_value(p.rule) AS rule,
         date_trunc('hour', d.time) + INTERVAL 1 HOUR AS period_end,
         array_to_string(list_sort(list_distinct(list(d.filename))), ',') AS segments,"""

DUCKDB_SQL = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute("CREATE TABLE prices (meter VARCHAR, unit VARCHAR, unit_price DECIMAL(18,6), rule VARCHAR)")
con.executemany("INSERT INTO prices VALUES (?, ?, ?, ?)", %(prices)r)
con.execute('''
COPY (
  WITH dedup AS (
    SELECT source, id, time, project_id, resource_id, meter, volume%(filename_column)s
    FROM read_parquet('%(glob)s'%(filename_option)s)
    WHERE time >= TIMESTAMPTZ '2026-10-01 00:00:00+00' AND time < TIMESTAMPTZ '2026-11-01 00:00:00+00'
    QUALIFY row_number() OVER (PARTITION BY source, id ORDER BY received_at) = 1
  )
  SELECT d.project_id, d.resource_id, d.meter, date_trunc('hour', d.time) AS period_start,%(columns)s
         sum(d.volume) AS quantity, count(*) AS raw_count,
         sum(d.volume) * any_value(p.unit_price) AS amount
  FROM dedup d LEFT JOIN prices p ON p.meter = d.meter
  GROUP BY d.project_id, d.resource_id, d.meter, period_start
) TO '%(out)s' (FORMAT parquet)
''')
print(con.execute("SELECT count(*) FROM read_parquet('%(out)s')").fetchone()[0])
"""


def duckdb_code(glob, out, full):
    """The DuckDB program of one measurement (see FULL_COLUMNS)."""
    # Tally names a native rule by its position in the plan version.
    prices = [(raw, unit, price, f"rules[{i}]") for i, (_, raw, price, unit) in enumerate(PRICES)]
    return DUCKDB_SQL % {"prices": prices, "glob": glob, "out": out,
                         "columns": FULL_COLUMNS if full else "",
                         "filename_column": ", filename" if full else "",
                         "filename_option": ", filename = true" if full else ""}


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
                    help="rounds per size (Tally, then both DuckDB queries); the median of each is reported")
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
        tally_runs, duck_runs, minimal_runs = [], [], []
        glob = os.path.join(data, "raw", "segments", "*", "*.parquet")
        out_path = os.path.join(a.dir, f"duckdb-lines-{instances}x{minutes}.parquet")
        programs = [(duck_runs, "every line field", duckdb_code(glob, out_path, True)),
                    (minimal_runs, "seven columns", duckdb_code(glob, out_path, False))]
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

                for runs, what, code in programs:
                    print(f"==> [{rep + 1}/{a.repeat}] DuckDB, same Parquet files, {what}", file=sys.stderr)
                    dsecs, drss, dout = run_measured([sys.executable, "-c", code])
                    runs.append({"seconds": round(dsecs, 2), "records_per_second": round(records / dsecs),
                                 "peak_rss_mib": round(drss), "lines": int(dout.strip().splitlines()[-1])})
        finally:
            for f in kept:
                if os.path.exists(f + ".bench-start"):
                    os.remove(f + ".bench-start")
        tally, duck, minimal = median_run(tally_runs), median_run(duck_runs), median_run(minimal_runs)
        for median, runs in ((tally, tally_runs), (duck, duck_runs), (minimal, minimal_runs)):
            median["all_seconds"] = [r["seconds"] for r in runs]
        results["runs"].append({"instances": int(instances), "poll_minutes": int(minutes), "records": records,
                                "tally": tally, "duckdb": duck, "duckdb_seven_columns": minimal,
                                "time_ratio_tally_over_duckdb": round(tally["seconds"] / duck["seconds"], 2),
                                "time_ratio_tally_over_duckdb_seven_columns":
                                    round(tally["seconds"] / minimal["seconds"], 2)})
        print(json.dumps(results["runs"][-1]), file=sys.stderr)

    print(json.dumps(results, indent=2))
    print("\n| records | engine | seconds (median) | all runs s | records/s | peak RSS MiB | lines | time ratio tally/engine |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        rows = [("tally rate", r["tally"], ""),
                ("DuckDB SQL, every line field", r["duckdb"], r["time_ratio_tally_over_duckdb"]),
                ("DuckDB SQL, seven columns", r["duckdb_seven_columns"],
                 r["time_ratio_tally_over_duckdb_seven_columns"])]
        for engine, e, ratio in rows:
            runs = ", ".join(str(x) for x in e["all_seconds"])
            print(f"| {r['records']} | {engine} | {e['seconds']} | {runs} | {e['records_per_second']} | {e['peak_rss_mib']} | {e['lines']} | {ratio} |")

if __name__ == "__main__":
    main()
