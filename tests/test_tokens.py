"""Tokenization helpers: subject spans under left padding, first-token ids, collisions."""

from __future__ import annotations

import pytest
import torch

from mechedit.facts import Fact, FactError, FactSet
from mechedit.tokens import candidate_token_ids, encode, first_token_id, validate_facts


def test_subject_span_under_left_padding(factworld):
    tok = factworld.tokenizer
    texts = ["Kalo Mirat plays the sport of", "The sport played by Ven Dextor is really"]
    b = encode(tok, texts, ["Kalo Mirat", "Ven Dextor"])
    assert b.input_ids.shape[0] == 2 and b.attention_mask[0, 0] == 0  # first row is shorter: left padded
    for row, (text, subject) in enumerate(zip(texts, ["Kalo Mirat", "Ven Dextor"], strict=True)):
        span = b.input_ids[row, b.subject_start[row]: b.subject_last[row] + 1]
        assert tok.decode(span).strip() == subject
        assert tok.decode(b.input_ids[row][b.attention_mask[row].bool()]) == text
    sliced = b.slice(0, 1)
    assert sliced.attention_mask.all()  # re-trimmed: no all-padding column
    assert tok.decode(sliced.input_ids[0, sliced.subject_start[0]: sliced.subject_last[0] + 1]).strip() == "Kalo Mirat"


def test_left_padding_does_not_change_last_logits(factworld):
    tok = factworld.tokenizer
    texts = ["Kalo Mirat plays the sport of", "The sport played by Ven Dextor is"]
    batch = encode(tok, texts, None)
    with torch.no_grad():
        both = factworld(batch.input_ids, attention_mask=batch.attention_mask)[:, -1]
        alone = factworld(encode(tok, texts[:1], None).input_ids)[:, -1]
    torch.testing.assert_close(both[0:1], alone, atol=1e-4, rtol=1e-4)


def test_subject_missing_from_prompt(factworld):
    with pytest.raises(FactError, match="subject 'Nobody' does not occur"):
        encode(factworld.tokenizer, ["Kalo Mirat plays"], ["Nobody"])


def test_colliding_candidates_rejected_or_dropped(smollm2_free_tokenizer):
    tok = smollm2_free_tokenizer
    f = Fact("X", "{subject} is from", "Paris", candidates=("Paris", "Parisian", "Rome"))
    assert first_token_id(tok, "Paris") == first_token_id(tok, "Parisian")
    with pytest.raises(FactError, match="share the first token"):
        candidate_token_ids(tok, f)
    with pytest.raises(FactError, match="share the first token"):
        validate_facts(tok, FactSet([f]))
    kept = validate_facts(tok, FactSet([f]), on_collision="drop")
    assert kept[0].candidates == ("Paris", "Rome")


@pytest.fixture(scope="module")
def smollm2_free_tokenizer(factworld):
    """factworld's tokenizer: ' Paris' and ' Parisian' share their first token there too."""
    return factworld.tokenizer
