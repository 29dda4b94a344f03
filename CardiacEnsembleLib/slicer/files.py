"""Nodes and scenes to and from files: one node through its own storage node, a segmentation
as `.seg.nrrd`, a whole scene as `.mrml` + data folder or one `.mrb` bundle.

Nothing existing is overwritten unless asked (`core.errors.refuse_existing`).
"""
from __future__ import annotations

import re
from pathlib import Path

import slicer

from CardiacEnsembleLib.core.errors import refuse_existing
from CardiacEnsembleLib.slicer.nodes import OVERWRITE_HINT, SlicerBridgeError, describe
from CardiacEnsembleLib.slicer.scene import SlicerScene, add_file_cache, create_scene
from CardiacEnsembleLib.slicer.segmentations import segment_ids_by_name


def save_node(node, path: Path | str, *, overwrite: bool = False) -> Path:
    """Write a storable node through its own storage node (format from the file name)."""
    path = Path(path)
    refuse_existing(path, overwrite, hint=OVERWRITE_HINT)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = node.GetStorageNode()
    if storage is None:
        if not node.AddDefaultStorageNode():
            raise SlicerBridgeError(f"{describe(node)} cannot be written to a file")
        storage = node.GetStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise SlicerBridgeError(f"{path}: writing {describe(node)} failed "
                                f"({storage.GetUserMessages().GetAllMessagesAsString().strip()})")
    return path


def save_segmentation(segmentation_node, path: Path | str, *, overwrite: bool = False) -> Path:
    """A `.seg.nrrd` with the segments' names, colours and terminology on the reference grid."""
    path = Path(path)
    if not path.name.endswith(".seg.nrrd"):
        raise SlicerBridgeError(f"{path}: a segmentation is saved as '.seg.nrrd'")
    segment_ids_by_name(segmentation_node)  # write only what reads back as ACDC labels
    return save_node(segmentation_node, path, overwrite=overwrite)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "node"


def _nodes_to_save(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    keep = []
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.IsA("vtkMRMLColorNode") or not node.GetSaveWithScene():
            continue  # built-in colour tables come back with every scene
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is None:
            continue
        keep.append(node)
    return keep


def _empty_segmentations(scene) -> list[str]:
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    return [nodes.GetItemAsObject(i).GetName() for i in range(nodes.GetNumberOfItems())
            if nodes.GetItemAsObject(i).GetSegmentation().GetNumberOfSegments() == 0]


def save_scene(scene, path: Path | str, *, overwrite: bool = False) -> Path:
    """Save the scene as `scene.mrml` + a `<stem>_data/` folder of files, or as one `.mrb`.

    Tables go through Slicer's table writer, which keeps 6 significant digits; for exact
    numbers use `tables.write_table_csv`.
    """
    path = Path(path)
    refuse_existing(path, overwrite, hint=OVERWRITE_HINT)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mrb":
        return _save_bundle(scene, path)
    if path.suffix != ".mrml":
        raise SlicerBridgeError(f"{path}: a scene is saved as '.mrml' (with its files) or "
                                f"'.mrb' (one bundle)")
    data = path.parent / f"{path.stem}_data"
    data.mkdir(exist_ok=True)
    used: set[str] = set()
    for node in _nodes_to_save(scene):
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue
        extension = node.GetStorageNode().GetDefaultWriteFileExtension()
        stem = _file_stem(node.GetName())
        while stem in used:
            stem += "_"
        used.add(stem)
        save_node(node, data / f"{stem}.{extension}", overwrite=overwrite)
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    if not scene.Commit():
        raise SlicerBridgeError(f"{path}: writing the scene file failed")
    return path


def _save_bundle(scene, path: Path) -> Path:
    empty = _empty_segmentations(scene)
    if empty:
        # Guard: slicer-core 5.13's bundle writer was seen to abort the whole process on a
        # segmentation node without content; refuse with a message instead.
        raise SlicerBridgeError(f"segmentation(s) {', '.join(map(repr, empty))} hold no "
                                f"segment; delete them (or add a segment) before saving "
                                f"a .mrb bundle")
    if not scene.WriteToMRB(str(path)):
        raise SlicerBridgeError(f"{path}: writing the scene bundle failed")
    return path


def load_scene(path: Path | str) -> SlicerScene:
    """A new wired scene holding what `save_scene` wrote (`.mrml` or `.mrb`)."""
    path = Path(path)
    if not path.is_file():
        raise SlicerBridgeError(f"{path}: no such scene file")
    loaded = create_scene()
    scene = loaded.scene
    if path.suffix == ".mrb":
        add_file_cache(loaded)  # reading a bundle unpacks it into the cache directory
        ok = scene.ReadFromMRB(str(path))
    else:
        scene.SetURL(str(path))
        ok = scene.Connect()
    if not ok:
        raise SlicerBridgeError(f"{path}: the scene could not be read")
    return loaded


def read_sequence(loaded: SlicerScene, path: Path | str, name: str):
    """A sequence file into a new sequence node of `loaded`: a `.seq.mrb` bundle (any nodes,
    e.g. one segmentation per frame) or a `.seq.nrrd` (a 4D volume sequence)."""
    path = Path(path)
    if not path.is_file():
        raise SlicerBridgeError(f"{path}: no such sequence file")
    storage_class = ("vtkMRMLSequenceStorageNode" if path.name.endswith(".seq.mrb")
                     else "vtkMRMLVolumeSequenceStorageNode")
    add_file_cache(loaded)
    sequence = loaded.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    storage = loaded.scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    if not storage.ReadData(sequence):
        raise SlicerBridgeError(f"{path}: the sequence could not be read "
                                f"({storage.GetUserMessages().GetAllMessagesAsString().strip()})")
    sequence.SetAndObserveStorageNodeID(storage.GetID())
    return sequence
