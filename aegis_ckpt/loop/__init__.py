"""Custom training loops: the seed API's three managers (``manager``: ``rolling``, ``emergency``, ``enhanced``;
what they share in ``facade``), the checkpointer under them (``engine``), one save (``savepath``), resume
(``resumepath``), the ranks under torch.distributed (``ranks``), where a save may happen (``safepoints``) and what
a custom-loop checkpoint holds (``loopstate``).

``aegis_ckpt.loop`` was one module before 0.2; ``LoopCheckpointer`` stays importable from here for one release.
"""

from .._moved import lazy_exports

__getattr__ = lazy_exports(__name__, {"LoopCheckpointer": "engine"})
