"""Spectral evidence of generative models (paper 000).

- :mod:`fpt.spectrum.core` — batched FFT maths: power spectrum, azimuthal integral, HP ratio,
  grid peaks, streaming mean spectrum (torch; CPU or CUDA).
- :mod:`fpt.spectrum.analysis` — per-image and per-folder analysis behind ``fpt spectrum``.
- :mod:`fpt.spectrum.demo` — the upsampling demo behind ``fpt demo upsample``.

The core maths is re-exported here: ``from fpt.spectrum import azimuthal_integral_fast``.
"""

from fpt.spectrum.core import (
    LUMA,
    GridPeak,
    MeanSpectrum,
    angular_spectrum,
    autocorrelation,
    azimuthal_integral,
    azimuthal_integral_fast,
    dft,
    fftshift,
    find_grid_peaks,
    grid_candidates,
    hp_ratio,
    magnitude_spectrum,
    normalised_frequencies,
    periodic_component,
    power_spectrum,
    radial_spectrum,
    residual_spectra,
    ring_means,
    to_grey,
    zero_interleave,
)

__all__ = [
    "LUMA",
    "GridPeak",
    "MeanSpectrum",
    "angular_spectrum",
    "autocorrelation",
    "azimuthal_integral",
    "azimuthal_integral_fast",
    "dft",
    "fftshift",
    "find_grid_peaks",
    "grid_candidates",
    "hp_ratio",
    "magnitude_spectrum",
    "normalised_frequencies",
    "periodic_component",
    "power_spectrum",
    "radial_spectrum",
    "residual_spectra",
    "ring_means",
    "to_grey",
    "zero_interleave",
]
