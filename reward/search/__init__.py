"""PRM-guided search at inference: step-level beam search, DVTS and Best-of-N with (weighted) majority.

    from reward.registry import build_reward
    from reward.search import Problem, SearchSettings, beam_search, compare
    from reward.search.hf import HFGenerator

    gen = HFGenerator("embedded:smollm2-135m-instruct")
    problems = [Problem(prompt=gen.chat(msgs), question=q, reference=ref) for msgs, q, ref in rows]
    outcomes = beam_search(problems, gen, build_reward("arithmetic"), SearchSettings(budget=16, beam_width=4))
    table = compare(problems, gen, build_reward("arithmetic"), ["beam", "dvts", "bon"], [4, 16], SearchSettings())

Files: ``generator`` (the policy protocol), ``hf`` / ``vllm_generator`` (its implementations), ``beams``
(partial solutions, PRM scoring, the shared step loop), ``beam``, ``dvts``, ``best_of_n`` (the methods),
``compare`` (methods x budgets, graded). ``rlkit search`` is the command line.
"""

from reward.search.beam import beam_search
from reward.search.beams import Beam, SearchOutcome, SearchSettings, ranked, step_separator
from reward.search.best_of_n import best_of_n_search
from reward.search.compare import METHODS, compare, evaluate
from reward.search.dvts import dvts
from reward.search.generator import Continuation, Generator, Problem

__all__ = ["Beam", "Continuation", "Generator", "METHODS", "Problem", "SearchOutcome", "SearchSettings",
           "beam_search", "best_of_n_search", "compare", "dvts", "evaluate", "ranked", "step_separator"]
