"""Worker for tests/test_online_merging_zero.py: train a tiny causal LM a few steps with a recipe optimizer.

    python online_merging_worker.py --stage 0 ...                        # one process, no DeepSpeed
    torchrun --nproc_per_node 2 online_merging_worker.py --stage 2|3 ...  # DeepSpeed ZeRO on CPU (gloo)

Writes <out>/weights.pt (full fp32 state dict, rank 0) and <out>/info.json (optimizer class DeepSpeed steps).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--sft", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--eps", type=float, default=1e-3)  # spreads |Delta| (no sign-like step 1): see README
    a = ap.parse_args()
    torch.set_num_threads(1)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from rlkit.optim import RecipeOptimizerMixin

    world = int(os.environ.get("WORLD_SIZE", "1"))
    ds_cfg = None
    if a.stage:
        ds_cfg = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                  "train_batch_size": "auto", "gradient_clipping": "auto",
                  "zero_optimization": {"stage": a.stage}}
    args = TrainingArguments(a.out, max_steps=a.steps, per_device_train_batch_size=2,
                             learning_rate=1e-3, weight_decay=0.01, adam_epsilon=a.eps, lr_scheduler_type="constant",
                             max_grad_norm=0.0, use_cpu=True, bf16=False, deepspeed=ds_cfg, report_to=[],
                             save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True)
    assert args.world_size == world  # sets up the process group (zero.Init below needs it)
    if a.stage:
        import deepspeed

        deepspeed.init_distributed()  # deepspeed.comm must know the world size before zero.Init
    # loaded after TrainingArguments: under ZeRO-3 the parameters are then (0,)-shaped placeholders
    model = AutoModelForCausalLM.from_pretrained(a.sft, dtype=torch.float32)
    placeholders = all(p.numel() == 0 for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    # identical rows: every rank's micro-batch gives the same gradient g, DeepSpeed's average (g + g) / 2 is
    # exactly g, so single-process and ZeRO runs see bit-identical gradients and any difference comes from
    # the optimizer (OnTIES' top-k otherwise flips on rounding-level near-ties, e.g. at step 1 |Delta| ~ lr)
    ids = torch.randint(10, 300, (1, 12), generator=g).tolist() * 4
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})

    class T(RecipeOptimizerMixin, Trainer):
        pass

    tr = T(model=model, args=args, train_dataset=data)
    tr.rlkit_optimizer_cfg = None if a.method == "adamw" else {
        "name": a.method, "p": a.p, "alpha": a.alpha, "base_model": a.base, "seed": 0}
    tr.train()

    info = {"stage": a.stage, "world": world, "placeholders_at_build": placeholders}
    if a.stage:
        engine = tr.model_wrapped
        inner = engine.optimizer.optimizer  # the torch optimizer the ZeRO optimizer steps
        info["zero_optimizer"] = type(engine.optimizer).__name__
        import deepspeed

        state = {}
        for n, prm in engine.module.named_parameters():  # ZeRO-3: gather each full parameter on all ranks
            with deepspeed.zero.GatheredParameters([prm], enabled=a.stage == 3):
                state[n] = prm.detach().clone()
    else:
        inner = getattr(tr.optimizer, "optimizer", tr.optimizer)
        state = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    info["optimizer"] = type(inner).__name__
    info["steps"] = sorted({int(s["step"]) for s in inner.state.values()})
    info["n_state_tensors"] = len(inner.state)
    info["group_weight_decay"] = [g["weight_decay"] for g in inner.param_groups]
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        torch.save({k: v.float().cpu() for k, v in state.items()}, os.path.join(a.out, "weights.pt"))
        with open(os.path.join(a.out, "info.json"), "w") as f:
            json.dump(info, f)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skip interpreter teardown: now and then a gloo/DeepSpeed C++ thread is still joinable when Python
    # finalises and the rank dies with "terminate called without an active exception" (SIGABRT) after all its
    # work is written. Everything is flushed and the process group destroyed above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
