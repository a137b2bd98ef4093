"""The command line: errors are one clear line and exit code 2; a run prints its metrics."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import real_data

from ecomjax.cli import main


def test_unknown_key_is_a_clear_error(capsys, tmp_path):
    code = main(["train", "configs/quickstart.yaml", "model.hiden_size=8", f"workdir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "ecomjax: error: unknown key 'model.hiden_size'" in err and "hidden_size" in err


def test_malformed_data_file_names_the_line(capsys, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4\n2 5 six 7\n")
    code = main(["train", "configs/sasrec_beauty.yaml", f"data.path={bad}", f"workdir={tmp_path / 'run'}"])
    assert code == 2
    assert f"{bad}:2: 'six' is not an integer id" in capsys.readouterr().err


def test_train_and_eval_commands(capsys, tmp_path):
    args = ["train", "configs/quickstart.yaml", f"workdir={tmp_path}", "train.epochs=1",
            "data.synthetic.num_users=200", "data.synthetic.num_items=80", "model.hidden_size=16",
            "model.ffn_size=16", "model.num_layers=1", "train.progress=false", "eval.sampled_negatives=0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test   ndcg@10" in out and "metrics.json" in out
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert main(["eval", str(tmp_path)]) == 0
    assert "test   ndcg@10" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == first["test"]


def test_data_command_describes_the_dataset(capsys):
    assert main(["data", "describe", "configs/quickstart.yaml", "data.synthetic.num_users=50"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["users"] == 50 and info["items"] == 1000


SHIPPED = sorted(p.name for p in (Path(__file__).parent.parent / "configs").glob("*.yaml") if p.name != "prices.yaml")


@pytest.mark.parametrize("name", SHIPPED)
def test_data_command_describes_every_shipped_config(name, capsys):
    """Every config in configs/ resolves its data (real files under $ECOMJAX_DATA_DIR)."""
    path = Path(__file__).parent.parent / "configs" / name
    task = (yaml.safe_load(path.read_text()) or {}).get("task", "next_item")
    data = {"next_item": "amazon-beauty/Beauty.txt", "relevance": "homedepot/train.csv",
            "multi_behavior": "taobao/buy.train.txt", "attributes": "fashion-products/styles.csv",
            "product_retrieval": "fashion-products/styles.csv"}.get(task)
    if data and "quickstart" not in name:
        real_data("movielens-1m/ml-1m.txt" if "ml1m" in name else data)
    assert main(["data", "describe", str(path)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["task"] == task and len(described) > 2


def test_an_unknown_task_lists_the_registered_ones(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: rankr\n")
    assert main(["data", "describe", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "task: 'rankr' is not a registered task" in err and "'multi_behavior'" in err and "'relevance'" in err


def test_help_imports_no_jax():
    """`ecomjax --help` answers at once: parsing imports nothing heavy."""
    code = ("import sys\nfrom ecomjax.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('JAX' if 'jax' in sys.modules else 'NO JAX')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith("NO JAX"), done.stdout + done.stderr


def test_version_is_the_one_in_pyproject(capsys):
    import tomllib

    declared = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ecomjax {declared['project']['version']}"
    import ecomjax

    assert ecomjax.__version__ == declared["project"]["version"]


def _choices(config_cls, dotted: str) -> tuple:
    """The allowed values of a ``Literal`` config field (``list[Literal]`` too)."""
    import dataclasses
    import typing

    cls, *path, leaf = [config_cls, *dotted.split(".")]
    for part in path:
        cls = typing.get_type_hints(cls)[part]
    assert dataclasses.is_dataclass(cls), dotted
    tp = typing.get_type_hints(cls)[leaf]
    while typing.get_origin(tp) is list:
        (tp,) = typing.get_args(tp)
    assert typing.get_origin(tp) is typing.Literal, f"{dotted}: {tp} is not a Literal"
    return typing.get_args(tp)


def test_models_lists_every_registered_task_and_model_choice(capsys):
    """`ecomjax models` prints each task and each model choice; the listing names every value
    the config schema allows for the keys it lists, and nothing the schema does not allow."""
    from ecomjax.tasks import MODELS, SUMMARIES, TASKS, task_class

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert set(MODELS) == set(SUMMARIES) == set(TASKS)
    for task in TASKS:
        assert f"task: {task}  {SUMMARIES[task]}" in out
        listed: dict[str, set] = {}
        for choice in MODELS[task]:
            assert f"  {choice} " in out
            key, _, value = choice.partition("=")
            listed.setdefault(key, set()).update(value.strip("[]").split(","))
        for key, values in listed.items():
            allowed = set(_choices(task_class(task).Config, key))
            assert values == allowed, f"{task} {key}: listed {sorted(values)}, schema allows {sorted(allowed)}"
