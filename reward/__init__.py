"""reward: how a reasoning step is scored. Step segmentation (steps.py), the reward interface and aggregation
(base.py), the registry recipes resolve names through (registry.py), the reward models (models/), PRM data
labelling (labeling/) and evaluation (evaluation/). Knows nothing of RL: usable for Best-of-N or evaluation
alone."""
