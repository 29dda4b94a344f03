"""The two versions, one place each: the Python package, and the model release it ships.

The model release is the manifest's own `version` (`models/manifest.json`), written by `ship`;
this constant names the release the package was built and tested with, and a test checks that
the two agree.
"""
__version__ = "0.2.0"
MODELS_RELEASE = "1.4"
