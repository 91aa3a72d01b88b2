import contextlib
import logging
import warnings

import pytest

# ArviZ 0.2x announces its refactor at import; it is noise in test output.
warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

# tests/vllm starts real vLLM servers: only `make test-vllm` (which names the folder) runs it.
collect_ignore = ["vllm"]


@pytest.fixture
def xla_compiles():
    """``with xla_compiles() as compiled:`` lists the XLA compilations started inside the
    block (the first 120 characters of each ``jax_log_compiles`` message)."""
    import jax

    @contextlib.contextmanager
    def record():
        compiled: list[str] = []

        class Compiles(logging.Handler):
            def emit(self, record):
                message = record.getMessage()
                if message.startswith("Compiling"):
                    compiled.append(message[:120])

        handler = Compiles(logging.WARNING)
        logger = logging.getLogger("jax._src.interpreters.pxla")
        logger.addHandler(handler)
        jax.config.update("jax_log_compiles", True)
        try:
            yield compiled
        finally:
            jax.config.update("jax_log_compiles", False)
            logger.removeHandler(handler)

    return record
