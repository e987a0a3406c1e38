"""OnDARE / OnTIES AdamW: hand-computed updates, AdamW reductions, merge_every, resume, recipe builder, mixin."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from rlkit import testing
from rlkit.optim import (
    OnDAREAdamW,
    OnTIESAdamW,
    RecipeOptimizerMixin,
    Segment,
    TensorReference,
    build_optimizer,
)


def _one_param(values, tau):
    w = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    base = {"w": w.detach() - torch.tensor(tau, dtype=torch.float32)}
    return w, TensorReference({"w": w}, base)


# g = [1, -2, 3, -0.5]; lr = 1, eps = 1 => first Adam update Delta = -g / (|g| + 1)
G = [1.0, -2.0, 3.0, -0.5]
DELTA = [-0.5, 2 / 3, -0.75, 1 / 3]
TAU = [0.5, -0.4, 0.2, 0.1]


def test_onties_hand_computed():
    w, ref = _one_param([1.0] * 4, TAU)
    opt = OnTIESAdamW([w], lr=1.0, eps=1.0, p=0.5, alpha=0.1, reference=ref)
    w.grad = torch.tensor(G)
    opt.step()
    # k = 2: Delta' = [0, 2/3, -3/4, 0]; tau' = [0.5, -0.4, 0, 0]; tau'+Delta' = [.5, .267, -.75, 0]
    # elected signs [+, +, -, +]: tau' loses entry 1 -> tau'' = [0.5, 0, 0, 0]; Delta'' = Delta'
    # update = 0.9 * Delta'' + 0.1 * tau'' = [0.05, 0.6, -0.675, 0]
    torch.testing.assert_close(w.detach(), torch.tensor([1.05, 1.6, 1 - 0.675, 1.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[w]["tau"], torch.tensor([0.5, -0.4, 0.0, 0.0]))


def test_ondare_hand_computed_and_mask_stats():
    w, ref = _one_param([1.0] * 4, TAU)
    opt = OnDAREAdamW([w], lr=1.0, eps=1.0, p=0.5, alpha=0.1, seed=3, reference=ref)
    w.grad = torch.tensor(G)
    opt.step()
    segs = [Segment("w", 0, 4, 0, 4)]
    keep = torch.zeros(4, dtype=torch.bool)
    keep[opt._mask_positions(segs, "delta", 1, "cpu")] = True
    keep_t = torch.zeros(4, dtype=torch.bool)
    keep_t[opt._mask_positions(segs, "tau", 0, "cpu")] = True
    # rescale by 1/p = 2 on kept entries of Delta and tau
    expected = [1.0 + 0.9 * (d * 2 if k else 0.0) + 0.1 * (t * 2 if kt else 0.0)
                for d, t, k, kt in zip(DELTA, TAU, keep.tolist(), keep_t.tolist())]
    torch.testing.assert_close(w.detach(), torch.tensor(expected), rtol=0, atol=1e-6)
    # the masks are Bernoulli(p), fresh each step, and independent of how a tensor is split into shards
    for p in (0.01, 0.3):
        opt.p = p
        n = 3_000_000
        full = opt._mask_positions([Segment("x", 0, n, 0, n)], "delta", 7, "cpu")
        assert abs(full.numel() / n - p) < 5 * (p / n) ** 0.5 + 1e-4
        a, b = 1_234_567, n - 1_234_567
        parts = opt._mask_positions([Segment("x", 10, a, 0, n), Segment("x", 10 + a + 5, b, a, n)], "delta", 7, "cpu")
        lo, hi = parts[parts < 10 + a] - 10, parts[parts >= 10 + a] - 15
        assert torch.equal(torch.cat([lo, hi]), full)
        other = opt._mask_positions([Segment("x", 0, n, 0, n)], "delta", 8, "cpu")
        assert not torch.equal(other[:100], full[:100])


def _adamw_pair(p, alpha, tau_scale, method=OnDAREAdamW, wd=0.1, seed=0, fused=True):
    torch.manual_seed(seed)
    m1 = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    m2 = copy.deepcopy(m1)
    base = {n: t.detach() - tau_scale * torch.randn_like(t) for n, t in m1.named_parameters()}
    groups = lambda m: [{"params": [m[0].weight, m[2].weight], "weight_decay": wd},  # noqa: E731
                        {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0}]
    o1 = method(groups(m1), lr=1e-2, p=p, alpha=alpha, reference=TensorReference(m1, base))
    o2 = torch.optim.AdamW(groups(m2), lr=1e-2, **({"fused": True} if fused else {"foreach": False}))
    return m1, o1, m2, o2


def _train(pairs, steps=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 6, generator=g)
        for m, o in pairs:
            o.zero_grad()
            (m(x) ** 2).sum().backward()
            o.step()


def test_ondare_p1_alpha0_is_adamw_exactly():
    # the same fused kernel: bit for bit AdamW(fused=True); the for-loop AdamW's eager math agrees to rounding
    for fused in (True, False):
        m1, o1, m2, o2 = _adamw_pair(p=1.0, alpha=0.0, tau_scale=0.1, fused=fused)
        _train([(m1, o1), (m2, o2)])
        for a, b in zip(m1.parameters(), m2.parameters()):
            if fused:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_onties_p1_alpha0_is_adamw_only_when_tau_is_zero():
    m1, o1, m2, o2 = _adamw_pair(p=1.0, alpha=0.0, tau_scale=0.0, method=OnTIESAdamW)
    _train([(m1, o1), (m2, o2)])
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    # with tau != 0 the sign election drops the update entries whose sign differs from sign(tau + Delta)
    m1, o1, m2, o2 = _adamw_pair(p=1.0, alpha=0.0, tau_scale=0.05, method=OnTIESAdamW, wd=0.0)
    w0 = m1[0].weight.detach().clone()
    _train([(m1, o1), (m2, o2)], steps=1)
    d_ours, d_adam = m1[0].weight.detach() - w0, m2[0].weight.detach() - w0
    tau = o1.state[m1[0].weight]["tau"].view_as(w0)
    s = torch.where(tau + d_adam >= 0, 1.0, -1.0)
    agree = torch.sign(d_adam) == s
    assert (~agree).any() and agree.any()
    torch.testing.assert_close(d_ours, torch.where(agree, d_adam, torch.zeros_like(d_adam)), rtol=0, atol=1e-7)


def test_merge_every_k_updates_every_parameter():
    m1, o1, m2, o2 = _adamw_pair(p=1.0, alpha=0.0, tau_scale=0.1)
    o1.merge_every = 3
    for i in range(1, 7):
        _train([(m1, o1), (m2, o2)], steps=1, seed=i)
        for a, b in zip(m1.parameters(), m2.parameters()):  # non-merge steps: plain AdamW on all params
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # a real merge (p < 1): at the merge step the accumulated update is sparsified (entries rolled back)
    m1, o1, m2, o2 = _adamw_pair(p=0.3, alpha=0.0, tau_scale=0.1, wd=0.0)
    o1.merge_every = 2
    w0 = m1[0].weight.detach().clone()
    _train([(m1, o1), (m2, o2)], steps=1)
    assert torch.equal(m1[0].weight, m2[0].weight) and torch.equal(m1[2].bias, m2[2].bias)
    _train([(m1, o1), (m2, o2)], steps=1, seed=2)
    changed = (m1[0].weight.detach() - w0).abs() > 1e-9
    assert 0 < changed.float().mean() < 0.8


@pytest.mark.parametrize("method,kw", [(OnDAREAdamW, {"p": 0.3, "alpha": 0.05}),
                                       (OnTIESAdamW, {"p": 0.3, "alpha": 0.05}),
                                       (OnDAREAdamW, {"p": 0.3, "alpha": 0.05, "resample_tau": True,
                                                      "merge_every": 2})])
def test_state_dict_resume_gives_same_next_update(method, kw):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    base = {n: t.detach() - 0.05 * torch.randn_like(t) for n, t in m.named_parameters()}
    opt = method(m.parameters(), lr=1e-2, weight_decay=0.1, reference=TensorReference(m, base), **kw)
    _train([(m, opt)], steps=3)
    saved_model, saved_opt = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict())
    _train([(m, opt)], steps=3, seed=5)
    # resume: a fresh model and optimizer, the base weights are NOT needed (tau comes from the state)
    m2 = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    m2.load_state_dict(saved_model)
    opt2 = method(m2.parameters(), lr=1e-2, weight_decay=0.1, reference=TensorReference(m2, {}), **kw)
    opt2.load_state_dict(saved_opt)
    _train([(m2, opt2)], steps=3, seed=5)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_no_reference_is_a_clear_error():
    w = torch.nn.Parameter(torch.ones(3))
    opt = OnDAREAdamW([w], p=0.5)
    w.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="no reference"):
        opt.step()


# ---- recipe builder / mixin -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    return testing.save_tiny(testing.tiny_causal_lm(tok, seed=1), tok, tmp_path_factory.mktemp("base"))


def _lm_step(model, opt, tok):
    batch = tok(["The answer is 72.", "Step 1: 48 / 2 = 24"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    opt.zero_grad()
    out.loss.backward()
    opt.step()


@pytest.mark.parametrize("name", ["ondare", "onties"])
def test_build_optimizer_tau_from_safetensors(policy, tok, base_dir, name):
    from safetensors.torch import load_file

    cfg = {"name": name, "p": 0.2, "alpha": 1e-3, "base_model": base_dir, "seed": 0}
    opt = build_optimizer(policy, cfg, lr=1e-3, weight_decay=0.01)
    assert type(opt).__name__ == {"ondare": "OnDAREAdamW", "onties": "OnTIESAdamW"}[name]
    names = {id(p): n for n, p in policy.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    assert "model.layers.0.self_attn.q_proj.weight" in decayed
    assert not any("norm" in n or "bias" in n for n in decayed)
    assert opt.param_groups[1]["weight_decay"] == 0.0
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    _lm_step(policy, opt, tok)
    base = load_file(f"{base_dir}/model.safetensors")
    n = "model.layers.1.mlp.up_proj.weight"
    p = dict(policy.named_parameters())[n]
    tau = (before[n] - base[n]).reshape(-1)
    kept = opt.state[p]["tau"]
    nz = kept != 0
    assert 0.1 < nz.float().mean() < 0.3
    scale = 1 / 0.2 if name == "ondare" else 1.0
    torch.testing.assert_close(kept[nz], tau[nz] * scale)


def test_build_optimizer_errors(policy, tok, base_dir, tmp_path):
    with pytest.raises(ValueError, match="base_model"):
        build_optimizer(policy, {"name": "onties", "p": 0.1}, lr=1e-3)
    with pytest.raises(ValueError, match="unknown key"):
        build_optimizer(policy, {"name": "ondare", "reserve": 0.1, "base_model": base_dir}, lr=1e-3)
    with pytest.raises(ValueError, match="expected one of"):
        build_optimizer(policy, {"name": "lion"}, lr=1e-3)
    with pytest.raises(ValueError, match="OnDARE options"):
        build_optimizer(policy, {"name": "onties", "rescale": True, "base_model": base_dir}, lr=1e-3)
    one_layer = testing.save_tiny(testing.tiny_causal_lm(tok, num_hidden_layers=1), tok, tmp_path / "l1")
    with pytest.raises(ValueError, match="no base tensor of the same name.*model.layers.1"):
        build_optimizer(policy, {"name": "ondare", "base_model": one_layer}, lr=1e-3)
    wide = testing.save_tiny(testing.tiny_causal_lm(tok, intermediate_size=64), tok, tmp_path / "w")
    with pytest.raises(ValueError, match="Shape mismatch"):
        build_optimizer(policy, {"name": "ondare", "base_model": wide}, lr=1e-3)
    assert isinstance(build_optimizer(policy, {"name": "adamw"}, lr=1e-3), torch.optim.AdamW)
    assert isinstance(build_optimizer(policy, {"name": "ondare", "alpha": 0}, lr=1e-3), OnDAREAdamW)


def test_resized_vocab_rows_get_zero_tau(tok, base_dir, caplog):
    policy = testing.tiny_causal_lm(tok)
    old = policy.get_input_embeddings().weight.shape[0]
    policy.resize_token_embeddings(old + 8)
    with caplog.at_level(logging.WARNING):
        opt = build_optimizer(policy, {"name": "ondare", "p": 1.0, "alpha": 0.5, "base_model": base_dir}, lr=1e-3)
    assert "resized vocabulary" in caplog.text
    emb = policy.get_input_embeddings().weight
    _lm_step(policy, opt, tok)
    tau = opt.state[emb]["tau"].view(old + 8, -1)
    assert (tau[old:] == 0).all() and (tau[:old] != 0).any()


def test_peft_policy(policy, base_dir):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(policy, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(NotImplementedError, match="alpha: 0"):
        build_optimizer(lora, {"name": "ondare", "alpha": 1e-7, "base_model": base_dir}, lr=1e-3)
    with pytest.raises(NotImplementedError, match="PEFT"):
        build_optimizer(lora, {"name": "onties", "alpha": 0, "base_model": base_dir}, lr=1e-3)
    opt = build_optimizer(lora, {"name": "ondare", "alpha": 0, "p": 0.5}, lr=1e-3)
    assert isinstance(opt, OnDAREAdamW)


def test_mixin_builds_recipe_optimizer_in_trainer(policy, tok, base_dir, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    class T(RecipeOptimizerMixin, Trainer):
        pass

    ids = tok(["The answer is 72. " * 2] * 4)["input_ids"]
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    tr = T(model=policy, args=args, train_dataset=ds)
    tr.rlkit_optimizer_cfg = {"name": "onties", "p": 0.1, "alpha": 1e-7, "base_model": base_dir}
    tr.train()
    inner = getattr(tr.optimizer, "optimizer", tr.optimizer)
    assert isinstance(inner, OnTIESAdamW)
    assert {s["step"] for s in inner.state.values()} == {2}


def test_onties_keeps_exactly_k_with_ties_broken_by_index():
    w, ref = _one_param([0.0] * 6, [0.0] * 6)
    opt = OnTIESAdamW([w], lr=1.0, eps=1e-12, p=0.5, alpha=0.0, reference=ref)
    w.grad = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # |Delta| identical everywhere
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-1.0, 1.0, -1.0, 0.0, 0.0, 0.0]))
