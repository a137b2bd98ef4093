"""Bad configs: every one fails as a one-line ``ConfigError`` naming the key or the file.

Regression tests for what an adversarial tester found (empty files, repeated keys, non-UTF-8
text, a seed JAX would truncate, a misspelt logical axis, non-finite floats, a top level that is
not a mapping), then property tests: generated overrides (wrong types, out-of-range values,
unknown keys, non-finite floats) and generated YAML files (garbage, binary, repeated keys) go
through ``ecomjax.load_config``, which must load them or raise an ``EcomjaxError`` that names the
key or the file, never another exception.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecomjax import load_config
from ecomjax.config import ConfigError, _default_rules
from ecomjax.errors import EcomjaxError
from ecomjax.tasks import TASKS, task_class

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def write(directory, name: str, content: str | bytes):
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def raises_config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message  # one line, as the CLI prints it
    return message


# --- config files ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # and another\n", "---\n"])
def test_an_empty_config_file_is_an_error_naming_the_file(tmp_path, text):
    path = write(tmp_path, "blank.yaml", text)
    assert raises_config_error(path).startswith(f"{path}: the config file is empty (or only comments)")


@pytest.mark.parametrize(("text", "key", "line", "first"), [
    ("seed: 1\ntrain:\n  epochs: 2\nseed: 2\n", "seed", 4, 1),
    ("train:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n", "train.epochs", 4, 2),
    ("train:\n  learning_rate_scales: {a: 1, a: 2}\n", "train.learning_rate_scales.a", 2, 2),
    ("model: {}\nmodel:\n  num_layers: 1\n", "model", 2, 1),
])
def test_a_repeated_yaml_key_names_the_file_the_key_and_both_lines(tmp_path, text, key, line, first):
    path = write(tmp_path, "dup.yaml", text)
    message = raises_config_error(path)
    assert message.startswith(f"{path}:{line}: duplicate key {key!r} (first on line {first})"), message


def test_a_repeated_key_in_an_override_value_is_an_error_naming_the_override():
    message = raises_config_error(None, ["train.learning_rate_scales={a: 1, a: 2}"])
    assert "train.learning_rate_scales" in message and "duplicate key 'a'" in message


@pytest.mark.parametrize(("text", "kind"), [("- train\n- model\n", "list"), ("just words\n", "str"),
                                            ("3\n", "int"), ("[]\n", "list"), ("false\n", "bool")])
def test_a_top_level_that_is_not_a_mapping_is_an_error_naming_the_file(tmp_path, text, kind):
    path = write(tmp_path, "top.yaml", text)
    message = raises_config_error(path)
    assert message.startswith(f"{path}: top level must be a mapping") and kind in message


@pytest.mark.parametrize(("content", "expected"), [
    ("seed: 1\nworkdir: café\n".encode("latin-1"), r":2: not UTF-8 text (byte 0xe9 at offset 20)"),
    (b"seed: 1\x00\n", ":1: binary file, not UTF-8 text (NUL byte at offset 7)"),
    ("seed: 1\n".encode("utf-16"), ": UTF-16 text"),
    (bytes(range(256)), ":1: binary file"),
])
def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path, content, expected):
    path = write(tmp_path, "enc.yaml", content)
    message = raises_config_error(path)
    assert message.startswith(f"{path}{expected}"), message


def test_a_byte_order_mark_is_allowed(tmp_path):
    path = write(tmp_path, "bom.yaml", "\ufeffseed: 7\nworkdir: café\n".encode())
    config = load_config(path)
    assert config.seed == 7 and config.workdir == "café"


def test_invalid_yaml_is_one_line_naming_the_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "train:\n  epochs: [1,\n")
    message = raises_config_error(path)
    assert message.startswith(f"{path}: not valid YAML: line 3")


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("override", [f"seed={10**20}", "seed=1e20", "seed=1.0e+20", "seed=-1",
                                      f"seed={2**32}", f"seed={2**63}", "seed=.inf"])
def test_a_seed_outside_what_the_random_generators_take_names_seed(override):
    assert raises_config_error(None, [override]).startswith("seed: ")


def test_seed_range_holds_in_every_task_and_in_files(tmp_path):
    assert load_config(None, [f"seed={2**32 - 1}"]).seed == 2**32 - 1  # the largest distinct seed
    for task in TASKS:  # the range is RunConfig's; a task's own RANGES extend it
        assert raises_config_error(None, [f"task={task}", f"seed={2**32}"]).startswith("seed: ")
    path = write(tmp_path, "seed.yaml", "seed: 100000000000000000000\n")
    assert raises_config_error(path).startswith("seed: ")


def test_an_unknown_logical_axis_in_mesh_rules_lists_the_known_ones():
    message = raises_config_error(None, ["mesh.rules.vocabb=model"])
    assert message.startswith("mesh.rules: unknown logical axis 'vocabb'")
    assert all(f"'{axis}'" in message for axis in _default_rules())
    assert load_config(None, ["mesh.rules.vocab=null"]).mesh.rules["vocab"] is None  # known axes stay settable


def _fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, typing.Any]]:
    """(dotted key, annotated type) of every leaf field of a config class."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp


def _float_keys() -> list[tuple[str, str, str]]:
    """(task, key, value template) of every float field of every task's config: a mapping of
    floats gets a key, a list of floats a one-element list."""
    keys = []
    for task in TASKS:
        for key, tp in _fields(task_class(task).Config):
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            if origin is dict:
                if args[1] is float:
                    keys.append((task, f"{key}.some_parameter", "{}"))
            elif origin in (list, tuple):
                if float in args:
                    keys.append((task, key, "[{}]"))
            elif tp is float or float in args:  # float, float | None
                keys.append((task, key, "{}"))
    return keys


FLOAT_KEYS = _float_keys()


def test_every_task_has_float_fields_to_check():
    assert len(FLOAT_KEYS) > 50 and ("next_item", "train.learning_rate", "{}") in FLOAT_KEYS


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", ".inf", ".nan", "-.inf", "1e999", "1" + "0" * 400])
def test_non_finite_floats_are_refused_for_every_float_field(value):
    for task, key, template in FLOAT_KEYS:
        message = raises_config_error(None, [f"task={task}", f"{key}={template.format(value)}"])
        assert message.startswith(key) and "finite" in message, (task, message)


def test_non_finite_floats_from_python_are_refused_too():
    for value in (math.inf, -math.inf, math.nan):
        message = raises_config_error(None, {"train.learning_rate": value})
        assert message.startswith("train.learning_rate: ")


@pytest.mark.parametrize(("override", "key"), [
    ("train.epochs=" + "9" * 30, "train.epochs"),  # beyond int64: numpy would overflow later
    ("eval.monitor=ndcg@²", "eval.monitor"),  # '²'.isdigit() is True, int('²') is not
    ("efficiency.quantize.module_path=a{99999999999}", "efficiency.quantize.module_path"),  # re.compile: OverflowError
    ("train.learning_rate=1_0e3", "train.learning_rate"),
])
def test_values_python_would_choke_on_are_config_errors(override, key):
    assert raises_config_error(None, [override]).startswith(f"{key}: ")


def test_overrides_and_sources_of_the_wrong_type_are_config_errors():
    assert "not a string" in raises_config_error(None, {3: 1})
    assert "list of 'key=value' strings" in raises_config_error(None, [3])
    assert "list of 'key=value' strings" in raises_config_error(None, "train.epochs=3")
    assert "config source" in raises_config_error(3)
    assert "empty part" in raises_config_error(None, [".train.epochs=3"])
    assert "empty part" in raises_config_error(None, {"train..epochs": 3})
    assert "not plain data" in raises_config_error({"train": {"epochs": object()}})


# --- generated configs -------------------------------------------------------------------------

REAL_KEYS = sorted({key for task in TASKS for key, _ in _fields(task_class(task).Config)})
STRANGE = ["inf", "-inf", ".nan", "nan", "1e999", "1e20", "-1", "0", "٣", "6²", "1_0", "+6", "--6",
           "[1, ", "{a: 1, a: 2}", "!!binary AAAA", "!!python/object:os.system ls", "&a [*a]", "2020-01-01",
           "~", "null", "yes", "''", "'", "\"", "[]", "{}", "[[[[[[[[", "ndcg@²", "0x1f", "1e-4", ".5",
           "a{99999999999}", "(", "\x00", "\t", str(10**20), str(2**32), str(-2**63)]
identifier = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
keys = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.builds(lambda k, extra: f"{k}.{extra}", st.sampled_from(REAL_KEYS), identifier),  # below a value
    st.builds(lambda k, i, c: k[:i] + c + k[i:], st.sampled_from(REAL_KEYS), st.integers(0, 30),
              st.sampled_from("xe._")),  # misspelt
    st.lists(identifier, min_size=1, max_size=3).map(".".join),
    st.sampled_from(["task", "seed", "mesh.rules.vocabb", "train.learning_rate_scales.x", "mesh.rules.vocab"]),
)
values = st.one_of(
    st.sampled_from(STRANGE),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from([*TASKS, "data", "model", "null", "true", "sasrec", "adamw"]),
    st.text(max_size=12),
)
python_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


def names_a_key(message: str, override_keys: list[str]) -> bool:
    """The message names one of the keys given (or the section it sits in)."""
    prefixes = {".".join(k.split(".")[: n + 1]) for k in override_keys for n in range(len(k.split(".")))}
    return any(p and p in message for p in prefixes)


def check_load(source, overrides, override_keys: list[str]) -> None:
    try:
        load_config(source, overrides)
    except EcomjaxError as error:
        message = str(error)
        assert "\n" not in message, message
        assert names_a_key(message, override_keys), (overrides, message)


@FUZZ
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_generated_overrides_load_or_name_the_key(pairs):
    check_load(None, [f"{k}={v}" for k, v in pairs], [k for k, _ in pairs])


@FUZZ
@given(st.dictionaries(keys, python_values, min_size=1, max_size=3))
def test_generated_python_overrides_load_or_name_the_key(overrides):
    check_load(None, overrides, [k.replace("__", ".") for k in overrides])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("configs")


def _section_text(sections: list[tuple[str, list[tuple[str, str]]]]) -> str:
    lines = []
    for section, entries in sections:
        if not entries:
            lines.append(f"{section}: {{}}")
            continue
        lines.append(f"{section}:")
        lines.extend(f"  {key}: {value}" for key, value in entries)
    return "\n".join(lines) + "\n"


sections = st.lists(st.tuples(
    st.sampled_from(["train", "model", "data", "eval", "mesh", "loss", "efficiency", "trian"]),
    st.lists(st.tuples(st.sampled_from(["epochs", "learning_rate", "batch_size", "num_layers", "dropout",
                                        "ks", "rules", "source", "max_len", "hidden_size", "data"]),
                       st.sampled_from(["1", "0.5", "-3", ".inf", "[5, 10]", "synthetic", "null", "{vocab: model}",
                                        "'x'", str(10**20)])),
             max_size=4)), min_size=1, max_size=4)
yaml_files = st.one_of(
    sections.map(_section_text).map(str.encode),
    sections.map(_section_text).map(lambda t: t.encode("utf-16")),
    sections.map(_section_text).map(lambda t: ("# é\n" + t).encode("latin-1")),
    st.text(max_size=80).map(str.encode),
    st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"#%@` \n\tab1,?.~")), max_size=60).map(str.encode),
    st.binary(max_size=80),
)


@FUZZ
@given(yaml_files)
def test_generated_config_files_load_or_name_the_file_or_a_key(fuzz_dir, content):
    path = write(fuzz_dir, "fuzz.yaml", content)
    try:
        load_config(path)
    except EcomjaxError as error:
        message = str(error)
        assert "\n" not in message, message
        try:  # a mapping the loader could read: the message may name a key of it instead
            tree = yaml.safe_load(content.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
            tree = None
        keys_in_file = [str(k) for k in tree] if isinstance(tree, dict) else []
        assert str(path) in message or names_a_key(message, keys_in_file), message
