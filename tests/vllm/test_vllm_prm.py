"""The PRM served by vLLM's pooling runner scores partial answers as the same model run
locally by transformers."""

import numpy as np

from probinfer.llm import ArithmeticTask, default_problems
from probinfer.llm.hf import HFRewardModel


def _partials(n: int, seed: int):
    """Prompts and partial answers, right and wrong: every prefix of each problem's
    solution, and the same prefixes with the last step's value off by one."""
    task = ArithmeticTask()
    prompts, partials = [], []
    for prompt, _ in default_problems(n, seed=seed):
        values = task.parse(prompt).running_values
        steps = [f"{v};" for v in values[:-1]] + [f"{values[-1]}|"]
        for k in range(1, len(steps) + 1):
            wrong = f"{values[k - 1] + 1}{steps[k - 1][-1]}"
            for last in (steps[k - 1], wrong):
                prompts.append(prompt)
                partials.append((*steps[: k - 1], last))
    return prompts, partials


def test_pooling_scores_equal_local(served_prm, prm_dir):
    prompts, partials = _partials(12, seed=21)
    local = HFRewardModel.from_pretrained(prm_dir, device="cpu")
    assert local.kind == "sequence"
    expected = local.score(prompts, partials)
    got = served_prm.score(prompts, partials)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # the scores differ between the texts: the comparison is not one of constants
    assert np.ptp(expected) > 1e-3
