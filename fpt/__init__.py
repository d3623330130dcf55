"""fpt — fingerprints of generative models."""

import os as _os

# Spinning OpenMP workers (the default ACTIVE policy) made 2-thread torch ops 5-20x slower on a
# loaded 2-core laptop in our benchmarks; PASSIVE lets idle workers sleep. Must be set before
# torch is imported, hence here; a user's explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
