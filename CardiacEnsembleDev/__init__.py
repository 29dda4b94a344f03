"""CardiacEnsembleDev: the workbench that makes and releases the models CardiacEnsembleLib runs.

- `training`: member recipes, the training loop, slice packs (training where ACDC is absent).
- `release`: choosing the shipped settings on validation (`selection`), shipping runs as the
  model zoo (`ship`), the test report and the side-by-side cost benchmark.
- `cli`: registers `train`, `pack`, `ship`, `select`, `benchmark` and `report` with the
  `cardiac-ensemble` command (entry-point group `cardiac_ensemble.commands`).

It imports the runtime and never the reverse, and it is never installed into Slicer; install
it with the optional extra: `pip install -e ".[train]"`.
"""
