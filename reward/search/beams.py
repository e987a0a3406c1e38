"""Partial solutions and the step-by-step search loop that beam search and DVTS share.

One round of a step-level search: every open beam (a partial solution) is continued ``n`` times by the
generator up to the step separator, each continuation adds one step, the PRM scores every new partial
solution (one batched ``StepRewardModel.score`` call for all beams of all problems, chunked by
``prm_batch_size``), and a *selection rule* keeps some of them. Round 0 samples ``budget`` first steps from
the prompt; later rounds sample ``beam_width`` steps per open beam, so a round never samples more than
``budget`` steps per problem.

A partial solution is ranked by ``aggregation`` of its step scores (``min`` by default: a path is as good as
its weakest step; ``last``, ``product``, ``mean`` as in ``reward.base.aggregate``); one with no text ranks
below every other (its score is 0, which a raw-score PRM's real steps can fall below). The PRM sees the
problem's question and the steps so far, never the reference answer.

A candidate that ends becomes a final solution of its problem at once; only the open candidates compete
for the beams that go on. Ranking an ended solution against open ones would be unfair: under ``min`` (and
``product``) a partial solution's score is an upper bound of any solution that continues it, so such a
ranking favours never finishing (seen with the ``arithmetic`` checker, whose answer step scores the neutral
0.5 while one more correct calculation scores 1.0: beam search kept adding calculations to the step cap). So
a search collects every solution that ended, plus the kept beams still open at the step cap, and returns
the ``budget`` best of them (so its votes and pass rate count at most N solutions, as Best-of-N's do).

A beam ends (``Beam.done``) when its continuation hit EOS (``eos``), its new step states the final answer
(``answer``: \\boxed{}, ``####`` or "the answer is", with ``stop_at_answer``), its path reached ``max_tokens``
(``length``), or it is still open after ``max_steps`` rounds (``step_cap``). A continuation that reaches
``max_step_tokens`` without a separator leaves its step open: the next round continues that step where it
was cut (no separator is inserted; the PRM meanwhile scores the partial step), so a policy that never writes a
separator ends at the step cap or the token cap. An empty step (only whitespace before the separator) adds
nothing to the text but costs its tokens and one round, so a policy stuck on blank lines ends at the step cap.

Example:
    >>> s = SearchSettings(budget=16, beam_width=4)
    >>> s.n_beams()
    4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from reward.base import AGGREGATIONS, RewardError, StepRewardModel, aggregate
from reward.models.verifier import stated_answer
from reward.search.generator import Continuation, Generator, Problem, check_continuations


@dataclass(frozen=True)
class SearchSettings:
    """How much to search and when a solution ends (see the module docstring).

    ``budget`` (N): steps sampled per round and problem (beam, DVTS) or whole solutions (Best-of-N).
    ``beam_width`` (M): steps sampled per kept beam; beam search keeps N/M beams, DVTS runs N/M subtrees.
    """

    budget: int = 16
    beam_width: int = 4
    max_steps: int = 8
    max_step_tokens: int = 64
    max_tokens: int = 256
    aggregation: str = "min"
    stop_at_answer: bool = True
    prm_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("budget", "beam_width", "max_steps", "max_step_tokens", "max_tokens", "prm_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r} (allowed: {', '.join(AGGREGATIONS)})")

    def n_beams(self) -> int:
        """N/M: the beams beam search keeps, the subtrees DVTS runs; a ValueError unless M divides N."""
        if self.budget % self.beam_width:
            raise ValueError(f"budget {self.budget} is not divisible by beam width {self.beam_width} "
                             f"(beam search and DVTS keep budget / beam width beams)")
        return self.budget // self.beam_width


@dataclass
class Beam:
    """One partial or finished solution of problem ``problem``.

    ``text``: the steps so far joined by the separator. ``steps``: rounds it went through (empty steps
    included). ``open_step``: the last step was cut by ``max_step_tokens`` and goes on in the next round.
    ``tokens``: tokens generated along this path. ``step_texts``/``scores``: the PRM's steps and
    their scores; ``score``: their aggregation. ``done``: why it ended, None while open. ``subtree``: which
    slice of the first round's samples it descends from (DVTS's subtree; for Best-of-N the sample index).
    """

    problem: int
    text: str = ""
    steps: int = 0
    open_step: bool = False
    tokens: int = 0
    step_texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    score: float = 0.0
    done: str | None = None
    subtree: int = 0


@dataclass
class SearchOutcome:
    """What a search returned for one problem: its final solutions and the compute it spent.

    ``tokens``: tokens generated for this problem (every sampled continuation, kept or not); ``samples``:
    continuations sampled; ``samples_per_round``: how many in each generator call.
    """

    finals: list[Beam] = field(default_factory=list)
    tokens: int = 0
    samples: int = 0
    samples_per_round: list[int] = field(default_factory=list)

    def record(self, conts: Sequence[Continuation]) -> None:
        self.tokens += sum(c.tokens for c in conts)
        self.samples += len(conts)


#: keeps the beams that go on from one round's scored open candidates: (candidates, n_beams) -> kept
Selection = Callable[[list[Beam], int], list[Beam]]


def step_separator(prm: StepRewardModel) -> str:
    """The literal text between steps for ``prm`` (what generation stops at), or a ValueError."""
    sep = getattr(getattr(prm, "splitter", None), "separator", None)
    if not sep:
        raise ValueError(f"reward {prm.name or type(prm).__name__!r} splits steps by a regex pattern; step-level "
                         "search needs a literal step separator (splitter mode double_newline, newline or separator)")
    return sep


def score_beams(beams: Sequence[Beam], problems: Sequence[Problem], prm: StepRewardModel,
                settings: SearchSettings) -> None:
    """Score every beam's text with ``prm`` in batches across beams and problems (in place)."""
    todo = [b for b in beams if b.text.strip()]
    for b in beams:
        if not b.text.strip():
            b.step_texts, b.scores, b.score = [], [], 0.0
    for i in range(0, len(todo), settings.prm_batch_size):
        chunk = todo[i:i + settings.prm_batch_size]
        res = prm.score([problems[b.problem].question for b in chunk], [b.text for b in chunk], None)
        if len(res) != len(chunk):
            raise RewardError(f"reward '{prm.name}' returned {len(res)} results for {len(chunk)} responses")
        for b, s in zip(chunk, res):
            b.step_texts, b.scores = [st.text for st in s.steps], list(s.scores)
            b.score = aggregate(b.scores, settings.aggregation)


def prefix(problem: Problem, beam: Beam, sep: str) -> str:
    """What the generator continues for ``beam``: the prompt, the steps so far, and a separator unless the
    last step is still open."""
    if not beam.text:
        return problem.prompt
    return problem.prompt + beam.text + ("" if beam.open_step else sep)


def grow(parent: Beam, cont: Continuation, sep: str, settings: SearchSettings, subtree: int) -> Beam:
    """The partial solution ``parent`` plus what ``cont`` wrote (cut at the separator): a new step, or more
    of the open one."""
    piece = cont.text.split(sep, 1)[0]
    is_open = cont.finish == "length"
    if parent.open_step:
        text = parent.text + (piece if is_open else piece.rstrip())
    else:
        piece = piece.lstrip() if is_open else piece.strip()
        text = parent.text + (sep if parent.text and piece else "") + piece
    last_step = text.rsplit(sep, 1)[-1]
    tokens = parent.tokens + cont.tokens
    done = None
    if cont.finish == "eos":
        done = "eos"
    elif settings.stop_at_answer and not is_open and piece.strip() and stated_answer(last_step) is not None:
        done = "answer"
    elif tokens >= settings.max_tokens:
        done = "length"
    return Beam(problem=parent.problem, text=text, steps=parent.steps + 1, open_step=is_open and bool(text),
                tokens=tokens, done=done, subtree=subtree)


def step_search(problems: Sequence[Problem], generator: Generator, prm: StepRewardModel, settings: SearchSettings,
                select: Selection) -> list[SearchOutcome]:
    """Run rounds until no beam is open: each round's candidates that ended become final solutions, ``select``
    decides which open ones go on (at the step cap, those become final too). Returns one
    :class:`SearchOutcome` per problem."""
    sep = step_separator(prm)
    n_beams = settings.n_beams()
    outcomes = [SearchOutcome() for _ in problems]
    active = [Beam(problem=i) for i in range(len(problems))]
    for r in range(settings.max_steps):
        if not active:
            break
        n = settings.budget if r == 0 else settings.beam_width
        prefixes = [prefix(problems[b.problem], b, sep) for b in active]
        conts = generator.generate(prefixes, n, stop=sep, max_new_tokens=settings.max_step_tokens)
        check_continuations(conts, len(prefixes), n)
        per_problem = [0] * len(problems)
        children = []
        for parent, cs in zip(active, conts):
            outcomes[parent.problem].record(cs)
            per_problem[parent.problem] += len(cs)
            children += [grow(parent, c, sep, settings, j // settings.beam_width if r == 0 else parent.subtree)
                         for j, c in enumerate(cs)]
        for o, k in zip(outcomes, per_problem):
            if k:
                o.samples_per_round.append(k)
        score_beams(children, problems, prm, settings)
        for b in children:
            if b.done:
                outcomes[b.problem].finals.append(b)
        active = select([b for b in children if not b.done], n_beams)
        if r == settings.max_steps - 1:
            for b in active:
                b.done = "step_cap"
                outcomes[b.problem].finals.append(b)
            active = []
    for o in outcomes:
        o.finals = ranked(o.finals)[:settings.budget]
    return outcomes


def ranked(beams: Sequence[Beam]) -> list[Beam]:
    """Highest score first, solutions with no text last; equal scores keep their order (earlier beam, then
    earlier sample)."""
    return sorted(beams, key=lambda b: (not b.text.strip(), -b.score))
