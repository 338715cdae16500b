#!/usr/bin/env python3
"""A minimal Kubernetes API for benches/agent_footprint.sh: one node's pods, listed and watched.

Serves GET /api/v1/pods (list, and ?watch=true as a chunked stream) for PODS pods whose UIDs
match the cgroup tree the footprint script writes. Each pod is the web pod of
tests/fixtures/kube/pods.json with the managedFields a real API server sends (so decoders pay
for the fields they skip). While a watch is open, one pod's status changes every EVENT_SECS
(a MODIFIED event), as on a node whose pods restart and turn ready now and then; the stream
ends after the client's timeoutSeconds, as the API server's does.

    kube_api_stub.py PORT PODS [EVENT_SECS]
"""
import copy, json, sys, time, random
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse, parse_qs

port, n = int(sys.argv[1]), int(sys.argv[2])
event_secs = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
fixture = json.loads((Path(__file__).parent.parent / "tests/fixtures/kube/pods.json").read_text())
web = next(p for p in fixture["items"] if p["metadata"]["name"].startswith("web-"))
managed = [
    {"manager": m, "operation": "Update", "apiVersion": "v1", "time": "2026-11-30T10:00:00Z",
     "fieldsType": "FieldsV1", "fieldsV1": {f"f:{k}": {f"f:{j}": {} for j in range(12)} for k in range(8)},
     **({"subresource": "status"} if m == "kubelet" else {})}
    for m in ("kube-controller-manager", "kubelet")
]
pods, rv = [], 1000
for i in range(n):
    p = copy.deepcopy(web)
    p["metadata"].update(name=f"web-7d4b9c8f6d-{i:05d}", uid=f"{i:08x}-0000-4000-8000-{i:012x}",
                         resourceVersion=str(rv + i), managedFields=managed)
    p["spec"]["nodeName"] = "bench-node"
    pods.append(p)
rv += n

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        global rv
        u = urlparse(self.path); q = parse_qs(u.query)
        if u.path != "/api/v1/pods":
            self.send_error(404); return
        if q.get("watch") not in (["true"], ["1"]):
            body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                               "metadata": {"resourceVersion": str(rv)}, "items": pods}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
            return
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
        end = time.monotonic() + float(q.get("timeoutSeconds", ["300"])[0])
        try:
            while time.monotonic() < end:
                time.sleep(event_secs)
                p = random.choice(pods); rv += 1
                p["metadata"]["resourceVersion"] = str(rv)
                p["status"]["containerStatuses"][0]["restartCount"] += 1
                line = json.dumps({"type": "MODIFIED", "object": p}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line)); self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
