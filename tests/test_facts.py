"""Fact loading, validation, rendering and splitting (no model needed except where noted)."""

from __future__ import annotations

import pytest

from mechedit.facts import Fact, FactError, FactSet, load_counterfact, load_csv, load_facts, load_sports


def write(tmp_path, text, name="facts.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_round_trip_and_candidates(tmp_path):
    p = write(tmp_path, "subject,prompt,answer,target\nFrance,The capital of {subject} is,Paris,Rome\n"
                        "Italy,The capital of {subject} is,Rome,\nSpain,The capital of {subject} is,Madrid,\n")
    fs = load_csv(p)
    assert len(fs) == 3
    assert fs[0].target == "Rome" and fs[1].target is None
    assert set(fs[0].candidates) == {"Paris", "Rome", "Madrid"}
    assert [f.subject for f in fs.forget_set()] == ["France"]
    assert len(fs.maintain_set()) == 2
    out = tmp_path / "out.csv"
    fs.to_csv(out)
    again = load_csv(out)
    assert [(f.subject, f.answer, f.target) for f in again] == [(f.subject, f.answer, f.target) for f in fs]


def test_csv_missing_column(tmp_path):
    p = write(tmp_path, "subject,answer\nFrance,Paris\n")
    with pytest.raises(FactError, match="missing required column.*prompt"):
        load_csv(p)


def test_prompt_without_subject(tmp_path):
    p = write(tmp_path, "subject,prompt,answer\nFrance,The capital is,Paris\n")
    with pytest.raises(FactError, match=r"facts.csv:2: prompt .* has no '\{subject\}'"):
        load_csv(p)


def test_empty_fact_set(tmp_path):
    p = write(tmp_path, "subject,prompt,answer\n")
    with pytest.raises(FactError, match="no facts"):
        load_csv(p)
    with pytest.raises(FactError, match="empty"):
        FactSet([])


def test_unknown_fact_spec():
    with pytest.raises(FactError, match="neither a bundled set"):
        load_facts("no-such-set")


def test_bundled_sets_load():
    sports = load_sports()
    assert len(sports) == 1559 and set(sports[0].candidates) == {"basketball", "football", "baseball"}
    cf = load_facts("counterfact")
    assert len(cf) == 2189
    f = cf[0]
    assert f.subject == "Danielle Darrieux" and f.answer == "French" and f.suggested_target == "English"
    assert "English" in f.candidates and f.target is None
    assert all("{subject}" in p for p in f.paraphrases) and len(f.neighborhood) == 10
    cf_t = load_counterfact(__import__("mechedit.data", fromlist=["x"]).data_path("counterfact.jsonl"),
                            with_targets=True)
    assert cf_t[0].target == "English"


def test_mcq_is_seeded_and_contains_answer_and_target():
    f = Fact("Tiger Woods", "{subject} plays", "golf", target="tennis",
             candidates=("golf", "tennis", "chess", "rugby", "polo"))
    a = f.mcq(seed=1)
    assert a == f.mcq(seed=1)
    text, options, ans, tgt = a
    assert options[ans] == "golf" and options[tgt] == "tennis" and len(options) == 4
    assert "Tiger Woods" in text and text.endswith("Answer:")
    letters, *_ = f.mcq(seed=1, style="letter")
    assert "\nA. " in letters
    assert {tuple(f.mcq(seed=s)[1]) for s in range(10)}.__len__() > 1  # shuffling depends on the seed


def test_splits_are_deterministic(world_facts):
    a = world_facts.mark_forget(16, seed=3)
    b = world_facts.mark_forget(16, seed=3)
    assert [f.target for f in a] == [f.target for f in b]
    forget = a.forget_set()
    assert len(forget) == 16 and all(f.target != f.answer and f.target in f.candidates for f in forget)
    first, second = forget.halves()
    assert len(first) == len(second) == 8
    assert world_facts.sample(10, seed=1).facts == world_facts.sample(10, seed=1).facts
    unlearn = world_facts.mark_forget(5, seed=0, with_targets=False).forget_set()
    assert all(f.forget and f.target is None for f in unlearn)


def test_factworld_world_shape(world_facts):
    assert len({f.subject for f in world_facts}) >= 300
    rels = world_facts.by_relation()
    assert set(rels) == {"sport", "city", "instrument"}
    assert len(rels["sport"][0].candidates) == 4 and len(rels["city"][0].candidates) == 8
    assert all(len(f.paraphrases) >= 3 and f.question for f in world_facts)


def test_csv_keeps_list_items_containing_the_separator(tmp_path):
    f = Fact("Stefanos", "{subject} speaks", "Greek", candidates=("Greek", "French"),
             paraphrases=("a | b {subject} spoke", "{subject} is a native speaker of"))
    FactSet([f]).to_csv(tmp_path / "f.csv")
    assert load_csv(tmp_path / "f.csv")[0].paraphrases == f.paraphrases
