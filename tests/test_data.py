import numpy as np
import pytest

from ecomjax.data import DataConfig, DataFormatError, load_sequences, read_sequence_file
from ecomjax.data.pipeline import (
    NextItemTrainData,
    eval_arrays,
    eval_batches,
    pack_rows,
    sample_negatives,
)
from ecomjax.data.sequences import from_lists
from ecomjax.data.split import leave_one_out
from ecomjax.data.synthetic import SyntheticConfig, generate_shop


def write(tmp_path, text, name="seq.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_remaps_ids_in_order_and_keeps_originals(tmp_path):
    path = write(tmp_path, "7 30 10 20\n\n3 20 40\n")
    ds = read_sequence_file(path)
    assert ds.num_users == 2 and ds.num_items == 4
    assert ds.sequence(0).tolist() == [3, 1, 2] and ds.sequence(1).tolist() == [2, 4]
    assert ds.item_ids[1:].tolist() == [10, 20, 30, 40]
    assert ds.user_ids.tolist() == [7, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3\n2 4 x5\n", r"seq.txt:2: 'x5' is not an integer id"),
        ("1 2 3\n\n2\n", r"seq.txt:3: user 2 has no items"),
        ("1 2 3\n1 4 5\n", r"seq.txt:2: user 1 already appeared on line 1"),
        ("1 2,3,4\n", r"seq.txt:1: '2,3,4' is not an integer id"),
        ("1 2 -3\n", r"seq.txt:1: negative id -3"),
        ("\n\n", r"no sequences found"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, text, message):
    with pytest.raises(DataFormatError, match=message):
        read_sequence_file(write(tmp_path, text))


def test_missing_file_names_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ECOMJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"data\.path: file 'nope\.txt' not found"):
        load_sequences(DataConfig(source="file", path="nope.txt"))


def test_leave_one_out_parts():
    ds = from_lists([[1, 2, 3, 4, 5], [6, 7, 8], [9, 10]], num_items=10)
    split = leave_one_out(ds)
    assert split.train_sequence(0).tolist() == [1, 2, 3]
    assert split.train_sequence(1).tolist() == [6]
    assert split.train_sequence(2).tolist() == [9, 10]  # too short to evaluate: training only
    assert split.num_train_only == 1
    assert split.valid.users.tolist() == [0, 1] and split.valid.targets.tolist() == [4, 7]
    assert split.test.targets.tolist() == [5, 8]
    # Test history includes the validation item; validation history does not.
    assert (split.test.history_end - split.valid.history_end).tolist() == [1, 1]


def test_pack_rows_first_fit():
    rows, cols = pack_rows(np.array([3, 0, 2, 4, 1]), np.array([0, 1, 2, 3, 4]), max_len=5)
    assert rows.tolist() == [0, -1, 0, 1, 1] and cols.tolist() == [0, 0, 3, 0, 4]


def _collect_pairs(rows):
    """(segment-local) (input, target, position) triples from packed rows, grouped per segment."""
    seqs = []
    for r in range(len(rows["items"])):
        for seg in np.unique(rows["segments"][r]):
            if seg == 0:
                continue
            mask = rows["segments"][r] == seg
            seqs.append((rows["items"][r][mask].tolist(), rows["targets"][r][mask].tolist(),
                         rows["positions"][r][mask].tolist()))
    return seqs


def test_packing_trains_every_position_once_and_truncates_long_histories():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 50, size=n).tolist() for n in rng.integers(3, 15, size=40)]
    ds = from_lists(sequences, num_items=49)
    split = leave_one_out(ds)
    data = NextItemTrainData(split, max_len=8, batch_size=4, seed=1)
    rows = data.epoch_rows(0)
    assert rows["items"].shape[1] == 8 and len(rows["items"]) % 4 == 0
    got = sorted(_collect_pairs(rows))
    expected = []
    for u in range(ds.num_users):
        t = split.train_sequence(u).tolist()[-9:]  # max_len inputs need max_len + 1 items
        if len(t) >= 2:
            n = len(t) - 1
            expected.append((t[:-1], t[1:], list(range(n - 1, -1, -1))))
    assert got == sorted(expected)
    assert (rows["targets"] > 0).sum() == data.num_tokens
    # Deterministic per (seed, epoch); different across epochs.
    assert all(np.array_equal(rows[k], data.epoch_rows(0)[k]) for k in rows)
    assert not np.array_equal(rows["items"], data.epoch_rows(1)["items"])
    batch = data.batches(0)[1]
    assert batch["items"].shape == (4, 8)
    assert np.array_equal(batch["items"], rows["items"][4:8])


def test_eval_arrays_right_align_inputs_and_keep_full_history():
    ds = from_lists([[1, 2, 3, 4, 5, 6], [7, 8, 9]], num_items=9)
    split = leave_one_out(ds)
    arrays = eval_arrays(split, split.test, max_len=3, batch_size=4)
    assert arrays.items[0].tolist() == [3, 4, 5] and arrays.items[1].tolist() == [0, 7, 8]
    assert arrays.positions[1].tolist() == [0, 1, 0] and arrays.segments[1].tolist() == [0, 1, 1]
    assert arrays.history[0].tolist() == [1, 2, 3, 4, 5] and arrays.history[1].tolist() == [7, 8, 0, 0, 0]
    assert arrays.targets.tolist() == [6, 9, 0, 0] and arrays.valid.tolist() == [True, True, False, False]


def test_eval_batches_cover_every_user_once_with_narrow_windows():
    rng = np.random.default_rng(4)
    sequences = [rng.choice(np.arange(1, 80), size=n, replace=False).tolist() for n in rng.integers(3, 60, size=70)]
    split = leave_one_out(from_lists(sequences, num_items=79))
    arrays = eval_arrays(split, split.valid, max_len=40, batch_size=16)
    batches = eval_batches(arrays, batch_size=16)
    seen = []
    for batch in batches:
        width = batch["items"].shape[1]
        assert width in (8, 16, 32, 40) and batch["items"].shape[0] == 16
        lengths = (batch["items"] > 0).sum(axis=1)
        assert lengths.max() <= width and (width == 8 or lengths.max() > width // 2)
        assert batch["history"].shape[1] >= (batch["history"] > 0).sum(axis=1).max()
        for row in np.flatnonzero(batch["valid"]):
            seen.append((batch["targets"][row], tuple(batch["history"][row][batch["history"][row] > 0])))
    expected = [(arrays.targets[u], tuple(arrays.history[u][arrays.history[u] > 0]))
                for u in np.flatnonzero(arrays.valid)]
    assert sorted(seen) == sorted(expected)


def test_sampled_negatives_avoid_history_and_target():
    history = np.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    negatives = sample_negatives(history, np.array([6, 7]), num_items=20, count=10, seed=0)
    for u, seen in enumerate([{1, 2, 3, 6}, {4, 5, 7}]):
        assert len(set(negatives[u].tolist())) == 10
        assert not seen & set(negatives[u].tolist())
    with pytest.raises(ValueError, match="only 2 unseen items"):
        sample_negatives(history[:1], np.array([6]), num_items=6, count=3, seed=0)


def test_synthetic_shop_is_deterministic_and_shaped_like_a_shop():
    config = SyntheticConfig(num_users=300, num_items=200, num_categories=10, seed=3)
    a, b = generate_shop(config), generate_shop(config)
    assert np.array_equal(a.dataset.items, b.dataset.items)
    ds = a.dataset
    assert ds.num_users == 300 and ds.lengths.min() >= config.min_length
    for u in range(ds.num_users):  # no repeated purchases
        assert len(set(ds.sequence(u).tolist())) == len(ds.sequence(u))
    counts = np.bincount(ds.items, minlength=201)[1:]
    assert np.sort(counts)[-20:].sum() > 0.25 * counts.sum()  # popularity skew: top 10% > 25% of sales
    # Consecutive purchases follow the category transitions far above chance.
    cat = a.catalogue.category
    follows = [cat[y] in a.catalogue.next_categories[cat[x]]
               for u in range(ds.num_users) for x, y in zip(ds.sequence(u)[:-1], ds.sequence(u)[1:], strict=True)]
    assert np.mean(follows) > 0.5
    assert a.catalogue.title(1).split()[0] in {"Aurora", "Brindle", "Cobalt", "Dune", "Ember", "Fjord",
                                               "Grove", "Halo", "Iris", "Juniper"}


def test_beauty_file_loads_with_published_statistics(beauty_path):
    ds = read_sequence_file(beauty_path)
    assert (ds.num_users, ds.num_items, len(ds.items)) == (22363, 12101, 198502)
    split = leave_one_out(ds)
    assert split.num_train_only == 0 and len(split.test.users) == 22363
