"""The particle filter through vLLM (LM and PRM served) is as accurate as with the same
models run locally, and the LM server's prefix cache is in use."""

import jax
import numpy as np

from probinfer.llm import LLMStateSpaceModel, default_problems, particle_filter
from probinfer.llm.default import default_model_kwargs
from probinfer.llm.hf import HFCausalLM, HFRewardModel

PROBLEMS, BUDGET = 40, 8


def test_particle_filter_accuracy_matches_local(
    vllm_servers, served_lm, served_prm, lm_dir, prm_dir
):
    settings = default_model_kwargs()
    local = LLMStateSpaceModel(
        HFCausalLM.from_pretrained(lm_dir, device="cpu"),
        HFRewardModel.from_pretrained(prm_dir, device="cpu"),
        **settings,
    )
    lm = vllm_servers["lm_a"]
    served = LLMStateSpaceModel(served_lm(lm.v1), served_prm, **settings)
    hits = lm.metric("vllm:prefix_cache_hits_total")
    right = np.zeros((PROBLEMS, 2))
    for i, (prompt, answer) in enumerate(default_problems(PROBLEMS, seed=31)):
        key = jax.random.key(i)
        for j, model in enumerate((local, served)):
            res = particle_filter(key, model, prompt, BUDGET)
            assert len(res.particles.values) == BUDGET
            right[i, j] = res.selected == answer
    # paired by problem: the two runs draw different samples of the same problems
    diff = right[:, 0] - right[:, 1]
    se = diff.std(ddof=1) / np.sqrt(PROBLEMS)
    assert abs(diff.mean()) <= 3 * se, (right.mean(0), se)
    # prefix caching works on whole 32-token blocks (BLOCK_SIZE): the later steps' contexts
    # (prompt + steps so far) fill a block that the previous step's request cached; with
    # vLLM's CPU default block of 128 tokens (the whole context) this stays at 0
    assert lm.metric("vllm:prefix_cache_hits_total") > hits
