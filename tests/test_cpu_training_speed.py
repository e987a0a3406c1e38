"""Settings that make CPU training fast: ``training.bf16: true`` autocasts one CPU process to bf16 (DeepSpeed on
CPU stays fp32, which is all it runs), and plain AdamW uses torch's fused kernel (3-5x the default for-loop form
on this CPU; transformers picks it itself where it can)."""

from __future__ import annotations

import torch

from rlkit.config import recipe_from_dict
from rlkit.optim.trainer_hook import build_optimizer
from rlkit.recipe_glue import trainer_kwargs
from rlkit.trainers.sft_config import SFT_DEFAULTS


def _kwargs(tmp_path, distribution: str) -> dict:
    recipe = recipe_from_dict({"algorithm": {"name": "sft"}, "distribution": distribution,
                               "training": {"bf16": True, "max_steps": 2}})
    return trainer_kwargs(recipe, tmp_path, SFT_DEFAULTS)


def test_bf16_is_kept_for_one_cpu_process_and_dropped_under_cpu_deepspeed(tmp_path):
    if torch.cuda.is_available():  # on a GPU bf16 is kept either way
        return
    assert _kwargs(tmp_path, "none")["bf16"] is True
    assert _kwargs(tmp_path, "zero2")["bf16"] is False


def test_adamw_uses_the_fused_kernel_and_steps_like_the_for_loop_form():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    twin = torch.nn.Linear(8, 4)
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer(model, {"name": "adamw"}, lr=1e-2)
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.0, foreach=False)
    x = torch.randn(16, 8)
    for _ in range(3):
        for m, opt in ((model, fused), (twin, loop)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
