"""remote: a real HTTP server on 127.0.0.1 (in a thread), a dead port, retries, garbage answers."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reward.base import RewardError
from reward.models.remote import RemoteReward
from reward.registry import build_reward


class Handler(BaseHTTPRequestHandler):
    """Scores step j of every response as 1 / (j + 1); behaviour switched by server.mode."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append(body)
        mode = srv.modes.pop(0) if srv.modes else "ok"
        if mode == "500":
            return self._send(500, b"boom")
        if mode == "404":
            return self._send(404, b"no such route")
        if mode == "html":
            return self._send(200, b"<html>oops</html>")
        if mode == "nan":
            return self._send(200, b'{"scores": [[0.5], [NaN]]}')
        if mode == "short":
            return self._send(200, json.dumps({"scores": [[0.5]] * (len(body["steps"]) - 1)}).encode())
        if mode == "wrongsteps":
            return self._send(200, json.dumps({"scores": [[0.5] * (len(s) + 1) for s in body["steps"]]}).encode())
        scores = [[1.0 / (j + 1) for j in range(len(s))] for s in body["steps"]]
        self._send(200, json.dumps({"scores": scores}).encode())

    def _send(self, code, data):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # e.g. a client that timed out and hung up
        pass


@pytest.fixture()
def server():
    srv = QuietServer(("127.0.0.1", 0), Handler)
    srv.requests, srv.modes = [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}/score"


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def quick(u, **kw):
    rm = RemoteReward(u, timeout=2, backoff=0.01, **kw)
    rm.delays = []
    rm.sleep = rm.delays.append   # record the backoff instead of sleeping
    return rm


def test_round_trip_and_payload(server):
    rm = build_reward("remote", url=url(server), timeout=5)
    out = rm.score(["q1", "q2"], ["a\n\nb\n\nc", "x"], references=["1", None])
    assert [o.scores for o in out] == [[1.0, 0.5, pytest.approx(1 / 3)], [1.0]]
    req = server.requests[0]
    assert req == {"prompts": ["q1", "q2"], "responses": ["a\n\nb\n\nc", "x"], "steps": [["a", "b", "c"], ["x"]],
                   "references": ["1", None]}


def test_batches_and_empty_responses(server):
    rm = quick(url(server), batch_size=2)
    out = rm.score(["q"] * 5, ["a", "", "a\n\nb", "c", "d"])
    assert [len(o.scores) for o in out] == [1, 0, 2, 1, 1]
    assert [len(r["prompts"]) for r in server.requests] == [2, 2, 1]
    assert server.requests[0]["references"] is None


def test_retries_5xx_with_exponential_backoff(server):
    server.modes = ["500", "500"]
    rm = quick(url(server), retries=3)
    assert rm.score(["q"], ["a"])[0].scores == [1.0]
    assert rm.delays == [0.01, 0.02] and len(server.requests) == 3
    server.modes = ["500"] * 5
    with pytest.raises(RewardError, match=r"HTTP 500 .*3 attempts"):
        quick(url(server), retries=2).score(["q"], ["a"])


@pytest.mark.parametrize("mode, message", [
    ("404", "HTTP 404"), ("html", "not JSON"), ("nan", "non-finite"), ("short", "expected 2 score lists"),
    ("wrongsteps", "expected 1 step scores"),
])
def test_garbage_is_a_one_line_error_without_retry(server, mode, message):
    server.modes = [mode]
    rm = quick(url(server), retries=3)
    with pytest.raises(RewardError, match=message) as e:
        rm.score(["q", "q"], ["a", "b"])
    assert "\n" not in str(e.value) and url(server) in str(e.value)
    assert len(server.requests) == 1 and rm.delays == []


def test_dead_port_fails_clearly_after_retries():
    u = f"http://127.0.0.1:{dead_port()}/score"
    rm = quick(u, retries=2)
    with pytest.raises(RewardError) as e:
        rm.score(["q"], ["a"])
    msg = str(e.value)
    assert msg.startswith(f"remote reward {u}: connection failed") and "3 attempts" in msg and "\n" not in msg
    assert rm.delays == [0.01, 0.02]


def test_timeout(server):
    class Slow(Handler):
        def do_POST(self):
            import time
            time.sleep(1.0)
            super().do_POST()

    srv = QuietServer(("127.0.0.1", 0), Slow)
    srv.requests, srv.modes = [], []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rm = RemoteReward(url(srv), timeout=0.2, retries=0)
        with pytest.raises(RewardError, match="timed out after 0.2s"):
            rm.score(["q"], ["a"])
    finally:
        srv.shutdown()
        srv.server_close()


def test_bad_args():
    with pytest.raises(ValueError, match="http"):
        RemoteReward("localhost:8000")
    with pytest.raises(ValueError):
        RemoteReward("http://x", retries=-1)
