#!/usr/bin/env python3
"""Profiles single-job submissions on PostgreSQL at the defaults (opt-in, not in CI).

Starts a private cluster (initdb in a temp dir, a free loopback port, pg_stat_statements),
one release jobd node on a fresh database, and 64 keep-alive connections that each POST one
~200-B noop job at a time for --seconds after a one-second warm-up. Prints the rate, p50 and
p99, the CPU per request of jobd and of the server's processes, and the top statements with
their calls and microseconds per job. The load generator is Python and takes a core of its
own: its rate is lower than the benchmark's row (10), its per-job statement profile the same.

Usage (from the project root, after `cargo build --release`):
  python3 scripts/pg-single.py [--seconds 10] [--binary target/release/jobd] [--env KEY=VALUE]
"""
import argparse, asyncio, glob, http.client, json, os, shutil, socket, subprocess, sys, tempfile, time
ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=float, default=10)
ap.add_argument("--binary", default="target/release/jobd")
ap.add_argument("--conns", type=int, default=64)
ap.add_argument("--env", action="append", default=[])
a = ap.parse_args()
PGBIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
root = os.geteuid() == 0
def as_pg(cmd):
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "sh", "-c", cmd] if root else ["sh", "-c", cmd]
d = tempfile.mkdtemp(prefix="pg-single-"); os.chmod(d, 0o777)
port = free_port(); data = os.path.join(d, "data")
subprocess.run(as_pg(f"{PGBIN}/initdb -D {data} -A trust -U postgres"), check=True, stdout=subprocess.DEVNULL)
with open(os.path.join(data, "postgresql.conf"), "a") as f:
    f.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n"
            "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_utility = on\n")
subprocess.run(as_pg(f"{PGBIN}/pg_ctl -D {data} -l {d}/log -w start"), check=True, stdout=subprocess.DEVNULL)
psql = lambda sql, db="postgres": subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-Atc", sql], capture_output=True, text=True).stdout
jobd = None
def cpu_of(pids):
    t = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split(); t += int(f[11]) + int(f[12])
        except OSError: pass
    return t / os.sysconf("SC_CLK_TCK")
def pg_pids():
    return [int(x) for x in subprocess.run(["pgrep", "-f", "postgres"], capture_output=True, text=True).stdout.split()]
try:
    psql("create database jobd"); psql("create extension pg_stat_statements", "jobd")
    jp, jd = free_port(), tempfile.mkdtemp(prefix="pg-single-jobd-")
    env = dict(os.environ, JOBD_LISTEN=f"127.0.0.1:{jp}", JOBD_DATA_DIR=jd, JOBD_QUEUE="postgres", JOBD_LOG="warn",
               JOBD_POSTGRES_URL=f"postgres://postgres@127.0.0.1:{port}/jobd")
    env.update(kv.split("=", 1) for kv in a.env)
    jobd = subprocess.Popen([a.binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", jp, timeout=1); c.request("GET", "/readyz")
            if c.getresponse().status == 200: break
        except OSError: pass
        time.sleep(0.1)
    body = json.dumps({"kind": "noop", "payload": {"pad": "x" * 160}}).encode()
    req = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{jp}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    lat, counts = [], {}
    async def conn(deadline, measure_from):
        r, w = await asyncio.open_connection("127.0.0.1", jp)
        while time.time() < deadline:
            t = time.perf_counter(); w.write(req); await w.drain()
            status = int((await r.readline()).split()[1]); n = 0
            while True:
                l = await r.readline()
                if l == b"\r\n": break
                if l.lower().startswith(b"content-length:"): n = int(l.split(b":")[1])
            await r.readexactly(n)
            if time.time() >= measure_from:
                lat.append(time.perf_counter() - t); counts[status] = counts.get(status, 0) + 1
        w.close()
    async def main():
        now = time.time(); m = now + 1; end = m + a.seconds
        await asyncio.gather(*(conn(end, m) for _ in range(a.conns)))
    # warm-up 1 s, then reset stats at measure start
    async def run():
        t0 = time.time()
        task = asyncio.ensure_future(main())
        await asyncio.sleep(1)
        psql("select pg_stat_statements_reset()", "jobd")
        global c0; c0 = (cpu_of([jobd.pid]), cpu_of(pg_pids()))
        await task
    asyncio.run(run())
    c1 = (cpu_of([jobd.pid]), cpu_of(pg_pids()))
    n = counts.get(202, 0); lat.sort()
    print(f"statuses {counts}; {n / a.seconds:,.0f}/s; p50 {lat[len(lat)//2]*1e3:.2f} ms p99 {lat[int(len(lat)*.99)]*1e3:.2f} ms")
    print(f"cpu per request: jobd {(c1[0]-c0[0])/n*1e6:.0f} us, postgres {(c1[1]-c0[1])/n*1e6:.0f} us")
    print("calls|calls/job|rows/call|mean_ms|us/job|statement")
    print(psql(f"select calls, round(calls::numeric/{n},3), round(rows::numeric/greatest(calls,1),1), round(mean_exec_time::numeric, 3), round((total_exec_time*1000/{n})::numeric,1), "
               "left(regexp_replace(query, '\\s+', ' ', 'g'), 110) from pg_stat_statements "
               "order by total_exec_time desc limit 16", "jobd"))
    print(psql("select sum(total_exec_time)*1000/" + str(n) + " from pg_stat_statements", "jobd"), "us statement time per job")
    print(psql("select xact_commit from pg_stat_database where datname='jobd'"), "commits")
finally:
    if jobd: jobd.terminate(); jobd.wait(30)
    subprocess.run(as_pg(f"{PGBIN}/pg_ctl -D {data} -m fast stop"), stdout=subprocess.DEVNULL)
    shutil.rmtree(d, ignore_errors=True)
