"""The command line: errors are one clear line and exit code 2; a run prints its metrics."""

import json

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
    assert main(["data", "configs/quickstart.yaml", "data.synthetic.num_users=50"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["users"] == 50 and info["items"] == 1000
