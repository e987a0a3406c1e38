"""Where each model tensor lives in the optimizer's tensors (plain, DeepSpeed ZeRO-1/2, ZeRO-3), and the base
weights for exactly those slices, read tensor by tensor from a safetensors HF folder.

Under DeepSpeed the optimizer's ``step()`` sees flat fp32 partitions instead of the model's parameters:

* ZeRO-1/2: one flat tensor per param group per rank (``single_partition_of_fp32_groups[i]``); each model
  parameter holding elements there has ``param._hp_mapping`` (``lp_fragment_address.start``: offset in the
  flattened parameter; ``hp_fragment_address.start``: offset in the flat partition).
* ZeRO-3: one flat tensor per sub-group (``fp32_partitioned_groups_flat[i]``), the concatenation of the
  ``partition_numel()``-sized partitions of the parameters in ``fp16_groups[i]``; rank r holds elements
  ``[r * partition_numel, (r + 1) * partition_numel)`` of each flattened parameter (the tail is padding).

:class:`SafetensorsReference` turns that into :class:`~rlkit.optim.online_merging.Segment` lists and reads
``base[name]`` rows covering only the rank's slice (never the whole model, one tensor at a time).
The DeepSpeed optimizer is found through ``attach_engine(engine)`` or ``attach_trainer(trainer)``
(``trainer.model_wrapped`` / ``trainer.deepspeed`` after ``accelerator.prepare``).
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from typing import Dict, List, Optional

import torch

from .online_merging import Segment

logger = logging.getLogger(__name__)

__all__ = ["SafetensorsBase", "SafetensorsReference", "resolve_base_path"]


def resolve_base_path(path_or_id: str) -> str:
    """A local HF folder, or a hub id resolved to its cached snapshot (safetensors + json files only)."""
    if os.path.isdir(path_or_id):
        return path_or_id
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path_or_id, allow_patterns=["*.safetensors", "*.json"])
    except Exception as e:  # noqa: BLE001
        raise FileNotFoundError(f"base_model {path_or_id!r}: not a local folder and not downloadable ({e})") from e


class SafetensorsBase:
    """Lazy reader of base weights from an HF folder (model.safetensors or a sharded index)."""

    def __init__(self, path_or_id: str):
        self.path = resolve_base_path(path_or_id)
        index = os.path.join(self.path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                wm = json.load(f)["weight_map"]
            self.files = {n: os.path.join(self.path, fn) for n, fn in wm.items()}
        else:
            single = os.path.join(self.path, "model.safetensors")
            if not os.path.exists(single):
                raise FileNotFoundError(f"base_model {self.path}: no model.safetensors(.index.json) there")
            from safetensors import safe_open

            with safe_open(single, "pt") as f:
                self.files = {n: single for n in f.keys()}
        self._shapes: Dict[str, tuple] = {}

    def shape(self, name: str) -> Optional[tuple]:
        if name not in self.files:
            return None
        if name not in self._shapes:
            from safetensors import safe_open

            with safe_open(self.files[name], "pt") as f:
                self._shapes[name] = tuple(f.get_slice(name).get_shape())
        return self._shapes[name]

    def read_flat(self, name: str, start: int, length: int) -> torch.Tensor:
        """Elements [start, start+length) of the flattened base tensor (reads only the rows covering them)."""
        from safetensors import safe_open

        shape = self.shape(name)
        row = 1
        for d in shape[1:]:
            row *= d
        if not shape:
            with safe_open(self.files[name], "pt") as f:
                return f.get_tensor(name).reshape(-1).float()
        r0, r1 = start // row, -(-(start + length) // row)
        with safe_open(self.files[name], "pt") as f:
            t = f.get_slice(name)[r0:r1]
        return t.reshape(-1).narrow(0, start - r0 * row, length).float()


def _full_shape(p: torch.Tensor) -> tuple:
    return tuple(getattr(p, "ds_shape", None) or p.shape)


class NoBase(SafetensorsBase):
    """Stand-in base for OnDARE with alpha = 0 (tau unused): every policy tensor exists and reads as zeros.

    Goes through :class:`SafetensorsReference`, so the optimizer still finds DeepSpeed's flat partitions.
    """

    def __init__(self, model: torch.nn.Module):  # no files to open: deliberately skips the parent __init__
        self.path = "<no base model: alpha = 0>"
        self.files = {}
        self._shapes = {n: _full_shape(t) for n, t in model.named_parameters()}

    def shape(self, name: str) -> Optional[tuple]:
        return self._shapes.get(name)

    def read_flat(self, name: str, start: int, length: int) -> torch.Tensor:
        return torch.zeros(length)


class SafetensorsReference:
    """Reference for online merging: names/shards of the optimizer's tensors and base weights from safetensors.

    Args:
        model: the policy (its current weights at the first optimizer step are the reference, theta_SFT).
        base: HF folder or hub id of the base (pretrained) model, or a ``SafetensorsBase``.
        check: validate names and shapes now (clear errors before training starts).
    """

    def __init__(self, model: torch.nn.Module, base, check: bool = True):
        self.base = base if isinstance(base, SafetensorsBase) else SafetensorsBase(base)
        self.names = {id(t): n for n, t in model.named_parameters()}
        self.shapes = {n: _full_shape(t) for n, t in model.named_parameters()}
        self.trainable = [n for n, t in model.named_parameters() if t.requires_grad]
        self._engine = None
        self._trainer = None
        self.sharded, self.group = False, None
        self._warned = set()
        if check:
            self.check()

    # -- validation ----------------------------------------------------------------------------------------
    def check(self):
        """Every trainable tensor must exist in the base with the same shape (a grown first dimension is allowed:
        the new rows get tau = 0). A tensor of a top-level module the base lacks entirely is a head the policy
        added (e.g. the ``score`` head of a reward model built from the base) and gets tau = 0; any other
        missing name means the wrong base model and is an error."""
        missing, bad, new_heads = [], [], []
        base_modules = {b.split(".")[0] for b in self.base.files}
        for n in self.trainable:
            bs, rs = self.base.shape(n), self.shapes[n]
            if bs is None and n.split(".")[0] not in base_modules:
                new_heads.append(n)
            elif bs is None:
                missing.append(n)
            elif bs != rs and not (len(bs) == len(rs) and bs[1:] == rs[1:] and bs[0] < rs[0]):
                bad.append(f"{n}: base {list(bs)} vs policy {list(rs)}")
        if missing or bad:
            msg = [f"online merging: base model {self.base.path} does not match the policy."]
            if missing:
                msg.append(f"{len(missing)} policy parameter(s) have no base tensor of the same name, e.g. "
                           f"{missing[:5]} (base has e.g. {sorted(self.base.files)[:5]}).")
            if bad:
                msg.append("Shape mismatch (only a grown first dimension, e.g. a resized vocab, is "
                           f"allowed): {bad[:5]}")
            raise ValueError(" ".join(msg))
        if new_heads:
            logger.warning("online merging: %d parameter(s) of module(s) %s are not in the base model %s (a new "
                           "head); they get tau = 0", len(new_heads),
                           sorted({n.split(".")[0] for n in new_heads}), self.base.path)
        for n in self.trainable:
            if n not in new_heads and self.base.shape(n) != self.shapes[n]:
                logger.warning("online merging: %s has %d rows in the policy but %d in the base model; the "
                               "extra rows (resized vocabulary) get tau = 0", n, self.shapes[n][0],
                               self.base.shape(n)[0])

    # -- DeepSpeed discovery ---------------------------------------------------------------------------------
    def attach_engine(self, engine):
        self._engine = engine

    def attach_trainer(self, trainer):
        self._trainer = weakref.ref(trainer)

    def _ds_optimizer(self):
        eng = self._engine
        if eng is None and self._trainer is not None and self._trainer() is not None:
            tr = self._trainer()
            for cand in (getattr(tr, "model_wrapped", None), getattr(tr, "deepspeed", None)):
                if cand is not None and hasattr(cand, "optimizer") and hasattr(cand, "zero_optimization"):
                    eng = cand
                    break
        return getattr(eng, "optimizer", None) if eng is not None else None

    # -- the protocol used by OnlineMergingAdamW -------------------------------------------------------------
    def segments(self, p: torch.Tensor) -> List[Segment]:
        if id(p) in self.names:
            n = p.numel()
            return [Segment(self.names[id(p)], 0, n, 0, n)]
        ds = self._ds_optimizer()
        if ds is None:
            raise RuntimeError("online merging: the optimizer steps a tensor that is not a model parameter "
                               "(DeepSpeed?) and no engine is attached: call reference.attach_trainer(trainer) "
                               "or attach_engine(engine), or use rlkit.optim.RecipeOptimizerMixin")
        import torch.distributed as dist

        if hasattr(ds, "single_partition_of_fp32_groups"):  # ZeRO-1/2
            for gi, flat in enumerate(ds.single_partition_of_fp32_groups):
                if flat is p:
                    break
            else:
                raise RuntimeError("online merging: flat tensor not found among ZeRO-1/2 partitions")
            segs = []
            for lp in ds.bit16_groups[gi]:
                m = getattr(lp, "_hp_mapping", None)
                if m is None:
                    continue
                segs.append(Segment(self.names[id(lp)], m.hp_fragment_address.start, m.hp_fragment_address.numel,
                                    m.lp_fragment_address.start, lp.numel()))
            self.sharded, self.group = True, ds.real_dp_process_group[gi]
            return segs
        if hasattr(ds, "fp32_partitioned_groups_flat"):  # ZeRO-3
            for si, flat in enumerate(ds.fp32_partitioned_groups_flat):
                if flat is p:
                    break
            else:
                raise RuntimeError("online merging: flat tensor not found among ZeRO-3 sub-groups")
            segs, off = [], 0
            for prm in ds.fp16_groups[si]:
                part = prm.partition_numel()
                start = dist.get_rank(prm.ds_process_group) * part
                length = max(0, min(part, prm.ds_numel - start))
                segs.append(Segment(self.names[id(prm)], off, length, min(start, prm.ds_numel), prm.ds_numel))
                off += part
            self.sharded, self.group = True, ds.dp_process_group
            return segs
        raise RuntimeError(f"online merging: unsupported DeepSpeed optimizer {type(ds).__name__}")

    def base_flat(self, p: torch.Tensor, segs: List[Segment]) -> torch.Tensor:
        out = p.detach().reshape(-1).float().clone()  # entries without a base counterpart get tau = 0
        for s in segs:
            if not s.length:
                continue
            shape, bshape = self.shapes[s.name], self.base.shape(s.name)
            if bshape is None:  # a head the base does not have (see check): tau = 0
                continue
            row = 1
            for d in shape[1:]:
                row *= d
            avail = bshape[0] * row if bshape and len(shape) else s.numel
            n = max(0, min(s.length, avail - s.start))
            if n:
                out.narrow(0, s.offset, n).copy_(self.base.read_flat(s.name, s.start, n))
        return out

    def name_ids(self) -> Dict[str, int]:
        return {n: i for i, n in enumerate(sorted(self.shapes))}
