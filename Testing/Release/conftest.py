"""The release check: the committed release artefacts (the shipped manifest and member files,
`reports/acdc_test.md`, `reports/acdc_test/scores.csv`) agree with each other.

Run by `CardiacEnsembleDev/scripts/release_ensemble.sh` as its last step, after it has written
them; not part of the README's test command, which tests the code (`Testing/Python`). Run it
alone with `.venv/bin/python -m pytest Testing/Release`."""
from Testing.Python.conftest import acdc  # noqa: F401
