#!/usr/bin/env python3
"""The PostgreSQL soak: one jobd node at its default settings, for half an hour, on a fresh database.

Opt-in (not part of CI): it takes as long as it says. From the project root, after
`cargo build --release`:

    python3 scripts/pg-soak.py [--minutes 30] [--rate N] [--env JOBD_RETENTION_SECS=600 ...]

What it does:
  1. Starts a private, durable PostgreSQL cluster (initdb in a temp dir, a free loopback port,
     pg_stat_statements loaded); everything it starts, it stops, and it removes the directory.
  2. Unless --rate is given, measures the node's end-to-end rate on a fresh database (a burst
     of 100,000 noop jobs) and offers half of it, as issue 31 asks.
  3. On a second fresh database, offers that many noop jobs a second (~200 B each, in requests
     of 100 from 4 keep-alive clients) for --minutes, with every setting at its default unless
     --env says otherwise. Retention purges as it does at the defaults.
  4. Prints one line a minute: jobs finished per second, the wait from due to start (mean and
     p99, from jobd_job_wait_seconds), the table's heap, index and TOAST sizes, its live and dead
     tuples, autovacuum runs, and the slowest statement's mean time in pg_stat_statements.
  5. Ends with the checks: the last 5 minutes' throughput and wait within 20 % of the first 5,
     no statement's mean above 1 ms, and the statements per job. It exits 1 if a check fails.
"""
import argparse, glob, http.client, json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--minutes", type=float, default=30)
ap.add_argument("--rate", type=int, default=0, help="offered jobs/s (default: half the measured burst rate)")
ap.add_argument("--binary", default="target/release/jobd")
ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for jobd (defaults otherwise)")
ap.add_argument("--batch", type=int, default=100, help="jobs per request")
a = ap.parse_args()

PGBIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
JOB = {"kind": "noop", "payload": {"pad": "x" * 160}}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


root = os.geteuid() == 0


def as_pg(cmd):
    if root:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "sh", "-c", cmd]
    return ["sh", "-c", cmd]


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="jobd-soak-")
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        self.data = os.path.join(self.dir, "data")
        subprocess.run(as_pg(f"{PGBIN}/initdb -D {self.data} -A trust -U postgres"), check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                    "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.max = 1000\n")
        subprocess.run(as_pg(f"{PGBIN}/pg_ctl -D {self.data} -l {self.dir}/log -w start"), check=True,
                       stdout=subprocess.DEVNULL)

    def psql(self, sql, db="postgres"):
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-Atc", sql],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def fresh_database(self, name):
        self.psql(f"create database {name}")
        self.psql("create extension pg_stat_statements", name)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        subprocess.run(as_pg(f"{PGBIN}/pg_ctl -D {self.data} -m fast -w stop"), stdout=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class Node:
    def __init__(self, url):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="jobd-soak-node-")
        env = dict(os.environ, JOBD_LISTEN=f"127.0.0.1:{self.port}", JOBD_DATA_DIR=self.dir, JOBD_QUEUE="postgres",
                   JOBD_LOG="warn", JOBD_POSTGRES_URL=url)
        env.update(kv.split("=", 1) for kv in a.env)
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.child = subprocess.Popen([a.binary, "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("jobd did not become ready")

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()

    def stop(self):
        self.child.terminate()
        self.child.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def series(text, name, label_filter=""):
    """Sums the samples of one metric whose labels contain label_filter."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and label_filter in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_buckets(text):
    buckets = {}
    for line in text.splitlines():
        if line.startswith("jobd_job_wait_seconds_bucket") and 'kind="noop"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def quantile(before, after, q):
    deltas = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
    total = deltas[-1][1] if deltas else 0
    for le, count in deltas:
        if total and count >= q * total:
            return le
    return float("nan")


def post(conn, body):
    for _ in range(10_000):
        conn.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status == 202:
            return True
        time.sleep(0.02)
    return False


def burst_rate(cluster):
    node = Node(cluster.fresh_database("burst"))
    try:
        body = json.dumps({"jobs": [JOB] * 1000}).encode()
        jobs = 100_000
        base, t0 = series(node.metrics(), "jobd_jobs_finished_total", 'outcome="succeeded"'), time.time()

        def send(n):
            c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
            for _ in range(n):
                post(c, body)

        threads = [threading.Thread(target=send, args=(jobs // 4000,)) for _ in range(4)]
        [t.start() for t in threads]
        while series(node.metrics(), "jobd_jobs_finished_total", 'outcome="succeeded"') - base < jobs:
            time.sleep(0.05)
        return jobs / (time.time() - t0)
    finally:
        node.stop()


def table_sizes(cluster):
    row = cluster.psql(
        "select pg_relation_size('jobd_jobs'), pg_indexes_size('jobd_jobs'), "
        "coalesce(pg_total_relation_size(reltoastrelid), 0), n_live_tup, n_dead_tup, autovacuum_count, "
        "autoanalyze_count from pg_stat_user_tables s join pg_class c on c.oid = s.relid "
        "where s.relname = 'jobd_jobs'", "soak")
    return [int(x) for x in row.split("|")]


def statements(cluster):
    """queryid -> (calls, total ms, rows, text) of the soak database's statements so far."""
    out = {}
    for row in cluster.psql(
            "select queryid, calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) "
            "from pg_stat_statements where dbid = (select oid from pg_database where datname = 'soak') "
            "and query not like '%pg_stat%'", "soak").splitlines():
        queryid, calls, total, rows, text = row.split("|", 4)
        out[queryid] = (int(calls), float(total), int(rows), text)
    return out


def per_row_means(before, after):
    """queryid -> (ms per call per row it returned or touched, at least one; calls; text) between two
    snapshots. A claim or a flush writes thousands of rows in one call, and its time per call grows
    with the batch, not with the table; a statement that reads one row has only its call."""
    means = {}
    for queryid, (calls, total, rows, text) in after.items():
        c0, t0, r0, _ = before.get(queryid, (0, 0.0, 0, text))
        if calls > c0:
            per_call_rows = max(1.0, (rows - r0) / (calls - c0))
            means[queryid] = ((total - t0) / (calls - c0) / per_call_rows, calls - c0, text)
    return means


def slowest_statement(before, after):
    means = per_row_means(before, after)
    if not means:
        return 0.0, 0, ""
    return max(means.values())


def main():
    cluster = Cluster()
    node = None
    stop = threading.Event()
    try:
        measured = burst_rate(cluster) if not a.rate else None
        rate = a.rate or int(measured / 2)
        if measured:
            print(f"burst of 100,000 on a fresh database: {measured:,.0f} jobs/s end to end; offering half: {rate:,}/s")
        node = Node(cluster.fresh_database("soak"))
        cluster.psql("select pg_stat_statements_reset()", "soak")
        body = json.dumps({"jobs": [JOB] * a.batch}).encode()
        offered = [0]
        refused_requests = [0]
        t0 = time.time()

        def send(share):
            # Each client paces itself to its share of the rate; a request that comes back
            # late is made up by the ones after it, so the offered load stays steady.
            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
            per_request = a.batch / share
            next_at = time.time()
            while not stop.is_set():
                delay = next_at - time.time()
                if delay > 0:
                    time.sleep(delay)
                if post(conn, body):
                    offered[0] += a.batch
                else:
                    refused_requests[0] += 1
                next_at += per_request

        clients = 4
        threads = [threading.Thread(target=send, args=(rate / clients,), daemon=True) for _ in range(clients)]
        [t.start() for t in threads]
        print("min | offered/s | finished/s | wait mean ms | wait p99 s | heap MiB | index MiB | toast MiB | "
              "live | dead | autovacuums | slowest statement's ms per call and row (calls)")
        minutes = []
        snapshots = [statements(cluster)]
        prev_text, prev_t = node.metrics(), time.time()
        for minute in range(1, int(a.minutes) + 1):
            prev_offered = offered[0]
            time.sleep(max(0.0, t0 + 60 * minute - time.time()))
            text, now = node.metrics(), time.time()
            span = now - prev_t
            done = series(text, "jobd_jobs_finished_total") - series(prev_text, "jobd_jobs_finished_total")
            waits = series(text, "jobd_job_wait_seconds_count", 'kind="noop"') - series(
                prev_text, "jobd_job_wait_seconds_count", 'kind="noop"')
            wait_sum = series(text, "jobd_job_wait_seconds_sum", 'kind="noop"') - series(
                prev_text, "jobd_job_wait_seconds_sum", 'kind="noop"')
            p99 = quantile(wait_buckets(prev_text), wait_buckets(text), 0.99)
            heap, index, toast, live, dead, vacuums, analyzes = table_sizes(cluster)
            snapshots.append(statements(cluster))
            mean, calls, query = slowest_statement(snapshots[-2], snapshots[-1])
            m = dict(minute=minute, offered=(offered[0] - prev_offered) / span, finished=done / span,
                     wait_ms=1000 * wait_sum / max(waits, 1), wait_p99=p99, heap=heap, index=index, toast=toast,
                     live=live, dead=dead, vacuums=vacuums, slowest_mean=mean, slowest=query, slowest_calls=calls)
            minutes.append(m)
            print(f"{minute:3} | {m['offered']:9,.0f} | {m['finished']:10,.0f} | {m['wait_ms']:12.2f} | "
                  f"{p99:10} | {heap / 2**20:8.0f} | {index / 2**20:9.0f} | {toast / 2**20:9.1f} | {live:,} | "
                  f"{dead:,} | {vacuums} | {mean:.3f} ({calls}) {query}", flush=True)
            prev_text, prev_t = text, now
        stop.set()
        [t.join(70) for t in threads]
        return report(cluster, minutes, rate, snapshots)
    finally:
        stop.set()
        if node:
            node.stop()
        cluster.stop()


def report(cluster, minutes, rate, snapshots):
    first, last = minutes[:5], minutes[-5:]
    avg = lambda ms, key: sum(m[key] for m in ms) / len(ms)
    checks = []
    for key, what in (("finished", "throughput"), ("wait_ms", "mean wait from due to start")):
        f, l = avg(first, key), avg(last, key)
        ratio = l / f if f else float("nan")
        bound_ok = abs(ratio - 1) <= 0.2 or (key == "wait_ms" and l - f < 1.0)
        checks.append((f"{what}: last 5 min {l:,.2f} against the first 5 {f:,.2f} ({ratio:.2f} x)", bound_ok))
    early = per_row_means(snapshots[0], snapshots[min(5, len(snapshots) - 1)])
    late = per_row_means(snapshots[max(0, len(snapshots) - 6)], snapshots[-1])
    print("\nstatements' mean ms per call and row, first 5 min -> last 5 min:")
    for queryid, (mean, calls, text) in sorted(late.items(), key=lambda item: -item[1][0])[:10]:
        before = early.get(queryid, (float("nan"),))[0]
        print(f"  {before:8.4f} -> {mean:8.4f}  ({calls} calls)  {text}")
    # The hot statements run at least every few seconds; the rest are upkeep that runs once
    # a minute or less (the full orphan sweep, the purge), reported above with their trend.
    span = 60 * (len(snapshots) - 1 - max(0, len(snapshots) - 6))
    hot = {queryid: mean for queryid, mean in late.items() if mean[1] >= span / 5}
    worst_id, (worst, _, text) = max(hot.items(), key=lambda item: item[1][0])
    checks.append((f"slowest hot statement's mean per call and row over the last 5 min: {worst:.3f} ms ({text})",
                   worst <= 1.0))
    for queryid, (mean, calls, text) in late.items():
        if queryid not in hot and mean > 1.0:
            before = early.get(queryid, (float("nan"),))[0]
            print(f"upkeep statement over 1 ms: {before:.1f} -> {mean:.1f} ms ({calls} calls in 5 min): {text}")
    jobs = sum(m["finished"] * 60 for m in minutes)
    print(f"\noffered {rate:,} jobs/s for {len(minutes)} min; finished about {jobs:,.0f} jobs")
    per_job = cluster.psql(
        f"select round(calls / {jobs}::numeric, 4), round((1000 * total_exec_time / {jobs})::numeric, 2), "
        "round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
        "from pg_stat_statements where dbid = (select oid from pg_database where datname = 'soak') "
        "and query not like '%pg_stat%' order by total_exec_time desc limit 12", "soak")
    total = cluster.psql(
        f"select round((1000 * sum(total_exec_time) / {jobs})::numeric, 2) from pg_stat_statements "
        "where dbid = (select oid from pg_database where datname = 'soak')", "soak")
    print(f"\npg_stat_statements per job: {total} us of statement time in all\ncalls/job | us/job | mean ms | statement")
    print(per_job)
    print()
    for text, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    # A SIGTERM (a timeout, a Ctrl-C from a supervisor) still stops the cluster and the node.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
