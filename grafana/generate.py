"""Writes grafana/dashboards/jobd.json: the jobd dashboard, one panel per operator question.

Run from the repository root: python3 grafana/generate.py
"""
import json
import pathlib

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
KIND = 'kind=~"$kind"'
panels = []


def panel(title, targets, unit="short", kind="timeseries", description=""):
    n = len(panels)
    panels.append({
        "id": n + 1,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": (n % 2) * 12, "y": (n // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
            for i, (expr, legend) in enumerate(targets)
        ],
    })


def quantiles(metric, by, qs, filters=""):
    return [
        (f"histogram_quantile({q}, sum by (le{by}) (rate({metric}_bucket{filters}[{RATE}])))",
         ("{{kind}} " if by else "") + f"p{int(q * 100)}")
        for q in qs
    ]


panel("Jobs finished per second, by outcome",
      [(f"sum by (outcome) (rate(jobd_jobs_finished_total{{{KIND}}}[{RATE}]))", "{{outcome}}")], "ops",
      description="Attempts by outcome; dead counts jobs that failed for good.")
panel("Jobs submitted per second, by kind",
      [(f"sum by (kind) (rate(jobd_jobs_submitted_total{{{KIND}}}[{RATE}]))", "{{kind}}")], "ops")
# The queue-wide series carry a `queue` label: every node of a shared (PostgreSQL) queue
# reports the same figures, each single-host queue its own. Take the max by queue_id, then
# sum over queues, so that N nodes of one queue count it once.
panel("Queue depth by state", [("sum by (state) (max by (queue_id, state) (jobd_queue_depth))", "{{state}}")],
      description="Jobs by state over every queue; a queue shared by several nodes counts once.")
panel("Queue fill (unfinished / max_queue)",
      [('sum(max by (queue_id, state) (jobd_queue_depth{state=~"queued|scheduled|running|failed"}))'
        ' / sum(max by (queue_id) (jobd_queue_capacity))', "fill")],
      "percentunit")
panel("Oldest queued job age", [("max(jobd_queue_oldest_age_seconds)", "oldest")], "s")
panel("Workers busy and idle", [("sum by (state) (jobd_workers)", "{{state}}")])
panel("Run time by kind (p50, p95, p99)",
      quantiles("jobd_job_duration_seconds", ", kind", (0.5, 0.95, 0.99), f"{{{KIND}}}"), "s")
panel("Wait from due to start by kind (p50, p95, p99)",
      quantiles("jobd_job_wait_seconds", ", kind", (0.5, 0.95, 0.99), f"{{{KIND}}}"), "s")
panel("Worker restarts", [(f"sum(increase(jobd_worker_restarts_total[{RATE}]))", "restarts")])
panel("Submissions rejected per second, by reason",
      [(f"sum by (reason) (rate(jobd_submissions_rejected_total[{RATE}]))", "{{reason}}")], "ops")
panel("Requests refused for their token or head, by reason",
      [(f"sum by (reason) (rate(jobd_auth_failures_total[{RATE}]))", "auth {{reason}}"),
       (f"sum by (reason) (rate(jobd_http_refusals_total[{RATE}]))", "{{reason}}")], "ops",
      description="401/403 by reason (missing, invalid, scope, key_prefix) and heads over max_header_bytes. "
                  "A rise in invalid tokens is someone guessing.")
panel("HTTP errors per second, by route and status",
      [(f'sum by (route, status) (rate(jobd_http_requests_total{{status=~"4xx|5xx"}}[{RATE}]))',
        "{{route}} {{status}}")], "ops")
panel("HTTP requests per second, by route",
      [(f"sum by (route) (rate(jobd_http_requests_total[{RATE}]))", "{{route}}")], "ops")
panel("HTTP latency p99 by route",
      [(f"histogram_quantile(0.99, sum by (le, route) (rate(jobd_http_request_duration_seconds_bucket[{RATE}])))",
        "{{route}}")], "s")
panel("Queue commit latency (p50, p99)", quantiles("jobd_store_commit_duration_seconds", "", (0.5, 0.99)), "s")
panel("Requests per commit (group commit batch size)", [
    (f"sum(rate(jobd_store_commit_batch_size_sum[{RATE}])) / sum(rate(jobd_store_commit_batch_size_count[{RATE}]))",
     "mean"),
    (f"histogram_quantile(0.99, sum by (le) (rate(jobd_store_commit_batch_size_bucket[{RATE}])))", "p99"),
])
panel("Webhook deliveries per second, by destination and outcome",
      [(f"sum by (destination, outcome) (rate(jobd_webhook_deliveries_total[{RATE}]))", "{{destination}} {{outcome}}")],
      "ops", description="delivered (2xx), failed (5xx, 429, connection errors: retried), timed_out, "
                         "rejected (410, other 4xx, redirects: final).")
panel("Webhook delivery time p99, by destination",
      [(f"histogram_quantile(0.99, sum by (le, destination) (rate(jobd_webhook_duration_seconds_bucket[{RATE}])))",
        "{{destination}}")], "s")
panel("Webhook circuits open", [("max by (destination) (jobd_webhook_circuit_open)", "{{destination}}")],
      description="1 while a destination's circuit is open: its deliveries wait without using attempts, "
                  "then one probe is tried.")
panel("Nodes sharing each queue", [("max by (queue_id) (jobd_nodes)", "queue {{queue_id}}")],
      description="Nodes whose lease on the queue is live; 1 for a single host (SQLite).")
# The named queues: depth and pauses are facts of the whole queue (max by queue_id and
# queue), starts, running and throttled jobs each node's own (summed over nodes).
panel("Named queues: unfinished jobs by queue and state",
      [("sum by (queue, state) (max by (queue_id, queue, state) (jobd_queue_jobs))", "{{queue}} {{state}}")],
      description="Sampled every 15 s by each node; a queue shared by several nodes counts once.")
panel("Named queues: starts per second", [(f"sum by (queue) (rate(jobd_queue_started_total[{RATE}]))", "{{queue}}")],
      "ops")
panel("Named queues: running and throttled", [
    ("sum by (queue) (jobd_queue_running)", "{{queue}} running"),
    ("sum by (queue) (jobd_queue_throttled)", "{{queue}} at its concurrency limit"),
], description="Jobs running, and jobs claimed that wait at their queue's concurrency, over every node.")
panel("Named queues paused", [("max by (queue_id, queue) (jobd_queue_paused)", "{{queue}}")],
      description="1 while a queue is paused (POST /v1/queues/{name}/pause): nothing new of it starts.")
panel("Rescues and fenced work per second", [
    (f"sum(rate(jobd_jobs_rescued_total[{RATE}]))", "rescued"),
    (f"sum(rate(jobd_fenced_writes_total[{RATE}]))", "fenced writes"),
    (f"sum(rate(jobd_fenced_starts_total[{RATE}]))", "fenced starts"),
], "ops", description="Running jobs taken back from nodes whose lease lapsed, and the starts and finishes "
                      "refused to nodes that no longer held their jobs.")
panel("Lease held, by node", [("jobd_lease_held", "{{instance}}")],
      description="0 while a node cannot prove it holds its lease: it then claims and starts nothing.")
panel("Resident memory", [('process_resident_memory_bytes{job="jobd"}', "{{instance}}")], "bytes")
panel("CPU", [(f'rate(process_cpu_seconds_total{{job="jobd"}}[{RATE}])', "{{instance}}")], "percentunit")
panel("Open file descriptors", [('process_open_fds{job="jobd"}', "{{instance}}")])
panel("Up", [('up{job="jobd"}', "{{instance}}")], kind="stat")
panel("Version", [("jobd_build_info", "{{version}}")], kind="stat")

dashboard = {
    "title": "jobd",
    "uid": "jobd",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-1h", "to": "now"},
    "refresh": "30s",
    "tags": ["jobd"],
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}},
        {"name": "kind", "label": "Kind", "type": "query", "datasource": DATASOURCE,
         "query": {"query": "label_values(jobd_jobs_submitted_total, kind)", "refId": "kinds"},
         "definition": "label_values(jobd_jobs_submitted_total, kind)",
         "includeAll": True, "multi": True, "allValue": ".*",
         "current": {"text": "All", "value": "$__all"}, "refresh": 2},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
path = pathlib.Path(__file__).parent / "dashboards" / "jobd.json"
path.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {path} with {len(panels)} panels")
