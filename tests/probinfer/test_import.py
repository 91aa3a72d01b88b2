import subprocess
import sys

HEAVY = ("torch", "transformers", "jax", "numpyro", "pyro", "arviz")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_probinfer_loads_nothing_heavy():
    loaded = _modules_after("import probinfer")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_core_modules_never_import_torch_or_transformers():
    stmt = (
        "import probinfer; from probinfer import Particles, resample, distributions; "
        "import probinfer.inference_data, probinfer.lgssm, probinfer.cli, probinfer.smc, "
        "probinfer.engine, probinfer.targets, probinfer.llm; probinfer.llm.particle_filter"
    )
    loaded = _modules_after(stmt)
    assert "torch" not in loaded and "transformers" not in loaded


def test_lazy_attributes_resolve():
    import probinfer

    assert callable(probinfer.resample) and probinfer.Particles.__name__ == "Particles"
    assert "resample" in dir(probinfer)
    try:
        probinfer.does_not_exist  # noqa: B018
    except AttributeError as err:
        assert "does_not_exist" in str(err)
    else:
        raise AssertionError("expected AttributeError")
