"""Every result type shares one protocol: save(path) -> Path, load(path), to_dict/from_dict, a checked format version.

The results are built by hand (no model): the nested sections of an Evaluation are filled from their dataclass
fields' types, so the test follows those sections when fields are added. Each case is compared through its
JSON form (and, for EditResult, its tensors bit for bit); nothing here was tuned to pass.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing

import pytest
import torch

from mechedit.compare import CompareSettings, Comparison, MethodRun
from mechedit.components import MLP, Head
from mechedit.edit import EditConfig, EditResult
from mechedit.evaluate.behaviour import Behaviour
from mechedit.evaluate.diagnostics import Diagnostics
from mechedit.evaluate.evaluation import Evaluation
from mechedit.evaluate.latent import LatentProbes
from mechedit.evaluate.relearn import RelearnResult
from mechedit.evaluate.verdict import Verdict
from mechedit.localize.localization import Localization
from mechedit.results import FormatError, SavedResult
from patching.result import PatchResult


def sample_value(tp):
    """A small non-default value of a field type (float | None -> 0.25, list[float] -> [0.5, 0.75], ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return sample_value(next(a for a in args if a is not type(None)))
    if tp is float:
        return 0.25
    if tp is int:
        return 3
    if tp is str:
        return "x"
    if tp is bool:
        return True
    if origin is list:
        return [sample_value(args[0]), sample_value(args[0])] if args else [1]
    if origin is tuple:
        return [sample_value(args[0])] if args else []
    if origin is dict:
        return {"a": sample_value(args[1])} if args else {"k": 1.0}
    if tp is dict:
        return {"k": 1.0}
    raise TypeError(f"no sample value for {tp!r}")


def filled(cls):
    """An instance of dataclass ``cls`` with every field without a default set from its type."""
    hints = typing.get_type_hints(cls)
    kw = {f.name: sample_value(hints[f.name]) for f in dataclasses.fields(cls)
          if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return cls(**kw)


def localization() -> Localization:
    return Localization("probe", [MLP(1), Head(2, 1)], {MLP(1): 0.5, Head(2, 1): 0.25}, 1234, [0.25, 0.5, 0.75],
                        {"curves": {"full": [0.1, 0.9]}, "chosen_range": [1, 1]})


def evaluation() -> Evaluation:
    return Evaluation(behaviour=filled(Behaviour), original_behaviour=filled(Behaviour), fluency_kl=0.01,
                      relearn=filled(RelearnResult), latent=filled(LatentProbes), diagnostics=filled(Diagnostics),
                      verdict=Verdict("suppressed", reasons=["relearning recovers"]), n_params_trained=99,
                      extra={"mcq_shots": 3})


def edit_result() -> EditResult:
    g = torch.Generator().manual_seed(0)
    return EditResult(
        objective="edit", config=EditConfig(steps=2), localization=localization(), base_fingerprint="a" * 16,
        edited_fingerprint="b" * 16, n_params_trained=7, log=[{"step": 0, "loss": 1.5}],
        old={"w": torch.randn(2, 3, generator=g), "v": torch.randn(4, generator=g)},
        new={"w": torch.randn(2, 3, generator=g), "v": torch.randn(4, generator=g)},
        index={"w": None, "v": torch.tensor([0, 2, 5, 7])}, shapes={"w": (2, 3), "v": (2, 4)}, extra={"seconds": 1.0},
    )


def method_run(method: str = "probe", seed: int = 0) -> MethodRun:
    return MethodRun(method, seed, localization(), evaluation().to_dict(), {"localize": 1.0, "edit": 2.0}, {"k": 1})


def comparison() -> Comparison:
    stats = {"mean": 0.5, "std": 0.1, "n": 2}
    return Comparison(CompareSettings(methods=["probe", "path"], seeds=2), {"probe": {
        "columns": {"edit_accuracy": stats}, "n_params": stats, "verdicts": {"removed": 2}}},
        {"probe": {"path": {"edit_accuracy": stats}}},
        [method_run("probe", 0), method_run("path", 1)], 12.5, 320, "factworld:sport", {"torch": "2.x"},
        "mechedit compare factworld factworld", {"note": 1})


CASES = {
    "Localization": localization,
    "PatchResult": lambda: PatchResult("path", ["head.0.1", "mlp.1"], [0.5, 1.5], 2.0, 0.0, "noising", {"n": 3}),
    "EditResult": edit_result,
    "Evaluation": evaluation,
    "MethodRun": method_run,
    "Comparison": comparison,
}


def test_every_result_type_is_covered():
    """Each class deriving from the shared base has a case here."""
    def subclasses(c):
        return set(c.__subclasses__()).union(*(subclasses(s) for s in c.__subclasses__()))
    assert {c.__name__ for c in subclasses(SavedResult)} <= set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip(name, tmp_path):
    """save(dir) returns the written path; load reads back an equal result (JSON form and tensors)."""
    result = CASES[name]()
    assert isinstance(result, SavedResult) and isinstance(result.extra, dict) and result.extra
    path = result.save(tmp_path / "out")
    assert path.exists() and path.is_relative_to(tmp_path / "out")
    again = type(result).load(tmp_path / "out")
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(result.to_dict(), sort_keys=True)
    if isinstance(result, EditResult):
        for part in ("old", "new"):
            assert all(torch.equal(getattr(again, part)[k], v) for k, v in getattr(result, part).items())
        assert torch.equal(again.index["v"], result.index["v"]) and again.index["w"] is None
    else:
        assert again == result
        assert type(result).from_dict(result.to_dict()) == result


@pytest.mark.parametrize("name", list(CASES))
def test_wrong_format_version_is_refused(name, tmp_path):
    """A file whose format_version is not this code's is refused with a one-line error naming the file."""
    result = CASES[name]()
    path = type(result).file_in(result.save(tmp_path / "out"))  # EditResult.save returns its directory
    d = json.loads(path.read_text())
    assert d["format_version"] == type(result).FORMAT_VERSION
    d["format_version"] = 99
    path.write_text(json.dumps(d))
    with pytest.raises(FormatError) as err:
        type(result).load(tmp_path / "out")
    assert "\n" not in str(err.value) and str(path) in str(err.value) and "99" in str(err.value)


def test_save_to_a_json_file_keeps_its_name(tmp_path):
    """A path ending in .json is the file itself (loc.json, metrics.json where the user asks for them)."""
    path = localization().save(tmp_path / "mine.json")
    assert path == tmp_path / "mine.json" and Localization.load(path) == localization()
