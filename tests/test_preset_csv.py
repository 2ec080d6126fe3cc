"""Google's slicing-config CSV: the integer-expression parser (never eval), malformed cells,
the shipped copy, and the Hub dataset read through huggingface_hub's cache (no network)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gslice.errors import SourceError
from gslice.intexpr import ExprError, parse_int_expr
from gslice.official_configs import HUB_DATASET, hub_configs, parse_configs, shipped_configs

ALLOWED = "(allowed: whole numbers (2_048 style separators allowed) combined with +, * and parentheses)"


@pytest.mark.parametrize(
    "text,value",
    [
        ("2_048 * 8", 16384),
        ("2_048 * 4", 8192),
        (" 2048 ", 2048),
        ("1_0 * 2_048", 20480),
        ("2+3*4", 14),
        ("(1 + 2) * 3", 9),
        ("((7))", 7),
        ("0", 0),
    ],
)
def test_int_expressions(text, value):
    assert parse_int_expr(text) == value


# Each of these is something Python's eval accepts (or would run); the parser refuses it and
# names the first character or word it does not allow.
EVAL_WOULD_ACCEPT = [
    ("2048.0", "'2048.0' at position 0"),
    ("2_048 * 8.0", "'8.0' at position 8"),
    ("2**11", "'*' at position 2"),
    ("-2048", "'-' at position 0"),
    ("2048 // 1", "'/' at position 5"),
    ("0x800", "'0x800' at position 0"),
    ("1e3", "'1e3' at position 0"),
    ("2048j", "'2048j' at position 0"),
    ("True", "'True' at position 0"),
    ("int('2048')", "'int' at position 0"),
    ("__import__('os').getpid()", "'__import__' at position 0"),
    ("+2", "'+' at position 0"),
]


@pytest.mark.parametrize("text,where", EVAL_WOULD_ACCEPT, ids=[t for t, _ in EVAL_WOULD_ACCEPT])
def test_refuses_what_eval_accepts(text, where):
    ast.parse(text, mode="eval")  # a valid Python expression: eval would take it
    with pytest.raises(ExprError) as e:
        parse_int_expr(text)
    assert str(e.value) == f"{text!r} is not an integer expression: unexpected {where} {ALLOWED}"


@pytest.mark.parametrize(
    "text,where",
    [
        ("", "end of text at position 0"),
        ("2 3", "'3' at position 2"),
        ("(2048", "end of text at position 5"),
        ("2048)", "')' at position 4"),
        ("2*", "end of text at position 2"),
        ("2__048", "'2__048' at position 0"),
        ("2048_", "'2048_' at position 0"),
        ("2,048", "',' at position 1"),
        ("２０４８", "'２０４８' at position 0"),  # full-width digits: int() takes them, eval does not
    ],
)
def test_malformed_expressions(text, where):
    with pytest.raises(ExprError) as e:
        parse_int_expr(text)
    assert str(e.value) == f"{text!r} is not an integer expression: unexpected {where} {ALLOWED}"


def test_expression_limits():
    with pytest.raises(ExprError) as e:
        parse_int_expr("(" * 17 + "1" + ")" * 17)
    assert str(e.value).endswith(": parentheses nested deeper than 16")
    with pytest.raises(ExprError) as e:
        parse_int_expr("1" * 201)
    assert str(e.value) == "expression is 201 characters long; the limit is 200"


HEADER = "name,# Layers,# Effective Params (B),MMLU PT accuracy,FFN Hidden Dims,Layers Skipped\n"
CSV_ERRORS = [
    (
        'A,2,1.0,50%,"[2_048 * 4, 2_048 * 4.5]",\n',
        "x.csv line 2 ('A'), column 'FFN Hidden Dims': item 1: '2_048 * 4.5' is not an integer expression: "
        f"unexpected '4.5' at position 8 {ALLOWED}",
    ),
    (
        "A,2,1.0,50%,\"[__import__('os').getpid(), 8192]\",\n",
        "x.csv line 2 ('A'), column 'FFN Hidden Dims': item 0: \"__import__('os').getpid()\" is not an integer "
        f"expression: unexpected '__import__' at position 0 {ALLOWED}",
    ),
    ('A,3,1.0,50%,"[8192, 8192]",\n', "x.csv line 2 ('A'), column 'FFN Hidden Dims': 2 widths, but column '# Layers' says 3"),
    ('A,2,1.0,50%,"8192, 8192",\n', "x.csv line 2 ('A'), column 'FFN Hidden Dims': '8192, 8192' is not a list: write [a, b, ...]"),
    (
        'A,2,1.0,50%,"[8192, 8192]","[20, 21.0]"\n',
        "x.csv line 2 ('A'), column 'Layers Skipped': item 1: '21.0' is not an integer expression: "
        f"unexpected '21.0' at position 0 {ALLOWED}",
    ),
    (
        'A,2.0,1.0,50%,"[8192, 8192]",\n',
        f"x.csv line 2 ('A'), column '# Layers': '2.0' is not an integer expression: unexpected '2.0' at position 0 {ALLOWED}",
    ),
    ('A,2,1.9B,50%,"[8192, 8192]",\n', "x.csv line 2 ('A'), column '# Effective Params (B)': '1.9B' is not a decimal number of billions (such as 1.91)"),
    ('A,2,1.9,0.5,"[8192, 8192]",\n', "x.csv line 2 ('A'), column 'MMLU PT accuracy': '0.5' is not a percentage (such as 62.30%)"),
    ('A,2,1.9,50%,"[8192, 8192]",\nA,2,1.9,50%,"[8192, 8192]",\n', "x.csv line 3: name 'A' repeats line 2"),
    (',2,1.9,50%,"[8192, 8192]",\n', "x.csv line 2: column 'name' is empty"),
    ('A,2,1.9,50%,"[8192, 8192]",,x\n', "x.csv line 2 ('A'): 1 more cell than the header has columns"),
    (
        'A,2,1.9,50%,"[8192, 8192]",\nB,2,1.9,50%,"[8192, 819 2]",\n',
        f"x.csv line 3 ('B'), column 'FFN Hidden Dims': item 1: '819 2' is not an integer expression: unexpected '2' at position 4 {ALLOWED}",
    ),
    ("", "x.csv: no configurations (only a header)"),
]


@pytest.mark.parametrize("rows,message", CSV_ERRORS, ids=[m[:50] for _, m in CSV_ERRORS])
def test_malformed_csv(rows, message):
    with pytest.raises(SourceError) as e:
        parse_configs(HEADER + rows, "x.csv")
    assert str(e.value) == message


def test_csv_missing_column():
    with pytest.raises(SourceError) as e:
        parse_configs("name,# Layers\nA,2\n", "x.csv")
    assert str(e.value) == "x.csv: missing column '# Effective Params (B)' (found: 'name', '# Layers')"


def test_csv_lenient_where_the_format_is():
    rows = parse_configs(HEADER + 'A,2,1.9,,"[ 2_048 * (3 + 1) ,8192 ]",[]\n', "x.csv")
    assert len(rows) == 1
    a = rows[0]
    assert (a.name, a.layers, a.published_effective_b, a.published_mmlu, a.ffn_dims, a.layers_to_skip, a.line) == (
        "A", 2, 1.9, None, (8192, 8192), (), 2
    )


def test_shipped_csv():
    rows = shipped_configs()
    assert len(rows) == 16
    e2b = rows[1]
    assert e2b.name == "Config for official E2B Model"
    assert (e2b.layers, e2b.published_effective_b, e2b.published_mmlu) == (30, 1.91, 50.9)
    assert e2b.layers_to_skip == (20, 21, 22, 23, 24)
    assert e2b.ffn_dims == (8192,) * 30
    assert rows[0].ffn_dims == (16384,) * 35
    assert [r.line for r in rows] == list(range(2, 18))
    assert rows[-1].published_effective_b == 3.74  # "E3.79B (block-level)" is published as 3.74


# -- the Hub dataset, through huggingface_hub's cache (offline: no network in tests) --------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hub_cache(cache: Path, text: str) -> None:
    """The layout huggingface_hub uses for a cached dataset file at revision main."""
    repo = cache / ("datasets--" + HUB_DATASET.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "configs.csv").write_text(text)


# A "live" file that differs from the shipped one: two rows, a changed MMLU figure.
LIVE_CSV = HEADER + (
    'Config for official E2B Model,30,1.91,51.00%,"[' + ", ".join(["2_048 * 4"] * 30) + ']","[20, 21, 22, 23, 24]"\n'
    'Main model,35,3.98,62.30%,"[' + ", ".join(["2_048 * 8"] * 35) + ']",\n'
)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_csv_from_cache(offline_hub):
    populate_hub_cache(offline_hub, LIVE_CSV)
    rows = hub_configs()
    assert [(r.name, r.published_mmlu) for r in rows] == [("Config for official E2B Model", 51.0), ("Main model", 62.3)]
    assert rows[0].ffn_dims == (8192,) * 30


def test_hub_unreachable_is_one_line(offline_hub):
    with pytest.raises(SourceError) as e:
        hub_configs()
    message = str(e.value)
    assert message.startswith("cannot fetch configs.csv of the Hub dataset google/gemma3n-slicing-configs: ")
    assert "\n" not in message


def test_presets_from_hub_cli(tmp_path):
    cache = tmp_path / "hf-cache"
    populate_hub_cache(cache, LIVE_CSV)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    script = Path(sys.executable).parent / "gslice"
    result = subprocess.run([script, "presets", "--from-hub", "--json"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    official = [p for p in json.loads(result.stdout)["presets"] if p["origin"] == "google"]
    assert [(p["id"], p["published_mmlu"]) for p in official] == [("google-e2b", 51.0), ("google-main", 62.3)]
    assert official[0]["plan"]["params"]["effective"] == 1_905_495_648
