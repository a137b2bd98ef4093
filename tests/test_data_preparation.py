"""Interaction logs in every format, the cleaning steps, and the splits: against hand-built logs
whose right answer is written out, and against the real Beauty and Diginetica files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecomjax.config import load_config
from ecomjax.data import load_sequences, read_sequence_file
from ecomjax.data.split import leave_one_out, make_split
from ecomjax.errors import DataFormatError, InputError
from tests.conftest import real_data


def data(path, *overrides):
    return load_sequences(load_config(None, ["data.source=file", f"data.path={path}", *overrides]).data)


def sequences(dataset) -> dict:
    """Original user id -> original item ids, in sequence order."""
    return {dataset.user_ids[u].item() if hasattr(dataset.user_ids[u], "item") else dataset.user_ids[u]:
            dataset.item_ids[dataset.sequence(u)].tolist() for u in range(dataset.num_users)}


def same_dataset(a, b) -> None:
    for key in ("items", "offsets", "user_ids", "item_ids"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and np.array_equal(x, y), key
    assert a.num_items == b.num_items


# --- formats -----------------------------------------------------------------------------------


def test_beauty_as_pairs_and_recbole_inter_loads_to_exactly_the_same_dataset(tmp_path):
    beauty = real_data("amazon-beauty/Beauty.txt")
    rows = [line.split() for line in beauty.read_text().splitlines() if line.strip()]
    pairs, inter = tmp_path / "Beauty_pairs.txt", tmp_path / "Beauty.inter"
    pairs.write_text("".join(f"{r[0]} {item}\n" for r in rows for item in r[1:]))
    # as the RecBole peer benchmark writes it: timestamp = position in the sequence
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                     + "".join(f"{r[0]}\t{item}\t{p}\n" for r in rows for p, item in enumerate(r[1:])))
    reference = read_sequence_file(beauty)
    same_dataset(reference, data(beauty))
    same_dataset(reference, data(pairs, "data.format=pairs"))
    from_inter = data(inter, "data.format=recbole")
    same_dataset(reference, from_inter)
    assert from_inter.report["steps"][-1]["equal_timestamp_ties"] == 0
    assert from_inter.report["final"] == {"interactions": 198502, "sequences": 22363, "items": 12101}


def test_csv_log_is_ordered_by_time_with_ties_in_file_order_and_reports_them(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,pid,ts\n"
                    "u1,b,20\n"
                    "u2,x,5\n"
                    "u1,a,10\n"
                    "u1,d,30\n"
                    "u1,c,30\n"  # same time as d, later in the file: stays after d
                    "u2,y,1\n")
    ds = data(path, "data.format=delimited", "data.columns.user=uid", "data.columns.item=pid", "data.columns.time=ts")
    assert sequences(ds) == {"u1": ["a", "b", "d", "c"], "u2": ["y", "x"]}
    assert ds.item_ids.tolist() == ["", "a", "b", "c", "d", "x", "y"]  # sorted original ids, 0 = padding
    assert ds.times.tolist() == [10, 20, 30, 30, 1, 5]
    order_step = ds.report["steps"][-1]
    assert order_step["step"] == "chronological order" and order_step["equal_timestamp_ties"] == 1
    assert ds.report["time_range"] == [1.0, 30.0]


def test_tsv_without_header_iso_dates_and_other_delimiters(tmp_path):
    tsv = tmp_path / "log.tsv"
    tsv.write_text("7\t3\t2024-01-02\n7\t1\t2024-01-01T10:00:00\n8\t3\t2024-01-03 00:00:01\n")
    ds = data(tsv, "data.format=delimited", "data.header=false", r'data.delimiter="\t"', "data.columns.time=2")
    assert sequences(ds) == {7: [1, 3], 8: [3]}
    assert ds.times[0] == 1704103200.0  # 2024-01-01T10:00:00Z in seconds
    semi = tmp_path / "log.txt"
    semi.write_text("user;item\n1;10\n1;9\n")
    assert sequences(data(semi, "data.format=delimited", "data.delimiter=;")) == {1: [10, 9]}


def test_parquet_file_and_directory_read_the_same_log(tmp_path):
    table = pa.table({"user": ["a", "a", "b", "a"], "item": [5, 6, 5, 7], "t": [1.0, 2.0, 1.5, 3.0]})
    pq.write_table(table, tmp_path / "one.parquet")
    (tmp_path / "parts").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "parts" / "part-0.parquet")
    pq.write_table(table.slice(2), tmp_path / "parts" / "part-1.parquet")
    one = data(tmp_path / "one.parquet", "data.format=parquet", "data.columns.time=t")
    parts = data(tmp_path / "parts", "data.format=parquet", "data.columns.time=t")
    assert sequences(one) == sequences(parts) == {"a": [5, 6, 7], "b": [5]}


def test_log_errors_name_the_file_line_or_row_and_the_column(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\n1,2,3\n\n1,,4\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:4: empty item \(column 'item'\)$"):
        data(path, "data.format=delimited")
    path.write_text("user,item,ts\n1,2,3\n1,3,yesterday\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:3: timestamp \(column 'ts'\) is neither a number"):
        data(path, "data.format=delimited", "data.columns.time=ts")
    path.write_text("user,item,ts\n1,2,3\n1,3\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:3: expected 3 fields, got 2: '1,3'$"):
        data(path, "data.format=delimited")
    with pytest.raises(InputError, match=r"^data.columns.time: column 'when' is not in .*log.csv \(columns: "
                                         r"\['user', 'item', 'ts'\]\)$"):
        data(path, "data.format=delimited", "data.columns.time=when")
    pq.write_table(pa.table({"user": ["a", None], "item": ["x", "y"]}), tmp_path / "bad.parquet", row_group_size=1)
    with pytest.raises(DataFormatError, match=r"bad.parquet: row group 1, row 0: empty user \(column 'user'\)$"):
        data(tmp_path / "bad.parquet", "data.format=parquet")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 2\n1 2 3\n")
    with pytest.raises(DataFormatError, match=rf"^{pairs}:2: expected 'user item', got 3 fields \(a 'user item "
                                              r"item \.\.\.' file is data.format=sequences\)$"):
        data(pairs, "data.format=pairs")
    with pytest.raises(InputError, match=r"data.columns applies to delimited, parquet and recbole logs"):
        data(pairs, "data.format=pairs", "data.columns.user=u")
    path.write_text("user,item\n1,2\n")
    with pytest.raises(InputError, match=r"min_rating is set but .* has no rating column"):
        data(path, "data.format=delimited", "data.preprocess.min_rating=4")


# --- preprocessing steps ------------------------------------------------------------------------


def test_min_rating_duplicates_consecutive_repeats_and_report_counts(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating,time\n"
                    "1,a,5,1\n"
                    "1,a,5,1\n"  # exact duplicate
                    "1,b,2,2\n"  # rated below 4
                    "1,a,4,3\n"  # 'a' again, but after the duplicate is gone it follows 'a': a repeat
                    "1,c,5,4\n"
                    "2,c,4,1\n")
    ds = data(path, "data.format=delimited", "data.columns.rating=rating", "data.columns.time=time",
              "data.preprocess.min_rating=4", "data.preprocess.drop_duplicates=true",
              "data.preprocess.drop_consecutive_repeats=true")
    assert sequences(ds) == {1: ["a", "c"], 2: ["c"]}
    steps = [(s["step"], s["interactions"]) for s in ds.report["steps"]]
    assert steps == [("read", 6), ("min_rating 4", 5), ("drop_duplicates", 4), ("chronological order", 4),
                     ("drop_consecutive_repeats", 3)]


def test_k_core_repeats_until_users_and_items_both_hold(tmp_path):
    # Item z has 2 interactions, so a 2-core first keeps it; dropping user 3 (1 interaction) leaves
    # z with one, which then goes, which leaves user 2 with one, which goes too: three rounds.
    path = tmp_path / "pairs.txt"
    path.write_text("1 x\n1 y\n1 x\n1 y\n2 z\n2 x\n3 z\n4 y\n4 x\n")
    ds = data(path, "data.format=pairs", "data.preprocess.min_user_interactions=2",
              "data.preprocess.min_item_interactions=2")
    assert sequences(ds) == {1: ["x", "y", "x", "y"], 4: ["y", "x"]}
    core = ds.report["steps"][-1]
    assert core["interactions"] == 6 and core["sequences"] == 2 and core["items"] == 2 and core["rounds"] >= 3
    counts = np.bincount(ds.items)
    assert counts[1:].min() >= 2 and ds.lengths.min() >= 2


def test_sessions_from_a_time_gap_and_from_a_session_column(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("user,item,time\n1,a,0\n1,b,100\n1,c,5000\n1,d,5060\n2,a,10\n")
    ds = data(path, "data.format=delimited", "data.columns.time=time", "data.preprocess.session_gap=1800")
    assert sequences(ds) == {"1#0": ["a", "b"], "1#1": ["c", "d"], "2#0": ["a"]}
    path.write_text("sid,item,time\ns2,b,3\ns1,a,9\ns2,a,1\n")
    ds = data(path, "data.format=delimited", "data.columns.session=sid", "data.columns.time=time")
    assert sequences(ds) == {"s2": ["a", "b"], "s1": ["a"]}
    assert ds.report["sequences_are"] == "sessions"


# --- splits ---------------------------------------------------------------------------------------


def timestamped(tmp_path, rows: list[tuple]) -> object:
    path = tmp_path / "t.csv"
    path.write_text("user,item,time\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


def test_temporal_split_trains_on_nothing_at_or_after_the_validation_cutoff(tmp_path):
    rows = [(1, 1, 1), (1, 2, 2), (1, 3, 6), (1, 4, 8), (1, 5, 9),
            (2, 2, 3), (2, 3, 7), (3, 1, 8), (3, 4, 9), (4, 6, 9)]
    ds = data(timestamped(tmp_path, rows), "data.format=delimited", "data.columns.time=time")
    config = load_config(None, ["data.split.method=temporal", "data.split.valid_cutoff=6",
                                "data.split.test_cutoff=8"]).data.split
    split = make_split(ds, config)
    for u in range(ds.num_users):
        trained = ds.times[ds.offsets[u]:split.train_end[u]]
        assert (trained < 6).all()
    # validation: user 1's item 3 (t=6; history 1 2), user 2's item 3 (t=7; history 2)
    assert [ds.item_ids[t] for t in split.valid.targets] == [3, 3]
    assert (split.valid.history_end - ds.offsets[split.valid.users]).tolist() == [2, 1]
    # test: first at or after t=8 with history: user 1's item 4, user 3's item 4 (after item 1 at 8);
    # user 3's item 1 has no earlier interaction and user 4 has one interaction: no case
    assert [ds.item_ids[t] for t in split.test.targets] == [4, 4]
    assert split.num_train_only == 1 and split.protocol["test_cases"] == 2
    every = make_split(ds, load_config(None, ["data.split.method=temporal", "data.split.valid_cutoff=6",
                                              "data.split.test_cutoff=8", "data.split.targets=all"]).data.split)
    assert [ds.item_ids[t] for t in every.test.targets] == [4, 5, 4]


def test_temporal_cutoffs_from_fractions_and_ratio_split(tmp_path):
    rows = [(u, i, 10 * u + i) for u in range(1, 5) for i in range(1, 11)]  # 40 interactions, t = 11..50
    ds = data(timestamped(tmp_path, rows), "data.format=delimited", "data.columns.time=time")
    split = make_split(ds, load_config(None, ["data.split.method=temporal"]).data.split)
    all_times = np.sort(ds.times)
    assert split.protocol["test_cutoff"] == all_times[36] and split.protocol["valid_cutoff"] == all_times[32]
    ratio = make_split(ds, load_config(None, ["data.split.method=ratio", "data.split.valid_fraction=0.2",
                                              "data.split.test_fraction=0.2"]).data.split)
    assert (ratio.train_end - ds.offsets[:-1]).tolist() == [6] * 4
    assert (ratio.valid.history_end - ds.offsets[ratio.valid.users]).tolist() == [6] * 4
    assert (ratio.test.history_end - ds.offsets[ratio.test.users]).tolist() == [8] * 4
    with pytest.raises(InputError, match=r"temporal needs timestamps, and .* has none"):
        make_split(read_sequence_file(write_sequences(tmp_path)), load_config(
            None, ["data.split.method=temporal"]).data.split)


def write_sequences(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 1 2 3\n2 2 3 4\n")
    return path


def test_leave_one_out_through_the_log_path_matches_the_sequence_file(tmp_path):
    path = write_sequences(tmp_path)
    a, b = leave_one_out(read_sequence_file(path)), leave_one_out(data(path, "data.preprocess.drop_duplicates=true"))
    assert np.array_equal(a.train_end, b.train_end) and np.array_equal(a.test.targets, b.test.targets)


# --- end to end -------------------------------------------------------------------------------------


def test_diginetica_sample_trains_a_session_recommender_from_the_shipped_config(tmp_path):
    import ecomjax

    real_data("diginetica/sample_train-item-views.csv")
    run = ecomjax.train("configs/sasrec_diginetica.yaml", workdir=str(tmp_path / "run"), **{"train.epochs": 10})
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["sequences_are"] == "sessions"
    assert [s["step"] for s in report["steps"]][:2] == ["read", "chronological order"]
    assert run.metrics["data"]["users"] == report["final"]["sequences"]
    # popularity reaches HR@10 0.02 here; returning to items viewed earlier in the session, 0.2+
    assert run.metrics["test"]["hr@10"] > 0.2
    recs = run.recommend([str(i) for i in run.vocab["item_ids"][1:4]], k=5)
    assert len(recs.item_ids) == 5


# --- out of core -------------------------------------------------------------------------------------


def synthetic_log(path, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    users, items, times = rng.integers(0, 400, n), rng.zipf(1.3, n) % 500, rng.integers(0, 300, n)
    items[1::7] = items[0:-1:7][: len(items[1::7])]  # some immediate repeats
    path.write_text("user,item,time\n" + "".join(f"{u},{i},{t}\n" for u, i, t in zip(users, items, times, strict=True)))
    return path


STEPS = ["data.preprocess.drop_duplicates=true", "data.preprocess.drop_consecutive_repeats=true",
         "data.preprocess.min_user_interactions=5", "data.preprocess.min_item_interactions=5"]


def test_out_of_core_shards_hold_exactly_the_in_memory_sequences(tmp_path):
    from ecomjax.data.shard_pipeline import load_shards
    from ecomjax.data.shards import prepare_shards
    from ecomjax.data.source import _column_map

    log = synthetic_log(tmp_path / "log.csv")
    config = load_config(None, ["data.source=file", f"data.path={log}", "data.format=delimited",
                                "data.columns.time=time", *STEPS]).data
    in_memory = load_sequences(config)
    report = prepare_shards(log, tmp_path / "shards", _column_map(config), config.preprocess, num_buckets=5)
    streamed = load_shards(tmp_path / "shards")
    assert np.array_equal(streamed.item_ids, in_memory.item_ids)
    assert sequences(streamed) == sequences(in_memory)  # same sequences, in bucket order
    assert report["final"] == in_memory.report["final"] and report["buckets"] == 5
    memory_ties = next(s for s in in_memory.report["steps"] if s["step"] == "chronological order")
    assert next(s for s in report["steps"] if s["step"] == "chronological order") == {
        "step": "chronological order", "interactions": memory_ties["interactions"],
        "equal_timestamp_ties": memory_ties["equal_timestamp_ties"]}
    with pytest.raises(InputError, match="already holds prepared shards"):
        prepare_shards(log, tmp_path / "shards", _column_map(config), config.preprocess)
    trained = data(tmp_path / "shards", "data.format=shards", *STEPS)  # the steps it was made with
    assert trained.num_users == streamed.num_users
    with pytest.raises(InputError, match="cleaned with other steps when prepared"):
        data(tmp_path / "shards", "data.format=shards", "data.preprocess.min_user_interactions=3")


def test_each_process_streams_only_its_shards_and_gets_the_in_memory_packing(tmp_path):
    from ecomjax.data.pipeline import NextItemTrainData
    from ecomjax.data.shard_pipeline import read_manifest, read_shard, streamed_train_batches
    from ecomjax.data.shards import prepare_shards
    from ecomjax.data.source import _column_map

    log = synthetic_log(tmp_path / "log.csv")
    config = load_config(None, ["data.source=file", f"data.path={log}", "data.format=delimited",
                                "data.columns.time=time"]).data
    out = tmp_path / "shards"
    prepare_shards(log, out, _column_map(config), config.preprocess, num_buckets=4)
    item_ids = np.load(out / "item_ids.npy")
    per_process = [list(streamed_train_batches(out, max_len=20, batch_size=4, seed=3, epoch=1, process_index=p,
                                               process_count=2)) for p in range(2)]
    shards = read_manifest(out)["shards"]
    for p, batches in enumerate(per_process):
        expected_tokens = 0
        for name in shards[p::2]:
            shard = NextItemTrainData(leave_one_out(read_shard(out, name, item_ids)), 20, 4, 3)
            expected_tokens += shard.num_tokens
        assert sum(int((b["targets"] > 0).sum()) for b in batches) == expected_tokens
    one = read_manifest(out)["shards"][0]
    expected = NextItemTrainData(leave_one_out(read_shard(out, one, item_ids)), 20, 4, 3).epoch_rows(1)
    alone = tmp_path / "one"
    alone.mkdir()
    for name in ("item_ids.npy", one):
        (alone / name).write_bytes((out / name).read_bytes())
    (alone / "manifest.json").write_text(json.dumps({**read_manifest(out), "shards": [one]}))
    batches = list(streamed_train_batches(alone, max_len=20, batch_size=4, seed=3, epoch=1))
    for key in ("items", "targets", "segments", "positions"):
        assert np.array_equal(np.concatenate([b[key] for b in batches]), expected[key]), key


def test_cli_prepares_a_log_and_trains_on_its_shards(tmp_path, capsys):
    from ecomjax.cli import main

    log = synthetic_log(tmp_path / "log.csv", n=3000)
    args = ["data.source=file", f"data.path={log}", "data.format=delimited", "data.columns.time=time"]
    assert main(["data", "prepare", "configs/quickstart.yaml", *args, "--out", str(tmp_path / "shards")]) == 0
    assert "train on them with: data.format=shards" in capsys.readouterr().out
    assert main(["train", "configs/quickstart.yaml", f"workdir={tmp_path / 'run'}", "data.source=file",
                 "data.format=shards", f"data.path={tmp_path / 'shards'}", "train.epochs=1",
                 "model.hidden_size=16", "model.ffn_size=32"]) == 0
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["buckets"] == 1 and report["final"]["interactions"] == 3000


def test_recbole_item_file_gives_the_titles_of_a_text_fused_model(tmp_path):
    from ecomjax.data.item_text import read_item_titles

    path = tmp_path / "shop.item"
    path.write_text("item_id:token\ttitle:token_seq\tbrand:token\n10\tRose water toner\tacme\n3\tClay mask\tzen\n")
    assert read_item_titles(path) == {10: "Rose water toner", 3: "Clay mask"}
    path.write_text("item_id:token\tbrand:token\n10\tacme\n")
    with pytest.raises(DataFormatError, match=r"shop.item:1: no title column \(title, movie_title or name\)"):
        read_item_titles(path)


def test_out_of_core_scan_checks_rows_like_the_in_memory_readers(tmp_path):
    from ecomjax.data.shard_pipeline import load_shards
    from ecomjax.data.shards import prepare_shards
    from ecomjax.data.source import _column_map

    def config(path, *extra):
        return load_config(None, ["data.source=file", f"data.path={path}", "data.format=delimited",
                                  "data.columns.time=when", *extra]).data

    log = tmp_path / "dates.csv"
    log.write_text("user,item,when,stars\nu1,a,2024-01-02,5\nu1,b,2024-01-01T10:00:00,3\nu2,a,2024-01-03,4\n")
    prepared = config(log, "data.columns.rating=stars", "data.preprocess.min_rating=4")
    prepare_shards(log, tmp_path / "ok", _column_map(prepared), prepared.preprocess)
    assert sequences(load_shards(tmp_path / "ok")) == sequences(load_sequences(prepared)) == {"u1": ["a"], "u2": ["a"]}
    log.write_text("user,item,when\nu1,a,2024-01-02\nu1,,2024-01-01\n")
    with pytest.raises(DataFormatError, match=r"dates.csv: data row 2: empty item \(column 'item'\)$"):
        prepare_shards(log, tmp_path / "empty", _column_map(config(log)), config(log).preprocess)
    log.write_text("user,item,when\nu1,a,2024-01-02\nu1,b,soon\n")
    with pytest.raises(DataFormatError, match=r"dates.csv: data row 2: timestamp \(column 'when'\) is neither"):
        prepare_shards(log, tmp_path / "bad", _column_map(config(log)), config(log).preprocess)
