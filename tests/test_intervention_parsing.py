"""The intervention parser refuses everything unexpected with an InterventionError (one sentence
naming the field) and nothing else: the cases a bad-input campaign found, then property tests
(hypothesis) over arbitrary JSON-like values and mutations of valid interventions, each result
round-tripped through JSON and applied to a tiny model run."""
import json
import math
import os

import numpy as np
import pytest
import torch

import engine
from engine import InputError, Intervention, InterventionError, PatchSource, Span
from engine.interventions import interventions_from_json, interventions_to_json, load_interventions
from engine.models.stack import RecurrentStack, StackConfig
from engine.tokenizers import CharVocab

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

V, E, H, T = 6, 4, 5, 9
PROBES = ["embed", "layers.0.h", "layers.0.c", "layers.0.gate_f", "layers.1.h", "logits"]
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

_MODEL = []


def tiny_model():
    """A 2-layer char-LSTM small enough that a run costs about a millisecond (built once)."""
    if not _MODEL:
        torch.manual_seed(0)
        emb, rnn, head = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, 2), torch.nn.Linear(H, V)
        w = {"embed.weight": emb.weight, "head.weight": head.weight, "head.bias": head.bias}
        w.update({"rnn." + k: v for k, v in rnn.state_dict().items()})
        cfg = StackConfig("lstm", 2, H, E, vocab_size=V, output_size=V)
        _MODEL.append(RecurrentStack(cfg, w, tokenizer=CharVocab(list("abcdef"))))
    return _MODEL[0]


def parse(d):
    """The JSON boundary: a parsed JSON value to an Intervention, or an InterventionError."""
    return interventions_from_json(json.dumps(d, allow_nan=True))


def one_sentence(exc: Exception) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg and len(msg) < 400, msg
    return msg


# -- the cases found by the campaign --------------------------------------------------------

VALID = {"probe": "layers.0.h", "op": "set", "value": 1.0, "positions": [2], "units": [1]}


@pytest.mark.parametrize("change,field", [
    ({"op": "bogus"}, "unknown op 'bogus'"),
    ({"op": 5}, "unknown op 5"),
    ({"units": []}, "units is an empty list"),
    ({"units": 5.0}, "units must be"),
    ({"units": [1, 1]}, "units lists a unit twice"),
    ({"units": [-1]}, "units must be whole numbers from 0"),
    ({"units": [True]}, "units must be whole numbers"),
    ({"units": "3"}, "units must be"),
    ({"probe": ["layers.0.h"]}, "probe must be one probe name"),
    ({"probe": ""}, "probe must be a probe name of 1"),
    ({"positions": [1e999]}, "positions must be whole numbers >= 0, got inf"),
    ({"positions": [float("nan")]}, "positions must be whole numbers >= 0, got nan"),
    ({"positions": [-3]}, "positions must be whole numbers from 0"),
    ({"positions": [1.5]}, "positions must be whole numbers >= 0, got 1.5"),
    ({"positions": [False]}, "positions must be whole numbers >= 0, got False"),
    ({"positions": 1e999}, "positions must be a list"),
    ({"positions": [10**30]}, "positions must be whole numbers from 0 to"),
    ({"positions": {"start": 5, "stop": 2}}, "selects nothing"),
    ({"positions": {"start": 1, "end": 2}}, "takes the keys start and stop"),
    ({"value": 1e999}, "value of 'set' must be finite numbers, got inf"),
    ({"value": float("nan")}, "value of 'set' must be finite numbers, got nan"),
    ({"value": [1.0, float("-inf")], "units": [0, 1]}, "must be finite"),
    ({"value": [[1.0]]}, "value of 'set' must be numbers"),
    ({"value": "1.0"}, "must be a number, a list of numbers"),
    ({"value": [10**400]}, "too large for a float"),
    ({"value": [1.0, 2.0], "units": [1]}, "2 numbers but 1 units"),
    ({"value": {"file": "x.h5"}}, "only 'patch' takes an object"),
    ({"op": "zero", "value": 3}, "'zero' takes no value"),
    ({"op": "patch", "value": {"file": 5}}, "file must be the path of a trace file"),
    ({"op": "patch", "value": {"file": "t.h5", "sequence": -1}}, "sequence must be a whole number"),
    ({"op": "patch", "value": {"file": "t.h5", "probe": ["a"]}}, "patch source's probe must be one probe name"),
    ({"op": "patch", "value": {"array": [[1, 2]], "dtype": "object"}}, "dtype must be one of float16"),
    ({"op": "patch", "value": {"array": [[1, 2]], "dtype": "complex64"}}, "dtype must be one of float16"),
    ({"op": "patch", "value": {"array": [["a", "b"]]}}, "must hold numbers only, got 'a'"),
    ({"op": "patch", "value": {"array": [[{"x": 1}]]}}, "must hold numbers only"),
    ({"op": "patch", "value": {"array": [[1, 2], [3]]}}, "regular"),
    ({"op": "patch", "value": {"array": [[1, 2], 3]}}, "regular"),
    ({"op": "patch", "value": {"array": [[[[[[[1.0]]]]]]]}}, "must hold numbers only"),
    ({"op": "patch", "value": {"array": [[1e300]], "dtype": "float16"}}, "too large for float16"),
    ({"op": "patch", "value": {"array": []}}, "at least one value"),
    ({"op": "patch", "value": {"array": [[1.0]], "extra": 1}}, "takes the keys array and dtype"),
    ({"op": "patch", "value": {"nope": 1}}, "an object with 'file'"),
    ({"op": "patch", "value": 3.0}, "'patch' needs a trace file"),
    ({"bogus": 1}, "unknown key \\['bogus'\\]"),
])
def test_each_malformed_field_is_named_in_one_sentence(change, field):
    d = dict(VALID, **change)
    with pytest.raises(InterventionError, match=field) as info:
        parse(d)
    one_sentence(info.value)


def test_documents_that_are_not_interventions():
    for text, message in [
        ("[" * 100_000, "nested too deeply"),
        ('{"probe": ' * 100_000, "nested too deeply"),
        ("[1, 2", "not valid JSON"),
        ("9" * 5000, "not valid JSON"),
        ("5", "an object or a list of objects"),
        ('"layers.0.h"', "an object or a list of objects"),
        ("[5]", "is a JSON object"),
        ('[{"op": "zero"}]', "needs a 'probe'"),
        (json.dumps([VALID, dict(VALID, units=[])]), "intervention 2 of 2: units is an empty list"),
        (json.dumps([VALID] * 10_001), "at most 10,000"),
        (json.dumps(dict(VALID, units=list(range(2**22 + 1)))), "at most 4,194,304"),
    ]:
        with pytest.raises(InterventionError, match=message) as info:
            interventions_from_json(text)
        one_sentence(info.value)
    deep = {"probe": "layers.0.h", "op": "set", "value": 1.0, "units": [1]}
    for _ in range(5000):  # deeper than json could read: refused by type, never by recursion
        deep = {"probe": "layers.0.h", "op": "patch", "value": {"array": [deep]}}
    with pytest.raises(InterventionError, match="must hold numbers only"):
        Intervention.from_dict(deep)
    with pytest.raises(InterventionError, match="units must be .*, got \\{'op': 'patch', 'probe'"):
        Intervention.from_dict(dict(VALID, units=deep))  # the message shows a bounded part of it


def test_python_construction_validates_the_same_way():
    for kwargs, message in [
        (dict(probe=["layers.0.h"]), "probe must be one probe name"),
        (dict(probe="layers.0.h", op="set", value=float("nan")), "must be finite"),
        (dict(probe="layers.0.h", op="set", value=np.array([1.0, np.inf])), "must be finite"),
        (dict(probe="layers.0.h", op="set", value=True), "must be one number"),
        (dict(probe="layers.0.h", op="scale", value=np.array(["a"])), "must be numbers"),
        (dict(probe="layers.0.h", units=[]), "units is an empty list"),
        (dict(probe="layers.0.h", units=np.array([0.5])), "units must be a list of whole numbers"),
        (dict(probe="layers.0.h", positions=[-1]), "positions must be whole numbers from 0"),
        (dict(probe="layers.0.h", positions=range(5, 5)), "selects nothing"),
        (dict(probe="layers.0.h", positions=slice(0, 9, 2)), "step 1"),
        (dict(probe="layers.0.h", op="zero", value=np.zeros(3)), "'zero' takes no value"),
        (dict(probe="layers.0.h", op="patch", value=np.array([[1 + 2j]])), "must hold numbers"),
        (dict(probe="layers.0.h", op="patch", value=np.array([["x"]])), "must hold numbers"),
        (dict(probe="layers.0.h", op="patch", value=np.full((2, 5), np.nan)), "finite"),
        (dict(probe="layers.0.h", op="patch", value=np.zeros((2,) * 7)), "shape"),
    ]:
        with pytest.raises(InterventionError, match=message) as info:
            Intervention(**kwargs)
        one_sentence(info.value)
    with pytest.raises(InterventionError, match="span start"):
        Span("3")
    with pytest.raises(InterventionError, match="sequence must be a whole number >= 0, got 1.5"):
        PatchSource("t.h5", sequence=1.5)
    # what is valid stays valid, numpy and torch included
    iv = Intervention("layers.0.h", "set", torch.tensor([1.0, 2.0]), np.array([3, 1]), np.array([0, 4]))
    assert iv.value == (1.0, 2.0) and iv.positions == (1, 3) and iv.units == (0, 4)
    assert Intervention("layers.0.h", "patch", np.arange(10).reshape(2, 5)).value.dtype == np.float32


def test_load_interventions_names_the_file_for_every_failure(tmp_path):
    cases = {"missing.json": f"cannot open interventions file {tmp_path / 'missing.json'}: no such file"}
    (tmp_path / "folder.json").mkdir()
    cases["folder.json"] = "folder.json is a folder, not a regular file"
    (tmp_path / "latin1.json").write_bytes(b'[{"probe": "caf\xe9"}]')
    cases["latin1.json"] = "latin1.json is not UTF-8 text \\(byte 15 is not valid\\)"
    (tmp_path / "bogus.json").write_text('{"probe": "layers.0.h", "op": "bogus"}')
    cases["bogus.json"] = "bogus.json: unknown op 'bogus'"
    (tmp_path / "deep.json").write_text("[" * 100_000)
    cases["deep.json"] = "deep.json: interventions JSON is nested too deeply"
    os.mkfifo(tmp_path / "pipe.json")  # would block forever if opened
    cases["pipe.json"] = "pipe.json is a named pipe, not a regular file"
    for name, message in cases.items():
        with pytest.raises(InterventionError, match=message) as info:
            load_interventions(tmp_path / name)
        one_sentence(info.value)


def test_engine_run_checks_what_only_the_model_and_input_can_tell():
    model = tiny_model()
    x = [0, 1, 2, 3, 4, 5, 0, 1, 2]
    for iv, message in [
        (Intervention("layers.9.h", "zero"), "no probe point 'layers.9.h'"),
        (Intervention("layers.0.h", "zero", units=[H]), f"has {H} units .* do not exist"),
        (Intervention("layers.0.h", "set", [1.0, 2.0]), f"2 numbers but {H} units"),
        (Intervention("layers.0.h", "add", 1.0, positions=[T + 3]), f"would change nothing.*{T} tokens"),
        (Intervention("layers.0.h", "add", 1.0, positions=Span(T)), "would change nothing"),
        (Intervention("layers.0.h", "set", 1e39), "too large for this model's float32"),
        (Intervention("layers.0.h", "patch", np.zeros((T, H + 1), np.float32)), "shaped \\(9, 6\\)"),
        (Intervention("layers.0.h", "patch", np.zeros((3, H), np.float32), positions=[5]), "source has 3 tokens"),
        (Intervention("layers.0.h", "patch", np.zeros((T, H, 2), np.float32)), "shaped \\(9, 5, 2\\)"),
        (Intervention("layers.0.h", "patch", PatchSource("/no/such.h5")), "patch for layers.0.h: no trace file"),
    ]:
        with pytest.raises(InterventionError, match=message) as info:
            engine.run(model, x, interventions=[iv])
        one_sentence(info.value)
    # positions partly beyond the input edit the part that exists
    tr = engine.run(model, x, interventions=[Intervention("layers.0.h", "zero", positions=[2, 50])])
    assert np.all(tr["layers.0.h"][2] == 0) and np.any(tr["layers.0.h"][3] != 0)


def test_a_bidirectional_layer_refuses_units_and_values_that_do_not_fit():
    torch.manual_seed(1)
    from engine.models.stack import from_torch

    model = from_torch(torch.nn.GRU(3, 4, 1, bidirectional=True))
    x = np.zeros((6, 3), np.float32)
    with pytest.raises(InterventionError, match="has 8 units .* do not exist"):
        engine.run(model, x, interventions=[Intervention("layers.0.h", "zero", units=[9])])
    with pytest.raises(InterventionError, match="2 numbers but 8 units"):
        engine.run(model, x, interventions=[Intervention("layers.0.h", "set", [1.0, 2.0])])
    with pytest.raises(InterventionError, match="shaped \\(6, 3\\)"):
        engine.run(model, x, interventions=[Intervention("layers.0.h", "patch", np.zeros((6, 3), np.float32),
                                                          units=[1, 5])])


# -- property tests -------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e999, -1e999, 1e308, 5e-324])
           | st.text(max_size=6) | st.sampled_from(PROBES + list(engine.interventions.OPS)))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(["start", "stop", "array",
                                                                                   "dtype", "file"]),
                                             inner, max_size=4), max_leaves=24)


@st.composite
def valid_interventions(draw):
    op = draw(st.sampled_from(engine.interventions.OPS))
    probe = draw(st.sampled_from(PROBES))
    width = V if probe in ("embed", "logits") else H
    width = E if probe == "embed" else width
    units = draw(st.none() | st.lists(st.integers(0, width - 1), min_size=1, max_size=width, unique=True))
    positions = draw(st.none() | st.lists(st.integers(0, T - 1), min_size=1, max_size=4)
                     | st.builds(lambda a, n: {"start": a, "stop": a + n}, st.integers(0, T - 1), st.integers(1, 4)))
    n = width if units is None else len(units)
    finite = st.floats(-4, 4, allow_nan=False)
    if op == "zero":
        value = None
    elif op == "patch":
        value = {"array": draw(st.lists(st.lists(finite, min_size=n, max_size=n), min_size=T, max_size=T)),
                 "dtype": draw(st.sampled_from(["float16", "float32", "float64"]))}
    else:
        value = draw(finite | st.lists(finite, min_size=n, max_size=n))
    return {"probe": probe, "op": op, "value": value, "positions": positions, "units": units}


@st.composite
def mutated_interventions(draw):
    """A valid intervention with one field replaced, removed or added, or a whole part nested."""
    d = draw(valid_interventions())
    how = draw(st.sampled_from(["replace", "remove", "add", "wrap"]))
    key = draw(st.sampled_from(sorted(d)))
    if how == "replace":
        d[key] = draw(json_values)
    elif how == "remove":
        del d[key]
    elif how == "add":
        d[draw(st.text(max_size=8))] = draw(json_values)
    else:
        d[key] = draw(st.sampled_from([[d[key]], {"array": d[key]}, {"file": d[key]}, {"start": d[key]}]))
    return d


def check_parse(d):
    """Returns the Interventions (which survive a JSON round trip), or None after a clean refusal."""
    try:
        ivs = parse(d)
    except InterventionError as exc:
        one_sentence(exc)
        return None
    assert all(isinstance(iv, Intervention) for iv in ivs)
    again = interventions_from_json(interventions_to_json(ivs))
    assert again == ivs
    return ivs


def check_applies(ivs):
    """Parsed interventions run on the tiny model, or engine.run refuses them in words."""
    model = tiny_model()
    try:
        tr = engine.run(model, [0, 1, 2, 3, 4, 5, 0, 1, 2], interventions=ivs)
    except (InterventionError, InputError) as exc:
        one_sentence(exc)
        return False
    assert tr.n_tokens == T and tr.interventions == tuple(ivs)
    return True


@settings(max_examples=300, **SETTINGS)
@given(json_values)
def test_any_json_value_is_an_intervention_or_an_intervention_error(value):
    ivs = check_parse(value)
    if ivs:
        check_applies(ivs)


@settings(max_examples=200, **SETTINGS)
@given(mutated_interventions())
def test_mutated_interventions_parse_round_trip_and_apply_or_are_refused(d):
    ivs = check_parse(d)
    if ivs:
        check_applies(ivs)


@settings(max_examples=80, **SETTINGS)
@given(valid_interventions())
def test_valid_interventions_round_trip_and_apply(d):
    ivs = check_parse(d)
    assert ivs is not None and len(ivs) == 1
    assert check_applies(ivs)


python_values = (json_values | st.builds(np.array, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4))
                 | st.builds(np.array, st.lists(st.integers(-5, 2**40), max_size=4))
                 | st.builds(lambda a, b: range(a, b), st.integers(-3, 12), st.integers(-3, 12))
                 | st.builds(lambda a, b: slice(a, b), st.integers(-3, 12) | st.none(), st.integers(-3, 12) | st.none())
                 | st.builds(lambda n: np.zeros((n, H), np.float32), st.integers(0, 3))
                 | st.just(PatchSource("nowhere.h5")) | st.just(Span(2, 5)) | st.just(torch.ones(H)))


@settings(max_examples=300, **SETTINGS)
@given(st.sampled_from(PROBES) | scalars, st.sampled_from(engine.interventions.OPS) | scalars,
       python_values, python_values, python_values)
def test_python_constructor_returns_or_refuses_in_words(probe, op, value, positions, units):
    try:
        iv = Intervention(probe, op, value, positions, units)
    except InterventionError as exc:
        one_sentence(exc)
        return
    again = interventions_from_json(interventions_to_json([iv]))
    assert again == [iv]
    for number in (iv.value if isinstance(iv.value, tuple) else [iv.value]):
        assert not isinstance(number, float) or math.isfinite(number)
    check_applies([iv])


def test_the_command_line_reads_interventions_through_the_same_parser(tmp_path):
    from engine.cli import _read_interventions

    (tmp_path / "steer.json").write_text(json.dumps([VALID, dict(VALID, op="zero", value=None)]))
    assert [iv.op for iv in _read_interventions([str(tmp_path / "steer.json"), json.dumps(VALID)])] == \
        ["set", "zero", "set"]
    for arg, message in [("[" * 100_000, "--intervene: interventions JSON is nested too deeply"),
                         ('{"probe": "layers.0.h", "op": "bogus"}', "--intervene: unknown op 'bogus'"),
                         (str(tmp_path), "--intervene: .* is a folder"),
                         ("nowhere.json", "--intervene: cannot open interventions file nowhere.json: no such file")]:
        with pytest.raises(InterventionError, match=message) as info:
            _read_interventions([arg])
        one_sentence(info.value)
