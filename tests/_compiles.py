"""Count XLA compilations of a named program (tests that compiled programs are reused)."""

import jax


def count_compiles(name):
    """Context manager collecting the XLA compilations of programs named ``name`` (None: all)."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def counting():
        hits = []

        class _Handler(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                if "Finished XLA compilation" in msg and (name is None or f"jit({name})" in msg):
                    hits.append(msg)

        handler = _Handler(level=logging.DEBUG)
        loggers = [logging.getLogger(n) for n in ("jax._src.dispatch", "jax._src.interpreters.pxla")]
        old = [(lg.level, lg.propagate) for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.DEBUG)
        try:
            with jax.log_compiles(True):
                yield hits
        finally:
            for lg, (level, prop) in zip(loggers, old, strict=True):
                lg.removeHandler(handler)
                lg.setLevel(level)
                lg.propagate = prop

    return counting()

