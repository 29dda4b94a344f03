"""3D Slicer module: segment ACDC short-axis cardiac cine-MRI with an ensemble of 2D networks.

A thin shell. The widget binds the panel to a parameter node and calls the Logic; the Logic has
no Qt and calls `CardiacEnsembleLib.slicer` (MRML <-> the library's `Case`/`Prediction`) and the
library itself. Inference runs in a worker process started with Slicer's own Python
(`CardiacEnsembleLib.slicer.worker`), which keeps the ensemble loaded between segmentations; the
widget polls it with a QTimer, so Slicer stays responsive, and Cancel kills the process at once.
A thread would not do: PythonQt keeps the GIL on Slicer's main thread, so it would be starved.

Console use, no panel needed:

    logic = slicer.util.getModuleLogic("CardiacEnsemble")
    loaded = logic.loadACDCCase("/data/acdc/training/patient001")
    nodes = logic.segment(loaded["ED"].volume, wait=True)          # PredictionNodes
    table = logic.evaluate(nodes.segmentation, loaded["ED"].ground_truth)
    print(logic.reviewSummary(nodes.segmentation))                # the QC review list:
    entries = logic.reviewList(nodes.segmentation)                 # worst (slice, structure) first
    logic.jumpToReview(entries[0], nodes.segmentation)             # slice views + Segment Editor
    cine = logic.segmentCine(loaded.cine.proxy, wait=True)        # CineNodes: every frame
    print(cine.summary["ed_frame"], cine.summary["es_frame"], cine.summary["lv_ef_pct"])
"""
import importlib.util
import logging
import os
import sys
import traceback
import weakref
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
from CardiacEnsembleLib.core.options import (FUSION_RULES, HEART_MARGIN_PX,  # noqa: E402
                                             FusionRule, Preset)
from CardiacEnsembleLib.core import requirements  # noqa: E402
from CardiacEnsembleLib.core.terminology import TERMINOLOGY_FILE  # noqa: E402


def _read_manifest(modelsDir=None):
    """The ensemble manifest of `modelsDir` (default: the shipped one), or None, with a
    warning saying why, when it is missing or unusable: the panel then offers no members."""
    folder = modelsDir or DEFAULT_MODELS_DIR
    try:
        return read_manifest(folder)
    except (OSError, ValueError) as error:  # MemberError is a ValueError
        logging.warning(f"Cardiac Ensemble: no usable ensemble manifest in {folder}: {error}")
        return None


def qualityThresholds(modelsDir=None) -> dict:
    """The QC thresholds validated for an ensemble ({score: QualityThresholds}, its manifest's);
    empty when it has none: the review list is then ranked, nothing flagged."""
    from CardiacEnsembleLib.core.quality import QualityThresholds

    manifest = _read_manifest(modelsDir)
    thresholds = manifest.quality_control if manifest is not None else None
    if isinstance(thresholds, QualityThresholds):
        return {thresholds.score: thresholds}
    return dict(thresholds or {})


def _shipped_fusion_rule(modelsDir=None) -> str:
    """The rule chosen on validation for the shipped ensemble (its manifest), so the panel's
    default gives what the command line gives; the mean rule without a usable manifest."""
    manifest = _read_manifest(modelsDir)
    return (manifest.fusion if manifest is not None else FusionRule.MEAN).value


#: The panel's preset choice: the library's presets, then "custom" = the member boxes, fusion
#: rule and heart-region box below, sent as they are.
CUSTOM_PRESET = "custom"
PRESETS = [*Preset.values(), CUSTOM_PRESET]


def _shipped_preset(modelsDir=None) -> str:
    """The manifest's default preset (what the command line runs), or custom without one."""
    manifest = _read_manifest(modelsDir)
    return (manifest.default_preset if manifest is not None else None) or CUSTOM_PRESET


def presetSummary(preset: str, modelsDir=None) -> str:
    """What a preset runs and costs, for the combo box's tooltip (from the manifest)."""
    manifest = _read_manifest(modelsDir)
    entry = manifest.presets.get(preset) if manifest is not None else None
    if entry is None:
        return "The member boxes, fusion rule and heart-region choice below"
    members = ", ".join(entry.members) if entry.members else "every member"
    region = "full grid" if entry.heart_margin is None else \
        f"heart region ({entry.heart_margin} px)"
    return f"{preset}: {members}; {region}; {entry.describe()}"


DEVICES = ["auto", "cpu", "cuda"]
#: What the PyTorch extension is asked for (the library's minimum, `core.requirements`).
TORCH_REQUIREMENT = ">=" + requirements.TORCH_MINIMUM
#: The sample patient offered in the Sample Data module: its ED and ES frames (file, node
#: name, sha256). The checksums are of the shipped files, so a damaged install is caught.
SAMPLE_FILES = (
    ("patient090_frame04.nii.gz", "patient090 ED",
     "10fcfd615431665d9e3387406f0314214fd3118f650256796f064c6be8ef0b0d"),
    ("patient090_frame11.nii.gz", "patient090 ES",
     "d12e3d47d07176f4cf07fccbf5b7a45408854179004c3599e2fd9b6131a179f6"),
)
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
        self.parent.categories = ["Segmentation", "Cardiac"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["CardiacEnsemble dev"]
        self.parent.helpText = (
            "Segments the right-ventricle cavity, left-ventricle myocardium and left-ventricle "
            "cavity in short-axis cardiac cine-MRI (ACDC-like ED/ES frames) with an ensemble of "
            "2D networks, shows each member and the ensemble's uncertainty, and scores a "
            "(possibly corrected) segmentation against the expert one: Dice, HD95 and mean "
            "surface distance in mm, ventricular volumes, ejection fraction, myocardial mass. "
            "Research use only; not for diagnosis. Needs Slicer 5.10 or later.")
        self.parent.acknowledgementText = (
            "The shipped networks were trained, and the sample patient (patient090) comes from, "
            "the ACDC challenge data (MICCAI 2017), licensed CC BY-NC-SA 4.0 for non-commercial "
            "scientific research only. Any use must cite: " + ACDC_CITATION + ". "
            "The module's code is Apache-2.0.")
        # After startup: the terminology logic and the Sample Data module exist by then (two
        # slots, so a failure of one does not skip the other).
        slicer.app.connect("startupCompleted()", self.loadTerminology)
        slicer.app.connect("startupCompleted()", self.registerSampleData)

    def loadTerminology(self) -> None:
        """Make the segments' terminology (Myocardium is not in Slicer's list) known to Slicer."""
        terminologies = getattr(slicer.modules, "terminologies", None)
        if terminologies is None:  # no terminology module (e.g. a stripped-down build)
            logging.warning("Cardiac Ensemble: no Terminologies module; segments keep their "
                            "codes but Slicer cannot list their terminology")
            return
        from CardiacEnsembleLib.slicer.segmentations import load_terminology

        load_terminology(terminologies.logic(), terminologyPath())

    def registerSampleData(self) -> None:
        """patient090 (ED and ES) in the Sample Data module, loaded from the shipped files."""
        import SampleData

        uris, names, nodes, checksums = sampleDataSource()
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="Cardiac Ensemble", sampleName="ACDC patient090", uris=uris,
            fileNames=names, nodeNames=nodes, checksums=checksums,
            thumbnailFileName=os.path.join(_HERE, "Resources", "Icons", "CardiacEnsemble.png"))


def terminologyPath() -> str:
    return os.path.join(_HERE, "Resources", TERMINOLOGY_FILE)


def sampleDataSource():
    """(uris, file names, node names, checksums) of the sample patient, as Sample Data takes
    them: local file URIs, so no download is needed and the checksum is still verified."""
    import pathlib

    import CardiacEnsembleLib

    folder = pathlib.Path(CardiacEnsembleLib.__file__).parent / "sample" / "patient090"
    return ([(folder / name).as_uri() for name, _, _ in SAMPLE_FILES],
            [name for name, _, _ in SAMPLE_FILES], [node for _, node, _ in SAMPLE_FILES],
            [f"SHA256:{digest}" for _, _, digest in SAMPLE_FILES])


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
    preset: Annotated[str, Choice(PRESETS)] = _shipped_preset()
    fusion: Annotated[str, Choice(list(FUSION_RULES))] = _shipped_fusion_rule()
    tta: bool = False
    device: Annotated[str, Choice(DEVICES)] = "auto"
    heartRegion: bool = False
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
        self._reviewSegmentation = None  # the segmentation whose QC review list is shown
        self._reviewEntries = []

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
        self.ui.reviewListWidget.connect("itemClicked(QListWidgetItem*)", self.onReviewItemClicked)
        self.ui.progressBar.setVisible(False)

        self._addMemberCheckBoxes()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        self.logic.cleanup()  # ends the worker process (and frees its GPU memory)
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
        custom = not node or node.preset == CUSTOM_PRESET
        for widget in (*self._memberCheckBoxes.values(), self.ui.fusionComboBox,
                       self.ui.heartRegionCheckBox):
            widget.enabled = custom  # a preset decides these itself
        self.ui.presetComboBox.toolTip = presetSummary(node.preset if node else CUSTOM_PRESET)
        output = node.outputSegmentation if node else None
        hasMembers = bool(self._selectedMembers()) or not custom
        outputIsTruth = bool(output) and (output is node.groundTruth
                                          or self.logic.isGroundTruth(output))
        self.ui.segmentButton.enabled = bool(
            node and node.inputVolume and hasMembers) and not outputIsTruth and not running
        self.ui.segmentButton.toolTip = (
            "The output is a ground truth, which would be overwritten: pick another output"
            if outputIsTruth else "Segment the input volume with the selected members"
            if hasMembers else "Check at least one ensemble member")
        self.ui.cancelButton.enabled = running
        self.ui.loadCaseButton.enabled = not running
        self.ui.evaluateButton.enabled = bool(output and node.groundTruth) and not running
        self.ui.uncertaintyButton.enabled = bool(
            output and self.logic.uncertaintyVolume(output)) and not running
        self.ui.segmentEditorButton.enabled = bool(output) and not running
        if output is not self._reviewSegmentation:
            self._updateReview(output)

    # --- actions ---------------------------------------------------------------------

    def onLoadCase(self) -> None:
        if not self._ensureDependencies():
            return
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
                                        + ("" if first.ground_truth else " (no ground truth)")
                                        + (f" and the cine '{loaded.cine.name}' (pick its volume "
                                           f"to segment every frame)" if loaded.cine else ""))

    def _ensureDependencies(self) -> bool:
        """Before any button that needs the library: the data terms acknowledged once, then
        the missing Python packages installed (after asking)."""
        if not self._ensureTermsAccepted():
            return False
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                "Cardiac Ensemble needs these Python packages, not installed yet:\n\n  "
                + "\n  ".join(missing)
                + "\n\ntorch is installed through the PyTorch extension; pip installs the "
                  "others without replacing torch or SimpleITK. Installing takes a few minutes "
                  "and needs the internet. Install now?",
                "Install dependencies"):
            return False
        with slicer.util.tryWithErrorDisplay("Installing the dependencies failed.", waitCursor=True):
            self.logic.installDependencies()
            missing = self.logic.missingDependencies()
            if missing:
                raise RuntimeError("still missing after installing: " + ", ".join(missing)
                                   + " (restart Slicer if torch was just installed)")
            return True
        return False

    def _ensureTermsAccepted(self) -> bool:
        """Ask once (remembered in the settings) to acknowledge the non-commercial terms."""
        settings = slicer.app.settings()
        if requirements.terms_accepted(settings.value(requirements.TERMS_SETTINGS_KEY)):
            return True
        if not slicer.util.confirmYesNoDisplay(requirements.TERMS_TEXT,
                                               windowTitle="Cardiac Ensemble: terms of use"):
            return False
        settings.setValue(requirements.TERMS_SETTINGS_KEY, requirements.TERMS_VERSION)
        return True

    def onSegment(self) -> None:
        if not self._ensureDependencies():
            return
        node = self._parameterNode
        if node.preset != CUSTOM_PRESET:  # the manifest's choice of members, rule and region
            options = dict(preset=node.preset, tta=node.tta, device=node.device)
        else:
            options = dict(members=self._selectedMembers(), fusion=node.fusion, tta=node.tta,
                           device=node.device, preset=Preset.FULL.value,
                           heartMargin=HEART_MARGIN_PX if node.heartRegion else None)
        try:
            with slicer.util.WaitCursor():
                if self.logic.isSequenceFrame(node.inputVolume):  # a cine: every frame
                    self._job = self.logic.segmentCine(node.inputVolume, **options)
                else:
                    self._job = self.logic.segment(
                        node.inputVolume, outputSegmentation=node.outputSegmentation,
                        **options)
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
        status = job.poll()  # never blocks: the worker process does the work
        self.ui.progressBar.value = int(round(100 * status.fraction))
        if not status.finished:
            self.ui.statusLabel.text = self._progressText(status)
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        from CardiacEnsembleLib.core.progress import Cancelled
        from CardiacEnsembleLib.slicer.worker import WorkerError

        try:
            nodes = self.logic.finishSegmentation(job)
        except Cancelled:
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
        except (ValueError, WorkerError) as error:  # the message says what happened and why
            self.ui.statusLabel.text = "Segmentation failed; the scene was not changed."
            slicer.util.errorDisplay(str(error), windowTitle="Cardiac Ensemble")
        except Exception as error:
            self.ui.statusLabel.text = "Segmentation failed."
            slicer.util.errorDisplay(f"Segmentation failed: {error}",
                                     detailedText=traceback.format_exc())
        else:
            self._showResult(nodes, status)
        self._updateButtons()

    def _showResult(self, nodes, status) -> None:
        if hasattr(nodes, "summary"):  # a cine: the curve's ED/ES, EF, stroke volume, mass
            from CardiacEnsembleLib.slicer.cine import summary_text

            slicer.modules.plots.logic().ShowChartInLayout(nodes.chart)
            self.ui.statusLabel.text = (f"Segmented {nodes.sequence.GetNumberOfDataNodes()} "
                                        f"frames in {status.seconds:.1f} s: "
                                        + summary_text(nodes.summary))
        else:
            self._parameterNode.outputSegmentation = nodes.segmentation
            self._updateReview(nodes.segmentation)  # a new QC report, maybe on the same node
            self.ui.statusLabel.text = (
                f"Segmented in {status.seconds:.1f} s with {len(nodes.members)} member(s); "
                f"member results are hidden segmentations beside '{nodes.segmentation.GetName()}'.")

    def _updateReview(self, segmentation) -> None:
        """The QC review list of `segmentation` (worst first) and its summary line."""
        self._reviewSegmentation, self._reviewEntries = segmentation, []
        self.ui.reviewListWidget.clear()
        if segmentation is None:
            self.ui.reviewLabel.text = ""
            return
        try:
            self._reviewEntries = self.logic.reviewList(segmentation)
        except ValueError as error:  # e.g. a segment renamed since: the message says what to do
            self.ui.reviewLabel.text = f"No QC review list: {error}"
            return
        self.ui.reviewLabel.text = self.logic.reviewSummary(segmentation)
        for entry in self._reviewEntries:
            self.ui.reviewListWidget.addItem(entry.text)

    @staticmethod
    def _progressText(status) -> str:
        if status.state == "starting":
            return f"Starting the inference worker... {status.seconds:.0f} s"
        if status.state == "loading":
            return f"Loading the ensemble (once per session)... {status.seconds:.0f} s"
        return (f"{status.message}: {status.completed}/{status.total} slices, "
                f"{status.seconds:.0f} s")

    def onCancel(self) -> None:
        self.logic.cancel()  # kills the worker process: the next poll reports it
        self.ui.statusLabel.text = "Cancelling..."

    def onEvaluate(self) -> None:
        if not self._ensureDependencies():
            return
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

    def onReviewItemClicked(self, item) -> None:
        entry = self._reviewEntries[self.ui.reviewListWidget.row(item)]
        with slicer.util.tryWithErrorDisplay("Could not show this slice.", waitCursor=True):
            self.logic.jumpToReview(entry, self._reviewSegmentation)
            self.ui.statusLabel.text = (f"{entry.text}: shown in the slice views; its segment is "
                                        f"the one the Segment Editor edits.")

    def onOpenSegmentEditor(self) -> None:
        if not self._ensureDependencies():
            return
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
        self._worker = None  # the inference worker's client, made with the first segment()
        self._jobModels = weakref.WeakKeyDictionary()  # job -> its models folder (QC thresholds)

    def getParameterNode(self):
        return CardiacEnsembleParameterNode(super().getParameterNode())

    # --- dependencies -----------------------------------------------------------------

    @staticmethod
    def missingDependencies() -> list:
        """pip requirements of what is not importable yet, or too old (torch first)."""
        return requirements.missing_packages()

    def installDependencies(self) -> None:
        """torch through the PyTorch extension (the build for this machine's CUDA, at least
        `TORCH_REQUIREMENT`); then pip for the rest, constrained to the installed torch and
        SimpleITK so that it never replaces them."""
        if requirements.torch_problem(requirements.installed_version("torch")):
            self._installTorch()
        others = requirements.pip_requirements()
        if not others:
            return
        import tempfile

        constraints = requirements.pip_constraints(requirements.protected_versions())
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "constraints.txt")
            with open(path, "w") as handle:
                handle.write("\n".join(constraints) + "\n")
            slicer.util.pip_install(["-c", path, *others])
        importlib.invalidate_caches()

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ImportError as error:
            raise RuntimeError("torch comes through the PyTorch extension: install 'PyTorch' "
                               "from the Extensions Manager, restart Slicer, and try again"
                               ) from error
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError(f"the PyTorch extension did not install torch{TORCH_REQUIREMENT}")

    # --- ensembles --------------------------------------------------------------------

    @staticmethod
    def shippedMemberNames(modelsDir: Optional[str] = None) -> list:
        """Member names in an ensemble manifest (works before torch is installed); none, with
        a logged warning, when the manifest is missing or unusable."""
        manifest = _read_manifest(modelsDir)
        return manifest.names if manifest is not None else []

    def ensemble(self, members=None, device: str = "auto", tta: bool = False,
                 modelsDir: Optional[str] = None):
        """The ensemble, restricted to `members` (None: all of them).

        The whole ensemble is loaded (and cached: loading verifies every member's sha256 once
        per session), then `Ensemble.subset` keeps the checked members, so their fusion
        weights follow them and one member alone gives its own labels under any rule.
        """
        from CardiacEnsembleLib.inference.ensemble import load_ensemble

        key = (str(modelsDir or DEFAULT_MODELS_DIR), device, bool(tta))
        if key not in self._ensembles:
            self._ensembles[key] = load_ensemble(modelsDir or DEFAULT_MODELS_DIR,
                                                 device=device, tta=tta)
        full = self._ensembles[key]
        if not members or list(members) == full.names:
            return full
        return full.subset(list(members))

    @staticmethod
    def headlessScriptPath() -> str:
        """The batch script installed with the module (see its docstring for the command)."""
        return os.path.join(_HERE, "Resources", "Scripts", "headless_segment.py")

    # --- the three jobs of the panel ----------------------------------------------------

    def loadACDCCase(self, folder, phases=("ED", "ES"), cine: bool = True) -> dict:
        """ED and ES volumes (and ground-truth segmentations) of an ACDC patient folder, and
        its 4D cine as a volume sequence when it has one (`loaded.cine`)."""
        from CardiacEnsembleLib.slicer.acdc import load_acdc_case

        return load_acdc_case(slicer.mrmlScene, folder, phases, cine=cine)

    def segment(self, volumeNode, members=None, fusion: Optional[str] = None, tta: bool = False,
                device: str = "auto", outputSegmentation=None, modelsDir: Optional[str] = None,
                wait: bool = False, sequenceFrame: bool = False,
                heartMargin: Optional[int] = None, preset: Optional[str] = None):
        """Start segmenting `volumeNode` in the worker process; returns the job to poll
        (`job.poll()`, `job.cancel()`), the scene untouched until `finishSegmentation`.

        `wait=True` (console, tests, batch) blocks and returns the `PredictionNodes` instead.
        Bad input raises `SlicerBridgeError` (a ValueError) before any work starts. The worker
        keeps the ensemble loaded, so the next segmentation skips the load; `members` (None:
        all), `fusion`, `tta`, `device`, `heartMargin` (heart-region inference, pixels) and
        `preset` (the manifest's fast / balanced / full, whose settings the others replace;
        None: its default) are sent with each request. The volume showing a
        frame of a sequence is segmented alone only with `sequenceFrame=True` (the frame
        shown now); `segmentCine` segments every frame.
        """
        from CardiacEnsembleLib.slicer.prediction import SegmentationJob
        from CardiacEnsembleLib.slicer.segmentations import check_output_segmentation
        from CardiacEnsembleLib.slicer.volumes import check_volume

        check_volume(volumeNode, allow_sequence_frame=sequenceFrame)
        if outputSegmentation is not None:  # before any work: never a ground truth
            check_output_segmentation(outputSegmentation)
        request = self._request(members, fusion, tta, device, modelsDir, heartMargin, preset)
        job = SegmentationJob(volumeNode, self.inferenceWorker(), request,
                              output=outputSegmentation, allow_sequence_frame=sequenceFrame)
        self.job = job
        self._jobModels[job] = request.models_dir
        return self.waitForCompletion(job) if wait else job

    def segmentCine(self, sequenceNode, members=None, fusion: Optional[str] = None,
                    tta: bool = False, device: str = "auto", modelsDir: Optional[str] = None,
                    wait: bool = False, name: Optional[str] = None,
                    heartMargin: Optional[int] = None, preset: Optional[str] = None):
        """Start segmenting every frame of a volume sequence (its node, its browser, or the
        volume showing its frames) in the worker process, in one request; the same kind of
        job as `segment`. Finished, it gives `CineNodes`: a segmentation sequence in the
        cine's browser (in sync when scrubbing), the volume-time table and chart, and the
        summary (ED/ES frames found on the curve, EF, stroke volume, ED myocardial mass)."""
        from CardiacEnsembleLib.slicer.cine import CineJob

        request = self._request(members, fusion, tta, device, modelsDir, heartMargin, preset)
        job = CineJob(sequenceNode, self.inferenceWorker(), request, name=name)
        self.job = job
        return self.waitForCompletion(job) if wait else job

    def _request(self, members, fusion, tta, device, modelsDir, heartMargin=None, preset=None):
        """What the worker is asked for; refused while another segmentation runs."""
        from CardiacEnsembleLib.slicer.worker import EnsembleRequest

        if self.job is not None and not self.job.done:
            raise RuntimeError("a segmentation is already running; wait for it or cancel it")
        return EnsembleRequest(str(modelsDir or DEFAULT_MODELS_DIR),
                               tuple(members) if members else None, fusion or None,
                               bool(tta), device,
                               None if heartMargin is None else int(heartMargin),
                               preset=preset)

    @staticmethod
    def isSequenceFrame(volumeNode) -> bool:
        """Whether a volume shows a frame of a multi-frame sequence (a cine to segment)."""
        from CardiacEnsembleLib.slicer.volumes import sequence_frames

        return volumeNode is not None and sequence_frames(volumeNode) > 1

    def inferenceWorker(self):
        """The worker process's client (the process itself starts with the first request),
        run with Slicer's own Python (`PythonSlicer`)."""
        if self._worker is None:
            from CardiacEnsembleLib.slicer.worker import InferenceWorker

            self._worker = InferenceWorker()  # PythonSlicer: worker.default_python
        return self._worker

    def waitForCompletion(self, job=None, timeout: Optional[float] = None):
        """Block until the job ends, then put its results into the scene (main thread)."""
        job = job or self.job
        if not job.wait(timeout):
            raise TimeoutError(f"{job.name}: not finished after {timeout} s")
        return self.finishSegmentation(job)

    def finishSegmentation(self, job):
        """PredictionNodes (CineNodes for a cine) of a finished job; raises `Cancelled`,
        `WorkerError` (the worker crashed or was killed) or the worker's refusal (a
        ValueError), the scene unchanged. A frame's QC report is kept with its segmentation
        (`reviewList`)."""
        from CardiacEnsembleLib.slicer.prediction import PredictionNodes

        if job is self.job:
            self.job = None
        nodes = job.finish()
        if isinstance(nodes, PredictionNodes):  # the worker's Prediction, read once, kept
            self.assessQuality(nodes.segmentation, job.work.result(), self._jobModels.get(job))
        return nodes

    # --- quality control: the review list ------------------------------------------------

    def assessQuality(self, segmentationNode, prediction, modelsDir: Optional[str] = None):
        """The QC report of `prediction` (its members' disagreement; a lone network's
        entropy), flagged with the thresholds validated for the ensemble of `modelsDir`, kept
        with `segmentationNode`. None, with a warning, where it cannot be scored."""
        from CardiacEnsembleLib.inference.quality import assess
        from CardiacEnsembleLib.slicer.review import store_report

        try:
            report = assess(prediction, qualityThresholds(modelsDir))
        except ValueError as error:  # e.g. one network and no probabilities
            logging.warning(f"Cardiac Ensemble: no QC report for "
                            f"'{segmentationNode.GetName()}': {error}")
            report = None
        store_report(segmentationNode, report)
        return report

    @staticmethod
    def qualityReport(segmentationNode):
        """The QC report kept with a segmentation (None: it has none)."""
        from CardiacEnsembleLib.slicer.review import stored_report

        return None if segmentationNode is None else stored_report(segmentationNode)

    def reviewSummary(self, segmentationNode) -> str:
        """The line above the review list: "4 slices to review ...", or why none are flagged."""
        from CardiacEnsembleLib.slicer.review import review_summary

        return review_summary(self.qualityReport(segmentationNode))

    def reviewList(self, segmentationNode, referenceVolume=None) -> list:
        """The QC review list (`ReviewEntry`s): the flagged slices and structures, worst first
        (without a validated threshold the 10 worst), each with its text, segment ID and the
        point to jump to, on the segmentation as it is now; empty without a QC report."""
        from CardiacEnsembleLib.slicer.review import review_entries

        report = self.qualityReport(segmentationNode)
        return [] if report is None else review_entries(report, segmentationNode,
                                                        referenceVolume)

    @staticmethod
    def jumpToReview(entry, segmentationNode=None, centered: bool = True) -> None:
        """Show a review entry: every slice view jumps to it (centred on it, or only moved to
        its plane); with `segmentationNode`, its structure becomes the Segment Editor's
        selected segment (the editor's parameter node, so it holds when the editor opens)."""
        from CardiacEnsembleLib.slicer.review import jump_slices, select_segment_for_editing

        scene = segmentationNode.GetScene() if segmentationNode is not None else slicer.mrmlScene
        jump_slices(scene, entry.ras, centered=centered)
        if segmentationNode is not None:
            select_segment_for_editing(segmentationNode, entry.segment_id)

    def cancel(self) -> None:
        """Kill the running segmentation's worker process; the next request starts another."""
        if self.job is not None:
            self.job.cancel()

    def cleanup(self) -> None:
        """End the worker process (module cleanup): frees its memory, GPU memory included."""
        self.cancel()
        if self._worker is not None:
            self._worker.close()
            self._worker = None

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
    def isGroundTruth(segmentationNode) -> bool:
        """Whether a segmentation is a loaded ground truth (never a valid output)."""
        from CardiacEnsembleLib.slicer.nodes import get_attribute

        return get_attribute(segmentationNode, "role") == "ground truth"

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
        self.test_startup_registered_terminology_and_sample()
        missing = CardiacEnsembleLogic.missingDependencies()
        if missing:  # the Extensions CI machines have no torch: say so, do not fail
            message = ("Cardiac Ensemble self-test: skipping the inference tests, these Python "
                       "packages are not installed: " + ", ".join(missing)
                       + " (press Segment in the module panel to install them)")
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.setUp()
        self.test_segment_evaluate_and_edit()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()
        self.setUp()
        self.test_bad_input_is_refused()

    def _sample(self):
        import CardiacEnsembleLib

        return os.path.join(os.path.dirname(CardiacEnsembleLib.__file__), "sample", "patient090")

    def test_startup_registered_terminology_and_sample(self):
        """What the startup hook did, no dependencies needed: the module's terminology is
        known to Slicer, and patient090 is offered in the Sample Data module."""
        import vtk
        from CardiacEnsembleLib.core.terminology import TYPE_CONTEXT

        names = vtk.vtkStringArray()
        slicer.modules.terminologies.logic().GetLoadedTerminologyNames(names)
        loaded = [names.GetValue(i) for i in range(names.GetNumberOfValues())]
        self.assertIn(TYPE_CONTEXT, loaded)
        sources = getattr(slicer.modules, "sampleDataSources", {}).get("Cardiac Ensemble", [])
        self.assertEqual([source.sampleName for source in sources], ["ACDC patient090"])
        self.delayDisplay("Terminology and sample data registered")

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

        self.delayDisplay("The QC review list: worst first, a click shows it and selects it")
        from CardiacEnsembleLib.slicer.review import entries_to_show

        report = logic.qualityReport(nodes.segmentation)
        entries = logic.reviewList(nodes.segmentation)
        self.assertEqual([(e.slice_index, e.structure) for e in entries],
                         [(e.slice_index, e.structure) for e in entries_to_show(report)])
        self.assertTrue(entries)
        logic.jumpToReview(entries[0], nodes.segmentation)
        red = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        for axis in range(3):
            self.assertAlmostEqual(red.GetSliceToRAS().GetElement(axis, 3), entries[0].ras[axis],
                                   places=3)
        editor = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        self.assertEqual(editor.GetSelectedSegmentID(), entries[0].segment_id)

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
