"""Bad input never changes what is edited or measured: a battery of hostile inputs through the CLI and the API.

Each ``CASES`` entry builds its inputs in a fresh directory, runs one command in-process (typer's CliRunner) and
asserts: exit status 2, exactly one error line naming the culprit (file:line, option or path), no traceback, no
file created or changed in the directory, and the factworld weights in the model cache bit-identical. Every case
is wrong by construction (planted: a file, an option, a directory known to be bad) and the expected culprit is
written down from the construction, never tuned until it passes. Most cases are refused before any model is
loaded; those that need the tokenizer load the cached factworld (well under a second).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mechedit.cli import app
from mechedit.components import MLP
from mechedit.facts import FactSet, load_csv, load_facts
from mechedit.localize.localization import make_localization
from mechedit.models import hf_parameters, load_model, model_info, save_hf

N_BASE = 24  # factworld sport facts in base.csv (header is line 1, facts are lines 2..25)
N_MARKED = 4


def _base_facts() -> FactSet:
    fs = load_facts("factworld").by_relation()["sport"]
    return fs.subset(fs.facts[:N_BASE]).mark_forget(N_MARKED, seed=0)


def _csv_text(fs: FactSet, path: Path) -> str:
    fs.to_csv(path)
    return path.read_text()


def _csv(*rows: str, header: str = "subject,prompt,answer,target,forget") -> str:
    return "\n".join([header, *rows]) + "\n"


ROW = "Kalo Mirat,{subject} plays the sport of,golf"  # a well-formed row (3 columns)


# ---------------------------------------------------------------------- shared inputs (built once)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, factworld):
    """base.csv, other.csv (same facts, other marks), loc.json on factworld, an edit directory made by the CLI."""
    root = tmp_path_factory.mktemp("shared")
    base = _base_facts()
    _csv_text(base, root / "base.csv")
    _csv_text(load_facts(root / "base.csv").mark_forget(N_MARKED, seed=1), root / "other.csv")
    make_localization(factworld, "manual", [MLP(1)]).save(root / "loc.json")
    res = CliRunner().invoke(app, ["edit", "factworld", str(root / "base.csv"), "--localization",
                                   str(root / "loc.json"), "--out", str(root / "ed"), "--steps", "2"])
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def cache_weights():
    """sha256 of factworld's cached weight files (a command must never change them)."""
    from mechedit.cache import cache_dir

    root = cache_dir() / "factworld"

    def digest() -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.safetensors"))}

    return digest


def snapshot(d: Path) -> dict[str, str]:
    """Every file and directory under ``d`` with a hash of its bytes."""
    out = {}
    for p in sorted(d.rglob("*")):
        out[str(p.relative_to(d))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------- case builders


def put(name: str, text: str | bytes):
    """Setup step: write ``text`` to ``d/name``."""
    def setup(d: Path) -> None:
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def copy(name: str, dest: str | None = None):
    """Setup step: copy a shared input into the case directory."""
    def setup(d: Path, shared: Path) -> None:
        src = shared / name
        if src.is_dir():
            shutil.copytree(src, d / (dest or name))
        else:
            shutil.copy(src, d / (dest or name))
    setup.needs_shared = True
    return setup


def edit_json(change):
    """Setup step: copy the shared edit directory and rewrite its edit.json with ``change(meta)``."""
    def setup(d: Path, shared: Path) -> None:
        shutil.copytree(shared / "ed", d / "ed")
        meta = json.loads((d / "ed" / "edit.json").read_text())
        (d / "ed" / "edit.json").write_text(change(meta))
    setup.needs_shared = True
    return setup


def _drop_keys(*keys):
    def change(meta):
        for k in keys:
            meta.pop(k)
        return json.dumps(meta)
    return change


def truncate(name: str, keep: int):
    """Setup step: keep only the first ``keep`` bytes of a file in the case directory."""
    def setup(d: Path) -> None:
        p = d / name
        p.write_bytes(p.read_bytes()[:keep])
    return setup


def other_model_loc(d: Path, shared: Path) -> None:
    """A loc.json recorded on another model (its fingerprint differs from factworld's)."""
    loc = json.loads((shared / "loc.json").read_text())
    loc["extra"]["model_fingerprint"] = "0123456789abcdef"
    (d / "loc.json").write_text(json.dumps(loc))


other_model_loc.needs_shared = True


def other_shape_loc(d: Path) -> None:
    """A loc.json without a fingerprint whose parameter count belongs to a larger model."""
    (d / "loc.json").write_text(json.dumps({"method": "probe", "components": ["mlp.1"], "n_params": 1769472}))


def tamper_facts_csv(d: Path, shared: Path) -> None:
    """The edit directory's facts.csv replaced by other marks than edit.json records."""
    shutil.copytree(shared / "ed", d / "ed")
    shutil.copy(shared / "other.csv", d / "ed" / "facts.csv")


tamper_facts_csv.needs_shared = True


def base_plus(*rows: str):
    """Setup step: base.csv with extra rows appended (first one at line N_BASE + 2)."""
    def setup(d: Path, shared: Path) -> None:
        text = (shared / "base.csv").read_text()
        (d / "base.csv").write_text(text + "".join(r + "\n" for r in rows))
    setup.needs_shared = True
    return setup


L = N_BASE + 2  # line of the first appended row
FW = "factworld"
PROMPT = "{subject} plays the sport of"
CANDS = "tennis|golf|chess|rugby"
BASE_HDR = "subject,prompt,answer,target,forget,candidates,paraphrases,relation"


def row(subject="Zzkalo Vexnop", answer="golf", target="", forget="0", cands=CANDS, prompt=PROMPT):
    """A base.csv-style row (8 columns)."""
    return f"{subject},{prompt},{answer},{target},{forget},{cands},,sport"


# (id, setup steps, argv with {d} for the case directory, regex the error line must match)
CASES = [
    # --- fact files: structure and encoding (no model loaded)
    ("csv-unknown-column", [put("f.csv", _csv(ROW + ",x,0", header="subject,prompt,answer,tagret,forget"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:1: unknown column.*'tagret'.*expected subject, prompt, answer, target"),
    ("csv-missing-answer", [put("f.csv", "subject,prompt\nKalo Mirat,{subject} plays\n")],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:1: missing required column\(s\) answer"),
    ("csv-duplicate-column", [put("f.csv", _csv(ROW + ",golf", header="subject,prompt,answer,Answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:1: column\(s\) answer appear more than once"),
    ("csv-forget-maybe", [put("f.csv", _csv(ROW + ",,maybe"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: forget value 'maybe'"),
    ("csv-forget-2", [put("f.csv", _csv(ROW + ",,0", ROW.replace("Kalo", "Vex") + ",,2"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:3: forget value '2'"),
    ("csv-target-is-answer", [put("f.csv", _csv(ROW + ",golf,0")), copy("loc.json")],
     ["edit", FW, "{d}/f.csv", "--localization", "{d}/loc.json", "--out", "{d}/ed"],
     r"f\.csv:2: target 'golf' is the answer itself"),
    ("csv-target-is-answer-case", [put("f.csv", _csv(ROW + ",Golf,0"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: target 'Golf' is the answer itself"),
    ("csv-one-candidate", [put("f.csv", _csv(ROW + ",golf", header="subject,prompt,answer,candidates"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: candidates cell 'golf' gives only one distinct answer"),
    ("csv-conflicting-duplicate", [put("f.csv", _csv(ROW + ",,0", ROW.replace("golf", "chess") + ",,0"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:3: subject 'Kalo Mirat' .* already at .*f\.csv:2 with answer 'golf'"),
    ("csv-duplicate-other-marks", [put("f.csv", _csv(ROW + ",chess,0", ROW + ",tennis,0"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:3: .*already at .*f\.csv:2.*other marks"),
    ("csv-unbalanced-quote", [put("f.csv", _csv(ROW, '"Vex Nop,{subject} plays the sport of,chess', ROW,
                                                header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:\d+: malformed CSV"),
    ("csv-too-many-fields", [put("f.csv", _csv(ROW, ROW + ",extra,1,2", header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:3: 6 fields, but the header has 3"),
    ("csv-too-few-fields", [put("f.csv", _csv("Kalo Mirat,{subject} plays", header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: 2 fields, but the header has 3"),
    ("csv-latin1", [put("f.csv", _csv(ROW, "Jos\xe9 Mirat,{subject} plays,golf", header="subject,prompt,answer")
                        .encode("latin-1"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:3: byte 0xe9 is not UTF-8"),
    ("csv-no-subject-placeholder", [put("f.csv", _csv("Kalo Mirat,plays the sport of,golf",
                                                      header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: prompt 'plays the sport of'.*has no '\{subject\}'"),
    ("csv-empty-subject", [put("f.csv", _csv(" ,{subject} plays,golf", header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: empty subject"),
    ("csv-empty-answer", [put("f.csv", _csv("Kalo Mirat,{subject} plays, ", header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: empty answer"),
    ("csv-header-only", [put("f.csv", "subject,prompt,answer\n")],
     ["facts", FW, "{d}/f.csv"], r"f\.csv: no facts"),
    ("csv-empty-file", [put("f.csv", "")], ["facts", FW, "{d}/f.csv"], r"f\.csv: empty file"),
    ("csv-bad-json-list", [put("f.csv", _csv(ROW + ",[golf", header="subject,prompt,answer,candidates"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: candidates cell starts with '\[' but is not a JSON list"),
    ("facts-is-directory", [put("dir.csv/x", "")], ["facts", FW, "{d}/dir.csv"], r"dir\.csv: is a directory"),
    ("facts-missing", [], ["facts", FW, "{d}/nope.csv"], r"'.*nope\.csv' is neither a bundled set"),
    ("facts-unknown-suffix", [put("f.txt", "x")], ["facts", FW, "{d}/f.txt"], r"f\.txt: unknown fact file type"),
    # --- CounterFact JSONL
    ("jsonl-bad-json-line-5", [put("f.jsonl", "\n".join(['{"subject": "A", "prompt": "{} is", "target_true": "x",'
                                                        ' "relation_id": "P1"}'] * 4 + ['{"subject": "B",']) + "\n")],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:5: invalid JSON"),
    ("jsonl-line-is-list", [put("f.jsonl", '["subject", "prompt"]\n')],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:1: expected a JSON object, got a list"),
    ("jsonl-int-subject", [put("f.jsonl", '{"subject": 7, "prompt": "{} is", "target_true": "x", '
                                          '"relation_id": "P1"}\n')],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:1: field 'subject' must be text, got int"),
    ("jsonl-null-answer", [put("f.jsonl", '{"subject": "A", "prompt": "{} is", "target_true": null, '
                                          '"relation_id": "P1"}\n')],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:1: field 'target_true' must be text, got NoneType"),
    ("jsonl-missing-field", [put("f.jsonl", '{"subject": "A", "prompt": "{} is", "target_true": "x"}\n')],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:1: missing field\(s\) relation_id"),
    ("jsonl-paraphrases-not-list", [put("f.jsonl", '{"subject": "A", "prompt": "{} is", "target_true": "x", '
                                                   '"relation_id": "P1", "paraphrase_prompts": "A is"}\n')],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:1: field 'paraphrase_prompts' must be a list"),
    ("jsonl-paraphrase-without-subject", [put("f.jsonl", '{"subject": "A", "prompt": "{} is", "target_true": "x", '
                                                         '"relation_id": "P1", "paraphrase_prompts": ["B is"]}\n')],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:1: paraphrase 'B is' does not contain subject 'A'"),
    ("jsonl-relation-is-list", [put("f.jsonl", '{"subject": "A", "prompt": "{} is", "target_true": "x", '
                                               '"relation_id": ["P1"]}\n')],
     ["facts", FW, "{d}/f.jsonl"], r"f\.jsonl:1: field 'relation_id' must be text, got list"),
    # --- size limits
    ("size-100k-char-subject", [put("f.csv", _csv("X" * 100_000 + ",{subject} plays,golf",
                                                  header="subject,prompt,answer")), copy("loc.json")],
     ["edit", FW, "{d}/f.csv", "--localization", "{d}/loc.json", "--out", "{d}/ed"],
     r"f\.csv:2: subject is 100,000 characters long; the limit is 4,096"),
    ("size-long-prompt", [put("f.csv", _csv("Kalo Mirat,{subject} " + "and so on " * 500 + ",golf",
                                            header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: prompt is 5,\d{3} characters long; the limit is 4,096"),
    ("size-long-answer", [put("f.csv", _csv("Kalo Mirat,{subject} plays," + "g" * 600,
                                            header="subject,prompt,answer"))],
     ["facts", FW, "{d}/f.csv"], r"f\.csv:2: answer is 600 characters long; the limit is 512"),
    ("size-tokens-over-context", [base_plus(row(subject="abcdefghij" * 100))],
     ["facts", FW, "{d}/base.csv"], rf"base\.csv:{L}: subject is \d[\d,]* tokens long; the limit is 128 "
                                    r"\(the model's context\)"),
    # --- marks that cannot be edited (need the tokenizer)
    ("mark-target-shares-first-token", [base_plus(row(target="golfer")), copy("loc.json")],
     ["edit", FW, "{d}/base.csv", "--localization", "{d}/loc.json", "--out", "{d}/ed"],
     rf"base\.csv:{L}: 'golf' and 'golfer' share the first token"),
    ("explicit-candidates-collide", [base_plus(row(cands="golf|golfer|chess"))],
     ["facts", FW, "{d}/base.csv"], rf"base\.csv:{L}: 'golf' and 'golfer' share the first token"),
    # --- numeric options
    ("localize-n-facts-negative", [], ["localize", FW, FW, "--n-facts", "-3", "--out", "{d}/l.json"],
     r"--n-facts must be at least 1, got -3"),
    ("localize-n-facts-zero", [], ["localize", FW, FW, "--n-facts", "0", "--out", "{d}/l.json"],
     r"--n-facts must be at least 1, got 0"),
    ("localize-unknown-method", [], ["localize", FW, FW, "--method", "magic", "--out", "{d}/l.json"],
     r"unknown method 'magic'"),
    ("compare-seeds-zero", [], ["compare", FW, FW, "--seeds", "0", "--out", "{d}/run"], r"--seeds must be at least 1"),
    ("compare-n-facts-negative", [], ["compare", FW, FW, "--n-facts", "-3", "--out", "{d}/run"],
     r"--n-facts must be at least 1, got -3"),
    ("compare-unknown-method", [], ["compare", FW, FW, "--methods", "probe,magic", "--out", "{d}/run"],
     r"--methods: unknown method\(s\) magic"),
    ("compare-no-method", [], ["compare", FW, FW, "--methods", " , ", "--out", "{d}/run"], r"--methods is empty"),
    ("compare-unknown-objective", [], ["compare", FW, FW, "--objective", "erase", "--out", "{d}/run"],
     r"--objective: unknown objective 'erase'"),
    ("compare-steps-zero", [], ["compare", FW, FW, "--steps", "0", "--out", "{d}/run"], r"--steps must be at least 1"),
    ("edit-steps-zero", [copy("loc.json")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed", "--steps", "0"], r"--steps must be"),
    ("edit-lr-negative", [copy("loc.json")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed", "--lr", "-1e-3"], r"--lr must be a finite"),
    ("edit-lr-nan", [copy("loc.json")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed", "--lr", "nan"], r"--lr must be a finite"),
    ("edit-n-forget-zero", [copy("loc.json")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed", "--n-forget", "0"], r"--n-forget must be"),
    ("edit-unknown-objective", [copy("loc.json")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed", "--objective", "forget-all"],
     r"unknown objective 'forget-all'"),
    ("edit-missing-fluency-text", [copy("loc.json")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed", "--fluency-text", "{d}/no.txt"],
     r"--fluency-text .*no\.txt: no such file"),
    ("evaluate-relearn-steps-zero", [], ["evaluate", FW, FW, "--out", "{d}/m.json", "--relearn-steps", "0"],
     r"--relearn-steps must be at least 1"),
    ("evaluate-relearn-lr-zero", [], ["evaluate", FW, FW, "--out", "{d}/m.json", "--relearn-lr", "0"],
     r"--relearn-lr must be a finite number > 0"),
    ("evaluate-max-maintain-zero", [], ["evaluate", FW, FW, "--out", "{d}/m.json", "--max-maintain", "0"],
     r"--max-maintain must be at least 1"),
    ("facts-limit-zero", [], ["facts", FW, FW, "--limit", "0"], r"--limit must be at least 1"),
    ("facts-unknown-format", [], ["facts", FW, FW, "--format", "essay"], r"--format: unknown format 'essay'"),
    ("demo-unknown-model", [], ["demo", "--model", "gpt-9", "--out", "{d}/demo"], r"demo runs on"),
    ("env-max-tokens-not-int", [copy("base.csv")], ["facts", FW, "{d}/base.csv"],
     r"MECHEDIT_MAX_PROMPT_TOKENS='lots' is not an integer", {"MECHEDIT_MAX_PROMPT_TOKENS": "lots"}),
    ("env-max-tokens-small", [copy("base.csv")], ["facts", FW, "{d}/base.csv"],
     r"base\.csv:2: (subject|prompt) is \d+ tokens long; the limit is 4 \(MECHEDIT_MAX_PROMPT_TOKENS\)",
     {"MECHEDIT_MAX_PROMPT_TOKENS": "4"}),
    ("usage-n-facts-not-int", [], ["localize", FW, FW, "--n-facts", "abc", "--out", "{d}/l.json"],
     r"^Error: Invalid value for '--n-facts'"),
    ("usage-missing-localization", [], ["edit", FW, FW, "--out", "{d}/ed"], r"^Error: Missing option '--localization'"),
    # --- outputs: existing, wrong kind, unwritable
    ("localize-out-exists", [put("loc.json", "{}")], ["localize", FW, FW, "--out", "{d}/loc.json"],
     r"--out .*loc\.json already exists; pass --force"),
    ("localize-plot-txt", [], ["localize", FW, FW, "--out", "{d}/l.json", "--plot", "{d}/x.txt"],
     r"--plot .*x\.txt: unknown figure type '\.txt'"),
    ("localize-plot-exists", [put("p.html", "old")], ["localize", FW, FW, "--out", "{d}/l.json", "--plot",
                                                     "{d}/p.html"], r"--plot .*p\.html already exists"),
    ("localize-out-under-file", [put("afile", "x")], ["localize", FW, FW, "--out", "{d}/afile/loc.json"],
     r"--out .*afile/loc\.json: .*afile is a file, not a directory"),
    ("localize-out-is-dir", [put("sub/x", "")], ["localize", FW, FW, "--out", "{d}/sub"], r"--out .*sub: is a "
                                                                                          r"directory"),
    ("localize-out-is-budget", [copy("loc.json")],
     ["localize", FW, FW, "--out", "{d}/loc.json", "--budget-from", "{d}/loc.json", "--force"],
     r"--budget-from and --out are the same path"),
    ("localize-out-is-facts", [copy("base.csv")], ["localize", FW, "{d}/base.csv", "--out", "{d}/base.csv",
                                                   "--force"], r"--out and FACTS are the same path"),
    ("evaluate-out-is-facts", [copy("base.csv")], ["evaluate", FW, "{d}/base.csv", "--out", "{d}/base.csv",
                                                   "--force"], r"--out and FACTS are the same path"),
    ("edit-out-exists", [copy("loc.json"), copy("ed")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"], r"--out .*ed already exists; pass"),
    ("edit-out-is-file", [copy("loc.json"), put("ed", "x")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"], r"--out .*ed: is a file"),
    ("evaluate-out-exists", [put("m.json", "{}")], ["evaluate", FW, FW, "--out", "{d}/m.json"],
     r"--out .*m\.json already exists"),
    ("evaluate-plots-exist", [put("m_latent.html", "old")], ["evaluate", FW, FW, "--out", "{d}/m.json", "--plots"],
     r"--plots .*m_latent\.html already exists"),
    ("compare-out-exists", [put("run/summary.json", "{}")], ["compare", FW, FW, "--out", "{d}/run"],
     r"--out .*run already exists"),
    ("demo-out-exists", [put("demo/x", "")], ["demo", "--model", FW, "--out", "{d}/demo"],
     r"--out .*demo already exists"),
    ("facts-out-exists", [put("k.csv", "x")], ["facts", FW, FW, "--out", "{d}/k.csv"], r"--out .*k\.csv already"),
    ("report-exists", [put("run/summary.json", "{}"), put("run/report.html", "old")], ["report", "{d}/run"],
     r"report .*report\.html already exists; pass --force"),
    ("report-no-summary", [put("run/x", "")], ["report", "{d}/run"], r"run/summary\.json not found"),
    ("report-bad-summary", [put("run/summary.json", '{"settings": {}\n "methods": 1}')], ["report", "{d}/run"],
     r"run/summary\.json:2: invalid comparison summary"),
    ("report-summary-missing-keys", [put("run/summary.json", '{"settings": {}}')], ["report", "{d}/run"],
     r"run/summary\.json: missing key\(s\) 'methods'"),
    ("report-not-a-dir", [], ["report", "{d}/nothing"], r"nothing: not a directory written by"),
    # --- localizations and budgets
    ("loc-missing", [], ["edit", FW, FW, "--localization", "{d}/none.json", "--out", "{d}/ed"],
     r"--localization .*none\.json: no such file"),
    ("loc-is-directory", [put("loc/x", "")], ["edit", FW, FW, "--localization", "{d}/loc", "--out", "{d}/ed"],
     r"--localization .*loc: is a directory"),
    ("loc-bad-json", [put("loc.json", '{\n "method": "probe",\n "components": [mlp.1]\n}')],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"], r"loc\.json:3: invalid localization JSON"),
    ("loc-is-list", [put("loc.json", "[1, 2]")],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"], r"loc\.json: expected a localization"),
    ("loc-missing-components", [put("loc.json", '{"method": "probe"}')],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"], r"loc\.json: .*lacks 'components'"),
    ("loc-bad-component", [put("loc.json", '{"method": "probe", "components": ["mlp.x"]}')],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"], r"loc\.json: .*cannot parse component"),
    ("loc-layer-out-of-range", [put("loc.json", '{"method": "probe", "components": ["mlp.99"]}')],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"],
     r"--localization .*loc\.json does not fit this model \(mlp\.99: layer 99 out of range"),
    ("loc-other-fingerprint", [other_model_loc],
     ["edit", FW, FW, "--localization", "{d}/loc.json", "--out", "{d}/ed"],
     r"--localization .*loc\.json was made on another model \(fingerprint 0123456789abcdef"),
    ("budget-bad-json", [put("b.json", '{"method": "probe",\n')],
     ["localize", FW, FW, "--method", "random", "--out", "{d}/l.json", "--budget-from", "{d}/b.json"],
     r"b\.json:2: invalid localization JSON"),
    ("budget-other-shape", [other_shape_loc],
     ["localize", FW, FW, "--method", "random", "--out", "{d}/l.json", "--budget-from", "{d}/loc.json"],
     r"--budget-from .*loc\.json was made on another model: its components own 1,769,472 parameters there"),
    # --- edit directories (evaluate --edit)
    ("edit-dir-missing", [], ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json"],
     r"ed: no such edit directory"),
    ("edit-dir-empty", [put("ed/x", "")], ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json"],
     r"ed is not an edit directory \(needs edit\.json and delta\.safetensors\)"),
    ("edit-json-missing-keys", [edit_json(_drop_keys("shapes", "log"))],
     ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json"], r"ed/edit\.json: missing key\(s\) 'shapes', "
                                                                      r"'log'"),
    ("edit-json-invalid", [edit_json(lambda meta: json.dumps(meta, indent=1)[:200])],
     ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json"], r"ed/edit\.json:\d+: invalid edit metadata"),
    ("edit-json-version", [edit_json(lambda meta: json.dumps({**meta, "format_version": 99}))],
     ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json"], r"edit\.json: EditResult format version 99"),
    ("edit-json-bad-changed-facts", [edit_json(lambda meta: json.dumps({**meta, "extra": {"changed_facts": [1]}}))],
     ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json"], r"ed/edit\.json: malformed changed_facts"),
    ("delta-truncated", [copy("ed"), truncate("ed/delta.safetensors", 100)],
     ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json"], r"ed/delta\.safetensors: unreadable"),
    ("evaluate-marks-differ-from-edit", [copy("ed"), copy("other.csv")],
     ["evaluate", FW, "{d}/other.csv", "--edit", "{d}/ed", "--out", "{d}/m.json", "--no-latent"],
     r"other\.csv: its marks differ from the facts the edit changed .*--facts-override"),
    ("edit-facts-csv-tampered", [tamper_facts_csv],
     ["evaluate", FW, FW, "--edit", "{d}/ed", "--out", "{d}/m.json", "--no-latent"],
     r"ed/facts\.csv: its marks differ from the changed_facts recorded in .*edit\.json"),
    # --- models and environment
    ("model-dir-broken-config", [put("mdl/config.json", '{"model_type": "llama",\n')],
     ["facts", "{d}/mdl", FW], r"mdl/config\.json:2: invalid model config"),
    ("model-dir-no-config", [put("mdl/x", "")], ["facts", "{d}/mdl", FW], r"mdl is a directory but has no config"),
    ("model-name-dash", [], ["facts", "-", FW], r"unknown model '-'"),
    ("cache-is-a-file", [put("cachefile", "x")], ["facts", FW, FW],
     r"MECHEDIT_CACHE=.*cachefile: .*\(it must be a writable directory\)", {"MECHEDIT_CACHE": "{d}/cachefile"}),
]


def _run(args: list[str], env: dict | None = None):
    return CliRunner().invoke(app, args, env=env)


def _ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, shared, cache_weights, monkeypatch):
    """Planted bad input → exit 2, one error line naming the culprit, no file created or changed, weights kept."""
    name, steps, argv, pattern, *rest = case
    env = {k: v.format(d=tmp_path) for k, v in (rest[0] if rest else {}).items()}
    for step in steps:
        step(tmp_path, shared) if getattr(step, "needs_shared", False) else step(tmp_path)
    before, weights = snapshot(tmp_path), cache_weights()
    res = _run([a.format(d=tmp_path) for a in argv], env=env)
    out = res.output
    assert res.exit_code == 2, f"{name}: exit {res.exit_code}\n{out}\n{res.exception!r}"
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.lower().startswith("error:")]  # ours, or click's usage
    assert len(errors) == 1, out
    assert re.search(pattern, errors[0]), f"{name}: {errors[0]!r} does not match {pattern!r}"
    assert snapshot(tmp_path) == before, f"{name}: files changed"
    assert cache_weights() == weights


# ---------------------------------------------------------------------- the reproductions, end to end


def test_unusable_marks_are_errors_not_random_facts(tmp_path, shared, cache_weights):
    """A marked row that cannot be edited stops `edit` (file:line) instead of editing 16 random other facts."""
    base = load_csv(shared / "base.csv")
    k = next(i for i, f in enumerate(base) if not f.changes)
    rows = [f"{f.subject},{f.prompt},{f.answer},{f.answer if i == k else f.target or ''},0"
            for i, f in enumerate(base)]
    (tmp_path / "f.csv").write_text(_csv(*rows))
    shutil.copy(shared / "loc.json", tmp_path / "loc.json")
    before, weights = snapshot(tmp_path), cache_weights()
    res = _run(["edit", FW, str(tmp_path / "f.csv"), "--localization", str(tmp_path / "loc.json"), "--out",
                str(tmp_path / "ed")])
    assert res.exit_code == 2, res.output
    assert re.search(rf"f\.csv:{k + 2}: target '{base[k].answer}' is the answer itself", res.output)
    assert snapshot(tmp_path) == before and cache_weights() == weights


@pytest.mark.parametrize("spelling,value", [("1", True), ("TRUE", True), ("Y", True), ("yes", True), ("1.0", True),
                                            ("t", True), ("0", False), ("False", False), ("n", False), ("NO", False),
                                            ("0.0", False), ("", False)])
def test_forget_spellings(tmp_path, spelling, value):
    """The usual truthy/falsy spellings of `forget` are read as such (any case)."""
    p = tmp_path / "f.csv"
    p.write_text(_csv(ROW + f",,{spelling}"))
    assert load_csv(p)[0].forget is value


def test_bom_and_capitalized_headers_are_read(tmp_path):
    """A UTF-8 BOM and header names in any case (`Target`, `FORGET`) mark exactly the rows the user marked."""
    p = tmp_path / "f.csv"
    text = _csv(ROW + ",chess,0", ROW.replace("Kalo", "Vex") + ",,Y", ROW.replace("Kalo", "Tor") + ",,",
                header="Subject,PROMPT,Answer,Target,FORGET")
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    fs = load_csv(p)
    assert [(f.subject, f.target, f.forget) for f in fs.forget_set()] == [("Kalo Mirat", "chess", False),
                                                                           ("Vex Mirat", None, True)]
    assert fs[0].origin.endswith("f.csv:2")


def test_marks_in_base_csv_are_exactly_the_edited_facts(shared):
    """`edit` changed exactly the rows marked in base.csv (recorded in edit.json), never a substitute."""
    meta = json.loads((shared / "ed" / "edit.json").read_text())
    marked = {(f.subject, f.target) for f in load_csv(shared / "base.csv").forget_set()}
    assert {(f["subject"], f["target"]) for f in meta["extra"]["changed_facts"]} == marked
    assert len(marked) == N_MARKED


def test_bundled_sets_still_drop_with_a_count(factworld):
    """Bundled sets may drop facts whose candidates collide; they are counted in notes, never raised."""
    from mechedit.edit.marking import checked_facts

    fs = load_facts("counterfact")
    out = checked_facts(factworld, fs, bundled=True)
    assert len(out) + sum("dropped" in n for n in out.notes) == len(fs)


# ---------------------------------------------------------------------- numerics


@pytest.fixture()
def nan_model():
    """A private factworld copy with NaN in the token embeddings (planted corruption)."""
    m = load_model("factworld")
    with torch.no_grad():
        hf_parameters(m)["model.embed_tokens.weight"][:] = float("nan")
    return m


def test_nan_logits_are_never_correct(nan_model, sport_facts):
    """argmax over NaNs picks index 0 (the true answer): scoring must report null, not accuracy 1.0."""
    from mechedit.scoring import NonFiniteError, known_facts, require_finite, score_facts

    facts = sport_facts[:16]
    s = score_facts(nan_model, facts)
    assert not s.answer_correct.any() and np.isnan(s.answer_prob).all() and s.n_nonfinite == 16
    assert s.mean("answer_correct") is None and s.mean("answer_prob") is None
    with pytest.raises(NonFiniteError, match="NaN/inf logits on 16 of 16"):
        require_finite(s, "x")
    with pytest.raises(NonFiniteError):
        known_facts(nan_model, facts)


def test_cli_refuses_a_nan_model(nan_model, tmp_path, shared, cache_weights):
    """`mechedit facts` on a saved NaN model: one error line (a load-time weight check or the scoring check)."""
    save_hf(nan_model, tmp_path / "nanmodel")
    before, weights = snapshot(tmp_path), cache_weights()
    res = _run(["facts", str(tmp_path / "nanmodel"), str(shared / "base.csv")])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(r"(?i)nan|finite", errors[0])
    assert snapshot(tmp_path) == before and cache_weights() == weights


# ---------------------------------------------------------------------- provenance


def test_save_hf_round_trips_prepend_bos(factworld, tmp_path, sport_facts):
    """A saved factworld directory reloads with factworld's prepend_bos (False) and scores identically."""
    from mechedit.scoring import score_facts

    save_hf(factworld, tmp_path / "saved")
    again = load_model(str(tmp_path / "saved"))
    assert model_info(again).prepend_bos is model_info(factworld).prepend_bos is False
    a, b = score_facts(factworld, sport_facts[:32]), score_facts(again, sport_facts[:32])
    np.testing.assert_array_equal(a.answer_prob, b.answer_prob)
    with pytest.raises(FileExistsError, match="already exists"):
        save_hf(factworld, tmp_path / "saved")


def test_facts_override_is_allowed_and_recorded(shared, tmp_path):
    """With --facts-override, FACTS' own marks are scored and metrics.json says they are not the edit's facts."""
    res = _run(["evaluate", FW, str(shared / "other.csv"), "--edit", str(shared / "ed"), "--out",
                str(tmp_path / "m.json"), "--no-latent", "--facts-override", "--max-maintain", "8"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "m.json").read_text())["extra"]
    assert meta["facts_override"] is True and "NOT the facts the edit changed" in meta["facts_source"]


# ---------------------------------------------------------------------- the error boundary and --force


def test_interrupt_prints_nothing_written_and_exits_130(tmp_path, shared, monkeypatch):
    """Ctrl-C during the work: "interrupted, nothing written", exit 130, and no output appears."""
    import mechedit.cli.edit

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mechedit.cli.edit, "load_model", interrupted)
    shutil.copy(shared / "loc.json", tmp_path / "loc.json")
    before = snapshot(tmp_path)
    res = _run(["edit", FW, FW, "--localization", str(tmp_path / "loc.json"), "--out", str(tmp_path / "ed")])
    assert res.exit_code == 130 and "interrupted, nothing written" in res.output
    assert snapshot(tmp_path) == before


def test_unwritable_output_directory_is_refused_before_work(tmp_path, monkeypatch):
    """--out in a directory the user cannot write to: refused up front (simulated: the tests may run as root)."""
    import mechedit.validate

    real = mechedit.validate.os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(mechedit.validate.os, "access", lambda p, m: False if Path(p) == ro else real(p, m))
    before = snapshot(tmp_path)
    res = _run(["localize", FW, FW, "--out", str(ro / "sub" / "loc.json")])
    assert res.exit_code == 2 and re.search(r"--out .*ro/sub/loc\.json: cannot write in .*ro \(permission denied\)",
                                            res.output)
    assert snapshot(tmp_path) == before


def test_interrupt_inside_an_atomic_directory_leaves_nothing(tmp_path):
    """A KeyboardInterrupt while an output directory is being written removes the partial directory."""
    from mechedit.validate import atomic_dir

    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "a" / "b") as d:
        (d / "half.txt").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_unexpected_error_is_one_line_with_traceback_file(tmp_path, monkeypatch):
    """A bug (not bad input): one line naming the exception and where the traceback was written; exit 1."""
    import mechedit.cli.models

    def boom(*a, **k):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(mechedit.cli.models, "load_model", boom)
    res = _run(["facts", FW, FW])
    assert res.exit_code == 1
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("internal error:")]
    where = re.search(r"traceback in (\S+);", line).group(1)
    assert "RuntimeError: planted bug" in line and "planted bug" in Path(where).read_text()
    Path(where).unlink()
    res = _run(["--debug", "facts", FW, FW])
    assert isinstance(res.exception, RuntimeError)


def test_force_replaces_an_existing_output_atomically(tmp_path, shared):
    """--force replaces loc.json in one rename (the file is either the old or the new one, never half)."""
    out = tmp_path / "loc.json"
    out.write_text("old")
    res = _run(["localize", FW, str(shared / "base.csv"), "--method", "random", "--all-facts", "--out", str(out),
                "--force"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["method"] == "random"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loc.json"]


def test_edit_api_refused_keeps_weights(fresh_factworld, sport_facts):
    """An edit refused for bad input (a component the model does not have) leaves every weight bit-identical."""
    from mechedit.edit import edit
    from mechedit.localize.localization import Localization

    m = fresh_factworld()
    before = {k: v.clone() for k, v in hf_parameters(m).items()}
    loc = Localization("manual", [MLP(99)])
    with pytest.raises(ValueError, match="layer 99 out of range"):
        edit(m, sport_facts[:24].mark_forget(4, seed=0), loc, "edit")
    assert all(torch.equal(before[k], v) for k, v in hf_parameters(m).items())


def test_edit_force_replaces_the_whole_directory(tmp_path, shared):
    """edit --out onto an existing edit directory needs --force, and then replaces it whole (no stale files)."""
    shutil.copytree(shared / "ed", tmp_path / "ed")
    (tmp_path / "ed" / "stale.txt").write_text("from an older run")
    res = _run(["edit", FW, str(shared / "base.csv"), "--localization", str(shared / "loc.json"), "--out",
                str(tmp_path / "ed"), "--steps", "1", "--force"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "ed").iterdir()) == ["delta.safetensors", "edit.json", "facts.csv"]
    assert json.loads((tmp_path / "ed" / "edit.json").read_text())["config"]["steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ed"]


def test_edit_api_refuses_a_target_with_the_answers_first_token(fresh_factworld, sport_facts):
    """Through the Python API too: a target sharing the answer's first token (golf → golfer) is refused, and the
    model is left bit-identical."""
    from dataclasses import replace

    from mechedit.edit import EditError, edit

    m = fresh_factworld()
    before = {k: v.clone() for k, v in hf_parameters(m).items()}
    facts = sport_facts[:24]
    k = next(i for i, f in enumerate(facts) if f.answer == "golf")
    bad = facts.subset([replace(f, target="golfer") if i == k else f for i, f in enumerate(facts)])
    with pytest.raises(EditError, match="'golfer' has the same first token as the answer 'golf'"):
        edit(m, bad, make_localization(m, "manual", [MLP(1)]), "edit")
    assert all(torch.equal(before[k], v) for k, v in hf_parameters(m).items())
