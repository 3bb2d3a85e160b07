"""Test-suite settings.

Hypothesis draws the same examples in every run (``derandomize``), so that the suite is
deterministic: a run that passed passes again, and CI cannot fail on a draw no one can replay.
``HYPOTHESIS_PROFILE=explore pytest`` draws new examples in each run, to look for bugs.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
