"""A scene wired as the Slicer application wires its own, for headless scripts and tests, and
finding a node in it by name."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Optional

import slicer
import vtk

from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError


@dataclass
class SlicerScene:
    """A scene wired the way the Slicer application wires its own.

    The application logic owns the colour logic (default colour tables), the segmentations
    logic and the sequences logic (which registers sequence nodes, e.g. a 4D cine); storage
    nodes and segment display need them. Inside Slicer use `slicer.mrmlScene`
    directly; this is for headless scripts and tests on `slicer-core`.
    """

    scene: object  # vtkMRMLScene
    application_logic: object
    color_logic: object
    segmentations_logic: object
    sequences_logic: object
    temporary_directory: Optional[tempfile.TemporaryDirectory] = None


def create_scene() -> SlicerScene:
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    color_logic = slicer.vtkSlicerColorLogic()
    color_logic.SetMRMLApplicationLogic(application_logic)
    # slicer-core ships no colour *files* (only the built-in tables), and the colour logic logs
    # an error saying so; that absence is expected here, not a fault to show the user.
    warnings = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        color_logic.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings)
    application_logic.SetColorLogic(color_logic)
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLApplicationLogic(application_logic)
    segmentations_logic.SetMRMLScene(scene)
    application_logic.SetModuleLogic("Segmentations", segmentations_logic)
    sequences_logic = slicer.vtkSlicerSequencesLogic()  # registers sequence and browser nodes
    sequences_logic.SetMRMLApplicationLogic(application_logic)
    sequences_logic.SetMRMLScene(scene)
    application_logic.SetModuleLogic("Sequences", sequences_logic)
    # The logics must live as long as the scene: the colour logic removes its default colour
    # tables when it is destroyed, so `create_scene().scene` alone would lose them. VTK keeps a
    # Python attribute of a VTK object for the object's lifetime.
    scene.CardiacEnsembleLogics = (application_logic, color_logic, segmentations_logic,
                                   sequences_logic)
    return SlicerScene(scene, application_logic, color_logic, segmentations_logic,
                       sequences_logic)


def add_file_cache(loaded: SlicerScene) -> None:
    """Give the scene a data IO manager with a cache directory, as the application does: a
    bundle (`.mrb`, `.seq.mrb`) is unpacked there when read. Removed with `loaded`."""
    if loaded.temporary_directory is not None:
        return
    loaded.temporary_directory = tempfile.TemporaryDirectory(prefix="cardiac-ensemble-mrb-")
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(loaded.temporary_directory.name)
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    loaded.scene.SetCacheManager(cache)
    loaded.scene.SetDataIOManager(io_manager)


def node_by_name(scene, name: str, class_name: str = "vtkMRMLNode"):
    """The one node of `class_name` called `name` (error if none or several)."""
    nodes = scene.GetNodesByClassByName(class_name, name)
    if nodes.GetNumberOfItems() != 1:
        raise SlicerBridgeError(f"expected one {class_name} named {name!r} in the scene, found "
                                f"{nodes.GetNumberOfItems()}")
    return nodes.GetItemAsObject(0)
