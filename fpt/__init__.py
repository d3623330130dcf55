"""fpt — fingerprints of generative models: which model made this image?

The public Python API (the CLI is a thin shell over the same functions)::

    import fpt
    ex = fpt.load_extractor()                                   # the shipped extractor
    fpt.enroll("model-a", "images/model-a", "gallery.h5", ex)   # folders walked recursively
    ids, failed = fpt.identify("suspects/", "gallery.h5", ex)   # best model per image, or "unknown"
    v = fpt.verify("suspects/x.png", "images/model-a", "gallery.h5", ex)
    spectra = fpt.analyse_spectra(["suspects/"])                # paper 000's spectral evidence

Names are imported on first use, so ``import fpt`` (and ``fpt --help``) stays fast.
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING

# Spinning OpenMP workers (the default ACTIVE policy) made 2-thread torch ops 5-20x slower on a
# loaded 2-core laptop in our benchmarks; PASSIVE lets idle workers sleep. Must be set before
# torch is imported, hence here; a user's explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "load_extractor": ("fpt.extractor.checkpoint", "load_extractor"),
    "Extractor": ("fpt.extractor.checkpoint", "Extractor"),
    "embed": ("fpt.api", "embed"),
    "Embedded": ("fpt.api", "Embedded"),
    "open_gallery": ("fpt.api", "open_gallery"),
    "enroll": ("fpt.api", "enroll"),
    "Enrolment": ("fpt.api", "Enrolment"),
    "identify": ("fpt.api", "identify"),
    "verify": ("fpt.api", "verify"),
    "Gallery": ("fpt.gallery", "Gallery"),
    "Identification": ("fpt.attribution", "Identification"),
    "Verification": ("fpt.attribution", "Verification"),
    "lineage": ("fpt.attribution", "lineage"),
    "analyse_spectra": ("fpt.spectrum.analysis", "analyse_paths"),
    "FolderSpectrum": ("fpt.spectrum.analysis", "FolderSpectrum"),
    "FptError": ("fpt.errors", "FptError"),
    "InputError": ("fpt.errors", "InputError"),
    "ImageError": ("fpt.errors", "ImageError"),
    "EmptyInputError": ("fpt.errors", "EmptyInputError"),
    "StoreError": ("fpt.errors", "StoreError"),
    "CheckpointError": ("fpt.errors", "CheckpointError"),
    "ExtractorMismatchError": ("fpt.errors", "ExtractorMismatchError"),
    "ConfigError": ("fpt.errors", "ConfigError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'fpt' has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from fpt.api import Embedded, Enrolment, embed, enroll, identify, open_gallery, verify
    from fpt.attribution import Identification, Verification, lineage
    from fpt.errors import (CheckpointError, ConfigError, EmptyInputError, ExtractorMismatchError, FptError, ImageError,
                            InputError, StoreError)
    from fpt.extractor.checkpoint import Extractor, load_extractor
    from fpt.gallery import Gallery
    from fpt.spectrum.analysis import FolderSpectrum
    from fpt.spectrum.analysis import analyse_paths as analyse_spectra
