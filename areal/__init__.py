"""areal core: the algorithms and bookkeeping every part of the system shares.

Imports torch and numpy only. Ray, vLLM and DeepSpeed live in ``actors/``,
``rollouts/`` and ``learners/``; a unit test guards this boundary.
"""

__version__ = "0.1.0"
