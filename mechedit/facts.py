"""Facts and fact sets: loading (CSV, CounterFact JSONL, bundled sets), rendering, splitting."""

from __future__ import annotations

import csv
import io
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
    origin: str = field(default="", compare=False, repr=False)  # "file:line" it was read from, for messages
    explicit_candidates: bool = field(default=False, compare=False, repr=False)  # candidates given by the user

    def __post_init__(self):
        for name in ("subject", "prompt", "answer"):
            if not isinstance(getattr(self, name), str):
                raise FactError(f"field '{name}' must be text, got {type(getattr(self, name)).__name__}")
        for name in ("target", "question", "suggested_target"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise FactError(f"field '{name}' must be text or empty, got {type(getattr(self, name)).__name__}")
        for name in ("candidates", "paraphrases", "neighborhood"):
            bad = [v for v in getattr(self, name) if not isinstance(v, str)]
            if bad:
                raise FactError(f"field '{name}' must hold text only, got {type(bad[0]).__name__} {bad[0]!r}")
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
        if n < 1:
            raise FactError(f"cannot sample {n} facts; need at least 1")
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

CSV_COLUMNS = ("subject", "prompt", "answer", "target", "forget", "candidates", "paraphrases", "relation")
TRUE_WORDS = ("1", "1.0", "true", "yes", "y", "t")
FALSE_WORDS = ("", "0", "0.0", "false", "no", "n", "f")


def parse_flag(value: str | None, where: str) -> bool:
    """A forget cell: 1/0, true/false, yes/no, y/n, t/f, 1.0/0.0 (any case) or empty; anything else is an error."""
    v = (value or "").strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise FactError(f"{where}: forget value {value!r} is not one of 1/0, true/false, yes/no, y/n")


def _split_list(value: str | None, where: str = "", column: str = "list") -> tuple[str, ...]:
    """A '|'-separated cell, or a JSON list (written when an item itself contains '|')."""
    value = (value or "").strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FactError(f"{where}: {column} cell starts with '[' but is not a JSON list ({exc.msg})") from None
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise FactError(f"{where}: {column} cell must be a JSON list of strings")
        return tuple(items)
    return tuple(v.strip() for v in value.split("|") if v.strip())


def _join_list(items: Sequence[str]) -> str:
    """Inverse of ``_split_list``."""
    return json.dumps(list(items)) if any("|" in i for i in items) else "|".join(items)


def _read_text(path: Path) -> str:
    """A user file as text (UTF-8, optional BOM); a non-UTF-8 byte is an error naming file and line."""
    if path.is_dir():
        raise FactError(f"{path}: is a directory, expected a fact file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FactError(f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8") from None


def _check_duplicates(facts: list[Fact], path: Path) -> tuple[list[Fact], list[str]]:
    """Drop exact repeats (noted); refuse the same subject and prompt with different answers or marks."""
    seen: dict[tuple[str, str], Fact] = {}
    kept, notes = [], []
    for f in facts:
        key = (f.subject, f.prompt)
        if key in seen:
            first = seen[key]
            if (first.answer, first.target, first.forget) != (f.answer, f.target, f.forget):
                raise FactError(f"{f.origin}: subject {f.subject!r} with this prompt is already at {first.origin} "
                                f"with answer {first.answer!r} (here {f.answer!r}"
                                f"{', other marks' if first.answer == f.answer else ''}); keep one row")
            notes.append(f"{f.origin}: repeats {first.origin}; kept once")
            continue
        seen[key] = f
        kept.append(f)
    return kept, notes


def load_csv(path: str | Path, name: str | None = None) -> FactSet:
    """Load the user CSV format: subject, prompt, answer[, target, forget, candidates, paraphrases, relation].

    Header names are case-insensitive; a UTF-8 BOM is accepted; every problem is an error naming file:line.
    """
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise FactError(f"{path}: empty file (expected a header with {', '.join(CSV_COLUMNS[:3])})")
        cols = [h.strip().lower() for h in header]
        unknown = [h for h, c in zip(header, cols, strict=True) if c not in CSV_COLUMNS]
        if unknown:
            raise FactError(f"{path}:1: unknown column(s) {', '.join(repr(u) for u in unknown)}; expected "
                            f"{', '.join(CSV_COLUMNS)} (subject, prompt, answer required)")
        doubled = sorted({c for c in cols if cols.count(c) > 1})
        if doubled:
            raise FactError(f"{path}:1: column(s) {', '.join(doubled)} appear more than once")
        missing = [c for c in CSV_COLUMNS[:3] if c not in cols]
        if missing:
            raise FactError(f"{path}:1: missing required column(s) {', '.join(missing)}; found {header}")
        facts = []
        for cells in reader:
            lineno = reader.line_num
            where = f"{path}:{lineno}"
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(cols):
                raise FactError(f"{where}: {len(cells)} fields, but the header has {len(cols)} "
                                f"(an unquoted comma, or a missing one?)")
            row = dict(zip(cols, cells, strict=True))
            try:
                target = row.get("target", "").strip() or None
                answer = row["answer"].strip()
                if target is not None and target.lower() == answer.lower():
                    raise FactError(f"target {target!r} is the answer itself; give a different target or none")
                candidates = _split_list(row.get("candidates"), where, "candidates")
                if candidates and len({answer, target, *candidates} - {None}) < 2:
                    raise FactError(f"candidates cell {row['candidates'].strip()!r} gives only one distinct answer "
                                    f"({answer!r}); list at least two, separated by '|'")
                facts.append(Fact(
                    subject=row["subject"].strip(), prompt=row["prompt"].strip(), answer=answer, target=target,
                    forget=parse_flag(row.get("forget"), where), candidates=candidates,
                    paraphrases=_split_list(row.get("paraphrases"), where, "paraphrases"),
                    relation=row.get("relation", "").strip(), origin=where, explicit_candidates=bool(candidates),
                ))
            except FactError as exc:
                msg = str(exc)
                raise FactError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except csv.Error as exc:
        raise FactError(f"{path}:{reader.line_num}: malformed CSV ({exc}; an unbalanced quote?)") from None
    if not facts:
        raise FactError(f"{path}: no facts (the file has a header but no rows)")
    facts, notes = _check_duplicates(facts, path)
    return FactSet(fill_candidates(facts), name=name or path.stem, notes=notes)


def load_counterfact(path: str | Path, name: str | None = None, with_targets: bool = False) -> FactSet:
    """Load CounterFact JSONL; ``target_false`` becomes ``target`` only when ``with_targets`` is set.

    Every problem (invalid JSON, a line that is not an object, a missing or mistyped field) names file:line.
    """
    path = Path(path)
    facts = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FactError(f"{where}: invalid JSON (column {exc.colno}: {exc.msg})") from None
        if not isinstance(r, dict):
            raise FactError(f"{where}: expected a JSON object, got a {type(r).__name__}")
        missing = [k for k in ("subject", "prompt", "target_true", "relation_id") if k not in r]
        if missing:
            raise FactError(f"{where}: missing field(s) {', '.join(missing)}")
        for key in ("paraphrase_prompts", "neighborhood_prompts"):
            if not isinstance(r.get(key, []), list):
                raise FactError(f"{where}: field '{key}' must be a list of strings, got {type(r[key]).__name__}")
        try:
            for key in ("subject", "prompt", "target_true", "target_false"):
                if key in r and not isinstance(r[key], str):
                    raise FactError(f"field '{key}' must be text, got {type(r[key]).__name__} {r[key]!r}")
            if not isinstance(r["relation_id"], str | int):
                raise FactError(f"field 'relation_id' must be text, got {type(r['relation_id']).__name__}")
            f = Fact(
                subject=r["subject"], prompt=r["prompt"].replace("{}", "{subject}"), answer=r["target_true"],
                paraphrases=tuple(_as_template(p, r["subject"]) for p in r.get("paraphrase_prompts", [])),
                neighborhood=tuple(r.get("neighborhood_prompts", [])), relation=str(r["relation_id"]),
                suggested_target=r.get("target_false") or None, question=None, origin=where,
            )
        except (FactError, TypeError) as exc:
            raise FactError(f"{where}: {exc}") from None
        facts.append(f)
    if not facts:
        raise FactError(f"{path}: no facts (the file is empty)")
    facts, notes = _check_duplicates(facts, path)
    facts = fill_candidates(facts)
    # each fact's own target_false is always a candidate (it may be outside the relation's pool)
    facts = [replace(f, candidates=tuple(dict.fromkeys(f.candidates + (f.suggested_target,))))
             if f.suggested_target else f for f in facts]
    if with_targets:
        facts = [replace(f, target=f.suggested_target) for f in facts]
    return FactSet(facts, name=name or path.stem, notes=notes)


def _as_template(prompt: str, subject: str) -> str:
    """Turn a paraphrase with the subject written out into a template (last occurrence)."""
    if not isinstance(prompt, str):
        raise FactError(f"paraphrase {prompt!r} must be text")
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
    if path.is_dir():
        raise FactError(f"{path}: is a directory, expected a .csv or .jsonl fact file")
    if path.suffix.lower() == ".jsonl":
        return load_counterfact(path)
    if path.suffix.lower() == ".csv":
        return load_csv(path)
    raise FactError(f"{path}: unknown fact file type '{path.suffix}' (use .csv or CounterFact .jsonl)")
