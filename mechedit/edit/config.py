"""The fine-tuning recipe of an edit (``EditConfig``) and the errors the editor raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from mechedit.components import KVPolicy


class EditError(RuntimeError):
    """Raised when an edit cannot be trained or applied (non-finite loss, wrong model, bad input)."""


@dataclass(frozen=True)
class EditConfig:
    """How ``edit`` trains. Loss per step = ``c_f`` · forget/edit term + ``retain_weight`` · retain term
    + ``fluency_weight`` · fluency term (which terms exist depends on the objective, see ``OBJECTIVES``).

    Defaults (chosen on factworld and SmolLM2-135M, see the README): 60 AdamW steps at lr 1e-3, betas
    (0.9, 0.999), no weight decay (decay would pull every owned weight toward zero whatever the data says),
    5 warm-up steps then a cosine decay to zero, gradient-norm clipping at 1.0. Each step sees up to 32 forget
    facts, 32 maintain facts (sampled from a pool of at most 512) and 8 fluency texts, all drawn under ``seed``.

    Fluency text (``fluency_text``): ``"auto"`` uses sentences about the maintain facts for the factworld model
    (its whole world; generic English is noise to it) and the bundled ``mechedit/data/fluency.txt`` (neutral
    everyday English written for mechedit) for every other model; ``"facts"`` / ``"bundled"`` force one of the
    two; any other value is a path to a UTF-8 text file with one text per line. Texts are cut to
    ``fluency_max_tokens`` tokens. The fluency term is KL(p_original ‖ p_edited) of the next-token distribution
    at every token of the text.

    Held out (``eval_fraction``, 0.5): a seeded share of the maintain facts and of the fluency texts is never
    trained on; ``evaluate`` scores maintain accuracy and fluency KL there (``mechedit.edit.split``).
    """

    steps: int = 60
    lr: float = 1e-3
    c_f: float = 1.0  # weight of the forget/edit term
    retain_weight: float = 1.0
    fluency_weight: float = 1.0
    forget_batch: int = 32
    retain_batch: int = 32
    retain_pool: int = 512
    fluency_batch: int = 8
    fluency_text: str = "auto"
    fluency_max_tokens: int = 48
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 5
    grad_clip: float = 1.0
    seed: int = 0
    kv: KVPolicy = "group"  # grouped-query k/v rule for heads (see mechedit.components)
    npo_beta: float = 0.1
    teacher_subjects: int = 20  # causal-teacher: replacement subjects per fact
    cache_prefix: bool = True  # start training forwards at the earliest trained layer (see mechedit.edit.prefix)
    eval_fraction: float = 0.5  # share of maintain facts / fluency texts held out for evaluation (never trained on)

    def __post_init__(self):
        positive = ("steps", "lr", "forget_batch", "retain_batch", "retain_pool", "fluency_batch",
                    "fluency_max_tokens", "npo_beta", "teacher_subjects", "grad_clip")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"EditConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("c_f", "retain_weight", "fluency_weight", "weight_decay", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"EditConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"EditConfig.eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        if self.kv not in ("group", "always", "never"):
            raise ValueError(f"EditConfig.kv must be group, always or never, got {self.kv!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EditConfig:
        """Inverse of ``to_dict``; unknown keys raise a ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EditConfig field(s) {unknown}")
        return cls(**{k: (tuple(v) if k == "betas" else v) for k, v in d.items()})
