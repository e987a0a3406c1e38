"""The recipe schema and the `rlkit` CLI: broken recipes fail with one line, exit 2 and no run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlkit.config import RecipeError, load_recipe, shipped_recipes

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "rlkit" / "recipes" / "grpo_prm_quickstart.yaml"


def rlkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_quickstart_recipe_validates_and_overrides():
    r = load_recipe(QUICK, ["training.max_steps=2", "reward={name: verifier}", "algorithm.credit=min_form"])
    assert r.training["max_steps"] == 2 and r.reward.name == "verifier" and r.algorithm.credit == "min_form"
    assert r.model == "embedded:smollm2-135m-instruct"


@pytest.mark.parametrize("override, message", [
    ("algorithm.bogus=1", "unknown key 'algorithm.bogus' (allowed: name, credit,"),
    ("training.max_steps=abc", "training.max_steps: expected an integer, got 'abc'"),
    ("training.max_stepz=3", "unknown key 'training.max_stepz' for GRPOConfig"),
    ("reward.name=nope", "reward.name: unknown reward 'nope' (registered: arithmetic,"),
    ("reward.args.bogus=1", "unknown argument 'bogus' for reward 'arithmetic'"),
    ("algorithm.credit=sum", "algorithm.credit: unknown credit mode 'sum' (allowed: process_grpo, min_form, outcome, "
                             "or package.module:function)"),
    ("algorithm.credit=nomod_xyz:fn", "algorithm.credit: credit function 'nomod_xyz:fn' cannot be imported"),
    ("data.train=/nonexistent/train.jsonl", "data.train: data file not found: /nonexistent/train.jsonl"),
    ("model=/nonexistent/model", "model: model folder not found: /nonexistent/model"),
    ("model=embedded:gpt5", "model: unknown embedded model 'gpt5'"),
    ("distribution=zero4", "distribution: unknown value 'zero4'"),
    ("optimizer.name=sgd", "optimizer.name: unknown value 'sgd' (allowed: adamw, ondare, onties)"),
    ("training.output_dir=x", "training.output_dir: set by rlkit from the recipe"),
])
def test_bad_recipes_raise_one_line(override, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(QUICK, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_recipe_exit_2_and_no_run_folder(tmp_path):
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(QUICK.read_text())
    data["reward"]["name"] = "not-a-reward"
    bad.write_text(yaml.safe_dump(data))
    out = tmp_path / "runs"
    res = rlkit("train", str(bad), "--output-dir", str(out))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("rlkit: error: reward.name: unknown reward")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n")
    res = rlkit("check", str(bad))
    assert res.returncode == 2 and "not valid YAML (line" in res.stderr
    res = rlkit("train", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "recipe file not found" in res.stderr


def test_cli_recipes_and_rewards_listing():
    res = rlkit("recipes")
    assert res.returncode == 0
    names = [line.split()[0] for line in res.stdout.strip().splitlines()]
    assert names == shipped_recipes() and "grpo_prm_quickstart" in names
    res = rlkit("rewards")
    assert res.returncode == 0 and "qwen-prm" in res.stdout and "verifier" in res.stdout


def test_reward_swap_is_one_line(tmp_path):
    lines = QUICK.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("reward:"))
    lines[i] = "reward: {name: verifier}"
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text("\n".join(lines))
    r = load_recipe(swapped)
    assert r.reward.name == "verifier" and r.reward.args == {}


def test_every_shipped_recipe_validates():
    for name in shipped_recipes():
        try:
            load_recipe(name)
        except RecipeError as e:  # recipes whose data is produced by an earlier pipeline stage
            assert "data file not found" in str(e), (name, str(e))


def test_recipe_reference_documents_every_key():
    import dataclasses

    from rlkit import config

    text = (REPO / "docs" / "recipes.md").read_text()
    for cls in (config.Recipe, config.DataConfig, config.AlgorithmConfig, config.GenerationConfig,
                config.PeftConfig):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in text, f"docs/recipes.md misses {cls.__name__}.{f.name}"
    from rlkit.algorithms import algorithm_names
    from rlkit.credit import CREDIT_MODES
    from rlkit.optim.trainer_hook import OPTIMIZER_NAMES

    for name in algorithm_names() + CREDIT_MODES + OPTIMIZER_NAMES:
        assert name in text


def test_dead_reward_server_fails_in_one_line_and_marks_the_run(tiny_dirs, tmp_path):
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "runs"
    res = rlkit("train", "grpo_prm_quickstart", "--output-dir", str(out), "--set", f"model={tiny_dirs['policy']}",
                "--set", f"reward={{name: remote, args: {{url: 'http://127.0.0.1:{port}/score', retries: 1, timeout: 2}}}}",
                "--set", "training.max_steps=1", "--set", "training.max_completion_length=8",
                "--set", "training.num_generations=2", "--set", "training.per_device_train_batch_size=2",
                "--set", "data.num_eval=0")
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("rlkit: error:")]
    assert len(errors) == 1 and errors[0].startswith("rlkit: error: reward:") and str(port) in errors[0]
    assert "Traceback" not in res.stderr
    run = next(out.iterdir())
    assert (run / "FAILED.txt").is_file() and not (run / "policy").exists()


def test_a_reader_that_stops_early_gets_no_traceback():
    # `rlkit check quickstart | head -1`: the pipe closes after the first line; rlkit stops quietly (exit 141)
    proc = subprocess.Popen([sys.executable, "-m", "rlkit.cli", "check", "quickstart"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and first.startswith("quickstart: ok")
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_sigterm_unwinds_rlkit_like_ctrl_c_so_exit_handlers_run():
    # a command that is terminated (a scheduler, `kill`) must still run its exit handlers: they shut down helper
    # processes such as a vLLM engine, which otherwise lived on as orphans holding ~8 GB after `rlkit search`
    script = (
        "import argparse, atexit, os, signal, sys, time\n"
        "from rlkit import cli\n"
        "class Parser:\n"
        "    def parse_args(self, argv):\n"
        "        return argparse.Namespace(func=lambda a: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(30)))\n"
        "cli.build_parser = Parser\n"
        "atexit.register(lambda: print('exit handlers ran', flush=True))\n"
        "sys.exit(cli.main([]))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=25, cwd=REPO)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert res.stderr.strip().splitlines()[-1] == "rlkit: error: terminated (SIGTERM)"
    assert res.stdout.strip() == "exit handlers ran"
