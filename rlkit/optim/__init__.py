"""Optimizers: online merging (OnDARE / OnTIES AdamW) and the recipe -> optimizer hook for Trainers."""

from .online_merging import OnDAREAdamW, OnlineMergingAdamW, OnTIESAdamW, Segment, TensorReference
from .trainer_hook import RecipeOptimizerMixin, build_optimizer, decay_parameter_names
from .zero_mapping import SafetensorsBase, SafetensorsReference

__all__ = ["OnDAREAdamW", "OnTIESAdamW", "OnlineMergingAdamW", "Segment", "TensorReference",
           "SafetensorsBase", "SafetensorsReference", "build_optimizer", "RecipeOptimizerMixin",
           "decay_parameter_names"]
