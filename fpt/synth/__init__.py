"""Synthetic-model factory: architecture space, builders, training and the HDF5 pool store.

Papers 000 §4 and 001 §III-B: thousands of shallow, cheaply trained generative models whose
spectral fingerprints mimic real generators; the extractor is trained on them alone.
"""

from fpt.synth.space import ArchSpec, factors, fd_space, grid_space, parse_arch_id, select_archs

__all__ = ["ArchSpec", "factors", "fd_space", "grid_space", "parse_arch_id", "select_archs"]
