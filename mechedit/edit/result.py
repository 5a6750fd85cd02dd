"""``EditResult``: a revertible, saveable weight delta of the trained tensors, with its recipe and log.

For exactness the result stores the old and the new values of the changed entries (a float delta cannot
restore bit-exactly: x + (y − x) need not equal y); ``delta`` derives new − old. Tensors owned whole are
stored whole; partly owned tensors store their owned flat indices and the values there.

On disk (``save(dir)``): ``delta.safetensors`` (``old/<name>``, ``new/<name>``, ``index/<name>``) and
``edit.json`` (objective, config, localization, fingerprints, per-step log, shapes, extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file

from mechedit.edit.config import EditConfig, EditError
from mechedit.localize.localization import Localization
from mechedit.models import fingerprint, hf_parameters, set_flat
from mechedit.results import SavedResult
from mechedit.validate import read_json, require_keys
from patching.model import Model

TENSORS_FILE = "delta.safetensors"
META_FILE = "edit.json"


@dataclass
class EditResult(SavedResult):
    """The weight change made by ``edit`` (only trained tensors), how it was made, and its training log."""

    objective: str
    config: EditConfig
    localization: Localization
    base_fingerprint: str  # fingerprint of the model before the edit
    edited_fingerprint: str  # fingerprint after the edit
    n_params_trained: int
    log: list[dict]  # one dict per step: step, loss, forget, retain, fluency, lr, grad_norm
    old: dict[str, torch.Tensor]  # name -> original values (whole tensor, or 1-D at ``index``)
    new: dict[str, torch.Tensor]  # name -> edited values, same layout as ``old``
    index: dict[str, torch.Tensor | None]  # name -> owned flat indices, None for whole tensors
    shapes: dict[str, tuple[int, ...]]
    extra: dict = field(default_factory=dict)  # e.g. wall time, fluency-text source, fact counts

    FILENAME: ClassVar[str] = META_FILE

    # ------------------------------------------------------------------ views
    @property
    def names(self) -> list[str]:
        """Names of the changed parameters (plain HF names)."""
        return list(self.old)

    @property
    def delta(self) -> dict[str, torch.Tensor]:
        """name -> full-shape new − old (zero outside the owned entries)."""
        out = {}
        for name in self.names:
            if self.index[name] is None:
                out[name] = self.new[name] - self.old[name]
            else:
                d = torch.zeros(self.shapes[name], dtype=self.new[name].dtype)
                d.view(-1)[self.index[name]] = self.new[name] - self.old[name]
                out[name] = d
        return out

    def final_losses(self) -> dict:
        """The last step's log entry (empty if there was no step)."""
        return dict(self.log[-1]) if self.log else {}

    # ------------------------------------------------------------------ applying
    def _entries(self, params: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        p = params[name].detach()
        return p if self.index[name] is None else p.reshape(-1)[self.index[name]]

    def _check_params(self, model) -> dict[str, torch.Tensor]:
        params = hf_parameters(model)
        for name in self.names:
            if name not in params or tuple(params[name].shape) != tuple(self.shapes[name]):
                raise EditError(f"model has no parameter {name!r} of shape {tuple(self.shapes[name])}: this edit "
                                f"was made on another architecture (base fingerprint {self.base_fingerprint})")
        return params

    def _state(self, model) -> str:
        """'base' if the model holds this edit's old values, 'edited' if it holds the new ones, else raise."""
        fp = fingerprint(model)
        if fp not in (self.base_fingerprint, self.edited_fingerprint):
            raise EditError(f"this edit was made on a model with fingerprint {self.base_fingerprint}; the given "
                            f"model has fingerprint {fp} (a different model, or one carrying other changes)")
        params = self._check_params(model)
        if all(torch.equal(self._entries(params, n), self.old[n]) for n in self.names):
            return "base"
        if all(torch.equal(self._entries(params, n), self.new[n]) for n in self.names):
            return "edited"
        raise EditError("the model's values in the edited entries are neither this edit's originals nor its "
                        "results (it carries other changes to the same parameters)")

    @torch.no_grad()
    def _write(self, model, values: dict[str, torch.Tensor]) -> None:
        params = hf_parameters(model)
        for name in self.names:
            p = params[name]
            if self.index[name] is None:
                p.copy_(values[name])
            else:
                set_flat(p, self.index[name], values[name])

    def apply(self, model: Model) -> None:
        """Write the edited values into ``model`` (which must be this edit's base model), in place."""
        if self._state(model) == "edited":
            raise EditError("this edit is already applied to the model")
        self._write(model, self.new)

    def revert(self, model: Model) -> None:
        """Restore the original values in ``model`` (which must carry this edit), bit-exactly, in place."""
        if self._state(model) == "base":
            raise EditError("the model does not carry this edit (its edited entries hold the original values)")
        self._write(model, self.old)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        """The JSON part of the saved result (edit.json); the tensors go to delta.safetensors."""
        return {
            "objective": self.objective, "config": self.config.to_dict(),
            "localization": self.localization.to_dict(), "base_fingerprint": self.base_fingerprint,
            "edited_fingerprint": self.edited_fingerprint, "n_params_trained": self.n_params_trained,
            "shapes": {k: list(v) for k, v in self.shapes.items()}, "log": self.log, "extra": self.extra,
        }

    def save(self, directory: str | Path) -> Path:  # type: ignore[override]  # always a directory
        """Write ``delta.safetensors`` and ``edit.json`` into ``directory`` (created if needed); returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name in self.names:
            tensors[f"old/{name}"] = self.old[name].contiguous()
            tensors[f"new/{name}"] = self.new[name].contiguous()
            if self.index[name] is not None:
                tensors[f"index/{name}"] = self.index[name].contiguous()
        save_file(tensors, str(directory / TENSORS_FILE))
        super().save(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: Model | None = None) -> EditResult:  # type: ignore[override]
        """Read a saved result; with ``model``, refuse unless the model is its base (or already carries it)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such edit directory")
        if not (directory / META_FILE).is_file() or not (directory / TENSORS_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not an edit directory (needs {META_FILE} and {TENSORS_FILE})")
        meta_path = directory / META_FILE
        meta = read_json(meta_path, "edit metadata")
        if isinstance(meta, dict):
            cls.check_version(meta, meta_path)
        require_keys(meta, ("objective", "config", "localization", "base_fingerprint", "edited_fingerprint",
                            "n_params_trained", "shapes", "log"), str(meta_path))
        try:
            tensors = load_file(str(directory / TENSORS_FILE))
        except Exception as exc:  # safetensors raises its own error type (or OSError) for a truncated file
            raise EditError(f"{directory / TENSORS_FILE}: unreadable ({' '.join(str(exc).split())})") from None
        try:
            result = cls.from_dict(meta, tensors)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise EditError(f"{meta_path}: malformed edit metadata ({exc})") from None
        shapes = result.shapes
        for n in shapes:
            idx = result.index[n]
            expect = shapes[n] if idx is None else tuple(idx.shape)
            if tuple(result.old[n].shape) != expect or tuple(result.new[n].shape) != expect:
                raise EditError(f"{directory / TENSORS_FILE}: tensor {n} does not match the shape in {META_FILE}")
        if model is not None:
            result._state(model)
        return result

    @classmethod
    def from_dict(cls, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> EditResult:
        """Inverse of ``to_dict`` given the tensors of delta.safetensors (``old/``, ``new/``, ``index/<name>``)."""
        if tensors is None:
            raise EditError("an EditResult needs its tensors (delta.safetensors) besides edit.json; use load(dir)")
        shapes = {k: tuple(int(x) for x in v) for k, v in meta["shapes"].items()}
        missing = [f"{kind}/{n}" for n in shapes for kind in ("old", "new") if f"{kind}/{n}" not in tensors]
        if missing:
            raise EditError(f"{TENSORS_FILE}: lacks tensor(s) {', '.join(missing[:3])}")
        return cls(
            objective=meta["objective"], config=EditConfig.from_dict(meta["config"]),
            localization=Localization.from_dict(meta["localization"]), base_fingerprint=meta["base_fingerprint"],
            edited_fingerprint=meta["edited_fingerprint"], n_params_trained=int(meta["n_params_trained"]),
            log=meta["log"], old={n: tensors[f"old/{n}"] for n in shapes}, new={n: tensors[f"new/{n}"] for n in shapes},
            index={n: tensors.get(f"index/{n}") for n in shapes}, shapes=shapes, extra=meta.get("extra", {}),
        )


def compose(results: Sequence[EditResult]) -> EditResult:
    """One result equal to applying ``results`` in order (each must be made on the previous one's output)."""
    if not results:
        raise EditError("compose needs at least one edit result")
    out = results[0]
    for nxt in results[1:]:
        if nxt.base_fingerprint != out.edited_fingerprint:
            raise EditError(f"cannot compose: an edit made on model {nxt.base_fingerprint} does not follow one that "
                            f"produced {out.edited_fingerprint}")
        out = _compose_two(out, nxt)
    return out


def _dense(shape, index, values, fill=None):
    """(full tensor, owned mask) from a result's layout."""
    if index is None:
        return values.clone(), torch.ones(shape, dtype=torch.bool)
    full = torch.zeros(shape, dtype=values.dtype) if fill is None else fill.clone()
    mask = torch.zeros(shape, dtype=torch.bool)
    full.view(-1)[index] = values
    mask.view(-1)[index] = True
    return full, mask


def _compose_two(a: EditResult, b: EditResult) -> EditResult:
    old, new, index, shapes = {}, {}, {}, {}
    for name in dict.fromkeys(a.names + b.names):
        shape = a.shapes.get(name) or b.shapes[name]
        shapes[name] = shape
        if name not in b.old:
            old[name], new[name], index[name] = a.old[name], a.new[name], a.index[name]
            continue
        if name not in a.old:
            old[name], new[name], index[name] = b.old[name], b.new[name], b.index[name]
            continue
        # originals: a's where a touched, else b's; results: b's where b touched, else a's
        b_old, b_mask = _dense(shape, b.index[name], b.old[name])
        a_old, a_mask = _dense(shape, a.index[name], a.old[name])
        a_new, _ = _dense(shape, a.index[name], a.new[name])
        b_new, _ = _dense(shape, b.index[name], b.new[name])
        full_old = torch.where(a_mask, a_old, b_old)
        full_new = torch.where(b_mask, b_new, a_new)
        mask = a_mask | b_mask
        if bool(mask.all()):
            old[name], new[name], index[name] = full_old, full_new, None
        else:
            idx = mask.reshape(-1).nonzero().squeeze(1)
            old[name], new[name], index[name] = full_old.reshape(-1)[idx], full_new.reshape(-1)[idx], idx
    loc = Localization(
        method=f"{a.localization.method}+{b.localization.method}",
        components=list(dict.fromkeys(a.localization.components + b.localization.components)),
        extra={"composed_of": [a.localization.to_dict(), b.localization.to_dict()]},
    )
    loc.n_params = sum(v.numel() for v in new.values())
    return EditResult(
        objective=f"{a.objective}+{b.objective}", config=b.config, localization=loc,
        base_fingerprint=a.base_fingerprint, edited_fingerprint=b.edited_fingerprint,
        n_params_trained=loc.n_params, log=a.log + b.log, old=old, new=new, index=index, shapes=shapes,
        extra={"composed": [a.extra, b.extra]},
    )
