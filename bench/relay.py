#!/usr/bin/env python3
"""Counting relay between a benchmarked operator and the test cloud.

Listens on two loopback ports, one in front of Keystone and one in front of
Glance, forwards every request unchanged and counts it by (service, method,
path with ids replaced by {id}, status). In Keystone's answers the Glance
URL is rewritten to the relay's Glance port, so a client that finds Glance
in the token's catalog (both operators do) talks to Glance through the
relay too. Nothing is cached; requests and answers are passed whole.

    relay.py --keystone http://127.0.0.1:38825 --glance http://127.0.0.1:60479 \
             --ports-file FILE
writes "KEYSTONE_PORT GLANCE_PORT" to FILE once both listen.

    GET http://127.0.0.1:GLANCE_PORT/__relay/counts  -> JSON {key: count}
    GET http://127.0.0.1:GLANCE_PORT/__relay/rate    -> JSON {"EPOCH_SECOND SERVICE METHOD": count}
(the relay's own endpoints; not forwarded and not counted). With --timeline
FILE, every request's start and end times go to FILE, from which bench/
computes how many requests were in flight and how long each took.

Part of bench/ (see bench/prune.sh); not part of the product.
"""

import argparse
import http.client
import http.server
import json
import os
import re
import sys
import threading
import time
import urllib.parse

HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect",
    "content-length", "host",
}
ID = re.compile(r"/(?:[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})(?=/|$)")

COUNTS = {}
RATE = {}
LOCK = threading.Lock()
TIMELINE = None  # file: one "START END SERVICE METHOD STATUS" line per request


def count(key, service, method, start, status):
    end = time.time()
    sec = f"{int(end)} {service} {method}"
    with LOCK:
        COUNTS[key] = COUNTS.get(key, 0) + 1
        RATE[sec] = RATE.get(sec, 0) + 1
        if TIMELINE:
            TIMELINE.write(f"{start:.6f} {end:.6f} {service} {method} {status}\n")


def pattern(path):
    return ID.sub("/{id}", urllib.parse.urlsplit(path).path)


def make_handler(service, upstream, rewrite):
    up = urllib.parse.urlsplit(upstream)
    local = threading.local()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(parts)
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else None

        def _conn(self, fresh=False):
            c = getattr(local, "conn", None)
            if c is None or fresh:
                if c is not None:
                    c.close()
                c = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
                local.conn = c
            return c

        def _forward(self):
            if service == "glance" and self.path in ("/__relay/counts", "/__relay/rate"):
                with LOCK:
                    what = COUNTS if self.path.endswith("counts") else RATE
                    body = json.dumps(what, sort_keys=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            start = time.time()
            body = self._body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            headers["Host"] = up.netloc
            if body is not None or self.command in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(body or b""))
            for attempt in (0, 1):
                conn = self._conn(fresh=attempt == 1)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (http.client.HTTPException, OSError):
                    # A kept-alive upstream connection the peer closed: retry once
                    # on a fresh one (the request was not answered).
                    if attempt == 1:
                        count(f"{service} {self.command} {pattern(self.path)} relay-error", service, self.command, start, 502)
                        self.send_error(502)
                        return
            if rewrite:
                for old, new in rewrite:
                    data = data.replace(old, new)
            count(f"{service} {self.command} {pattern(self.path)} {resp.status}", service, self.command, start, resp.status)
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keystone", required=True, help="Keystone base URL (scheme://host:port)")
    ap.add_argument("--glance", required=True, help="Glance base URL (scheme://host:port)")
    ap.add_argument("--ports-file", required=True)
    ap.add_argument("--timeline", help="append one line per request: START END SERVICE METHOD STATUS")
    a = ap.parse_args()
    global TIMELINE
    if a.timeline:
        TIMELINE = open(a.timeline, "a", buffering=1)
    glance_srv = Server(("127.0.0.1", 0), make_handler("glance", a.glance, None))
    gport = glance_srv.server_address[1]
    g = a.glance.rstrip("/")
    # JSON may escape "/" as "\/": rewrite both spellings.
    rewrite = [
        (g.encode(), f"http://127.0.0.1:{gport}".encode()),
        (g.replace("/", "\\/").encode(), f"http:\\/\\/127.0.0.1:{gport}".encode()),
    ]
    ks_srv = Server(("127.0.0.1", 0), make_handler("keystone", a.keystone, rewrite))
    kport = ks_srv.server_address[1]
    for s in (glance_srv, ks_srv):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    with open(a.ports_file + ".tmp", "w") as f:
        f.write(f"{kport} {gport}\n")
    os.replace(a.ports_file + ".tmp", a.ports_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
