"""Driver of scripts/bench-show: prepares the data directory (generate,
ingest, rate, accounts), serves it, and runs tally-bench-show against it."""

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time

from bench_ingest import machine
from bench_rate import generated_month, plan_toml

ACCOUNTS = 100


def tally(a, data, *args, check=True):
    return subprocess.run([a.tally, "--data-dir", data, *args], check=check,
                          stdout=subprocess.PIPE, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tally", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--size", default="10000:20")
    ap.add_argument("--seconds", default="15")
    ap.add_argument("--concurrency", default="8")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    instances, minutes = a.size.split(":")
    # The large month of scripts/bench-rate, reused when it is there.
    data, records = generated_month(a.tally, a.dir, instances, minutes, keep=True)

    prepared = os.path.join(data, "bench-show-prepared")
    if not os.path.exists(prepared):
        plan = os.path.join(a.dir, "bench-plan.toml")
        with open(plan, "w") as f:
            f.write(plan_toml())
        tally(a, data, "plan", "apply", "--default", plan)
        print(f"==> rating the month ({records} records)", file=sys.stderr)
        start = time.monotonic()
        run = json.loads(tally(a, data, "rate", "--period", "2026-10", "--output", "json"))
        print(f"    {run['lines']} lines in {time.monotonic() - start:.0f} s", file=sys.stderr)
        costs = json.loads(tally(a, data, "costs", "--period", "2026-10", "--group-by", "project",
                                 "--limit", "1000000", "--output", "json"))
        projects = sorted({r["project_id"] for r in costs["rows"]})
        print(f"==> {ACCOUNTS} billing accounts over {len(projects)} projects", file=sys.stderr)
        for i in range(ACCOUNTS):
            owned = projects[i::ACCOUNTS]
            args = ["account", "create", f"bench-{i:03}", "--name", f"Bench customer {i}", "--currency", "EUR"]
            for p in owned:
                args += ["--project", p]
            tally(a, data, *args)
        with open(os.path.join(data, "bench-projects.json"), "w") as f:
            json.dump({"projects": projects, "lines": run["lines"]}, f)
        with open(prepared, "w") as f:
            f.write("ok")
    with open(os.path.join(data, "bench-projects.json")) as f:
        prep = json.load(f)
    project = prep["projects"][0]
    reader = json.loads(tally(a, data, "admin", "key", "create", "--role", "account-reader",
                              "--account", "bench-000", "--output", "json"))["key"]
    admin = json.loads(tally(a, data, "admin", "key", "create", "--role", "admin",
                             "--output", "json"))["key"]

    lists = os.path.join(a.dir, "bench-show-lists")
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, "projects"), "w") as f:
        f.write("\n".join(prep["projects"]) + "\n")
    with open(os.path.join(lists, "accounts"), "w") as f:
        f.write("\n".join(f"bench-{i:03}" for i in range(ACCOUNTS)) + "\n")
    reader_projects = prep["projects"][0::ACCOUNTS]
    with open(os.path.join(lists, "reader-projects"), "w") as f:
        f.write("\n".join(reader_projects) + "\n")
    month = "period=2026-10"
    common = ["--seconds", a.seconds, "--concurrency", a.concurrency]
    operator_targets = [
        f"costs by service (operator)=/v1/costs?{month}&group_by=service",
        f"costs by account (operator)=/v1/costs?{month}&group_by=account",
        f"costs by day (operator)=/v1/costs?{month}&bucket=day",
        f"usage of one project by meter=/v1/usage?{month}&project_id={project}",
        f"usage by meter, every project in turn (operator)=/v1/usage?{month}&project_id={{project}}",
        f"overview page (operator)=/ui?{month}",
        f"accounts page (operator)=/ui/accounts?{month}",
        f"account page, every account in turn (operator)=/ui/accounts/{{account}}?{month}",
        f"project page, every project in turn (operator)=/ui/projects/{{project}}?{month}",
    ]
    tenant_targets = [
        f"costs by project per day (account reader)=/v1/costs?{month}&group_by=project&bucket=day",
        f"account page (account reader)=/ui/accounts/bench-000?{month}",
        f"project page (account reader)=/ui/projects/{project}?{month}",
        f"project page, each of its projects in turn (account reader)=/ui/projects/{{project}}?{month}",
    ]

    def measure(label, extra_env):
        """Serves the directory with extra_env and loads every target."""
        server = subprocess.Popen([a.tally, "--data-dir", data, "serve", "--listen", "127.0.0.1:0"],
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "TALLY_LOG": "warn",
                                       # The generated month lands as many
                                       # small segments; merging them is a
                                       # one-off job of the first server, not
                                       # what this measures, and it kept a
                                       # core busy for minutes.
                                       "TALLY_STORE__COMPACTION_INTERVAL_SECS": "86400",
                                       **extra_env})
        url = None
        for line in server.stderr:
            if line.startswith("tally listening on "):
                url = line.split()[3]
                break
        if url is None:
            sys.exit("tally serve did not start")
        # Keep draining the server's log so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        print(f"==> {label}", file=sys.stderr)
        try:
            each = ["--each", f"project={lists}/projects", "--each", f"account={lists}/accounts"]
            operator = subprocess.run([a.load, "--url", url, "--key", admin, *common, *each,
                                       *[x for t in operator_targets for x in ("--target", t)]],
                                      stdout=subprocess.PIPE, text=True)
            tenant = subprocess.run([a.load, "--url", url, "--key", reader, *common,
                                     "--each", f"project={lists}/reader-projects",
                                     *[x for t in tenant_targets for x in ("--target", t)]],
                                    stdout=subprocess.PIPE, text=True)
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print("tally serve did not stop within 60 s of SIGTERM: killed", file=sys.stderr)
                server.kill()
                server.wait()
        if operator.returncode or tenant.returncode:
            print(operator.stdout + tenant.stdout)
            sys.exit(f"{label}: a target answered errors (see above)")
        return f"## {label}\n\n{operator.stdout}" + "\n".join(tenant.stdout.splitlines()[2:])

    # Every answer computed, then with the answers the server remembers
    # (each target's first asks of each URL are computed there too).
    computed = measure("every answer computed ([show] summary_cache_rows = 0)",
                       {"TALLY_SHOW__SUMMARY_CACHE_ROWS": "0"})
    remembered = measure("answers remembered until the data changes (the default)", {})
    print(f"# {datetime.date.today().isoformat()}, {machine()}")
    print(f"# {records} raw records, {prep['lines']} rated lines, {len(prep['projects'])} projects, "
          f"{ACCOUNTS} accounts; {a.concurrency} requests in flight, {a.seconds} s per target")
    print(computed)
    print()
    print(remembered)


if __name__ == "__main__":
    main()
