"""Train RecBole 1.2.1's SASRec on a leave-one-out sequence file and time it, epoch by epoch.

Runs INSIDE the RecBole environment made by ``benchmarks/peers/recbole_env.py`` (Python 3.11,
torch, numpy<2): it imports neither ecomjax nor jax. The ecomjax side of the side-by-side calls

    <venv python> benchmarks/peers/recbole_sasrec_worker.py --data Beauty.txt --epochs N --out r.json

Steps: ``user item item ...`` lines (time-ordered) -> a RecBole atomic ``.inter`` file in a work
directory (timestamp = position in the sequence) -> RecBole's SASRec with the settings of
``shared/notes/peers.md`` -> an epoch loop driven here through RecBole's own ``Trainer`` pieces
(``_train_epoch``, ``_valid_epoch``) so that training and evaluation are timed apart -> the test
split scored with the best-validation weights, kept as an in-memory copy of the state dict (no
``torch.load``, which defaults to ``weights_only=True`` from torch 2.6 on and refuses RecBole's
checkpoints).

History exclusion. RecBole does NOT mask a user's earlier items in full-sort evaluation of
sequential models: ``FullSortEvalDataLoader.collate_fn``
(``recbole/data/dataloader/general_dataloader.py``) returns ``history_index=None`` when
``MODEL_TYPE`` is sequential (only the general-recommender branch builds ``uid2history_item``),
and ``Trainer._full_sort_batch_eval`` (``recbole/trainer/trainer.py``) then sets only column 0,
the padding item, to ``-inf``. So stock RecBole SASRec numbers rank the whole catalogue
including already-bought items. To compare with protocols that exclude history (S3-Rec's code,
ecomjax's ``eval.exclude_history``), ``HistoryMaskingTrainer`` below also sets to ``-inf``
every item of the user's sequence before the target (the whole prefix, not only the last
``MAX_ITEM_LIST_LENGTH`` items; a target that repeats an earlier item is masked too, as in
S3-Rec's code and ecomjax). ``--keep-history`` gives RecBole's stock behaviour.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import recbole
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed

REPO_ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = ("ndcg@10", "hit@10", "mrr@10")

# SASRec as run for shared/notes/peers.md; epochs and seed come from the command line.
SETTINGS: dict = {
    "MAX_ITEM_LIST_LENGTH": 50,
    "loss_type": "CE",
    "train_neg_sample_args": None,
    "n_layers": 2,
    "n_heads": 2,
    "hidden_size": 64,
    "inner_size": 256,
    "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5,
    "train_batch_size": 256,
    "learning_rate": 0.001,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "metrics": ["Hit", "NDCG", "MRR"],
    "topk": [10],
    "valid_metric": "NDCG@10",
    "device": "cpu",
    "use_gpu": False,
    "gpu_id": "",
    "worker": 0,
    "eval_step": 1,
    "stopping_step": 1_000_000,
    "metric_decimal_place": 6,
    "show_progress": False,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
}


def log(msg: str) -> None:
    print(f"[recbole-worker] {msg}", file=sys.stderr, flush=True)


def default_data_path() -> Path:
    data_dir = os.environ.get("ECOMJAX_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
    return Path(data_dir) / "amazon-beauty" / "Beauty.txt"


def read_sequences(path: Path, max_users: int | None) -> list[tuple[str, list[str]]]:
    """``user item item ...`` lines -> [(user token, [item tokens in time order])]."""
    seqs = []
    with path.open() as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            seqs.append((parts[0], parts[1:]))
            if max_users is not None and len(seqs) >= max_users:
                break
    return seqs


def write_atomic(seqs: list[tuple[str, list[str]]], data_root: Path, name: str) -> Path:
    """RecBole atomic file ``<data_root>/<name>/<name>.inter``; timestamp = position."""
    folder = data_root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    with path.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in seqs:
            for pos, item in enumerate(items):
                f.write(f"{user}\t{item}\t{pos}\n")
    return path


def history_csr(
    seqs: list[tuple[str, list[str]]], dataset, drop_last: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per internal user id: the items before the target (``seq[:-drop_last]``) and the target.

    Returns (indptr [user_num + 1], indices, target [user_num]) with RecBole's internal ids.
    """
    uid_of = dataset.field2token_id[dataset.uid_field]
    iid_of = dataset.field2token_id[dataset.iid_field]
    n_users = dataset.user_num
    lengths = np.zeros(n_users, dtype=np.int64)
    per_user: dict[int, list[int]] = {}
    target = np.zeros(n_users, dtype=np.int64)
    for user, items in seqs:
        u = uid_of[user]
        ids = [iid_of[i] for i in items]
        per_user[u] = ids[:-drop_last]
        lengths[u] = len(ids) - drop_last
        target[u] = ids[-drop_last]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.zeros(int(indptr[-1]), dtype=np.int64)
    for u, ids in per_user.items():
        indices[indptr[u] : indptr[u + 1]] = ids
    return torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(target)


class HistoryMaskingTrainer(Trainer):
    """RecBole's Trainer whose full-sort evaluation also masks each user's earlier items.

    ``histories`` maps ``id(eval dataloader)`` to the CSR from :func:`history_csr`; an eval
    loader not in it is scored as stock RecBole does (padding column masked only).
    """

    def __init__(self, config, model, histories: dict | None = None):
        super().__init__(config, model)
        self.histories = histories or {}
        self._history = None
        self.masked_targets = 0  # targets found in their own history (scored -inf), last eval

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self._history = self.histories.get(id(eval_data))
        self.masked_targets = 0
        try:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            self._history = None

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self._history is not None:
            indptr, indices, target = self._history
            uids = interaction[self.config["USER_ID_FIELD"]].cpu()
            # The split's row for each user must be the target this CSR was built for.
            if not torch.equal(target[uids], positive_i.cpu()):
                raise RuntimeError("history CSR does not match RecBole's evaluation targets")
            starts, ends = indptr[uids], indptr[uids + 1]
            lens = ends - starts
            rows = torch.repeat_interleave(torch.arange(len(uids)), lens)
            first = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)
            cols = indices[first + torch.arange(int(lens.sum()))]
            rows, cols = rows.to(scores.device), cols.to(scores.device)
            self.masked_targets += int((cols == positive_i.to(scores.device)[rows]).sum())
            scores[rows, cols] = -np.inf
        return interaction, scores, positive_u, positive_i


def metrics_of(result: dict) -> dict[str, float]:
    return {k: float(result[k]) for k in METRIC_KEYS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="`user item item ...` file (default $ECOMJAX_DATA_DIR/amazon-beauty/Beauty.txt)",
    )
    parser.add_argument("--max-users", type=int, default=None, help="use only the first N lines")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better validation NDCG@10 "
        "(RecBole's stopping_step; default: run all --epochs)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--target-ndcg",
        type=float,
        default=0.03,
        help="validation NDCG@10 whose first crossing is timed",
    )
    parser.add_argument(
        "--keep-history",
        action="store_true",
        help="stock RecBole scoring: do not mask the user's earlier items",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the atomic file, logs and RecBole's folders go "
        "(default: a temporary directory, removed afterwards)",
    )
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    # torch 2.13 deprecates the torch.cuda.amp.GradScaler that RecBole's _train_epoch builds.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    data_path = (args.data or default_data_path()).resolve()
    out_path = args.out.resolve()
    torch.set_num_threads(args.threads)
    keep_work = args.work_dir is not None
    work = args.work_dir.resolve() if keep_work else Path(tempfile.mkdtemp(prefix="recbole-"))
    work.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(work)  # RecBole writes log_tensorboard/ and saved/ relative to the cwd
    try:
        seqs = read_sequences(data_path, args.max_users)
        too_short = sum(len(items) < 3 for _, items in seqs)
        if too_short:
            raise SystemExit(f"{too_short} users have fewer than 3 items: no leave-one-out split")
        name = re.sub(r"[^a-z0-9]+", "_", data_path.stem.lower()).strip("_") or "data"
        write_atomic(seqs, work, name)

        settings = {**SETTINGS, "epochs": args.epochs, "seed": args.seed}
        if args.patience is not None:
            settings["stopping_step"] = args.patience
        config_dict = {**settings, "data_path": str(work), "checkpoint_dir": str(work / "saved")}
        t0 = time.perf_counter()
        argv_saved, sys.argv = sys.argv, sys.argv[:1]  # Config would parse our --k=v flags
        try:
            config = Config(model="SASRec", dataset=name, config_dict=config_dict)
        finally:
            sys.argv = argv_saved
        if config["device"].type != "cpu":
            raise RuntimeError(f"expected cpu, RecBole chose {config['device']}")
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = SASRec(config, train_data._dataset).to(config["device"])
        histories = {}
        if not args.keep_history:
            histories[id(valid_data)] = history_csr(seqs, dataset, drop_last=2)
            histories[id(test_data)] = history_csr(seqs, dataset, drop_last=1)
        trainer = HistoryMaskingTrainer(config, model, histories)
        trainer.eval_collector.data_collect(train_data)  # as Trainer.fit does first
        setup_seconds = time.perf_counter() - t0
        n_inter = sum(len(items) for _, items in seqs)
        log(
            f"data {data_path.name}: {len(seqs)} users, {dataset.item_num - 1} items, "
            f"{n_inter} interactions; setup {setup_seconds:.1f}s"
        )

        epochs = []
        cum_train = cum_total = 0.0
        best = {"epoch": None, "score": -np.inf, "state": None, "valid": None}
        reached = None
        stopped = "epochs"
        # Ctrl-C (SIGINT) ends training after the epochs completed so far; the test pass still
        # runs on the best weights, so a long run can be cut short without losing its result.
        try:
            for epoch in range(args.epochs):
                t0 = time.perf_counter()
                loss = trainer._train_epoch(train_data, epoch)
                train_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                score, result = trainer._valid_epoch(valid_data)
                eval_s = time.perf_counter() - t0
                cum_train += train_s
                cum_total += train_s + eval_s
                valid = metrics_of(result)
                rec = {
                    "epoch": epoch + 1,
                    "train_seconds": train_s,
                    "eval_seconds": eval_s,
                    "cum_train_seconds": cum_train,
                    "cum_seconds": cum_total,
                    "train_loss": float(loss),
                    "train_loss_per_batch": float(loss) / len(train_data),
                    "valid": valid,
                    "valid_masked_targets": trainer.masked_targets,
                }
                epochs.append(rec)
                if score > best["score"]:
                    best = {
                        "epoch": epoch + 1,
                        "score": score,
                        "valid": valid,
                        "state": copy.deepcopy(model.state_dict()),
                    }
                if reached is None and valid["ndcg@10"] >= args.target_ndcg:
                    reached = rec
                log(
                    f"epoch {epoch + 1}: train {train_s:.1f}s eval {eval_s:.1f}s "
                    f"loss {rec['train_loss_per_batch']:.4f} valid ndcg@10 {valid['ndcg@10']:.4f} "
                    f"hit@10 {valid['hit@10']:.4f}"
                )
                if args.patience is not None and epoch + 1 - best["epoch"] >= args.patience:
                    stopped = f"patience {args.patience}"
                    break
        except KeyboardInterrupt:
            stopped = f"interrupted during epoch {len(epochs) + 1}"
            log(f"interrupted: keeping the {len(epochs)} finished epochs")
        if best["state"] is None:
            raise SystemExit("no epoch finished: nothing to test")

        model.load_state_dict(best["state"])
        t0 = time.perf_counter()
        test_result = trainer.evaluate(test_data, load_best_model=False)
        test_s = time.perf_counter() - t0
        test = metrics_of(test_result)
        log(
            f"test (best epoch {best['epoch']}): ndcg@10 {test['ndcg@10']:.4f} "
            f"hit@10 {test['hit@10']:.4f} mrr@10 {test['mrr@10']:.4f} ({test_s:.1f}s)"
        )

        tag = f"{args.target_ndcg:g}"
        out = {
            "peer": "recbole",
            "model": "SASRec",
            "data": {
                "path": str(data_path),
                "max_users": args.max_users,
                "users": len(seqs),
                "items": int(dataset.item_num - 1),  # RecBole counts the [PAD] item
                "interactions": n_inter,
                "train_samples": len(train_data._dataset),
                "valid_users": len(valid_data._dataset),
                "test_users": len(test_data._dataset),
            },
            "epochs": epochs,
            "target_valid_ndcg10": args.target_ndcg,
            f"seconds_to_valid_ndcg10_{tag}": reached["cum_seconds"] if reached else None,
            f"train_seconds_to_valid_ndcg10_{tag}": reached["cum_train_seconds"]
            if reached
            else None,
            f"epoch_to_valid_ndcg10_{tag}": reached["epoch"] if reached else None,
            "stopped": stopped,
            "best_epoch": best["epoch"],
            "best_valid": best["valid"],
            "test": test,
            "test_masked_targets": trainer.masked_targets,
            "test_seconds": test_s,
            "setup_seconds": setup_seconds,
            "total_seconds": time.perf_counter() - t_start,
            "exclude_history": not args.keep_history,
            "versions": {
                "recbole": recbole.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "torch_threads": torch.get_num_threads(),
            "settings": settings,
            "recbole_config": {
                k: config[k]
                for k in (
                    "hidden_act",
                    "layer_norm_eps",
                    "initializer_range",
                    "eval_batch_size",
                    "learner",
                    "weight_decay",
                    "reproducibility",
                    "repeatable",
                    "shuffle",
                )
            },
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
        log(f"wrote {out_path}")
    finally:
        os.chdir(cwd)
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
