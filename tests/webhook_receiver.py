#!/usr/bin/env python3
"""A webhook receiver for jobd's tests: verifies every delivery with the official
Standard Webhooks library (`standardwebhooks` from PyPI), records what it saw, and
answers as the path asks.

Usage: webhook_receiver.py --secret whsec_... [--secret whsec_...] [--tls-cert PEM --tls-key PEM]
Prints the port it listens on (127.0.0.1), then serves until killed; over TLS with the
certificate chain and key given, plain HTTP otherwise.

Paths (POST):
  /ok                    200
  /status/<code>         that status; ?retry_after=N adds Retry-After: N
  /throttle              the first delivery of each webhook-id gets 503 + Retry-After: 2, later ones 200
  /flaky/<n>             the first n deliveries of each webhook-id get 500, later ones 200
  /slow                  200 after 50 ms
  /hang                  never answers in time (sleeps 120 s)
  /redirect              302 to /ok
  /switch                the status set by POST /control {"switch": code} (200 at first)
  /work/<node>           200 after 500 ms, recording when it answered (`ended`): the cluster
                         checker gives each node its own <node>, to tell who delivered
GET /seen returns every delivery as JSON: path, webhook-id, timestamp, signature, body,
the indexes of the secrets that verified it, and when it arrived.
"""

import argparse
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

lock = threading.Lock()
seen = []
attempts_by_id = {}
switch = {"status": 200}


def make_handler(verifiers):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body=b"", headers=None):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/seen":
                with lock:
                    body = json.dumps(seen).encode()
                self.answer(200, body, {"content-type": "application/json"})
            else:
                self.answer(404)

        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            url = urlparse(self.path)
            if url.path == "/control":
                switch["status"] = json.loads(body)["switch"]
                self.answer(204)
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            verified_by = []
            for index, verifier in enumerate(verifiers):
                try:
                    verifier.verify(body, headers)
                    verified_by.append(index)
                except WebhookVerificationError:
                    pass
            webhook_id = headers.get("webhook-id", "")
            with lock:
                attempt = attempts_by_id.get((url.path, webhook_id), 0) + 1
                attempts_by_id[(url.path, webhook_id)] = attempt
                record = {
                    "path": url.path,
                    "id": webhook_id,
                    "timestamp": headers.get("webhook-timestamp"),
                    "signature": headers.get("webhook-signature"),
                    "event_type": headers.get("webhook-event-type"),
                    "user_agent": headers.get("user-agent"),
                    "content_type": headers.get("content-type"),
                    "body": body.decode("utf-8", "replace"),
                    "verified_by": verified_by,
                    "attempt": attempt,
                    "at": time.time(),
                }
                seen.append(record)
            parts = url.path.strip("/").split("/")
            if parts[0] == "ok":
                self.answer(200, b"received")
            elif parts[0] == "status":
                extra = {}
                query = parse_qs(url.query)
                if "retry_after" in query:
                    extra["retry-after"] = query["retry_after"][0]
                self.answer(int(parts[1]), b"as asked", extra)
            elif parts[0] == "throttle":
                if attempt == 1:
                    self.answer(503, b"busy", {"retry-after": "2"})
                else:
                    self.answer(200, b"received")
            elif parts[0] == "flaky":
                self.answer(500 if attempt <= int(parts[1]) else 200, b"flaky")
            elif parts[0] == "work":
                time.sleep(0.5)
                self.answer(200, b"received")
                with lock:
                    record["ended"] = time.time()
            elif parts[0] == "slow":
                time.sleep(0.05)
                self.answer(200, b"received")
            elif parts[0] == "hang":
                time.sleep(120)
                self.answer(200)
            elif parts[0] == "redirect":
                self.answer(302, b"", {"location": "/ok"})
            elif parts[0] == "switch":
                self.answer(switch["status"], b"switch")
            else:
                self.answer(404)

    return Handler


class QuietServer(ThreadingHTTPServer):
    """Drops the traceback of a connection the client closed: jobd cuts off /hang."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", action="append", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    verifiers = [Webhook(secret) for secret in args.secret]
    server = QuietServer(("127.0.0.1", 0), make_handler(verifiers))
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
