"""minipeft.tasks.vqa: sampling, encoding, candidate scoring, the blind prior and accuracy per kind."""

import pytest
import torch

from minipeft.models import tiny_llama
from minipeft.tasks.vqa import (ANSWERS, KINDS, AnswerScorer, BlindPrior, accuracy_by_kind, kind_of,
                                sample_questions, vqa_prompt)


class WordTokenizer:
    """Each answer word (with its leading space) is one token of its own; other text is one token per word."""

    pad_token_id = 0

    def __init__(self, clash=False):
        self.ids = {" " + a: 200 + i for i, a in enumerate(ANSWERS)}
        if clash:  # two colours share a first token
            self.ids[" " + KINDS["colour"][1]] = self.ids[" " + KINDS["colour"][0]]

    def __call__(self, text, add_special_tokens=False):
        if text in self.ids:
            return {"input_ids": [self.ids[text], 7]}
        return {"input_ids": [sum(word.encode()) % 190 + 3 for word in text.split()]}


QUESTIONS = [("what color is the shape?", "red", 0), ("what color is the shape?", "red", 1),
             ("what color is the shape?", "blue", 2), ("what shape is in the image?", "circle", 3),
             ("is there a red shape?", "yes", 4), ("is there a red shape?", "no", 5), ("is it green?", "no", 6)]


def test_kinds_and_answers():
    assert kind_of("circle") == "shape" and kind_of("red") == "colour" and kind_of("yes") == "yes/no"
    assert len(ANSWERS) == sum(len(a) for a in KINDS.values()) == 13
    with pytest.raises(ValueError, match="not an easy-VQA answer"):
        kind_of("purple-ish")


def test_sampling_is_balanced_seeded_and_local():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    chosen = sample_questions(QUESTIONS, per_kind=2, seed=3)
    assert torch.equal(torch.rand(2), expected)  # no global random numbers consumed
    assert sorted(kind_of(a) for _, a, _ in chosen) == ["colour"] * 2 + ["shape"] + ["yes/no"] * 2  # 1 shape exists
    assert chosen == sample_questions(QUESTIONS, per_kind=2, seed=3)
    assert {kind_of(a) for _, a, _ in sample_questions(QUESTIONS, 5, 0, kinds=("shape",))} == {"shape"}
    with pytest.raises(ValueError, match="unknown question kinds"):
        sample_questions(QUESTIONS, 1, 0, kinds=("size",))


def test_encode_pads_right_and_records_answer_kind_and_image():
    scorer = AnswerScorer(WordTokenizer())
    question, answer, image = QUESTIONS[3]
    example = scorer.encode([QUESTIONS[3]], max_length=40)[0]
    length = len(WordTokenizer()(vqa_prompt(question))["input_ids"])
    assert example["attention_mask"].tolist() == [1] * length + [0] * (40 - length)
    assert example["input_ids"][length:].eq(0).all()
    assert ANSWERS[int(example["answer"])] == answer and list(KINDS)[int(example["kind"])] == "shape"
    assert int(example["image"]) == image
    captioned = scorer.encode([QUESTIONS[3]], captions={3: "a red circle"}, max_length=40)[0]
    assert captioned["attention_mask"].sum() > example["attention_mask"].sum()  # the caption went in front
    with pytest.raises(ValueError, match="max_length"):
        scorer.encode([QUESTIONS[3]], max_length=4)


def test_scores_are_the_lm_logits_of_the_answers_first_tokens_at_the_last_real_position():
    model = tiny_llama(seed=0, vocab_size=256)
    scorer = AnswerScorer(WordTokenizer())
    examples = scorer.encode(QUESTIONS[2:5], max_length=40)
    batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}
    with torch.no_grad():
        scores = scorer.logits(model, batch)  # (3, 13)
        for row, example in enumerate(examples):
            last = int(example["attention_mask"].sum()) - 1
            full = model(input_ids=example["input_ids"][None, :last + 1]).logits[0, -1]  # (V,) no padding at all
            allowed = KINDS[list(KINDS)[int(example["kind"])]]
            for column, answer in enumerate(ANSWERS):
                if answer in allowed:
                    expected = full[scorer.answer_tokens[column]]
                    assert scores[row, column] == pytest.approx(expected.item(), abs=1e-4)
                else:
                    assert scores[row, column] == float("-inf")


def test_a_tokenizer_that_merges_two_answers_is_refused():
    with pytest.raises(ValueError, match="share their first token"):
        AnswerScorer(WordTokenizer(clash=True))


def test_blind_prior_and_accuracy_by_kind_by_hand():
    prior = BlindPrior(QUESTIONS)
    assert prior.answer("what color is the shape?", "colour") == "red"  # 2 of 3
    assert prior.answer("what color is it now?", "colour") == "red"  # unseen text: the kind's commonest
    assert prior.answer("is it green?", "yes/no") == "no"
    triples = QUESTIONS[:4]
    result = accuracy_by_kind(["red", "blue", "blue", "square"], triples)
    assert result == {"colour": pytest.approx(2 / 3), "shape": 0.0, "all": 0.5}
    with pytest.raises(ValueError, match="3 predictions for 4"):
        accuracy_by_kind(["red"] * 3, triples)
