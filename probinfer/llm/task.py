"""The bundled multi-step arithmetic task, its character tokenizer and its verifier.

A problem is a chain of one-digit operands joined by ``+``/``-`` (``"3+5-4="``); the
solution writes the running value after each operand, steps separated by ``";"`` and the
last one ended by ``"|"`` (``"3;8;4|"``). The final answer is the last running value.

The task is pure Python (no torch): it generates problems from a seed, checks partial
solutions step by step (the programmatic verifier behind
:class:`~probinfer.llm.reward.VerifierReward`), and extracts final answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from probinfer.checks import check_num

__all__ = [
    "ArithmeticProblem",
    "ArithmeticTask",
    "CharTokenizer",
    "DELIMITER",
    "STOP",
    "regex_extractor",
]

DELIMITER = ";"
STOP = "|"
_INT = re.compile(r"-?\d+")
_ANSWER = re.compile(r"(-?\d+)\s*\|\s*$")


def regex_extractor(pattern: str = r"(-?\d+)\s*\|\s*$"):
    """An answer extractor: the first group of ``pattern`` searched in the full text.

    Returns a function ``text -> str | None`` (``None`` when the pattern does not match,
    e.g. for an unfinished answer).
    """
    compiled = re.compile(pattern)

    def extract(text: str) -> str | None:
        m = compiled.search(text)
        if m is None:
            return None
        return m.group(1) if m.groups() else m.group(0)

    return extract


@dataclass(frozen=True)
class ArithmeticProblem:
    """One problem: operands ``a_0..a_k`` and operators ``op_1..op_k`` (``"+"``/``"-"``)."""

    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def prompt(self) -> str:
        """The prompt text, e.g. ``"3+5-4="``."""
        out = str(self.operands[0])
        for op, a in zip(self.operators, self.operands[1:]):
            out += op + str(a)
        return out + "="

    @property
    def running_values(self) -> tuple[int, ...]:
        """The correct value after each operand."""
        vals = [self.operands[0]]
        for op, a in zip(self.operators, self.operands[1:]):
            vals.append(vals[-1] + a if op == "+" else vals[-1] - a)
        return tuple(vals)

    @property
    def solution(self) -> str:
        """The correct solution text, e.g. ``"3;8;4|"``."""
        return DELIMITER.join(map(str, self.running_values)) + STOP

    @property
    def answer(self) -> str:
        """The correct final answer as a string."""
        return str(self.running_values[-1])

    @property
    def num_steps(self) -> int:
        return len(self.operands)


class ArithmeticTask:
    """Generator and verifier of multi-step arithmetic problems.

    Parameters
    ----------
    min_operands, max_operands
        Number of operands per problem (inclusive range); the solution has that many
        steps.
    """

    def __init__(self, min_operands: int = 5, max_operands: int = 7):
        if not (isinstance(min_operands, int) and isinstance(max_operands, int)):
            raise TypeError("min_operands and max_operands must be integers")
        if not 2 <= min_operands <= max_operands:
            raise ValueError(
                "need 2 <= min_operands <= max_operands, got "
                f"min_operands={min_operands}, max_operands={max_operands}"
            )
        self.min_operands = min_operands
        self.max_operands = max_operands

    def sample(self, rng: np.random.Generator) -> ArithmeticProblem:
        """One random problem drawn with ``rng``."""
        k = int(rng.integers(self.min_operands, self.max_operands + 1))
        operands = tuple(int(x) for x in rng.integers(1, 10, size=k))
        operators = tuple("+" if b else "-" for b in rng.integers(0, 2, size=k - 1))
        return ArithmeticProblem(operands, operators)

    def problems(self, n: int, seed: int = 0) -> list[ArithmeticProblem]:
        """``n`` problems from ``np.random.default_rng(seed)`` (same seed, same problems)."""
        check_num(n, "n")
        rng = np.random.default_rng(seed)
        return [self.sample(rng) for _ in range(int(n))]

    def noisy_solution(self, problem: ArithmeticProblem, rng, error_rate: float) -> str:
        """A solution in which every operation is wrong with probability ``error_rate``.

        A wrong step is off by a small nonzero amount (1..3); later steps carry on from the
        wrong value (errors propagate, as in a model's own mistakes). Used to train an
        imperfect language model whose per-step error rate is ``error_rate``.
        """
        vals = [problem.operands[0]]
        for op, a in zip(problem.operators, problem.operands[1:]):
            v = vals[-1] + a if op == "+" else vals[-1] - a
            if rng.random() < error_rate:
                v += int(rng.choice([-3, -2, -1, 1, 2, 3]))
            vals.append(v)
        return DELIMITER.join(map(str, vals)) + STOP

    @staticmethod
    def parse(prompt: str) -> ArithmeticProblem:
        """The problem of a prompt ``"3+5-4="`` (``ValueError`` if malformed)."""
        if not isinstance(prompt, str) or not re.fullmatch(r"\d([+-]\d)+=", prompt):
            raise ValueError(f"prompt must look like '3+5-4=', got {prompt!r}")
        body = prompt[:-1]
        return ArithmeticProblem(tuple(int(c) for c in body[0::2]), tuple(body[1::2]))

    @staticmethod
    def step_correct(prompt: str, steps) -> list[bool]:
        """For each step of a partial solution, whether every step up to it is correct.

        A step is correct when its number equals the correct running value at that
        position (and it is not past the last operand); a step after a wrong one is
        counted wrong (the prefix is wrong).
        """
        truth = ArithmeticTask.parse(prompt).running_values
        out, ok = [], True
        for i, s in enumerate(steps):
            body = s.rstrip(DELIMITER + STOP)
            ended = s.endswith(STOP)
            good = i < len(truth) and _INT.fullmatch(body) is not None and int(body) == truth[i]
            if ended and i != len(truth) - 1:
                good = False
            if not ended and i == len(truth) - 1 and s.endswith(DELIMITER):
                good = False
            ok = ok and good
            out.append(ok)
        return out

    @staticmethod
    def step_locally_correct(prompt: str, steps) -> list[bool]:
        """For each step, whether it applies its operation correctly to the *previous step's
        value* (whatever that value is), and ends with ``"|"`` exactly at the last operand.

        These local labels are what a process reward model can check from two neighbouring
        steps; the answer is right when every step is locally right.
        """
        prob = ArithmeticTask.parse(prompt)
        out, prev = [], None
        for i, s in enumerate(steps):
            body = s.rstrip(DELIMITER + STOP)
            if _INT.fullmatch(body) is None or i >= prob.num_steps:
                out.append(False)
                prev = None
                continue
            v = int(body)
            if i == 0:
                good = v == prob.operands[0]
            elif prev is None:
                good = False
            else:
                a = prob.operands[i]
                good = v == (prev + a if prob.operators[i - 1] == "+" else prev - a)
            good = good and s.endswith(STOP) == (i == prob.num_steps - 1)
            out.append(good)
            prev = v
        return out

    @staticmethod
    def extract_answer(text: str) -> str | None:
        """The final answer of a finished solution text (``None`` if unfinished)."""
        m = _ANSWER.search(text)
        return None if m is None else m.group(1)


class CharTokenizer:
    """A character tokenizer: one id per character, plus a padding id 0.

    Parameters
    ----------
    chars
        The vocabulary characters (ids ``1..len(chars)``).
    """

    PAD = 0

    def __init__(self, chars: str = "0123456789+-=;|"):
        if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
            raise ValueError(
                f"chars must be a non-empty string of distinct characters, got {chars!r}"
            )
        self.chars = chars
        self._ids = {c: i + 1 for i, c in enumerate(chars)}
        self.pad_token_id = self.PAD

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (``ValueError`` on a character outside the vocabulary)."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the vocabulary") from err

    def decode(self, ids) -> str:
        """Text of ``ids`` (padding dropped)."""
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"])
