"""The ``aegis-ckpt train CONFIG.yaml`` application: the config file, the model/tokenizer/data builders, the
preflight checks and the run itself (``runner``).

``aegis_ckpt.train`` was one module before 0.2; its names stay importable from here for one release.
"""

from .._moved import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    {"run_training": "runner", "TrainResult": "runner", "FINAL_MODEL_DIR": "..storage.layout"},
)
