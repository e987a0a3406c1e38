"""rlkit serve-reward: the remote client against a real server on 127.0.0.1 — same scores as in process under
concurrent load, dynamic batching within its bounds, one-line 4xx errors, tokens, graceful shutdown, a killed
and a restarted server (those two run the CLI in a subprocess)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from reward.base import RewardError, StepRewardModel
from reward.models.remote import RemoteReward
from reward.registry import build_reward
from reward.serving import BackgroundServer, ServeSettings
from rlkit.cli import main
from rlkit.testing import arithmetic_requests

REPO = Path(__file__).resolve().parents[1]


def settings(**kw) -> ServeSettings:
    return ServeSettings(port=0, log_level="warning", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(url: str, **kw) -> RemoteReward:
    kw.setdefault("timeout", 30)
    return RemoteReward(url + "/score", **kw)


class Gate(StepRewardModel):
    """Scores step j as j + 10 * len(prompt); blocks in score_steps until ``release`` is set (when gated);
    raises on the prompt "boom"."""

    probabilistic = False

    def __init__(self, gated: bool = True, delay: float = 0.0) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        if not gated:
            self.release.set()
        self.delay, self.calls = delay, []

    def score_steps(self, prompts, steps, references=None):
        self.calls.append(len(prompts))
        self.entered.set()
        assert self.release.wait(30)
        time.sleep(self.delay)
        if "boom" in prompts:
            raise RewardError("prompt 'boom' cannot be scored")
        return [[j + 10.0 * len(p) for j in range(len(st))] for p, st in zip(prompts, steps)]


def post(url: str, body, token: str | None = None, raw: bool = False) -> requests.Response:
    """POST /score; a dict body without "steps" gets them the way the remote client makes them."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if not raw and "steps" not in body:
        body = {**body, "steps": [r.split("\n\n") for r in body["responses"]]}
    data = body if raw else json.dumps(body)
    return requests.post(url + "/score", data=data, headers=headers, timeout=30)


def test_round_trip_metadata_and_health():
    rm = build_reward("arithmetic", verify_final=True)
    with BackgroundServer(rm, settings(max_batch=8, max_wait_ms=2), name="arithmetic",
                          args={"verify_final": True}) as srv:
        prompts, responses = ["q1", "q2"], ["6 * 7 = 42\n\nSo \\boxed{42}.", "6 * 7 = 41\n\nSo \\boxed{41}."]
        got = client(srv.url).score(prompts, responses, references=["42", "42"])
        assert [g.scores for g in got] == [[1.0, 1.0], [0.0, 0.0]]
        assert [g.scores for g in got] == [s.scores for s in rm.score(prompts, responses, ["42", "42"])]
        # without "steps" the server splits with the reward's splitter and says how
        r = post(srv.url, json.dumps({"prompts": ["q"], "responses": ["1 + 1 = 2\n\n1 + 1 = 3"]}), raw=True)
        assert r.json() == {"scores": [[1.0, 0.0]], "steps": [["1 + 1 = 2", "1 + 1 = 3"]]}
        assert post(srv.url, {"prompts": [], "responses": [], "steps": []}).json() == {"scores": []}
        meta = requests.get(srv.url + "/metadata", timeout=5).json()
        assert meta == {"reward": "arithmetic", "args": {"verify_final": True}, "probabilistic": True,
                        "max_batch": 8, "max_wait_ms": 2, "max_queue": 1024, "max_body_bytes": 8 * 1024 * 1024,
                        "max_request_responses": 1024, "auth": False}
        health = requests.get(srv.url + "/health", timeout=5).json()
        assert health["status"] == "ok" and health["requests"] == 2 and health["responses"] == 3


@pytest.mark.parametrize("max_batch", [64, 1])
def test_concurrent_clients_get_exactly_their_own_scores(max_batch):
    """16 clients x 10 requests at once: every answer equals the in-process score of the same request."""
    clients, per_client = 16, 10
    reqs = arithmetic_requests(clients * per_client, bits=9)
    rm = build_reward("arithmetic")
    expected = [[s.scores for s in rm.score(r["prompts"], r["responses"])] for r in reqs]
    with BackgroundServer(build_reward("arithmetic"), settings(max_batch=max_batch, max_wait_ms=20)) as srv:
        def run_client(c: int) -> list:
            rc = client(srv.url)
            return [[s.scores for s in rc.score(r["prompts"], r["responses"])]
                    for r in reqs[c * per_client:(c + 1) * per_client]]

        with ThreadPoolExecutor(clients) as pool:
            got = [x for part in pool.map(run_client, range(clients)) for x in part]
        stats = srv.service.stats
    assert got == expected
    u = 0
    for scores in got:  # and each response's scores spell its own number in binary
        for row in scores:
            assert row == [float((u >> b) & 1) for b in range(9)] + [0.5]
            u += 1
    assert stats.requests == clients * per_client and stats.responses == u and stats.failed == 0
    if max_batch == 1:
        assert stats.batches == stats.requests and stats.largest_batch == 3  # a 3-response request is not split
    else:
        assert stats.batches < stats.requests and 3 < stats.largest_batch <= 64


def test_batches_never_exceed_max_batch_and_a_bigger_request_goes_alone():
    model = Gate()
    with BackgroundServer(model, settings(max_batch=4, max_wait_ms=1000)) as srv:
        rc = client(srv.url)
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(rc.score, ["a"], ["x"])
            assert model.entered.wait(10)            # the first batch (1 response) is being scored
            rest = [pool.submit(rc.score, ["b"] * 2, ["x", "y"]) for _ in range(3)]
            big = pool.submit(rc.score, ["c"] * 6, ["x"] * 6)
            while srv.service.queued < 4:
                time.sleep(0.01)
            model.release.set()
            out = [f.result() for f in [first, *rest, big]]
        # in any arrival order: two pairs share a call of 4, the third pair goes alone, and so does the
        # 6-response request (never split, never joined)
        assert sorted(model.calls) == [1, 2, 4, 6] and srv.service.stats.largest_batch == 6
        assert [s.scores for s in out[0]] == [[10.0]] and [s.scores for s in out[4]] == [[10.0]] * 6


def test_requests_arriving_within_max_wait_share_one_call():
    model = Gate(gated=False)
    # the batch closes when its 4th response arrives (max_batch), or 5 s after the first: never in a quick test
    with BackgroundServer(model, settings(max_batch=4, max_wait_ms=5000)) as srv:
        rc = client(srv.url)
        with ThreadPoolExecutor(4) as pool:
            res = list(pool.map(lambda i: rc.score([f"p{i}"], ["s\n\nt"]), range(4)))
    assert [r[0].scores for r in res] == [[20.0, 21.0]] * 4
    assert model.calls == [4]  # all four arrived within max_wait of the first: one call


def test_full_queue_gets_503_and_queued_requests_still_finish():
    model = Gate()
    with BackgroundServer(model, settings(max_batch=1, max_queue=2)) as srv:
        with ThreadPoolExecutor(3) as pool:
            futs = [pool.submit(post, srv.url, {"prompts": ["p"], "responses": ["a\n\nb"]})]
            assert model.entered.wait(10)
            futs += [pool.submit(post, srv.url, {"prompts": ["pp"], "responses": ["a"]}) for _ in range(2)]
            while srv.service.queued < 2:
                time.sleep(0.01)
            r = post(srv.url, {"prompts": ["p"], "responses": ["a"]})
            assert r.status_code == 503 and r.json() == {"error": "queue full (2 requests waiting); retry later"}
            model.release.set()
            assert [f.result().json() for f in futs] == [{"scores": [[10.0, 11.0]]}, {"scores": [[20.0]]},
                                                         {"scores": [[20.0]]}]
        assert srv.service.stats.rejected_full == 1


def test_a_failing_request_does_not_fail_the_others_in_its_batch():
    model = Gate()
    with BackgroundServer(model, settings(max_batch=16, max_wait_ms=200)) as srv:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(post, srv.url, {"prompts": ["p"], "responses": ["a"]})
            assert model.entered.wait(10)
            good = pool.submit(post, srv.url, {"prompts": ["ppp"], "responses": ["a"]})
            bad = pool.submit(post, srv.url, {"prompts": ["boom"], "responses": ["a"]})
            while srv.service.queued < 2:
                time.sleep(0.01)
            model.release.set()
            assert first.result().json() == {"scores": [[10.0]]} and good.result().json() == {"scores": [[30.0]]}
            r = bad.result()
        assert r.status_code == 422
        assert r.json() == {"error": "reward failed: RewardError: prompt 'boom' cannot be scored"}
        assert model.calls == [1, 2, 1, 1]  # the failed pair was retried one request at a time


BAD = [
    (b'{"prompts": ["q"], "responses": ', 400, "body is not valid JSON: Expecting value: line 1 column 33 (char 32)"),
    (b'["q"]', 422, "body must be a JSON object, got list"),
    (b'{"prompts": ["q", "r"], "responses": ["a"]}', 422, "2 prompts for 1 responses"),
    (b'{"prompts": ["q"]}', 422, "missing field 'responses'"),
    (b'{"prompts": ["q"], "responses": ["a"], "steps": ["a"]}', 422, "'steps[0]' must be a list, got str"),
    (b'{"prompts": ["q"], "responses": ["a"], "steps": [["a"], ["b"]]}', 422,
     "'steps' must be a list of 1 lists of strings (one per response), got 2"),
    (b'{"prompts": ["q"], "responses": ["a"], "steps": [[1]]}', 422, "'steps[0][0]' must be a string, got int"),
    (b'{"prompts": ["q"], "responses": ["a"], "references": [1]}', 422,
     "'references[0]' must be a string or null, got int"),
    (b'{"prompts": ["q"], "responses": [7]}', 422, "'responses[0]' must be a string, got int"),
    (b'{"prompt": ["q"], "responses": ["a"]}', 422,
     "unknown field 'prompt' (allowed: prompts, responses, steps, references)"),
    (json.dumps({"prompts": ["q"] * 5, "responses": ["a"] * 5}).encode(), 413,
     "5 responses in one request exceed the limit of 4"),
]
BIG = json.dumps({"prompts": ["q"], "responses": ["x" * 5000]}).encode()
BAD.append((BIG, 413, f"request body of {len(BIG)} bytes exceeds the limit of 4096 bytes"))


def test_bad_requests_get_a_4xx_with_a_one_line_reason():
    with BackgroundServer(build_reward("arithmetic"), settings(max_body_bytes=4096, max_request_responses=4)) as srv:
        for body, status, message in BAD:
            r = post(srv.url, body, raw=True)
            assert (r.status_code, r.json()) == (status, {"error": message}), body[:60]
        r = requests.get(srv.url + "/score", timeout=5)
        assert (r.status_code, r.json()) == (405, {"error": "GET /score: Method Not Allowed"})
        # the remote client reports a 4xx in one line, without retrying
        rc = client(srv.url, retries=3)
        rc.sleep = lambda s: pytest.fail("a 4xx must not be retried")
        with pytest.raises(RewardError, match="HTTP 413 .*5 responses in one request exceed") as e:
            rc.score(["q"] * 5, ["a"] * 5)
        assert "\n" not in str(e.value)
        assert srv.service.stats.requests == 0  # nothing bad reached the model


def test_token(monkeypatch):
    with BackgroundServer(build_reward("arithmetic"), settings(token="s3cret")) as srv:
        body = {"prompts": ["q"], "responses": ["1 + 1 = 2"]}
        for token in (None, "wrong"):
            r = post(srv.url, body, token=token)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            assert r.json() == {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"}
        assert requests.get(srv.url + "/metadata", timeout=5).status_code == 401
        assert requests.get(srv.url + "/health", timeout=5).status_code == 200  # open for load balancers
        assert post(srv.url, body, token="s3cret").json() == {"scores": [[1.0]]}
        with pytest.raises(RewardError, match="HTTP 401 Unauthorized: .*missing or wrong token"):
            client(srv.url, retries=0).score(["q"], ["1 + 1 = 2"])
        ok = client(srv.url, headers={"Authorization": "Bearer s3cret"})
        assert ok.score(["q"], ["1 + 1 = 2"])[0].scores == [1.0]
        monkeypatch.setenv("MY_RM_TOKEN", "s3cret")
        assert client(srv.url, token_env="MY_RM_TOKEN").score(["q"], ["1 + 1 = 3"])[0].scores == [0.0]
        monkeypatch.delenv("MY_RM_TOKEN")
        with pytest.raises(ValueError, match="environment variable MY_RM_TOKEN"):
            client(srv.url, token_env="MY_RM_TOKEN")


def test_shutdown_finishes_the_batches_in_flight():
    model = Gate(delay=0.3)
    srv = BackgroundServer(model, settings(max_batch=2, max_wait_ms=0)).start()
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(post, srv.url, {"prompts": ["p" * (i + 1)], "responses": ["a"]}) for i in range(4)]
        assert model.entered.wait(10)
        while srv.service.queued + srv.service.scoring < 4:
            time.sleep(0.01)
        url = srv.url
        stopper = threading.Thread(target=srv.stop)
        stopper.start()   # what SIGTERM does: uvicorn stops accepting, then waits for the open requests
        model.release.set()
        assert [f.result().json() for f in futs] == [{"scores": [[10.0 * (i + 1)]]} for i in range(4)]
        stopper.join(30)
    assert not stopper.is_alive() and sum(model.calls) == 4
    with pytest.raises(requests.ConnectionError):
        post(url, {"prompts": ["p"], "responses": ["a"]})


# ------------------------------------------------------------------------------ the CLI, in a subprocess

def start_cli(port: int, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rlkit.cli", "serve-reward", "--port", str(port), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 90
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not come up in 90 s")


def test_killed_server_fails_in_one_line_after_retries_and_a_restart_within_the_budget_succeeds():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_cli(port, "--reward", "arithmetic")
    try:
        rc = client(url, retries=2, backoff=0.05)
        assert rc.score(["q"], ["2 * 3 = 6\n\n2 * 3 = 7"])[0].scores == [1.0, 0.0]
        proc.kill()
        proc.wait(10)
        delays = []
        rc.sleep = lambda s: (delays.append(s), time.sleep(s))
        with pytest.raises(RewardError) as e:
            rc.score(["q"], ["2 * 3 = 6"])
        assert str(e.value) == (f"remote reward {url}/score: connection failed (ConnectionRefusedError) "
                                "(server down or unreachable? 3 attempts)")
        assert delays == [0.05, 0.1]
        # the client keeps retrying while a new server starts on the same port
        patient = client(url, retries=10, backoff=0.25)
        delays.clear()
        patient.sleep = rc.sleep
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(patient.score, ["q"], ["2 * 3 = 6\n\n2 * 3 = 7"])
            time.sleep(0.3)
            proc = start_cli(port, "--reward", "arithmetic")
            assert fut.result(timeout=120)[0].scores == [1.0, 0.0]
        assert len(delays) >= 1 and delays == [0.25 * 2 ** k for k in range(len(delays))]
    finally:
        proc.kill()
        proc.wait(10)


SLOW_REWARD = '''
import time
from reward.base import StepRewardModel
from reward.registry import register

@register("slow-test")
class Slow(StepRewardModel):
    def score_steps(self, prompts, steps, references=None):
        time.sleep(1.5)
        return [[0.25] * len(s) for s in steps]
'''


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path):
    (tmp_path / "slow_rewards.py").write_text(SLOW_REWARD)
    port = free_port()
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    proc = start_cli(port, "--reward", "slow-test", "--import", "slow_rewards", "--token", "t", env=env)
    try:
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(post, f"http://127.0.0.1:{port}", {"prompts": ["q"], "responses": ["a\n\nb"]}, "t")
            while requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["scoring"] < 1:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert fut.result(timeout=30).json() == {"scores": [[0.25, 0.25]]}
        assert proc.wait(30) == 0
        assert "stopped after 1 requests (1 responses) in 1 batches" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(10)


def test_cli_arguments(capsys):
    from rlkit.cli import build_parser
    from rlkit.serve_cmd import _reward_from_args

    args = build_parser().parse_args(["serve-reward", "--recipe", "grpo_prm_quickstart",
                                      "--set", "reward.args.verify_final=false"])
    assert _reward_from_args(args) == ("arithmetic", {"verify_final": False, "splitter": {"mode": "newline"}})
    args = build_parser().parse_args(["serve-reward", "--reward", "arithmetic", "--reward-args",
                                      '{"neutral": 0.25}', "--reward-arg", "verify_final=true"])
    assert _reward_from_args(args) == ("arithmetic", {"neutral": 0.25, "verify_final": True})
    for argv, message in [
        (["--reward", "nope"], "unknown reward 'nope'"),
        (["--reward", "arithmetic", "--reward-arg", "nuetral=1"], "unknown argument 'nuetral'"),
        (["--reward", "arithmetic", "--max-batch", "0"], "max_batch must be >= 1, got 0"),
        (["--reward", "arithmetic", "--set", "a=1"], "--set goes with --recipe"),
        (["--recipe", "nope-recipe"], "recipe file not found: nope-recipe"),
        (["--reward", "arithmetic", "--import", "no_such_module_xyz"], "--import no_such_module_xyz"),
    ]:
        assert main(["serve-reward", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rlkit serve-reward: error: ") and message in err and "\n" not in err, err


def test_benchmark_runs_at_toy_size_and_prints_ratios():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reward_server.py"), "--clients", "4",
                          "--requests", "3"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines() if ln.startswith(("dynamic ", "one-at"))}
    assert set(rows) == {"dynamic", "one-at-a-time"}, res.stdout
    # 12 requests of 1-3 responses: one request per call without batching, and every score exact
    assert rows["one-at-a-time"][5] == "12" and float(rows["one-at-a-time"][6]) == 24 / 12
    assert all(float(r[-1]) == 0 for r in rows.values()) and all(float(r[2]) > 0 for r in rows.values())
    assert re.search(r"ratio dynamic / one-at-a-time: throughput [0-9.]+x, p50 [0-9.]+x, p99 [0-9.]+x", res.stdout)
