"""CardiacEnsembleLib: ACDC cardiac cine-MRI segmentation with an ensemble of 2D smp networks.

Everything here runs without 3D Slicer; `slicer_bridge` is the only module that touches MRML.
A `Case` goes in (`acdc`, `io`), a `Prediction` comes out (`ensemble`), and `metrics` scores it.
"""
__version__ = "0.1.0"
