"""Facts and fact sets: loading (CSV, CounterFact JSONL, bundled sets), rendering, splitting."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mechedit.data import data_path
from mechedit.data.factworld import RELATIONS, subject_names

BUNDLED_FACTSETS = ("sports", "counterfact", "factworld")
MCQ_LETTERS = "ABCDEFGH"


class FactError(ValueError):
    """Raised for malformed facts or fact files; the message names the culprit."""


@dataclass(frozen=True)
class Fact:
    """One fact: ``prompt.format(subject=subject)`` should be completed by `` answer``."""

    subject: str
    prompt: str  # template containing "{subject}"
    answer: str
    target: str | None = None  # new answer for an edit
    forget: bool = False  # marked for unlearning
    candidates: tuple[str, ...] = ()  # forced-choice answers; filled in by FactSet
    paraphrases: tuple[str, ...] = ()  # other templates with "{subject}"
    neighborhood: tuple[str, ...] = ()  # complete prompts about other subjects, same true answer
    relation: str = ""
    question: str | None = None  # MCQ question template with "{subject}" (default: the prompt)
    suggested_target: str | None = None  # the new answer to use if this fact is picked for an edit

    def __post_init__(self):
        if "{subject}" not in self.prompt:
            raise FactError(f"prompt {self.prompt!r} for subject {self.subject!r} has no '{{subject}}'")
        for p in self.paraphrases:
            if "{subject}" not in p:
                raise FactError(f"paraphrase {p!r} for subject {self.subject!r} has no '{{subject}}'")
        if not self.subject.strip():
            raise FactError(f"empty subject in prompt {self.prompt!r}")
        if not self.answer.strip():
            raise FactError(f"empty answer for subject {self.subject!r}")

    @property
    def changes(self) -> bool:
        """True for facts to edit or unlearn (the forget set)."""
        return self.forget or self.target is not None

    def render(self, template: str | None = None) -> str:
        """The prompt (or another template) with the subject filled in."""
        return (template or self.prompt).replace("{subject}", self.subject)

    def subject_only(self) -> str:
        """The subject alone (the probe localizer's subject-only prompt variant)."""
        return self.subject

    def mcq(self, seed: int = 0, n_options: int = 4, style: str = "text") -> tuple[str, list[str], int, int | None]:
        """Render a multiple-choice question: (prompt, option texts, index of answer, index of target).

        Options are the answer, the target (if any) and other candidates, shuffled under ``seed``. With
        ``style="text"`` the options are listed and the model answers with the option text (scored like
        lm-eval-harness, robust for small models); with ``style="letter"`` options are lettered and the
        model answers `` A``/`` B``/...
        """
        rng = random.Random(f"{seed}|{self.subject}|{self.prompt}")
        others = [c for c in self.candidates if c not in (self.answer, self.target)]
        rng.shuffle(others)
        options = [self.answer] + ([self.target] if self.target else [])
        options += others[: max(0, n_options - len(options))]
        rng.shuffle(options)
        question = self.render(self.question) if self.question else self.render()
        if style == "letter":
            lines = [question] + [f"{MCQ_LETTERS[i]}. {o}" for i, o in enumerate(options)] + ["Answer:"]
        elif style == "text":
            lines = [question, "Options: " + ", ".join(options) + ".", "Answer:"]
        else:
            raise FactError(f"unknown MCQ style {style!r}; use 'text' or 'letter'")
        target_idx = options.index(self.target) if self.target else None
        return "\n".join(lines), options, options.index(self.answer), target_idx

    def to_dict(self) -> dict:
        """A JSON-serializable dict."""
        return asdict(self)


@dataclass
class FactSet(Sequence):
    """An ordered collection of facts (a ``Sequence`` of ``Fact``) with helpers for candidates, splits, rendering."""

    facts: list[Fact]
    name: str = "facts"
    notes: list[str] = field(default_factory=list)  # what loading dropped or changed, for the user

    def __post_init__(self):
        if not self.facts:
            raise FactError(f"fact set '{self.name}' is empty")

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self.facts)

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(self.facts[i])
        return self.facts[i]

    def subset(self, facts: Sequence[Fact], name: str | None = None) -> FactSet:
        """A new FactSet over ``facts`` with the same name and notes."""
        return FactSet(list(facts), name=name or self.name, notes=list(self.notes))

    @property
    def relations(self) -> list[str]:
        """Distinct relation labels in order of first appearance."""
        return list(dict.fromkeys(f.relation for f in self.facts))

    # ------------------------------------------------------------------ splits
    def forget_set(self) -> FactSet:
        """Facts marked to edit or unlearn."""
        return self.subset([f for f in self.facts if f.changes], f"{self.name}:forget")

    def maintain_set(self) -> FactSet:
        """Facts that must keep their true answer."""
        return self.subset([f for f in self.facts if not f.changes], f"{self.name}:maintain")

    def halves(self) -> tuple[FactSet, FactSet]:
        """First and second half (in order), e.g. for relearning on one half and testing on the other."""
        if len(self.facts) < 2:
            raise FactError(f"need at least 2 facts to split into halves, '{self.name}' has {len(self.facts)}")
        mid = len(self.facts) // 2
        return self.subset(self.facts[:mid]), self.subset(self.facts[mid:])

    def shuffled(self, seed: int) -> FactSet:
        """The same facts in a seeded random order."""
        facts = list(self.facts)
        random.Random(seed).shuffle(facts)
        return self.subset(facts)

    def sample(self, n: int, seed: int) -> FactSet:
        """A seeded sample of ``n`` facts (all of them if fewer)."""
        return self.subset(self.shuffled(seed).facts[:n])

    def mark_forget(self, n: int, seed: int, with_targets: bool = True) -> FactSet:
        """Mark a seeded sample of ``n`` facts to change; with_targets gives each a random other candidate."""
        if n <= 0 or n >= len(self.facts):
            raise FactError(f"cannot mark {n} of {len(self.facts)} facts: need 0 < n < {len(self.facts)}")
        rng = random.Random(seed)
        chosen = set(rng.sample(range(len(self.facts)), n))
        out = []
        for i, f in enumerate(self.facts):
            if i in chosen:
                if with_targets:
                    preset = f.target or f.suggested_target
                    options = [preset] if preset else sorted(c for c in f.candidates if c != f.answer)
                    if not options:
                        raise FactError(f"fact about {f.subject!r} has no other candidate to use as target")
                    f = replace(f, target=rng.choice(options))
                else:
                    f = replace(f, forget=True)
            else:
                f = replace(f, target=None, forget=False)
            out.append(f)
        return self.subset(out)

    def by_relation(self) -> dict[str, FactSet]:
        """One FactSet per relation label."""
        groups: dict[str, list[Fact]] = {}
        for f in self.facts:
            groups.setdefault(f.relation, []).append(f)
        return {r: self.subset(fs, f"{self.name}:{r}") for r, fs in groups.items()}

    # ------------------------------------------------------------------ I/O
    def to_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per fact."""
        with open(path, "w") as fh:
            for f in self.facts:
                fh.write(json.dumps(f.to_dict()) + "\n")

    def to_csv(self, path: str | Path) -> None:
        """Write the user CSV format (lists joined with '|')."""
        cols = ["subject", "prompt", "answer", "target", "forget", "candidates", "paraphrases", "relation"]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for f in self.facts:
                w.writerow({
                    "subject": f.subject, "prompt": f.prompt, "answer": f.answer, "target": f.target or "",
                    "forget": int(f.forget), "candidates": _join_list(f.candidates),
                    "paraphrases": _join_list(f.paraphrases), "relation": f.relation,
                })


# ---------------------------------------------------------------------- candidates


def fill_candidates(facts: list[Fact], max_candidates: int = 16) -> list[Fact]:
    """Give facts without explicit candidates the distinct answers of facts sharing their relation/prompt.

    The answer and target are always included; when a pool is larger than ``max_candidates`` the most
    frequent other answers are kept (ties broken alphabetically, so it is deterministic).
    """
    pools: dict[str, Counter] = {}
    for f in facts:
        key = f.relation or f.prompt
        pools.setdefault(key, Counter()).update([f.answer] + ([f.target] if f.target else []))
    out = []
    for f in facts:
        if f.candidates:
            cands = list(dict.fromkeys([f.answer] + ([f.target] if f.target else []) + list(f.candidates)))
        else:
            pool = pools[f.relation or f.prompt]
            ranked = sorted(pool, key=lambda a: (-pool[a], a))
            cands = list(dict.fromkeys([f.answer] + ([f.target] if f.target else []) + ranked))[:max_candidates]
        out.append(replace(f, candidates=tuple(cands)))
    return out


# ---------------------------------------------------------------------- loaders


def _split_list(value: str | None) -> tuple[str, ...]:
    """A '|'-separated cell, or a JSON list (written when an item itself contains '|')."""
    value = (value or "").strip()
    if value.startswith("["):
        return tuple(str(v) for v in json.loads(value))
    return tuple(v.strip() for v in value.split("|") if v.strip())


def _join_list(items: Sequence[str]) -> str:
    """Inverse of ``_split_list``."""
    return json.dumps(list(items)) if any("|" in i for i in items) else "|".join(items)


def load_csv(path: str | Path, name: str | None = None) -> FactSet:
    """Load the user CSV format (see README, Facts): subject, prompt, answer[, target, forget, candidates, ...]."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("subject", "prompt", "answer") if c not in header]
        if missing:
            raise FactError(f"{path}: missing required column(s) {missing}; found {header}")
        facts = []
        for lineno, row in enumerate(reader, start=2):
            try:
                facts.append(Fact(
                    subject=row["subject"].strip(), prompt=row["prompt"].strip(), answer=row["answer"].strip(),
                    target=(row.get("target") or "").strip() or None,
                    forget=(row.get("forget") or "").strip() in ("1", "true", "True", "yes"),
                    candidates=_split_list(row.get("candidates")),
                    paraphrases=_split_list(row.get("paraphrases")),
                    relation=(row.get("relation") or "").strip(),
                ))
            except FactError as exc:
                raise FactError(f"{path}:{lineno}: {exc}") from None
    if not facts:
        raise FactError(f"{path}: no facts (the file has a header but no rows)")
    return FactSet(fill_candidates(facts), name=name or path.stem)


def load_counterfact(path: str | Path, name: str | None = None, with_targets: bool = False) -> FactSet:
    """Load CounterFact JSONL; ``target_false`` becomes ``target`` only when ``with_targets`` is set."""
    path = Path(path)
    facts = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            r = json.loads(line)
            try:
                f = Fact(
                    subject=r["subject"], prompt=r["prompt"].replace("{}", "{subject}"), answer=r["target_true"],
                    paraphrases=tuple(_as_template(p, r["subject"]) for p in r.get("paraphrase_prompts", [])),
                    neighborhood=tuple(r.get("neighborhood_prompts", [])), relation=r["relation_id"],
                    suggested_target=r.get("target_false"), question=None,
                )
            except (KeyError, FactError) as exc:
                raise FactError(f"{path}:{lineno}: {exc}") from None
            facts.append(f)
    facts = fill_candidates(facts)
    # each fact's own target_false is always a candidate (it may be outside the relation's pool)
    facts = [replace(f, candidates=tuple(dict.fromkeys(f.candidates + (f.suggested_target,))))
             if f.suggested_target else f for f in facts]
    if with_targets:
        facts = [replace(f, target=f.suggested_target) for f in facts]
    return FactSet(facts, name=name or path.stem)


def _as_template(prompt: str, subject: str) -> str:
    """Turn a paraphrase with the subject written out into a template (last occurrence)."""
    i = prompt.rfind(subject)
    if i < 0:
        raise FactError(f"paraphrase {prompt!r} does not contain subject {subject!r}")
    return prompt[:i] + "{subject}" + prompt[i + len(subject):]


def load_sports(path: str | Path | None = None) -> FactSet:
    """The sports-athletes facts (Nanda et al. 2023 / Guo et al. 2024) with the paper's prompt."""
    path = Path(path) if path else data_path("sports_athletes.csv")
    facts = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            facts.append(Fact(
                subject=row["athlete"].strip(), prompt="Fact: {subject} plays the sport of",
                answer=row["sport"].strip(),
                paraphrases=("{subject} is a professional athlete who plays", "The sport that {subject} plays is"),
                relation="sport", question="Which sport does {subject} play?",
            ))
    return FactSet(fill_candidates(facts), name="sports")


def load_factworld(seed: int = 0) -> FactSet:
    """The ground truth of the factworld world as a FactSet (one fact per subject and relation)."""
    rng = random.Random(f"world-{seed}")
    facts = []
    for subject in subject_names(seed):
        for rel in RELATIONS:
            facts.append(Fact(
                subject=subject, prompt=rel.prompt, answer=rng.choice(rel.values), candidates=rel.values,
                paraphrases=rel.paraphrases, relation=rel.name, question=rel.question,
            ))
    return FactSet(facts, name="factworld")


def load_facts(spec: str | Path, seed: int = 0) -> FactSet:
    """Load a fact set by bundled name (sports, counterfact, factworld) or path (.csv / .jsonl)."""
    spec_s = str(spec)
    if spec_s == "sports":
        return load_sports()
    if spec_s == "counterfact":
        return load_counterfact(data_path("counterfact.jsonl"), name="counterfact")
    if spec_s == "factworld":
        return load_factworld(seed=seed)
    path = Path(spec_s)
    if not path.exists():
        raise FactError(f"fact set '{spec_s}' is neither a bundled set {BUNDLED_FACTSETS} nor an existing file")
    if path.suffix == ".jsonl":
        return load_counterfact(path)
    if path.suffix == ".csv":
        return load_csv(path)
    raise FactError(f"{path}: unknown fact file type '{path.suffix}' (use .csv or CounterFact .jsonl)")
