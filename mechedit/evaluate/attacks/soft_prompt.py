"""Soft-prompt attack: can trained input embeddings, with every weight frozen, make the edited model say the facts?

``tokens`` trainable embeddings, initialised from the token embeddings of a real phrase (cycled to length), are
inserted before each prompt (after the padding and the BOS token, so every row sees them right before its
text) and fed to the HF decoder through ``inputs_embeds`` — the bridge's own weights, run without its hooks
(``models.plain_hf``: the same tensors, ten times faster). Full-batch Adam maximises the true answers'
tokens (cross-entropy over the answer tokens, as in the relearning attack) on the **first** half of the forget
facts; forced-choice true-answer accuracy is read with the soft prompt on the **second**, held-out half at step
0, every ``eval_every`` steps and at the end. Weights are never trained: ``requires_grad`` is switched off
for the run (flags restored), and the models' parameters are checked bit-exact (sha256) afterwards.

Controls (``mechedit.evaluate.attacks.result``): the identical attack on the original model's never-known
twins, and on the edited model with shuffled trained answers. A soft prompt trained *per fact* can make a
model emit anything (Chen et al. 2025); a soft prompt trained on some facts that lifts *other* facts above both
controls has found a way around the edit, not made the answers up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mechedit.edit.marking import model_context
from mechedit.evaluate.answers import answer_batch
from mechedit.evaluate.attacks.controls import AttackSplit, attack_split, prior_answers
from mechedit.evaluate.attacks.result import AttackArm, AttackResult, score_arm
from mechedit.evaluate.attacks.target import Target, frozen
from mechedit.facts import FactError, FactSet
from mechedit.models import model_info, weights_digest
from mechedit.scoring import render_items
from mechedit.stats import chance_accuracy
from mechedit.tokens import PromptBatch
from patching.model import Model

NAME = "soft-prompt"
POSITIONS = ("prefix", "suffix")
INIT_PHRASE = "Answer with the true fact that you know about this person:"


@dataclass(frozen=True)
class SoftPromptConfig:
    """The soft-prompt recipe: ``tokens`` embeddings, ``steps`` full-batch Adam steps at ``lr``."""

    tokens: int = 8
    steps: int = 50
    lr: float = 0.1  # embeddings have norm ~2 (factworld); 1e-2 barely moved them in 50 steps
    eval_every: int = 10  # held-out accuracy is read at step 0, every eval_every steps, and at the end
    grad_clip: float = 1.0
    init: str = INIT_PHRASE  # the real phrase whose token embeddings start the soft prompt
    control: bool = True  # also run the prior-only control (shuffled trained answers)
    position: str = "prefix"  # "prefix": before the prompt; "suffix": between the prompt and the answer

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ValueError(f"soft-prompt position {self.position!r}: choose from {', '.join(POSITIONS)}")
        if self.tokens < 1:
            raise ValueError(f"--soft-prompt-tokens must be at least 1, got {self.tokens}")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"--soft-prompt-steps must be at least 1, got {self.steps} (eval_every "
                             f"{self.eval_every})")
        if not self.lr > 0:
            raise ValueError(f"soft-prompt lr must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        """The recipe as recorded in results."""
        return asdict(self)


def initial_prompt(target: Target, tokens: int, phrase: str = INIT_PHRASE) -> torch.Tensor:
    """[tokens, d_model] copy of the token embeddings of ``phrase``, cycled to ``tokens`` rows."""
    ids = target.model.tokenizer(phrase, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"soft-prompt init phrase {phrase!r} tokenizes to nothing")
    rows = torch.tensor([ids[i % len(ids)] for i in range(tokens)])
    return target.net.get_input_embeddings().weight[rows].detach().clone()


def check_length(model: Model, facts: FactSet, tokens: int) -> None:
    """Refuse a soft prompt that cannot fit before the longest prompt + answer in the model's context."""
    context = model_context(model)
    if context is None:
        return
    tok = model.tokenizer
    longest = max(len(tok(f"{f.render()} {f.answer}", add_special_tokens=False)["input_ids"]) for f in facts)
    longest += int(model_info(model).prepend_bos)
    if tokens + longest > context:
        raise ValueError(f"--soft-prompt-tokens {tokens}: with the longest prompt and answer ({longest} tokens) it "
                         f"exceeds the model's context of {context} positions; use at most {context - longest}")


def _insert(x: torch.Tensor, at: Sequence[int], block: torch.Tensor) -> torch.Tensor:
    """``block`` inserted in every row of ``x`` at that row's position ``at[i]`` (rows get longer by len(block))."""
    return torch.stack([torch.cat([x[i, :a], block, x[i, a:]]) for i, a in enumerate(at)])


def prefixed(target: Target, ids: torch.Tensor, mask: torch.Tensor, prompt: torch.Tensor,
             labels: torch.Tensor | None = None,
             position: str = "prefix") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(input embeddings, attention mask, labels) with ``prompt`` inserted in each left-padded row: after the
    padding and BOS token (``prefix``), or between the prompt and the answer (``suffix``)."""
    if position == "prefix":
        at = [int(r) + int(target.bos) for r in mask.argmax(1)]  # first real token of each row
    elif labels is None:
        at = [ids.shape[1]] * ids.shape[0]  # prompts only: the prediction is made at the last soft token
    else:
        at = [int((row != -100).nonzero()[0]) for row in labels]  # first answer token
    k = prompt.shape[0]
    embeds = _insert(target.net.get_input_embeddings()(ids), at, prompt)
    new_mask = _insert(mask, at, torch.ones(k, dtype=mask.dtype))
    new_labels = None if labels is None else _insert(labels, at, torch.full((k,), -100, dtype=labels.dtype))
    return embeds, new_mask, new_labels


def prompt_logits_fn(target: Target, prompt: torch.Tensor,
                     position: str = "prefix") -> Callable[[object, PromptBatch], torch.Tensor]:
    """A ``score_items`` logits function that inserts ``prompt`` (no gradient)."""

    @torch.no_grad()
    def logits(_model, batch: PromptBatch) -> torch.Tensor:
        embeds, mask, _ = prefixed(target, batch.input_ids, batch.attention_mask, prompt, position=position)
        return target.unembed(target.hidden(inputs_embeds=embeds, attention_mask=mask)[:, -1])

    return logits


def prompt_loss(target: Target, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                prompt: torch.Tensor, position: str = "prefix") -> torch.Tensor:
    """Mean cross-entropy of the answer tokens with ``prompt`` inserted (gradient flows to ``prompt`` only)."""
    embeds, m, lab = prefixed(target, ids, mask, prompt, labels, position)
    hidden = target.hidden(inputs_embeds=embeds, attention_mask=m)
    gold = lab[:, 1:]
    keep = gold != -100
    logits = target.unembed(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, gold[keep])


def _correct(target: Target, facts: FactSet, prompt: torch.Tensor, position: str) -> np.ndarray:
    """Per-fact forced-choice true-answer correctness with the soft prompt."""
    return target.correct(render_items(target.tokenizer, facts), prompt_logits_fn(target, prompt, position))


def train_prompt(target: Target, train: FactSet, answers: list[str], heldout: FactSet, cfg: SoftPromptConfig, *,
                 progress: bool = True, desc: str = NAME) -> dict:
    """Train a soft prompt on ``target`` (frozen) toward ``answers`` of ``train``; curves, final per-fact scores."""
    ids, mask, labels = answer_batch(target.model.tokenizer, [f.render() for f in train], answers, target.bos)
    prompt = initial_prompt(target, cfg.tokens, cfg.init).requires_grad_(True)
    opt = torch.optim.Adam([prompt], lr=cfg.lr)
    eval_at = sorted({0, cfg.steps, *range(cfg.eval_every, cfg.steps, cfg.eval_every)})
    out: dict = {"steps": [], "heldout": [], "trained": [], "loss": []}

    def read(step: int) -> None:
        p = prompt.detach()
        out["last"] = _correct(target, heldout, p, cfg.position)
        out["steps"].append(step)
        out["heldout"].append(float(out["last"].mean()))
        out["trained"].append(float(_correct(target, train, p, cfg.position).mean()))

    with frozen(target.model):
        read(0)
        for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, leave=False):
            with torch.enable_grad():
                loss = prompt_loss(target, ids, mask, labels, prompt, cfg.position)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([prompt], cfg.grad_clip)
            opt.step()
            out["loss"].append(float(loss.detach()))
            if step in eval_at:
                read(step)
    return out


def soft_prompt_attack(edited: Model, facts: FactSet, config: SoftPromptConfig | None = None, *,
                       original: Model | None = None, seed: int = 0, progress: bool = True) -> AttackResult:
    """Run the attack and both controls (module docstring); neither model's weights change (checked bit-exact).

    Fewer than 4 forget facts, or no original model: a result with a note and a null signal.
    """
    cfg = config or SoftPromptConfig()
    settings = {**cfg.to_dict(), "seed": seed}
    try:
        split: AttackSplit = attack_split(facts, "the soft-prompt attack", seed)
    except FactError as exc:
        return AttackResult(NAME, settings, note=str(exc))
    if original is None:
        return AttackResult(NAME, settings, n_trained=len(split.trained), n_heldout=len(split.heldout),
                            note="the soft-prompt attack needs the original model (never-known control and scale)")
    check_length(edited, facts.forget_set(), cfg.tokens)
    digests = {id(m): weights_digest(m) for m in (edited, original)}
    on_edited, on_original = Target.of(edited), Target.of(original)
    seconds = {}
    t0 = time.perf_counter()
    att = train_prompt(on_edited, split.trained, [f.answer for f in split.trained], split.heldout, cfg,
                       progress=progress, desc="soft prompt")
    seconds["attack"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    never = train_prompt(on_original, split.twins_trained, [f.answer for f in split.twins_trained],
                         split.twins_heldout, cfg, progress=progress, desc="soft prompt, never-known control")
    seconds["never_known"] = time.perf_counter() - t0
    prior = None
    if cfg.control:
        t0 = time.perf_counter()
        prior = train_prompt(on_edited, split.trained, prior_answers(split.trained, seed), split.heldout, cfg,
                             progress=progress, desc="soft prompt, prior-only control")
        seconds["prior_only"] = time.perf_counter() - t0
    for m in (edited, original):
        if weights_digest(m) != digests[id(m)]:
            raise RuntimeError("the soft-prompt attack changed a model's weights; it must only train its prompt")
    arm = AttackArm(
        name="soft prompt", steps=att["steps"], heldout_accuracy=att["heldout"], never_known_accuracy=never["heldout"],
        prior_accuracy=None if prior is None else prior["heldout"],
        original_accuracy=on_original.accuracy(split.heldout),
        trained_accuracy=att["trained"], loss=att["loss"])
    score_arm(arm, att["last"], never["last"], None if prior is None else prior["last"], seed=seed)
    return AttackResult(
        NAME, settings, [arm], chance=chance_accuracy([len(f.candidates) for f in split.heldout]),
        never_known_original=on_original.accuracy(split.twins_heldout),
        n_trained=len(split.trained), n_heldout=len(split.heldout), seconds=seconds)
