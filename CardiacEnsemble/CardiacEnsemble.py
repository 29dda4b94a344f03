"""3D Slicer module: segment ACDC short-axis cardiac cine-MRI with an ensemble of 2D networks.

A thin shell. The widget binds the panel to a parameter node and calls the Logic; the Logic has
no Qt and calls `CardiacEnsembleLib.slicer` (MRML <-> the library's `Case`/`Prediction`) and the
library itself. Inference runs on a worker thread (`CardiacEnsembleLib.slicer.jobs`) that the
widget polls with a QTimer, so Slicer stays responsive and Cancel stops within one batch.

Console use, no panel needed:

    logic = slicer.util.getModuleLogic("CardiacEnsemble")
    loaded = logic.loadACDCCase("/data/acdc/training/patient001")
    nodes = logic.segment(loaded["ED"].volume, wait=True)          # PredictionNodes
    table = logic.evaluate(nodes.segmentation, loaded["ED"].ground_truth)
"""
import importlib.util
import logging
import os
import sys
import traceback
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Installed, CardiacEnsembleLib sits beside this file; in a source checkout (module path added
# in Application settings) it sits one folder up.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_folder, "CardiacEnsembleLib")):
        if _folder not in sys.path:
            sys.path.insert(0, _folder)
        break

# core imports numpy only (Slicer bundles it), so these work before torch is installed.
from CardiacEnsembleLib.core.manifest import DEFAULT_MODELS_DIR, read_manifest  # noqa: E402
from CardiacEnsembleLib.core.options import FUSION_RULES, FusionRule  # noqa: E402


def _read_manifest(modelsDir=None):
    """The ensemble manifest of `modelsDir` (default: the shipped one), or None, with a
    warning saying why, when it is missing or unusable: the panel then offers no members."""
    folder = modelsDir or DEFAULT_MODELS_DIR
    try:
        return read_manifest(folder)
    except (OSError, ValueError) as error:  # MemberError is a ValueError
        logging.warning(f"Cardiac Ensemble: no usable ensemble manifest in {folder}: {error}")
        return None


def _shipped_fusion_rule(modelsDir=None) -> str:
    """The rule chosen on validation for the shipped ensemble (its manifest), so the panel's
    default gives what the command line gives; the mean rule without a usable manifest."""
    manifest = _read_manifest(modelsDir)
    return (manifest.fusion if manifest is not None else FusionRule.MEAN).value


DEVICES = ["auto", "cpu", "cuda"]
#: Python packages the library needs beyond what Slicer ships (import name -> pip requirement).
#: torch comes through the PyTorch extension (or pip when it is absent).
REQUIREMENTS = {
    "nibabel": "nibabel>=5.2",
    "segmentation_models_pytorch": "segmentation-models-pytorch>=0.5,<0.7",
    "safetensors": "safetensors>=0.4",
}
TORCH_REQUIREMENT = ">=2.1"
#: Node reference from a segmentation to the metrics table Evaluate made for it (reused).
METRICS_REFERENCE = "CardiacEnsembleMetrics"

ACDC_CITATION = (
    "O. Bernard, A. Lalande, C. Zotti, F. Cervenansky, et al., \"Deep Learning Techniques for "
    "Automatic MRI Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem "
    "Solved?\", IEEE Transactions on Medical Imaging 37(11):2514-2525, 2018, "
    "doi:10.1109/TMI.2018.2837502")


#
# CardiacEnsemble
#

class CardiacEnsemble(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cardiac Ensemble"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["CardiacEnsemble contributors"]
        self.parent.helpText = (
            "Segments the right-ventricle cavity, left-ventricle myocardium and left-ventricle "
            "cavity in short-axis cardiac cine-MRI (ACDC-like ED/ES frames) with an ensemble of "
            "2D networks, shows each member and the ensemble's uncertainty, and scores a "
            "(possibly corrected) segmentation against the expert one: Dice, HD95 and mean "
            "surface distance in mm, ventricular volumes, ejection fraction, myocardial mass. "
            "Research use only; not for diagnosis.")
        self.parent.acknowledgementText = (
            "The shipped networks were trained, and the sample patient (patient090) comes from, "
            "the ACDC challenge data (MICCAI 2017), licensed CC BY-NC-SA 4.0 for non-commercial "
            "scientific research only. Any use must cite: " + ACDC_CITATION + ". "
            "The module's code is Apache-2.0.")


#
# CardiacEnsembleParameterNode
#

@parameterNodeWrapper
class CardiacEnsembleParameterNode:
    """The panel's state; saved with the scene.

    excludedMembers: members the user unchecked (empty: the whole ensemble).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    groundTruth: vtkMRMLSegmentationNode
    outputSegmentation: vtkMRMLSegmentationNode
    fusion: Annotated[str, Choice(list(FUSION_RULES))] = _shipped_fusion_rule()
    tta: bool = False
    device: Annotated[str, Choice(DEVICES)] = "auto"
    excludedMembers: list[str]


#
# CardiacEnsembleWidget
#

class CardiacEnsembleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._memberCheckBoxes = {}
        self._job = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardiacEnsemble.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CardiacEnsembleLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadCaseButton.connect("clicked(bool)", self.onLoadCase)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.uncertaintyButton.connect("clicked(bool)", self.onShowUncertainty)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onOpenSegmentEditor)
        self.ui.progressBar.setVisible(False)

        self._addMemberCheckBoxes()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.logic.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node ---------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[CardiacEnsembleParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _addMemberCheckBoxes(self) -> None:
        """One checkbox per member of the shipped ensemble (read from its manifest, no torch)."""
        names = self.logic.shippedMemberNames()
        layout = self.ui.membersGroupBox.layout()
        if not names:
            layout.addWidget(qt.QLabel("No shipped ensemble found (CardiacEnsembleLib/models)."))
        for name in names:
            checkBox = qt.QCheckBox(name)
            checkBox.checked = True
            checkBox.connect("toggled(bool)", self._onMembersChanged)
            layout.addWidget(checkBox)
            self._memberCheckBoxes[name] = checkBox

    def _onMembersChanged(self, _checked=None) -> None:
        if self._parameterNode:
            self._parameterNode.excludedMembers = [
                name for name, box in self._memberCheckBoxes.items() if not box.checked]

    def _selectedMembers(self) -> list:
        excluded = set(self._parameterNode.excludedMembers if self._parameterNode else [])
        return [name for name in self._memberCheckBoxes if name not in excluded]

    def _updateButtons(self, caller=None, event=None) -> None:
        node = self._parameterNode
        running = self._job is not None
        excluded = set(node.excludedMembers) if node else set()
        for name, box in self._memberCheckBoxes.items():
            wasBlocked = box.blockSignals(True)
            box.checked = name not in excluded
            box.blockSignals(wasBlocked)
        output = node.outputSegmentation if node else None
        hasMembers = bool(self._selectedMembers())
        self.ui.segmentButton.enabled = bool(node and node.inputVolume and hasMembers) and not running
        self.ui.segmentButton.toolTip = (
            "Segment the input volume with the selected members" if hasMembers
            else "Check at least one ensemble member")
        self.ui.cancelButton.enabled = running
        self.ui.loadCaseButton.enabled = not running
        self.ui.evaluateButton.enabled = bool(output and node.groundTruth) and not running
        self.ui.uncertaintyButton.enabled = bool(
            output and self.logic.uncertaintyVolume(output)) and not running
        self.ui.segmentEditorButton.enabled = bool(output) and not running

    # --- actions ---------------------------------------------------------------------

    def onLoadCase(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "ACDC patient folder (with Info.cfg)")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Could not load the ACDC case.", waitCursor=True):
            loaded = self.logic.loadACDCCase(folder)
            first = loaded[next(iter(loaded))]
            self._parameterNode.inputVolume = first.volume
            self._parameterNode.groundTruth = first.ground_truth
            self._parameterNode.outputSegmentation = None
            slicer.util.setSliceViewerLayers(background=first.volume, fit=True)
            self.ui.statusLabel.text = (f"Loaded {', '.join(v.volume.GetName() for v in loaded.values())}"
                                        + ("" if first.ground_truth else " (no ground truth)"))

    def _ensureDependencies(self) -> bool:
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                "Cardiac Ensemble needs these Python packages, not installed yet:\n\n  "
                + "\n  ".join(missing)
                + "\n\ntorch is installed through the PyTorch extension when it is available. "
                  "Installing takes a few minutes and needs the internet. Install now?",
                "Install dependencies"):
            return False
        with slicer.util.tryWithErrorDisplay("Installing the dependencies failed.", waitCursor=True):
            self.logic.installDependencies()
            return not self.logic.missingDependencies()
        return False

    def onSegment(self) -> None:
        if not self._ensureDependencies():
            return
        node = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                self._job = self.logic.segment(
                    node.inputVolume, members=self._selectedMembers(), fusion=node.fusion,
                    tta=node.tta, device=node.device, outputSegmentation=node.outputSegmentation)
        except ValueError as error:  # unusable input or members: the message says what to do
            slicer.util.errorDisplay(str(error), windowTitle="Cardiac Ensemble")
            return
        except Exception as error:
            slicer.util.errorDisplay(f"Could not start the segmentation: {error}",
                                     detailedText=traceback.format_exc())
            return
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = f"Segmenting {node.inputVolume.GetName()}..."
        self._updateButtons()
        self._timer.start()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        status = job.status()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        if not status.done:
            self.ui.statusLabel.text = (f"{status.message}: {status.completed}/{status.total} "
                                        f"slices, {status.seconds:.0f} s")
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        from CardiacEnsembleLib.core.progress import Cancelled

        try:
            nodes = self.logic.finishSegmentation(job)
        except Cancelled:
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
        except ValueError as error:
            self.ui.statusLabel.text = "Segmentation failed."
            slicer.util.errorDisplay(str(error), windowTitle="Cardiac Ensemble")
        except Exception as error:
            self.ui.statusLabel.text = "Segmentation failed."
            slicer.util.errorDisplay(f"Segmentation failed: {error}",
                                     detailedText=traceback.format_exc())
        else:
            self._parameterNode.outputSegmentation = nodes.segmentation
            self.ui.statusLabel.text = (
                f"Segmented in {status.seconds:.1f} s with {len(nodes.members)} member(s); "
                f"member results are hidden segmentations beside '{nodes.segmentation.GetName()}'.")
        self._updateButtons()

    def onCancel(self) -> None:
        self.logic.cancel()
        self.ui.statusLabel.text = "Cancelling (stops after the current batch)..."

    def onEvaluate(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not evaluate the segmentation.", waitCursor=True):
            table = self.logic.evaluate(node.outputSegmentation, node.groundTruth)
            layoutManager = slicer.app.layoutManager()
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
            self.ui.statusLabel.text = self.logic.diceSummary(table)

    def onShowUncertainty(self) -> None:
        volume = self.logic.uncertaintyVolume(self._parameterNode.outputSegmentation)
        if volume is None:
            self.ui.statusLabel.text = "This segmentation has no uncertainty map (segment first)."
            return
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume,
                                         foreground=volume, foregroundOpacity=0.5)
        self.ui.statusLabel.text = "Uncertainty: 0 = members agree, 1 = all classes equally likely."

    def onOpenSegmentEditor(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        volume = self.logic.referenceVolume(segmentation) or self._parameterNode.inputVolume
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(volume)
        else:  # Slicer < 5.2
            editor.setMasterVolumeNode(volume)


#
# CardiacEnsembleLogic
#

class CardiacEnsembleLogic(ScriptedLoadableModuleLogic):
    """Console- and test-friendly entry points; no Qt. All work goes through the library."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._ensembles = {}
        self.job = None

    def getParameterNode(self):
        return CardiacEnsembleParameterNode(super().getParameterNode())

    # --- dependencies -----------------------------------------------------------------

    @staticmethod
    def missingDependencies() -> list:
        """pip requirements of what is not importable yet (torch first)."""
        missing = [] if importlib.util.find_spec("torch") else ["torch" + TORCH_REQUIREMENT]
        return missing + [requirement for module, requirement in REQUIREMENTS.items()
                          if importlib.util.find_spec(module) is None]

    def installDependencies(self) -> None:
        """torch via the PyTorch extension when present (it picks the CUDA build), else pip."""
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.pip_install("torch" + TORCH_REQUIREMENT)
            else:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("the PyTorch extension did not install torch")
        others = [requirement for module, requirement in REQUIREMENTS.items()
                  if importlib.util.find_spec(module) is None]
        if others:
            slicer.util.pip_install(others)

    # --- ensembles --------------------------------------------------------------------

    @staticmethod
    def shippedMemberNames(modelsDir: Optional[str] = None) -> list:
        """Member names in an ensemble manifest (works before torch is installed); none, with
        a logged warning, when the manifest is missing or unusable."""
        manifest = _read_manifest(modelsDir)
        return manifest.names if manifest is not None else []

    def ensemble(self, members=None, device: str = "auto", tta: bool = False,
                 modelsDir: Optional[str] = None):
        """The (cached) ensemble: loading verifies every member's sha256 once per session."""
        from CardiacEnsembleLib.inference.ensemble import load_ensemble

        key = (str(modelsDir or DEFAULT_MODELS_DIR), tuple(members or ()), device, bool(tta))
        if key not in self._ensembles:
            self._ensembles[key] = load_ensemble(modelsDir or DEFAULT_MODELS_DIR,
                                                 members=list(members) if members else None,
                                                 device=device, tta=tta)
        return self._ensembles[key]

    # --- the three jobs of the panel ----------------------------------------------------

    def loadACDCCase(self, folder, phases=("ED", "ES")) -> dict:
        """ED and ES volumes (and ground-truth segmentations) of an ACDC patient folder."""
        from CardiacEnsembleLib.slicer.acdc import load_acdc_case

        return load_acdc_case(slicer.mrmlScene, folder, phases)

    def segment(self, volumeNode, members=None, fusion: Optional[str] = None, tta: bool = False,
                device: str = "auto", outputSegmentation=None, modelsDir: Optional[str] = None,
                wait: bool = False):
        """Start segmenting `volumeNode` on a worker thread; returns the job to poll.

        `wait=True` (console, tests, batch) blocks and returns the `PredictionNodes` instead.
        Bad input raises `SlicerBridgeError` (a ValueError) before any work starts.
        """
        from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError
        from CardiacEnsembleLib.slicer.prediction import SegmentationJob
        from CardiacEnsembleLib.slicer.volumes import check_volume

        check_volume(volumeNode)
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise SlicerBridgeError("the output must be a segmentation node")
        if self.job is not None and not self.job.done:
            raise RuntimeError("a segmentation is already running; wait for it or cancel it")
        ensemble = self.ensemble(members, device, tta, modelsDir)
        job = SegmentationJob(volumeNode, ensemble, fusion)
        job.output = outputSegmentation
        self.job = job
        return self.waitForCompletion(job) if wait else job

    def waitForCompletion(self, job=None, timeout: Optional[float] = None):
        """Block until the job ends, then put its results into the scene (main thread)."""
        job = job or self.job
        if not job.wait(timeout):
            raise TimeoutError(f"{job.name}: not finished after {timeout} s")
        return self.finishSegmentation(job)

    def finishSegmentation(self, job):
        """PredictionNodes of a finished job; raises `Cancelled` or the worker's error."""
        if job is self.job:
            self.job = None
        return job.finish(output=job.output)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def evaluate(self, segmentationNode, groundTruthNode, tableNode=None):
        """A metrics table for a (possibly edited) segmentation against a ground truth.

        Dice, HD95 and MSD per structure; with the other phase of the same patient segmented
        (and its ground truth loaded) also volumes, EF and myocardial mass of both.
        """
        from CardiacEnsembleLib.slicer.tables import add_metrics_table, evaluate_segmentation

        rows = evaluate_segmentation(segmentationNode, groundTruthNode)
        rows += self._clinicalRows(segmentationNode)
        tableNode = tableNode or segmentationNode.GetNodeReference(METRICS_REFERENCE)
        table = add_metrics_table(
            slicer.mrmlScene, rows, f"{segmentationNode.GetName()} metrics", node=tableNode)
        segmentationNode.SetNodeReferenceID(METRICS_REFERENCE, table.GetID())
        return table

    def _clinicalRows(self, segmentationNode) -> list:
        from CardiacEnsembleLib.slicer.nodes import get_attribute
        from CardiacEnsembleLib.slicer.segmentations import reference_volume_of
        from CardiacEnsembleLib.slicer.tables import clinical_rows_from_segmentations

        patient = get_attribute(segmentationNode, "patient_id")
        phase = get_attribute(segmentationNode, "phase")
        method = get_attribute(segmentationNode, "method") or segmentationNode.GetName()
        if not patient or phase not in ("ED", "ES"):
            return []
        other = "ES" if phase == "ED" else "ED"

        def find(phaseName, methodName):
            nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
            for index in range(nodes.GetNumberOfItems()):
                node = nodes.GetItemAsObject(index)
                if (get_attribute(node, "patient_id") == patient
                        and get_attribute(node, "phase") == phaseName
                        and get_attribute(node, "method") == methodName):
                    return node
            return None

        rows = []
        for methodName, current in ((method, segmentationNode),
                                    ("ground truth", find(phase, "ground truth"))):
            partner = find(other, methodName)
            if current is None or partner is None:
                continue
            ed, es = (current, partner) if phase == "ED" else (partner, current)
            rows += clinical_rows_from_segmentations(
                ed, es, reference_volume_of(ed), reference_volume_of(es), method=methodName)
        return rows

    @staticmethod
    def diceSummary(tableNode) -> str:
        from CardiacEnsembleLib.slicer.tables import table_rows

        dice = [row for row in table_rows(tableNode) if row.measure == "Dice"]
        return "Dice: " + ", ".join(f"{row.structure} {row.value:.3f}" for row in dice)

    @staticmethod
    def uncertaintyVolume(segmentationNode):
        """The uncertainty map made with this segmentation (None if there is none)."""
        if segmentationNode is None:
            return None
        try:
            from CardiacEnsembleLib.slicer.prediction import prediction_nodes
        except ImportError:  # dependencies not installed yet: nothing was segmented either
            return None
        return prediction_nodes(segmentationNode).uncertainty

    @staticmethod
    def referenceVolume(segmentationNode):
        from CardiacEnsembleLib.slicer.segmentations import reference_volume_of

        return reference_volume_of(segmentationNode)


#
# CardiacEnsembleTest
#

class CardiacEnsembleTest(ScriptedLoadableModuleTest):
    """Inside a real Slicer: the sample patient through the Logic, as a user would."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_evaluate_and_edit()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()
        self.setUp()
        self.test_bad_input_is_refused()

    def _sample(self):
        import CardiacEnsembleLib

        return os.path.join(os.path.dirname(CardiacEnsembleLib.__file__), "sample", "patient090")

    def _logic(self):
        logic = CardiacEnsembleLogic()
        missing = logic.missingDependencies()
        self.assertFalse(missing, f"install first: {missing}")
        return logic

    def test_segment_evaluate_and_edit(self):
        import numpy as np
        from CardiacEnsembleLib.evaluation.metrics import score_labels
        from CardiacEnsembleLib.slicer.segmentations import labels_from_segmentation
        from CardiacEnsembleLib.slicer.tables import table_rows

        self.delayDisplay("Segment patient090 ED with the shipped ensemble")
        logic = self._logic()
        loaded = logic.loadACDCCase(self._sample())
        phase = loaded["ED"]
        nodes = logic.segment(phase.volume, device="cpu", wait=True)
        labels = labels_from_segmentation(nodes.segmentation)
        expected = logic.ensemble(device="cpu").predict(phase.case).labels
        np.testing.assert_array_equal(labels, expected)
        self.assertEqual(set(nodes.members), set(logic.shippedMemberNames()))
        self.assertIsNotNone(logic.uncertaintyVolume(nodes.segmentation))

        self.delayDisplay("Evaluate against the ground truth")
        table = logic.evaluate(nodes.segmentation, phase.ground_truth)
        rows = table_rows(table)
        scores = score_labels(labels, phase.case.labels, phase.case.spacing_zyx)
        for row in rows:
            if row.measure == "Dice":
                self.assertAlmostEqual(row.value, scores[row.structure].dice, places=12)

        self.delayDisplay("Both phases give volumes and EF")
        logic.segment(loaded["ES"].volume, device="cpu", wait=True)
        rows = table_rows(logic.evaluate(nodes.segmentation, phase.ground_truth))
        self.assertTrue(any(row.measure == "EF" for row in rows))
        self.delayDisplay("Test passed")

    def test_cancel_leaves_scene_unchanged(self):
        from CardiacEnsembleLib.core.progress import Cancelled

        logic = self._logic()
        volume = logic.loadACDCCase(self._sample(), phases=("ED",))["ED"].volume
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        job = logic.segment(volume, device="cpu")
        job.cancel()
        with self.assertRaises(Cancelled):
            logic.waitForCompletion(job)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"),
                         before)

    def test_bad_input_is_refused(self):
        from CardiacEnsembleLib.slicer.nodes import SlicerBridgeError

        logic = self._logic()
        with self.assertRaises(SlicerBridgeError):
            logic.segment(None)
        cine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "4D")
        import numpy as np

        slicer.util.updateVolumeFromArray(cine, np.zeros((3, 8, 8, 5), np.float32))
        with self.assertRaises(SlicerBridgeError):
            logic.segment(cine)
