"""CardiacEnsembleLib: ACDC cardiac cine-MRI segmentation with an ensemble of 2D smp networks.

The runtime that the Slicer extension installs, in packages named for the pipeline stage:

- `core`: the data model (`Case`, `Prediction`), labels, options, the typed `Manifest`,
  errors and progress/cancel. Imports without torch, so the Slicer module can read it before the
  dependencies are installed.
- `io`: images (NIfTI, NRRD, ...) and ACDC patient folders -> `Case`.
- `inference`: preprocessing, members, the one volume runner, fusion, post-processing,
  `Ensemble`, cine and batch.
- `evaluation`: metrics (Dice, HD95, volumes, EF) and scoring members and rules side by side.
- `slicer`: the MRML side (only this package imports `slicer`).
- `cli`: the `cardiac-ensemble` command.

Model-making (training, selection, shipping, reports, benchmarks) lives in the separate
workbench package `CardiacEnsembleDev`, which imports this one and never the reverse.
"""
from .core.version import __version__, MODELS_RELEASE  # noqa: F401
