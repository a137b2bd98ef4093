"""The HTTP service: batching, the serving state, live catalogue and session updates, errors,
the token, graceful shutdown. The service runs for real (uvicorn on 127.0.0.1, a free port)
over small runs trained here: a text-only SASRec on 300 real Beauty users and their titles, a
search run on 800 real Home Depot rows, a synthetic ranker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import ecomjax
from ecomjax.errors import CheckpointError
from ecomjax.serve.app import ServeOptions, Service
from ecomjax.serve.batching import Batcher
from ecomjax.serve.journal import Journal
from tests.conftest import real_data

ROOT = Path(__file__).resolve().parent.parent


# --- parts ------------------------------------------------------------------------------------------

def test_batcher_gathers_concurrent_requests_answers_each_and_waits_at_most_the_window():
    from concurrent.futures import ThreadPoolExecutor

    calls = []

    def handle(payloads):
        calls.append(list(payloads))
        return [ValueError(f"bad {p}") if p < 0 else 2 * p for p in payloads]

    async def scenario():
        batcher = Batcher("t", [(handle, ThreadPoolExecutor(1))], max_batch=4, window_ms=50)
        batcher.start()
        started = time.perf_counter()
        lone = await batcher.submit(1)
        lone_s = time.perf_counter() - started
        results = await asyncio.gather(*(batcher.submit(p) for p in (2, 3, -4, 5, 6)), return_exceptions=True)
        await batcher.stop()
        return lone, lone_s, results

    lone, lone_s, results = asyncio.run(scenario())
    assert lone == 2 and lone_s < 0.5  # one window (50 ms) and the call, not more
    assert results[:2] == [4, 6] and isinstance(results[2], ValueError) and str(results[2]) == "bad -4"
    assert results[3:] == [10, 12]  # a bad request fails alone, its batch neighbours are answered
    assert calls[0] == [1] and calls[1] == [2, 3, -4, 5] and calls[2] == [6]  # max_batch 4


def test_two_stage_batcher_overlaps_batches_and_answers_in_order():
    from concurrent.futures import ThreadPoolExecutor

    running = {"first": 0, "second": 0, "both": False}
    lock = threading.Lock()

    def stage(name, function):
        def run(value):
            with lock:
                running[name] += 1
                running["both"] |= running["first"] > 0 and running["second"] > 0
            time.sleep(0.05)
            with lock:
                running[name] -= 1
            return function(value)
        return run

    async def scenario():
        batcher = Batcher("t", [(stage("first", lambda ps: [p + 1 for p in ps]), ThreadPoolExecutor(1)),
                                (stage("second", lambda xs: [10 * x for x in xs]), ThreadPoolExecutor(1))],
                          max_batch=2, window_ms=1)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(p) for p in range(8)))
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [10 * (p + 1) for p in range(8)]
    assert running["both"]  # one batch's second stage ran beside the next batch's first


def test_journal_replays_records_cuts_a_torn_tail_and_refuses_a_damaged_line(tmp_path, capsys):
    path = tmp_path / "serving" / "journal.jsonl"
    journal = Journal(path)
    journal.append("items", [{"item_id": "a", "title": "A"}])
    journal.append("events", [{"session_id": "s", "item_id": "a"}])
    journal.close()
    assert [r["kind"] for r in Journal(path).records] == ["items", "events"]
    with path.open("a") as f:
        f.write('{"seq": 3, "kind": "items", "bo')  # the process died mid-write
    assert len(Journal(path).records) == 2
    assert "journal.jsonl:3: incomplete last record" in capsys.readouterr().err
    assert path.read_text().count("\n") == 2  # cut back to the acknowledged records
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace('"A"', '"B"'), lines[1]]) + "\n")  # edited: sha256 mismatch
    with pytest.raises(CheckpointError, match=r"journal.jsonl:1: damaged serving-state record"):
        Journal(path)


# --- trained runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    beauty = real_data("amazon-beauty/Beauty.txt")
    small = root / "beauty_300.txt"
    small.write_text("".join(beauty.read_text().splitlines(keepends=True)[:300]))
    recommender = ecomjax.train(None, overrides={
        "data.source": "file", "data.path": str(small), "data.max_len": 20, "workdir": str(root / "rec"),
        "model.hidden_size": 16, "model.ffn_size": 32, "model.num_layers": 1, "model.item_fusion": "text_only",
        "model.item_text": str(beauty.parent / "Beauty_titles.tsv"), "model.title_word_min_items": 2,
        "train.batch_size": 8, "train.epochs": 1, "train.warmup_steps": 5, "train.progress": False,
        "eval.batch_size": 64, "eval.sampled_negatives": 0})
    lines = real_data("homedepot/train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    hd = root / "hd.csv"
    hd.write_text("".join(lines[:801]), encoding="utf-8")
    search = ecomjax.train({"task": "relevance", "workdir": str(root / "search"), "data": {"path": str(hd)}},
                           cross_encoder__enabled=False, bi_encoder__train__epochs=2, gbdt__max_rounds=50,
                           bi_encoder__train__progress=False)
    ranker = ecomjax.train("configs/ranker_synthetic.yaml", overrides={
        "data.synthetic.num_users": 300, "data.synthetic.num_items": 200, "data.synthetic.num_categories": 8,
        "data.impressions.num_requests": 500, "model.embed_dim": 8, "model.expert_hidden": [32],
        "model.tower_hidden": [16], "train.epochs": 1, "train.batch_size": 128, "baselines.gbdt": False,
        "train.progress": False, "workdir": str(root / "ranker")})
    return {"recommend": recommender.workdir, "search": search.workdir, "rank": ranker.workdir, "root": root}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Running:
    """A service on uvicorn in a thread, for one ``with`` block."""

    def __init__(self, workdirs, state: Path, **options):
        import uvicorn

        self.service = Service([ecomjax.load(w) for w in workdirs],
                               ServeOptions(state_dir=state, max_batch=4, **options))
        self.service.prepare()
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.service.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline, "the service did not start"
            time.sleep(0.05)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)


def _titles(runs) -> dict[int, str]:
    from ecomjax.data.item_text import read_item_titles

    return read_item_titles(real_data("amazon-beauty/Beauty_titles.tsv"))


def test_batched_recommendations_are_the_one_at_a_time_ones(runs):
    rec = ecomjax.load(runs["recommend"]).inference
    ids = rec.item_ids
    histories = [list(ids[1:4]), list(ids[5:6]), list(ids[7:30])]
    batch = rec.recommend_batch(histories, 10, [True, False, True])
    for history, exclude, got in zip(histories, [True, False, True], batch, strict=True):
        one = rec.recommend(history, 10, exclude)
        np.testing.assert_array_equal(got.item_ids, one.item_ids)
        np.testing.assert_allclose(got.scores, one.scores, rtol=1e-6)
        # the reference: every catalogue score, history masked, sorted on the host
        full = np.array(rec.scores(history))
        if exclude:
            full[rec.dense_ids(history)] = -np.inf
        np.testing.assert_allclose(np.sort(full)[::-1][:10], one.scores, rtol=1e-5)
    assert isinstance(rec.recommend_batch([[], histories[0]], 5)[0], ValueError)
    # an id named twice in one update takes its last title, as if it had been sent alone
    rows = rec.add_items(["twice", "twice"], ["red nail polish", "argan oil shampoo"])
    rows += rec.add_items(["alone"], ["argan oil shampoo"])
    table = np.asarray(rec._catalogue.table)
    np.testing.assert_allclose(table[rec.index["twice"]], table[rec.index["alone"]], rtol=1e-5, atol=1e-6)
    assert len(rows) == len(set(rows)) == 2 and rec.num_items == len(ids) - 1 + 2  # one row per distinct id


def test_live_items_sessions_and_their_restart(runs, tmp_path):
    state = tmp_path / "state"
    titles = _titles(runs)
    with _Running([runs["search"], runs["recommend"]], state) as client:
        history = [int(i) for i in ecomjax.load(runs["recommend"]).vocab["item_ids"][1:6]]
        before = client.post("/recommend", json={"history": history, "k": 10}).json()["items"]
        top = next(i["item_id"] for i in before if i["item_id"] in titles)
        title = titles[top]
        # a new listing of the top item's product: same title, so the same content vector
        added = client.post("/items", json={"items": [{"item_id": "new-1", "title": title}]})
        assert added.status_code == 200 and added.json()["searchable"] == 1 and added.json()["recommendable"] == 1
        started = time.perf_counter()
        after = client.post("/recommend", json={"history": history, "k": 10}).json()["items"]
        assert "new-1" in [i["item_id"] for i in after][:3]
        found = client.post("/search", json={"query": title, "k": 5}).json()["results"]
        assert time.perf_counter() - started < 1.0
        assert found[0]["product_id"] == "new-1" and found[0]["title"] == title
        # a session: each event changes the next recommendation
        first = client.post("/events", json={"events": [{"session_id": "s1", "item_id": history[0]}]})
        assert first.status_code == 200 and first.json()["sessions"] == {"s1": 1}
        r1 = client.post("/recommend", json={"session_id": "s1", "k": 10}).json()
        client.post("/events", json={"events": [{"session_id": "s1", "item_id": "new-1", "behavior": "cart"}]})
        r2 = client.post("/recommend", json={"session_id": "s1", "k": 10}).json()
        assert r1["history_length"] == 1 and r2["history_length"] == 2 and r1["items"] != r2["items"]
        direct = client.post("/recommend", json={"history": [history[0], "new-1"], "k": 10}).json()
        assert direct["items"] == r2["items"]
        metrics = client.get("/metrics").text
        assert 'ecomjax_requests_total{endpoint="recommend",status="200"}' in metrics
        assert "ecomjax_batch_size_bucket" in metrics and 'ecomjax_stage_seconds_count{endpoint="search",stage="encode"}' in metrics
    with _Running([runs["search"], runs["recommend"]], state) as client:  # restarted: state replayed
        assert client.post("/search", json={"query": title, "k": 5}).json()["results"][0]["product_id"] == "new-1"
        again = client.post("/recommend", json={"session_id": "s1", "k": 10}).json()
        assert again["items"] == r2["items"]
        assert client.get("/healthz").json()["catalogue"]["recommend"] == \
            ecomjax.load(runs["recommend"]).spec["num_items"] + 1


def test_malformed_requests_are_4xx_naming_the_problem(runs, tmp_path):
    with _Running([runs["recommend"], runs["rank"]], tmp_path / "state") as client:
        known = int(ecomjax.load(runs["recommend"]).vocab["item_ids"][1])
        cases = [
            ("/recommend", b'{"history": [1, 2', "json"),
            ("/recommend", {"k": 5}, "history"),
            ("/recommend", {"history": [known], "kk": 5}, "kk"),
            ("/recommend", {"history": [known], "k": 0}, "k"),
            ("/recommend", {"history": [known], "exclude_history": "maybe"}, "exclude_history"),
            ("/recommend", {"history": [known, 99999999]}, "99999999"),
            ("/recommend", {"session_id": "nobody"}, "nobody"),
            ("/events", {"events": [{"session_id": "s", "item_id": 99999999}]}, "99999999"),
            ("/events", {"events": [{"session_id": "s", "item_id": known, "behavior": "like"}]}, "behavior"),
            ("/rank", {"candidates": []}, "candidates"),
            ("/rank", {"candidates": [{"categorical": {"colour": 10**6}, "numeric": {}}]}, "colour"),
            ("/rank", {"candidates": [{"categorical": {"no_such": 1}}]}, "no_such"),
            ("/search", {"query": "drill"}, "relevance"),  # no search run served: 404
        ]
        for path, body, word in cases:
            response = (client.post(path, content=body, headers={"content-type": "application/json"})
                        if isinstance(body, bytes) else client.post(path, json=body))
            assert 400 <= response.status_code < 500, (path, body, response.text)
            assert word.lower() in response.json()["error"].lower(), (path, body, response.text)
        ranker = ecomjax.load(runs["rank"]).inference
        good = {"candidates": [{"numeric": dict.fromkeys(ranker.schema.numeric, 0.2)},
                               {"categorical": {"item": 3}, "numeric": dict.fromkeys(ranker.schema.numeric, 0.9)}]}
        ranked = client.post("/rank", json=good).json()["candidates"]
        assert sorted(c["index"] for c in ranked) == [0, 1]
        assert ranked[0]["satisfaction"] >= ranked[1]["satisfaction"] and 0 < ranked[0]["click"] < 1


def test_write_endpoints_need_the_token(runs, tmp_path):
    token = "s3cret-token-0123456789"
    with _Running([runs["recommend"]], tmp_path / "state", token=token) as client:
        known = int(ecomjax.load(runs["recommend"]).vocab["item_ids"][1])
        body = {"events": [{"session_id": "s", "item_id": known}]}
        assert client.post("/events", json=body).status_code == 401
        assert client.post("/events", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/items", json={"items": [{"item_id": "x", "title": "lipstick red"}]}).status_code == 401
        assert client.post("/events", json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.post("/recommend", json={"history": [known]}).status_code == 200  # reads stay open


def test_sigterm_lets_the_in_flight_request_finish_and_exits_0(runs, tmp_path):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "ecomjax", "serve", str(runs["recommend"]), "--port", str(port),
                                "--window-ms", "800", "--state-dir", str(tmp_path / "state"), "--access-log",
                                str(tmp_path / "access.jsonl")], cwd=ROOT, env=os.environ.copy())
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None and time.time() < deadline, "the service did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        known = int(ecomjax.load(runs["recommend"]).vocab["item_ids"][1])
        answer = {}
        request = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
            f"http://127.0.0.1:{port}/recommend", json={"history": [known]}, timeout=30)))
        request.start()
        time.sleep(0.3)  # the request waits in its 800 ms batch window
        process.send_signal(signal.SIGTERM)
        request.join(30)
        assert answer["r"].status_code == 200 and len(answer["r"].json()["items"]) == 10
        assert process.wait(30) == 0
        logged = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
        assert (logged[-1]["path"], logged[-1]["status"], logged[-1]["method"]) == ("/recommend", 200, "POST")
    finally:
        if process.poll() is None:
            process.kill()
