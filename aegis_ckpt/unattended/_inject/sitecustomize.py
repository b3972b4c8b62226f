"""Startup hook for ``aegis-ckpt run --inject`` (this folder is put first on the child's PYTHONPATH).

Python imports ``sitecustomize`` once at startup. This one first runs the ``sitecustomize`` that would have run
without it (a distribution's or a virtualenv's), then, only when ``AEGIS_INJECT=1`` is set, installs an import
hook that patches ``transformers.Trainer`` once transformers is imported. It imports nothing heavy itself, and
it never stops the program: a failure is reported on stderr and the script runs as it would without it.
"""


def _chain_to_next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_aegis_chained_sitecustomize"] = module
    spec.loader.exec_module(module)


def _install() -> None:
    import os
    import sys

    try:
        _chain_to_next_sitecustomize()
    except Exception as e:  # the other hook's failure is its own; report it as Python would
        print(
            f"Error in sitecustomize (run before the aegis-ckpt hook): {type(e).__name__}: {e}",
            file=sys.stderr,
        )
    if os.environ.get("AEGIS_INJECT") != "1":
        return
    try:
        from aegis_ckpt.unattended.inject import install_import_hook

        install_import_hook()
    except Exception as e:
        print(
            f"[aegis-ckpt inject] WARNING could not install the Trainer hook ({type(e).__name__}: {e}): "
            "this run has NO crash-safe checkpoints",
            file=sys.stderr,
        )


_install()
