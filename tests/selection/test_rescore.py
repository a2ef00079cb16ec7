"""Rescoring across views at once equals today's view-after-view scoring (and full forward passes).

Real forward passes of tiny random Llama and Qwen2 models whose output head is sharpened (x40),
so log-probabilities are far from uniform, as a trained model's are.  The reference is
`answer_logprobs` (one view's prompt prefilled once, its candidates batched), the path the stage
ran before views were batched."""
from __future__ import annotations

import math

import pytest
import torch

from devtools.random_models import build_tiny_model
from pipeline.core.augment import Augmentation
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.selection.rescore import answer_logprobs, score_candidates, views_answer_logprobs

VERSION = "output-from-examples-v1"


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def sharp_model(request, tokenizer):
    torch.set_num_threads(1)
    model = build_tiny_model(tokenizer, arch=request.param, seed=7, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def random_views(seed: int) -> list[tuple[list[int], list[list[int]]]]:
    """Views of unequal prompt lengths and candidate counts (one with none, answers of one token)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(10, 2000, (n,), generator=g).tolist()

    shapes = [(40, (1, 7, 3)), (9, (12,)), (63, ()), (2, (5, 1, 4, 9, 2)), (25, (6, 6))]
    return [(ids(p), [ids(n) for n in answers]) for p, answers in shapes]


def reference(model, views, batch_size=16):
    return [answer_logprobs(model, prompt, answers, batch_size) for prompt, answers in views]


def full_forward_logprob(model, prompt, answer) -> float:
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(answer))


@pytest.mark.parametrize("view_batch,batch_size", [(1, 16), (2, 3), (4, 1), (8, 5)])
def test_views_scored_together_equal_view_after_view(sharp_model, view_batch, batch_size):
    views = random_views(11)
    expected = reference(sharp_model, views)
    got = views_answer_logprobs(sharp_model, views, batch_size=batch_size, view_batch=view_batch)
    assert [len(row) for row in got] == [len(answers) for _, answers in views]
    for want, have in zip(expected, got):
        assert all(math.isfinite(h) and abs(w - h) < 1e-4 for w, h in zip(want, have)), (want, have)
    # and the reference itself is the full forward pass of prompt + answer
    prompt, answers = views[3]
    assert abs(got[3][1] - full_forward_logprob(sharp_model, prompt, answers[1])) < 1e-4


def test_padding_beside_a_longer_prompt_changes_no_score(sharp_model):
    """A short view's rows next to a view 30x longer (its prompt padded, its answers shorter than
    the batch's longest) score as when the view is alone in its forward passes."""
    g = torch.Generator().manual_seed(3)
    short = (torch.randint(10, 2000, (3,), generator=g).tolist(), [torch.randint(10, 2000, (2,), generator=g).tolist()])
    long = (torch.randint(10, 2000, (90,), generator=g).tolist(), [torch.randint(10, 2000, (14,), generator=g).tolist()])
    alone = views_answer_logprobs(sharp_model, [short], batch_size=4, view_batch=1)[0][0]
    together = views_answer_logprobs(sharp_model, [long, short], batch_size=4, view_batch=2)
    assert abs(alone - together[1][0]) < 1e-4
    assert abs(together[0][0] - reference(sharp_model, [long])[0][0]) < 1e-4


def test_a_task_scored_across_views_equals_view_after_view(sharp_model, tokenizer, eval_tasks):
    task = eval_tasks["3b4c2228"]  # two test inputs; the second's candidates
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    right = task["test"][1]["input"]
    candidates = [right, [row[::-1] for row in right], [[0]]]
    views = [Augmentation(), Augmentation(hflip=True, n_rot90=1, color_map=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9)),
             Augmentation(n_rot90=2), Augmentation(n_rot90=3, hflip=True)]
    before = score_candidates(sharp_model, tokenizer, encoder, VERSION, task, 1, candidates, views, view_batch=0)
    after = score_candidates(sharp_model, tokenizer, encoder, VERSION, task, 1, candidates, views, batch_size=5,
                             view_batch=3)
    assert len(after) == 3 and all(len(row) == 4 for row in after)
    assert max(abs(a - b) for ra, rb in zip(after, before) for a, b in zip(ra, rb)) < 1e-4
    assert len({round(s, 3) for row in after for s in row}) > 1  # views and candidates do score apart
