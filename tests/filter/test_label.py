"""The labelling page: a real HTTP server on 127.0.0.1, clicked through with httpx."""
from __future__ import annotations

import json

import httpx
import pytest

from datagen.filter.audit import audit_run
from datagen.filter.label import LabelServer
from datagen.filter.table import read_kept_images, read_scores


@pytest.fixture
def server(run_copy):
    store, _ = run_copy
    srv = LabelServer(store.root, n=5, seed=3, port=0).start()
    yield store, srv
    srv.close()


def test_page_serves_a_sample_with_images_and_writes_each_click(server):
    store, srv = server
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and "good" in page.text and "/api/label" in page.text
        items = client.get("/api/sample").json()
        assert len(items) == 5 and len({i["candidate_id"] for i in items}) == 5
        kept = set(read_scores(store).query("images_kept")["candidate_id"])
        assert {i["candidate_id"] for i in items} <= kept
        stored = {}
        for shard in store.done_shards("filter"):
            stored.update(read_kept_images(store, shard))
        first = items[0]["candidate_id"]
        img = client.get(f"/img/{first}/edited")
        assert img.headers["content-type"] == "image/png" and img.content == stored[first]["edited.png"]
        for item, label in zip(items, ["good", "bad", "good"]):
            r = client.post("/api/label", json={"candidate_id": item["candidate_id"], "label": label})
            assert r.status_code == 200
        assert r.json()["labelled"] == 3
        assert client.post("/api/label", json={"candidate_id": first, "label": "maybe"}).status_code == 400
        assert client.post("/api/label", json={"candidate_id": "nope", "label": "good"}).status_code == 400
        assert client.get("/img/nope/input").status_code == 404
        assert client.get("/api/sample").json()[0]["label"] == "good"   # a reload shows what was clicked
    saved = json.loads((store.root / "labels" / "labels.json").read_text())
    assert {k: v["label"] for k, v in saved.items()} == {
        items[0]["candidate_id"]: "good", items[1]["candidate_id"]: "bad", items[2]["candidate_id"]: "good"}
    numbers = audit_run(store.root)   # the audit picks the file up by itself
    assert numbers["labels"]["human"]["labelled"] == 3


def test_the_same_seed_gives_the_same_sample(run_copy):
    store, _ = run_copy
    a, b = (LabelServer(store.root, n=4, seed=1, port=0) for _ in range(2))
    try:
        assert [i["candidate_id"] for i in a.items] == [i["candidate_id"] for i in b.items]
    finally:
        for s in (a, b):
            s.httpd.server_close()


def test_sample_read_shard_by_shard_is_the_draw_from_the_whole_table(run_copy):
    import numpy as np

    from datagen.filter.label import sample_kept

    store, _ = run_copy
    pool = read_scores(store).query("images_kept")
    for n, seed in ((5, 3), (4, 0), (len(pool) + 10, 1)):
        want = pool.iloc[np.sort(np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False))]
        assert sample_kept(store, n, seed)["candidate_id"].tolist() == want["candidate_id"].tolist()
