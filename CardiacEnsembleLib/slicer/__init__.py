"""The package's data model <-> 3D Slicer's MRML scene, one module per job:

- `nodes`: the bridge's error, the attributes it writes on nodes, how messages name a node.
- `scene`: a scene wired as the application wires its own (headless, tests); a node by name.
- `volumes`: scalar volume nodes <-> `Case` (geometry as is), and what cannot be segmented.
- `segmentations`: ACDC label maps <-> segmentation nodes by segment name, with terminology.
- `prediction`: a `Prediction` into the scene (fused, members, uncertainty); segmenting a
  volume node, by the worker process (`SegmentationJob`) or synchronously in this process.
- `tables`: scores of segmentations as `MetricRow`s, table nodes and CSV.
- `acdc`: an ACDC patient folder into the scene, under one patient and study.
- `hierarchy`: results under the input's study in the subject hierarchy, details in a folder.
- `files`: nodes, segmentations and scenes to and from files.
- `worker`: the client of the inference worker process that the UI polls and cancels (no
  MRML).

These modules import only the MRML classes of `slicer`, `vtk` and the array helpers of
`slicer.util` (never qt, ctk, `slicer.app` or `slicer.mrmlScene`), and take the scene as an
argument, so the same code runs inside the Slicer application and on the `slicer-core` wheel in
CI. The module widget, the headless script and the tests all go through them. (`import slicer`
inside this package is Python 3's absolute import: it names the top-level MRML package, never
this one.)

Nothing is imported here: importing one module (e.g. `worker`, which needs no MRML) does not
load the others.
"""
