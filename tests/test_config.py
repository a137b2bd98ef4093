import pytest
import yaml

from ecomjax.config import ConfigError, load_config, parse_override
from ecomjax.tasks.next_item import NextItemConfig


def test_defaults_are_the_synthetic_quickstart():
    config = load_config()
    assert isinstance(config, NextItemConfig) and config.task == "next_item"
    assert config.data.source == "synthetic" and config.model.name == "sasrec"


def test_cli_overrides_are_typed():
    config = load_config(None, ["model.num_layers=3", "train.learning_rate=1e-4", "eval.ks=[1,5]", "eval.monitor=ndcg@5",
                                "model.norm_first=false", "data.path=some/file.txt"])
    assert config.model.num_layers == 3
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.eval.ks == [1, 5]
    assert config.model.norm_first is False
    assert config.data.path == "some/file.txt"


def test_python_keyword_overrides_use_double_underscore():
    config = load_config(None, {"model__hidden_size": 32, "train.epochs": 2})
    assert config.model.hidden_size == 32 and config.train.epochs == 2


def test_integer_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0
    with pytest.raises(ConfigError, match=r"model.num_layers: expected an integer, got 2.5"):
        load_config(None, ["model.num_layers=2.5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.hiden_size=128", r"unknown key 'model.hiden_size'; allowed keys in model: \[.*'hidden_size'"),
        ("trian.epochs=3", r"unknown key 'trian'; allowed keys in the top level: \['task', 'workdir'"),
        ("model.name=bert", r"model.name: 'bert' is not allowed; allowed values: \['sasrec', 'gru4rec'\]"),
        ("loss.name=softmax", r"loss.name: 'softmax' is not allowed; allowed values: \['full_softmax'"),
        ("model.dropout=1.5", r"model.dropout: 1.5 is out of range; allowed: a number in \[0, 1\)"),
        ("train.batch_size=0", r"train.batch_size: 0 is out of range"),
        ("train.adam_eps=0", r"train.adam_eps: 0(\.0)? is out of range; allowed: a number > 0"),
        ("model.norm_first=maybe", r"model.norm_first: expected true or false, got 'maybe'"),
        ("eval.ks=10", r"eval.ks: expected a list of int"),
        ("model=3", r"model: expected a mapping"),
        ("model.num_layers.x=3", r"model.num_layers: expected an integer, got \{'x': 3\}"),
        ("nokey", r"not of the form key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_heads: 2\n  nmu_layers: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model\.nmu_layers'"):
        load_config(bad)


def test_shipped_configs_load_and_roundtrip(tmp_path):
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    loaded = [c for c in configs if c.name != "prices.yaml"]
    assert {c.name for c in loaded} >= {
        "quickstart.yaml", "sasrec_beauty.yaml", "gru4rec_beauty.yaml", "sasrec_ml1m.yaml", "gru4rec_ml1m.yaml"
    }
    tasks = {c.name: (yaml.safe_load(c.read_text()) or {}).get("task", "next_item") for c in loaded}
    assert {tasks[n] for n in ("fashion_attributes.yaml", "fashion_retrieval.yaml", "search_homedepot.yaml",
                               "ranker_synthetic.yaml", "ranker_taobao.yaml")} == {
        "attributes", "product_retrieval", "relevance", "ranker", "multi_behavior"}
    for path in loaded:
        config = load_config(path)
        assert config.task == tasks[path.name], path
        if tasks[path.name] == "next_item":  # session data is evaluated with repeats (as SR-GNN, NARM)
            assert config.eval.exclude_history is (config.data.columns.session is None), path
        dumped = tmp_path / path.name
        dumped.write_text(yaml.safe_dump(config.to_dict()))
        assert load_config(dumped) == config


@pytest.mark.parametrize("id_only, text", [("sasrec_beauty.yaml", "sasrec_beauty_text.yaml"),
                                             ("sasrec_beauty_d128.yaml", "sasrec_beauty_text_d128.yaml")])
def test_beauty_text_configs_differ_from_id_only_in_the_item_representation_alone(id_only, text):
    """The text-vs-ID gain on Beauty is only a measurement of the titles if nothing else differs."""
    from pathlib import Path

    def flat(tree, prefix=""):
        for key, value in tree.items():
            yield from flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]

    configs = Path(__file__).parent.parent / "configs"
    a, b = (dict(flat(load_config(configs / name).to_dict())) for name in (id_only, text))
    differ = {key for key in a if a[key] != b[key]}
    assert differ == {"workdir", "model.item_fusion", "model.item_text", "model.title_word_min_items"}
    assert b["model.item_fusion"] == "add" and a["model.item_text"] is None


def test_an_unknown_task_lists_the_registered_ones():
    from ecomjax.tasks import TASKS

    with pytest.raises(ConfigError, match=r"task: 'rankr' is not a registered task; tasks: \[.*'next_item'.*\]"):
        load_config({"task": "rankr"})
    assert "next_item" in TASKS


def test_parse_override_yaml_scalars():
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=") == ("a.b", "")
    assert parse_override("a.b=x=y") == ("a.b", "x=y")


def test_adam_eps_reaches_the_optimizer():
    """A gradient far below epsilon moves a weight by about lr * g / eps, not by lr."""
    import jax.numpy as jnp

    from ecomjax.train.optimizer import make_optimizer

    steps = {}
    for eps in (1e-8, 1e-6):
        config = load_config(None, ["train.warmup_steps=0", "train.grad_clip_norm=0", f"train.adam_eps={eps}"]).train
        optimizer, _ = make_optimizer(config, total_steps=10)
        params = {"w": jnp.zeros(3)}
        updates, _ = optimizer.update({"w": jnp.full(3, 1e-7)}, optimizer.init(params), params)
        steps[eps] = float(-updates["w"][0])
    lr = load_config(None, []).train.learning_rate
    assert abs(steps[1e-8] - lr * 1e-7 / (1e-7 + 1e-8)) < 1e-3 * lr
    assert abs(steps[1e-6] - lr * 1e-7 / (1e-7 + 1e-6)) < 1e-3 * lr
