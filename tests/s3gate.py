"""An S3 endpoint that a test can take away and bring back: a real HTTP hop on 127.0.0.1 in front of the
moto server (tests/s3server.py), whose objects survive the outage (a restarted moto server would lose them).

    with S3Gate(s3_server.endpoint) as gate:      # gate.endpoint: what ray_al talks to
        gate.cut_after(3)                          # answer 3 more requests, then none
        ...                                        # the write fails part-way, as it would on a real outage
        gate.restore()                             # the endpoint is back

While cut, every request is met by a connection closed unanswered (what a client sees of a server that died
or a network that dropped), so the clients' retries fail too. `cut_after(n, last_applied=True)` also hands
the first refused request to the store before dropping its answer: the write happened, the client never
heard so; `once=True` makes that a blip: the endpoint answers again right after (the client's retry
meets the write it made itself).
"""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

__all__ = ["S3Gate", "gate"]

# Per-hop headers (RFC 9110 7.6.1): the gate frames each answer itself.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class S3Gate:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.forwarded = 0  # requests answered so far
        self.methods: list[str] = []  # the HTTP method of each, in order
        self.bytes_answered = 0  # body bytes of the answers sent (what clients read through the gate)
        self._left: int | None = None  # requests still answered before the cut; None: no cut planned
        self._apply_next = False  # hand the next refused request to the store, unanswered
        self._once = False  # back up right after the first refused request (a blip, not an outage)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def cut_after(self, n: int, last_applied: bool = False, once: bool = False) -> None:
        """Answer `n` more requests, then none until `restore()` (the first of those applied, unanswered,
        with `last_applied`; with `once`, only that one goes unanswered: a blip)."""
        with self._lock:
            self._left, self._apply_next, self._once = n, last_applied, once

    def restore(self) -> None:
        with self._lock:
            self._left = None

    @property
    def down(self) -> bool:
        return self._left == 0

    def admit(self, method: str) -> tuple[bool, bool]:
        """(forward it to the store, answer it); counts it against a planned cut."""
        with self._lock:
            if self._left == 0:
                applied, self._apply_next = self._apply_next, False
                if self._once:
                    self._left = None
                return applied, False
            if self._left is not None:
                self._left -= 1
            self.forwarded += 1
            self.methods.append(method)
            return True, True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "S3Gate":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _handler(gate: S3Gate) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)

        def _forward(self) -> None:
            body = self._body()
            forward, answer_it = gate.admit(self.command)
            if forward:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(gate.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    payload = answer.read()
                finally:
                    conn.close()
            if not answer_it:
                self.close_connection = True  # unanswered: the client sees the server go away
                return
            self.send_response_only(answer.status, answer.reason)
            for k, v in answer.getheaders():
                if k.lower() not in _HOP and not (k.lower() == "content-length" and self.command != "HEAD"):
                    self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
                with gate._lock:
                    gate.bytes_answered += len(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        def log_message(self, *args) -> None:  # quiet: moto's own log is off too
            pass

    return Forward


@pytest.fixture
def gate(s3_server, monkeypatch):
    """ray_al.core.storage pointed at a gate in front of the test S3 server, for this test only."""
    from ray_al.core import storage

    saved = dict(storage._explicit)
    monkeypatch.setenv("RAY_AL_S3_ENDPOINT", "")
    with S3Gate(s3_server.endpoint) as g:
        storage.configure_s3(g.endpoint, s3_server.region)
        try:
            yield g
        finally:
            storage.configure_s3(saved["endpoint"], saved["region"])
