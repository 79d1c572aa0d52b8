"""Hostile files: profiles, render configs and plan files, property-based (hypothesis).

Property: whatever a file holds, loading it either gives a valid object whose numbers are finite
and whose planner inputs are bounded, or raises BadInput with ONE line naming the file and the field;
never another exception, a hang or code execution. The CLI turns that into exit 2 and one stderr line
(a few representative files run through `cli.py` as a user would).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infadapter.core.plan import Plan
from infadapter.core.profile import MAX_CORE_OPTIONS, load_profile
from infadapter.errors import BadInput
from infadapter.loading import MAX_DEPTH, load_json, load_yaml
from infadapter.render import RenderConfig, load_render_config
from tests.cli_helpers import run_cli
from tests.conftest import make_profile_dict

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values a hostile or careless author writes where a number, a string or a list belongs.
HOSTILE = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, None, True, False, "", "x", "1e999", [], {}, 0, -1, -0.0]),
    st.sampled_from([1e308, -1e308, 10**400, 2**63, "\n\x00", "a" * 300, [[[[1]]]], {"a": {"b": 1}}]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=20),
)


def one_line(exc: BadInput) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and 0 < len(text) < 600, text
    return text


def dump(data: Any) -> str:
    """YAML as a user would write it (PyYAML writes nan/inf as .nan/.inf, big ints in full)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in nested dicts/lists (the places a mutation can hit)."""
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def mutate(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(data)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def field_named(message: str, path: tuple[Any, ...]) -> bool:
    """The message names the mutated field (its key, or the variant / index it sits in)."""
    keys = [str(p) for p in path if isinstance(p, str)]
    return any(k in message for k in keys) or any(f"[{p}]" in message for p in path if isinstance(p, int))


def assert_finite_numbers(data: Any) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            assert_finite_numbers(k)
            assert_finite_numbers(v)
    elif isinstance(data, list | tuple):
        for v in data:
            assert_finite_numbers(v)
    elif isinstance(data, float):
        assert math.isfinite(data)


# -- profiles ------------------------------------------------------------------------------------
PROFILE = make_profile_dict()
PROFILE["variants"].append(
    {"name": "measured", "accuracy": 0.75, "load_time_s": 6,
     "capacity": {"kind": "points", "points": {1: 10.0, 2: 21.0}, "safety": 0.9}}
)  # fmt: skip
PROFILE_PATHS = _paths(PROFILE)


@pytest.mark.slow
@SETTINGS
@given(path=st.sampled_from(PROFILE_PATHS), value=HOSTILE)
def test_profile_with_a_hostile_value_loads_or_names_the_field(tmp_path_factory, path, value):
    f = tmp_path_factory.mktemp("p") / "profile.yaml"
    f.write_text(dump(mutate(PROFILE, path, value)))
    try:
        profile = load_profile(f)
    except BadInput as exc:
        message = one_line(exc)
        assert message.startswith(f"{f}: ")
        assert field_named(message, path), (path, value, message)
        return
    # Accepted: every number finite, the planner's inputs bounded and finite.
    assert_finite_numbers(profile.model_dump())
    options = profile.core_options()
    assert 0 < len(options) <= MAX_CORE_OPTIONS + 1
    for name in profile.names:
        assert math.isfinite(profile.capacity_rps(name, options[-1]))


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_as_a_profile_is_one_line_or_a_profile(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("p") / "profile.yaml"
    f.write_text(text)
    try:
        load_profile(f)
    except BadInput as exc:
        assert one_line(exc).startswith(str(f))


def test_duplicate_variant_names_are_refused(tmp_path):
    data = make_profile_dict()
    data["variants"][1]["name"] = data["variants"][0]["name"]
    f = tmp_path / "dup.yaml"
    f.write_text(dump(data))
    with pytest.raises(BadInput, match=r"variants: variant names must be unique, repeated: small$"):
        load_profile(f)


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
slo_ms: *i
budget_cores: *i
variants: *i
"""

EVIL_YAML = [
    ("alias-bomb", BILLION_LAUGHS, "aliases (*a) are not allowed"),
    ("alias", "slo_ms: &x 500\nbudget_cores: *x\n", "aliases (*x) are not allowed"),
    ("merge-key", "base: &b {slope: 1}\nv: {<<: *b}\n", "aliases (*b) are not allowed"),
    ("duplicate-key", "slo_ms: 500\nslo_ms: 1\n", "key 'slo_ms' appears twice"),
    ("deep-flow", "x: " + "[" * 5000 + "]" * 5000 + "\n", f"nested deeper than {MAX_DEPTH} levels"),
    ("deep-block", "".join("  " * i + f"k{i}:\n" for i in range(200)), f"nested deeper than {MAX_DEPTH} levels"),
    ("python-object", "x: !!python/object/apply:os.system ['touch PWNED']\n", "could not determine a constructor"),
    ("python-name", "x: !!python/name:os.system\n", "could not determine a constructor"),
    ("tab-indent", "slo_ms:\n\t- 1\n", "not valid YAML at line 2"),
    ("binary-junk", "\x00\x01\x02", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "phrase"), [c[1:] for c in EVIL_YAML], ids=[c[0] for c in EVIL_YAML])
@pytest.mark.parametrize("kind", ["profile", "render-config"])
def test_evil_yaml_is_refused_at_once_in_one_line(tmp_path, kind, text, phrase):
    f = tmp_path / "evil.yaml"
    f.write_text(text)
    load = load_profile if kind == "profile" else load_render_config
    t0 = time.monotonic()
    with pytest.raises(BadInput) as info:
        load(f)
    assert phrase in one_line(info.value)
    assert str(f) in str(info.value)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    assert time.monotonic() - t0 < 30  # a hang guard only (a bomb that expanded would not return at all)


# -- render configs ------------------------------------------------------------------------------
RENDER = RenderConfig().model_dump(mode="json")
RENDER_PATHS = _paths(RENDER)


@pytest.mark.slow
@SETTINGS
@given(path=st.sampled_from(RENDER_PATHS), value=HOSTILE)
def test_render_config_with_a_hostile_value_loads_or_names_the_field(tmp_path_factory, path, value):
    f = tmp_path_factory.mktemp("r") / "k8s.yaml"
    f.write_text(dump(mutate(RENDER, path, value)))
    try:
        config = load_render_config(f)
    except BadInput as exc:
        message = one_line(exc)
        assert str(f) in message
        assert field_named(message, path), (path, value, message)
        return
    assert_finite_numbers(config.model_dump())


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_as_a_render_config_is_one_line_or_a_config(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("r") / "k8s.yaml"
    f.write_text(text)
    try:
        load_render_config(f)
    except BadInput as exc:
        assert str(f) in one_line(exc)


# -- plan files ----------------------------------------------------------------------------------
PLAN = {
    "feasible": True, "load": 120.0, "objective": 0.7, "accuracy": 0.76, "cores": 6.0, "optimal": True,
    "variants": [
        {"name": "small", "cores": 2.0, "share": 0.25, "capacity": 36.0},
        {"name": "big", "cores": 4.0, "share": 0.75, "capacity": 95.0},
    ],
    "notes": ["planned by a test"],
}  # fmt: skip
PLAN_PATHS = _paths(PLAN)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def json_text(data: Any) -> str:
    """JSON as Python writes it, NaN/Infinity included (what a buggy writer would produce)."""
    return json.dumps(data, allow_nan=True, default=str)


@SETTINGS
@given(path=st.sampled_from(PLAN_PATHS), value=HOSTILE)
def test_plan_with_a_hostile_value_loads_or_names_the_field(path, value):
    try:
        plan = Plan.from_json(json_text(mutate(PLAN, path, value)), origin="plan.json")
    except BadInput as exc:
        message = one_line(exc)
        assert message.startswith("plan.json")
        if "not valid JSON" not in message and "shares must sum" not in message:
            assert field_named(message, path) or "variants" in message, (path, value, message)
        return
    assert_finite_numbers(plan.as_dict())


@pytest.mark.slow
@SETTINGS
@given(data=JSON_VALUES)
def test_any_json_value_as_a_plan_is_one_line_or_a_plan(data):
    try:
        Plan.from_json(json.dumps(data), origin="plan.json")
    except BadInput as exc:
        assert one_line(exc).startswith("plan.json")


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_as_a_plan_is_one_line_or_a_plan(text):
    try:
        Plan.from_json(text, origin="plan.json")
    except BadInput as exc:
        assert one_line(exc).startswith("plan.json")


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"load": NaN, "variants": []}', "NaN is not a JSON number"),
        ('{"load": Infinity, "variants": []}', "Infinity is not a JSON number"),
        ('{"load": 1e999, "variants": []}', "load: must be a finite number"),
        ('{"load": 10, "variants": [{"name": "a", "cores": "2"}]}', "variants[0].cores: must be a number"),
        ('{"load": 10, "variants": [{"name": "a", "cores": true}]}', "variants[0].cores: must be a number"),
        ('{"load": 10, "variants": [{"name": 5, "cores": 2}]}', "variants[0].name"),
        ('{"load": 10, "variants": [], "objective": "high"}', "objective: must be a number"),
        ('{"load": 10, "variants": [], "notes": "x"}', "notes: must be a list of strings"),
        ('{"load": 10, "variants": [], "feasible": "yes"}', "feasible: must be true or false"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"load": 10, "variants": [{"name": "a", "cores": 1}, {"name": "a", "cores": 1}]}', "names must be unique"),
    ],
)
def test_bad_plan_files_name_the_field(text, phrase):
    with pytest.raises(BadInput) as info:
        Plan.from_json(text, origin="plan.json")
    assert phrase in one_line(info.value)


def test_loaders_refuse_what_json_and_yaml_allow_by_default():
    with pytest.raises(BadInput, match="aliases"):
        load_yaml("a: &x 1\nb: *x\n", "f.yaml")
    with pytest.raises(BadInput, match="NaN"):
        load_json("[NaN]", "f.json")
    assert load_yaml("a: 1\nb: [1, 2]\n", "f.yaml") == {"a": 1, "b": [1, 2]}
    assert load_json('{"a": [1.5]}', "f.json") == {"a": [1.5]}


# -- through the CLI, as a user sees it ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "content", "phrase"),
    [
        ("profile", dump(mutate(PROFILE, ("variants", 0, "capacity", "slope"), math.nan)), "slope: must be a finite"),
        ("profile", dump(mutate(PROFILE, ("budget_cores",), math.inf)), "budget_cores: must be a finite"),
        ("profile", dump(mutate(PROFILE, ("budget_cores",), 1e12)), "budget_cores: at most"),
        ("profile", BILLION_LAUGHS, "aliases"),
        ("plan", '{"load": 10, "variants": [{"name": "small", "cores": NaN}]}', "NaN is not a JSON number"),
        ("config", "namespace: &n demo\ninstance: *n\n", "aliases"),
        ("config", "namespace: demo\nnamespace: other\n", "appears twice"),
    ],
)
def test_cli_turns_bad_files_into_exit_2_and_one_line(tmp_path, kind, content, phrase):
    f = tmp_path / ("input.json" if kind == "plan" else "input.yaml")
    f.write_text(content)
    if kind == "profile":
        res = run_cli("plan", "--profile", str(f), "--load", "10", "--json")
    else:
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps(PLAN))
        args = ["--plan", str(f if kind == "plan" else plan), "--out", str(tmp_path / "out")]
        if kind == "config":
            args += ["--config", str(f)]
        res = run_cli("render", *args, "--profile", str(_profile_file(tmp_path)))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], res.stderr


def _profile_file(tmp_path: Path) -> Path:
    p = tmp_path / "good-profile.yaml"
    p.write_text(dump(make_profile_dict()))
    return p


# -- inventories (Ansible's validate play, the first stage of site.yml) ----------------------------
SAMPLE_INVENTORY = yaml.safe_load((Path(__file__).resolve().parents[1] / "inventory/sample/hosts.yml").read_text())
INVENTORY_PATHS = [p for p in _paths(SAMPLE_INVENTORY) if p[-1] not in ("all", "children")]


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(INVENTORY_PATHS), value=HOSTILE | st.just({}) | st.just({"hosts": None}))
def test_inventory_with_a_hostile_value_passes_or_fails_with_an_inventory_message(tmp_path_factory, path, value):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    inv = tmp_path_factory.mktemp("inv") / "hosts.yml"
    inv.write_text(dump(mutate(SAMPLE_INVENTORY, path, value)))
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), "playbooks/validate.yml"],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_CONFIG": str(root / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "unexpected exception" not in out.lower(), out[-2000:]
    if res.returncode != 0:
        # Refused by one of the play's asserts (which say what to fix), or by Ansible's inventory parser.
        assert "inventory:" in out or "Unable to parse" in out or "ERROR!" in out, out[-2000:]


# -- inventories through Ansible itself (plugins/inventory/infadapter_yaml.py) -----------------------
_BOMB_VARS = "".join(f"    {line}\n" for line in BILLION_LAUGHS.splitlines()[:9])  # anchors a..i, 9**9 "lol"
INVENTORY_BOMB = "all:\n  vars:\n" + _BOMB_VARS + "  hosts:\n    node1:\n      ansible_host: 192.0.2.11\n"
EVIL_INVENTORIES = [
    ("alias-bomb", INVENTORY_BOMB, "line 3: YAML anchors and aliases (&a) are not allowed in an inventory"),
    ("alias", "all:\n  hosts:\n    node1:\n      x: *undefined\n", "YAML aliases (*undefined) are not allowed"),
    ("python-tag", "all:\n  vars:\n    x: !!python/object/apply:os.system [echo pwned]\n", "YAML tag"),
    ("deep", "all:\n  vars:\n    x: " + "[" * 80 + "]" * 80 + "\n", "nested deeper than 64 levels"),
]


def _ansible(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [str(Path(sys.executable).parent / tool), *args],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_CONFIG": str(root / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["ansible-inventory", "ansible-playbook"])
@pytest.mark.parametrize(("kind", "text", "phrase"), EVIL_INVENTORIES, ids=[k for k, _, _ in EVIL_INVENTORIES])
def test_evil_inventory_is_refused_by_ansible_with_one_line(tmp_path, tool, kind, text, phrase):
    """Real ansible-inventory / ansible-playbook (the repository's ansible.cfg): the inventory is refused
    before anything expands it, with the file, the line and the fix, and a non-zero exit."""
    inv = tmp_path / "hostile.yml"
    inv.write_text(text)
    args = ["--list"] if tool == "ansible-inventory" else ["playbooks/site.yml"]
    started = time.monotonic()
    res = _ansible(tool, "-i", str(inv), *args)
    took = time.monotonic() - started
    out = res.stdout + res.stderr
    squeezed = "".join(out.split())  # Ansible wraps its warnings at 80 columns, even inside a path
    assert res.returncode != 0, out[-2000:]
    assert f"{inv}:line" in squeezed and "".join(phrase.split()) in squeezed, out[-2000:]
    assert f"Completely failed to parse inventory source {inv}" in out, out[-2000:]
    assert "Traceback" not in out and "pwned" not in res.stdout, out[-2000:]
    print(f"{tool} refused {kind} in {took:.2f} s")  # (a figure for the record, not a condition)


@pytest.mark.slow
def test_plain_inventories_still_parse_through_the_checking_plugin(tmp_path):
    sample = _ansible("ansible-inventory", "-i", "inventory/sample/hosts.yml", "--list")
    assert sample.returncode == 0, sample.stderr
    assert json.loads(sample.stdout)["k8s_control"]["hosts"] == ["node1"]
    # Ansible's own tags pass the check; a host list needs no file at all.
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    node1:\n      motd: !unsafe '{{ not templated }}'\n")
    tagged = _ansible("ansible-inventory", "-i", str(inv), "--host", "node1")
    assert tagged.returncode == 0, tagged.stderr
    motd = json.loads(tagged.stdout)["motd"]  # ansible-inventory marks an unsafe value as such
    assert motd in ("{{ not templated }}", {"__ansible_unsafe": "{{ not templated }}"}), motd
    listed = _ansible("ansible-inventory", "-i", "node7,node8,", "--list")
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(listed.stdout)["ungrouped"]["hosts"]) == ["node7", "node8"]
