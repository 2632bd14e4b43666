"""Driver of scripts/bench-ingest: runs each measurement in a child process
and reports wall time and the child's peak RSS (from wait4's rusage)."""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time


def run_measured(cmd, **kw):
    """Runs cmd; returns (seconds, peak RSS in MiB, stdout)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, **kw)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(map(str, cmd))}")
    return secs, usage.ru_maxrss / 1024.0, out.decode()


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tally", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--http-events", type=int, default=2_000_000)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    data = os.path.join(a.dir, f"events-{a.instances}x{a.days}.ndjson")
    if not os.path.exists(data):
        print(f"==> generating {data}", file=sys.stderr)
        subprocess.run([a.tally, "gen", "--instances", str(a.instances), "--days", str(a.days),
                        "--seed", "42", "--start", "2026-10-01", "--out", data], check=True)
    with open(data, "rb") as f:
        events = sum(1 for _ in f)
    size_mib = os.path.getsize(data) / 2**20
    results = {"date": datetime.date.today().isoformat(), "machine": machine(),
               "file_events": events, "file_mib": round(size_mib)}

    # 1. File import into a fresh data directory.
    target = os.path.join(a.dir, "import-data")
    shutil.rmtree(target, ignore_errors=True)
    print("==> tally ingest", file=sys.stderr)
    secs, rss, out = run_measured([a.tally, "--data-dir", target, "ingest", "--output", "json", data])
    summary = json.loads(out)
    assert summary["accepted"] == events, summary
    parquet = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(target) for f in fs if f.endswith(".parquet"))
    results["tally_import"] = {"seconds": round(secs, 2), "events_per_second": round(events / secs),
                               "peak_rss_mib": round(rss), "parquet_mib": round(parquet / 2**20)}

    # DuckDB on the same file, same run.
    print("==> duckdb COPY ... TO parquet", file=sys.stderr)
    out_parquet = os.path.join(a.dir, "duckdb.parquet")
    code = ("import duckdb; duckdb.connect().execute(\"COPY (SELECT * FROM read_json('%s')) TO '%s' (FORMAT parquet)\")"
            % (data, out_parquet))
    secs, rss, _ = run_measured([sys.executable, "-c", code])
    results["duckdb_copy"] = {"seconds": round(secs, 2), "events_per_second": round(events / secs),
                              "peak_rss_mib": round(rss), "parquet_mib": round(os.path.getsize(out_parquet) / 2**20)}
    results["import_ratio_tally_over_duckdb"] = round(
        results["tally_import"]["events_per_second"] / results["duckdb_copy"]["events_per_second"], 2)

    # 2. HTTP ingest with durable acknowledgements.
    for batch, conns in [(5000, 8), (1000, 8)]:
        serve_dir = os.path.join(a.dir, f"serve-data-{batch}")
        shutil.rmtree(serve_dir, ignore_errors=True)
        print(f"==> HTTP ingest, batches of {batch}, {conns} connections", file=sys.stderr)
        server = subprocess.Popen([a.tally, "--data-dir", serve_dir, "serve", "--listen", "127.0.0.1:0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = None
        for line in server.stderr:
            if line.startswith("tally listening on "):
                url = line.split()[3]
                break
        with open(os.path.join(serve_dir, "admin-key")) as f:
            key = f.read().strip()
        _, _, out = run_measured([a.loadgen, "--url", url, "--key", key, "--file", data,
                                  "--batch", str(batch), "--connections", str(conns),
                                  "--limit", str(a.http_events)])
        server.terminate()
        server.wait(timeout=300)
        results[f"http_batch_{batch}"] = json.loads(out)

    print(json.dumps(results, indent=2))
    ti, dd = results["tally_import"], results["duckdb_copy"]
    print("\n| measurement | events | seconds | events/s | peak RSS MiB | notes |")
    print("|---|---|---|---|---|---|")
    print(f"| tally ingest (file import) | {events} | {ti['seconds']} | {ti['events_per_second']} | {ti['peak_rss_mib']} | Parquet {ti['parquet_mib']} MiB |")
    print(f"| DuckDB COPY to Parquet | {events} | {dd['seconds']} | {dd['events_per_second']} | {dd['peak_rss_mib']} | Parquet {dd['parquet_mib']} MiB; ratio tally/DuckDB {results['import_ratio_tally_over_duckdb']} |")
    for batch in (5000, 1000):
        h = results[f"http_batch_{batch}"]
        print(f"| HTTP ingest, batch {batch}, {h['connections']} conns | {h['events']} | {h['seconds']:.2f} | {h['events_per_second']:.0f} | | p50 {h['latency_ms_p50']:.1f} ms, p99 {h['latency_ms_p99']:.1f} ms |")


if __name__ == "__main__":
    main()
