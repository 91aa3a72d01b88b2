"""Token-exact steps through a real vLLM server: the token ids it returns decode to the
step text, and the client splits steps at the delimiter token."""

import jax

from probinfer.llm import LLMStateSpaceModel, Usage, default_problems, sample_rollouts
from probinfer.llm.default import default_model_kwargs
from probinfer.llm.hf import load_tokenizer

N = 8


def test_steps_are_token_exact(vllm_servers, served_lm, lm_dir, check_particles):
    tok = load_tokenizer(lm_dir)
    settings = default_model_kwargs()
    model = LLMStateSpaceModel(served_lm(vllm_servers["lm_a"].v1), None, **settings)
    lengths = []
    for j, (prompt, _) in enumerate(default_problems(4, seed=11)):
        store, _ = sample_rollouts(jax.random.key(j), model, prompt, N, Usage())
        check_particles(store, tok, N, settings["max_steps"])
        lengths += [len(t) for toks in store.step_tokens for t in toks]
    # the steps are numbers and a delimiter: several tokens each, not one token per step
    assert max(lengths) >= 3


def test_same_seed_same_steps(vllm_servers, served_lm):
    """The request seed comes from the jax key: the same key gives the same answers."""
    model = LLMStateSpaceModel(served_lm(vllm_servers["lm_a"].v1), None, **default_model_kwargs())
    prompt = default_problems(1, seed=12)[0][0]
    a, _ = sample_rollouts(jax.random.key(5), model, prompt, N, Usage())
    b, _ = sample_rollouts(jax.random.key(5), model, prompt, N, Usage())
    c, _ = sample_rollouts(jax.random.key(6), model, prompt, N, Usage())
    assert a.steps == b.steps
    assert a.steps != c.steps
