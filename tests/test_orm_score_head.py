"""The listwise ORM's two-layer scalar head (Linear(h, h) -> ReLU -> Linear(h, 1), Qwen2.5-Math-RM): what it
computes, that the saved folder loads through the `orm` reward with every head weight (scores equal to the
in-memory model's), the single-linear option, third-party HF classifiers loading as before, and one-line
errors for folders whose config and weights disagree."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from reward.base import RewardError
from reward.models._hf import ScalarMLPHead
from reward.registry import build_reward
from rlkit import testing
from rlkit.trainers.orm_config import ListwiseRMConfig
from rlkit.trainers.orm_trainer import build_orm_dataset, model_scores, orm_from_causal_lm

GROUPS = [{"problem": "What is 2 + 3?", "correct": [True, False, False],
           "responses": ["2 + 3 = 5\n\nThe answer is \\boxed{5}.", "It is 6.", "7"]},
          {"problem": "Weng earns $12 an hour. How much for 2 hours?", "correct": [True, False],
           "responses": ["12 * 2 = 24", "\\boxed{18}"]}]


def _perturb_head(model, seed: int = 7) -> None:
    """Give the head values no initialisation would produce, so a re-initialised head cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.score.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _reward_scores(folder: str) -> list[list[float]]:
    rm = build_reward("orm", model=folder)
    return [[s.meta["response_score"] for s in rm.score([g["problem"]] * len(g["responses"]), g["responses"])]
            for g in GROUPS]


def _save(model, tok, path) -> str:
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def test_mlp2_head_computes_two_layers_at_the_last_token(tiny_dirs, tok):
    lm = testing.tiny_causal_lm(tok)  # the weights saved in tiny_dirs["policy"]
    model, tok = orm_from_causal_lm(tiny_dirs["policy"])
    assert isinstance(model.score, ScalarMLPHead) and model.config.rlkit_score_head == "mlp2"
    assert [tuple(p.shape) for p in model.score.parameters()] == [(64, 64), (64,), (1, 64), (1,)]
    assert torch.equal(model.model.embed_tokens.weight, lm.model.embed_tokens.weight)  # backbone from the LM
    _perturb_head(model)
    model.eval()
    a, b = tok.encode("2 + 3 = 5"), tok.encode("7")
    assert len(b) < len(a)
    ids = torch.tensor([a, b + [tok.pad_token_id] * (len(a) - len(b))])  # the second row is right-padded
    with torch.no_grad():
        got = model(input_ids=ids).logits[:, 0]
        h = model.model(input_ids=ids).last_hidden_state
        last = torch.tensor([len(a) - 1, len(b) - 1])
        x = h[torch.arange(2), last]
        first, second = model.score[0], model.score[2]
        want = (torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias)[:, 0]
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-6)
    assert float((got - want).abs().max()) < 1e-6 and float(got.abs().min()) > 1e-3


def test_mlp2_folder_loads_as_orm_with_identical_scores(tmp_path, tiny_dirs):
    model, tok = orm_from_causal_lm(tiny_dirs["policy"])
    _perturb_head(model)
    want = model_scores(model, build_orm_dataset(GROUPS, tok), tok.pad_token_id)
    folder = _save(model, tok, tmp_path / "orm")
    assert json.loads((tmp_path / "orm" / "config.json").read_text())["rlkit_score_head"] == "mlp2"
    rm = build_reward("orm", model=folder)
    assert type(rm.model).__name__ == "Qwen2ForSequenceClassificationMLP2"
    loaded, mine = rm.model.state_dict(), model.state_dict()
    assert set(loaded) == set(mine) and all(torch.equal(loaded[k], mine[k]) for k in mine)  # nothing dropped
    got = _reward_scores(folder)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-6)
    assert len({round(v, 4) for row in want for v in row}) == 5  # five different scores, not a constant head
    # continuing training from the folder keeps its head ("auto"); another head would drop it
    again, _ = orm_from_causal_lm(folder)
    assert all(torch.equal(again.state_dict()[k], mine[k]) for k in mine)
    with pytest.raises(ValueError, match="already is an ORM with a trained 'mlp2' head"):
        orm_from_causal_lm(folder, head="linear")
    # the Qwen2.5-Math shaping reward takes it as its reward model
    shaping = build_reward("qwen-math-shaping", reward_model={"name": "orm", "args": {"model": folder}})
    res = shaping.score(["What is 2 + 3?"], [GROUPS[0]["responses"][0]], ["5"])[0]
    r_m = want[0][0]  # r = sigmoid(0.5 r_m) + (r_v - 1) with r_v = 1
    assert res.meta["response_score"] == pytest.approx(1 / (1 + math.exp(-0.5 * r_m)), abs=1e-6)


def test_linear_head_option_and_third_party_classifier(tmp_path, tiny_dirs, tok):
    model, tok2 = orm_from_causal_lm(tiny_dirs["policy"], head="linear")
    assert type(model.score) is torch.nn.Linear and model.score.bias is None
    assert model.config.rlkit_score_head == "linear"
    _perturb_head(model)
    want = model_scores(model, build_orm_dataset(GROUPS, tok2), tok2.pad_token_id)
    got = _reward_scores(_save(model, tok2, tmp_path / "linear"))
    assert all(g == pytest.approx(w, abs=1e-6) for g, w in zip(got, want))
    # a plain HF sequence classifier (no rlkit_score_head) loads exactly as before, and keeps its head
    from transformers import AutoTokenizer

    third = testing.tiny_sequence_classifier(tok)  # the weights saved in tiny_dirs["orm"]
    saved_tok = AutoTokenizer.from_pretrained(tiny_dirs["orm"])  # what the reward encodes with
    want = model_scores(third, build_orm_dataset(GROUPS, saved_tok), saved_tok.pad_token_id)
    got = _reward_scores(tiny_dirs["orm"])
    assert all(g == pytest.approx(w, abs=1e-6) for g, w in zip(got, want))
    cont, _ = orm_from_causal_lm(tiny_dirs["orm"])
    assert type(cont.score) is torch.nn.Linear and torch.equal(cont.score.weight, third.score.weight)
    with pytest.raises(ValueError, match="trained 'linear' head"):
        orm_from_causal_lm(tiny_dirs["orm"], head="mlp2")
    with pytest.raises(ValueError, match="score head: unknown value 'mlp3'"):
        orm_from_causal_lm(tiny_dirs["policy"], head="mlp3")
    with pytest.raises(ValueError, match="training.score_head: unknown value 'big'"):
        ListwiseRMConfig(output_dir=str(tmp_path / "x"), score_head="big")


def test_config_and_weights_that_disagree_fail_in_one_line(tmp_path, tiny_dirs):
    model, tok = orm_from_causal_lm(tiny_dirs["policy"])
    good = tmp_path / "mlp2"
    _save(model, tok, good)

    def variant(name: str, **config_changes) -> str:
        d = tmp_path / name
        shutil.copytree(good, d)
        cfg = json.loads((d / "config.json").read_text())
        for k, v in config_changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))
        return str(d)

    # mlp2 weights without the config key: a plain class would get a random `score` -> refused, not scored
    with pytest.raises(RewardError, match="lacks trained weights for score.weight"):
        build_reward("orm", model=variant("no_key", rlkit_score_head=None))
    with pytest.raises(RewardError, match="unknown rlkit_score_head 'mlp9'"):
        build_reward("orm", model=variant("bad_key", rlkit_score_head="mlp9"))
    # a linear checkpoint whose config claims mlp2: the mlp2 head would be random -> refused
    lin = tmp_path / "lin_as_mlp2"
    testing.save_tiny(testing.tiny_sequence_classifier(tok), tok, lin)
    cfg = json.loads((lin / "config.json").read_text())
    (lin / "config.json").write_text(json.dumps(dict(cfg, rlkit_score_head="mlp2")))
    with pytest.raises(RewardError, match="lacks trained weights for score.0.bias"):
        build_reward("orm", model=str(lin))
