"""``python3 -m wsseg.data.check``: the full data check on the command line (see :mod:`wsseg.data.dataset_check`).

The library functions (:func:`~wsseg.data.check_voc`, :func:`~wsseg.data.check_coco`,
:func:`~wsseg.data.check_dataset`) live in :mod:`wsseg.data.dataset_check`; this module is only the entry
point, kept out of the package ``__init__`` so that ``python -m`` runs it cleanly.
"""

from __future__ import annotations

import sys

from .dataset_check import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
