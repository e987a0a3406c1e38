"""A chained run (``algorithm.name: chain``): each stage of the recipe's ``stages:`` runs as its own run in
``RUN/stages/NAME/`` (its recipe, checkpoints, report), the next stage starting from its ``policy/``; the
chain's ``report/`` puts the stages' held-out numbers side by side, and ``RUN/policy`` is the last stage's.

``rlkit train --resume RUN`` skips the finished stages and resumes the one that stopped from its newest
complete checkpoint (or starts it over in its folder when it has none). A stage's held-out evaluation
"before training" is the previous stage's "after" when both evaluate the same way (no second evaluation).

Example:
    >>> from rlkit.config import load_recipe
    >>> run_chain(load_recipe("quickstart"), Path("runs/quickstart"))
    >>> # runs/quickstart/stages/sft/, runs/quickstart/stages/grpo/, runs/quickstart/report/index.md
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from reward.labeling.io import atomic_write_text
from rlkit.config import stage_recipes
from rlkit.distributed import RECIPE_FILE
from rlkit.launch import resume, run_finished, train
from rlkit.recipe import Recipe
from rlkit.report import StageResult, read_stage_result, write_chain_report

WALL_FILE = "stage_wall.json"


def run_chain(recipe: Recipe, run_dir: Path) -> list[StageResult]:
    """Run (or resume) every stage in order, then write the chain report, ``run_info.json`` and ``policy``."""
    run_dir = Path(run_dir)
    stages = stage_recipes(recipe, run_dir=run_dir)
    results = []
    for i, (spec, stage) in enumerate(zip(recipe.stages, stages)):
        stage_dir = run_dir / "stages" / spec.name
        where = f"stage {i + 1}/{len(stages)} {spec.name} ({stage.algorithm.name})"
        if run_finished(stage_dir):
            print(f"rlkit: {where} finished already: {stage_dir}")
        else:
            start = time.time()
            spent = _wall(stage_dir)
            if (stage_dir / RECIPE_FILE).is_file():
                print(f"rlkit: {where}: resuming {stage_dir}")
                resume(stage_dir)
            else:
                print(f"rlkit: {where} -> {stage_dir}")
                train(stage, run_dir=stage_dir)
            atomic_write_text(stage_dir / WALL_FILE, json.dumps({"seconds": spent + time.time() - start}))
        results.append(read_stage_result(spec.name, stage, stage_dir, _wall(stage_dir)))
    last_policy = run_dir / "stages" / recipe.stages[-1].name / "policy"
    link = run_dir / "policy"
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(last_policy.relative_to(run_dir))
    write_chain_report(run_dir, recipe, results)
    atomic_write_text(run_dir / "run_info.json", json.dumps(
        {"trainer": "chain", "stages": [r.name for r in results], "policy": str(last_policy)}, indent=1))
    return results


def _wall(stage_dir: Path) -> float:
    try:
        return float(json.loads((stage_dir / WALL_FILE).read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return 0.0
