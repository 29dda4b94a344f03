"""The Slicer module's files agree with each other, checked without Qt or the Slicer application.

The panel cannot be opened here, so these checks catch what would otherwise only fail when a
user opens the module: a widget name the code uses but the .ui lacks, a widget of the wrong
class for its signal or its parameter binding, a file the CMake build would not install (or one
it would install that is not the runtime's), an option list restated instead of taken from the
library, Qt creeping into the Logic or the MRML side, torch creeping into what the module
reads before torch is installed.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "CardiacEnsemble"
MODULE_FILE = MODULE_DIR / "CardiacEnsemble.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CardiacEnsemble.ui"
LIB_DIR = ROOT / "CardiacEnsembleLib"
MRML_FILES = sorted((LIB_DIR / "slicer").glob("*.py"))

#: Widgets whose signals the module connects, and the class each must be for that signal.
EXPECTED_CLASSES = {
    "loadCaseButton": "QPushButton",
    "segmentButton": "QPushButton",
    "cancelButton": "QPushButton",
    "evaluateButton": "QPushButton",
    "uncertaintyButton": "QPushButton",
    "segmentEditorButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "membersGroupBox": "QGroupBox",
    "reviewLabel": "QLabel",
    "reviewListWidget": "QListWidget",
}
#: The parameterNodeWrapper connects only exact widget classes to a type (guiConnectors.py).
BINDING_CLASSES = {"node": "qMRMLNodeComboBox", "bool": "QCheckBox", "choice": "QComboBox"}
#: Parameters the widget keeps in sync by hand (dynamic member checkboxes), not via the .ui.
UNBOUND_PARAMETERS = {"excludedMembers"}


def ui_widgets() -> dict[str, ElementTree.Element]:
    tree = ElementTree.parse(UI_FILE)
    return {element.get("name"): element for element in tree.iter()
            if element.tag in ("widget", "layout") and element.get("name")}


def module_source() -> str:
    return MODULE_FILE.read_text()


def _parameter_class(tree: ast.Module) -> ast.ClassDef:
    wrapped = [node for node in tree.body if isinstance(node, ast.ClassDef) and any(
        getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)]
    assert len(wrapped) == 1, "expected one @parameterNodeWrapper class in CardiacEnsemble.py"
    return wrapped[0]


def parameter_fields() -> dict[str, str]:
    """Fields of the module's @parameterNodeWrapper class -> 'node' | 'bool' | 'choice' | other."""
    tree = ast.parse(module_source())
    fields = {}
    for statement in _parameter_class(tree).body:
        if isinstance(statement, ast.AnnAssign):
            annotation = ast.unparse(statement.annotation)
            kind = ("node" if annotation.startswith("vtkMRML") else "bool" if annotation == "bool"
                    else "choice" if "Choice(" in annotation else annotation)
            fields[statement.target.id] = kind if kind in BINDING_CLASSES else annotation
    return fields


def test_ui_file_is_designer_xml_with_a_mrml_root_widget():
    root = ElementTree.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "CardiacEnsemble")
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if not c.startswith("Q")}
    assert custom <= declared, f"custom widgets without a <customwidget> entry: {custom - declared}"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", module_source()))
    assert used, "the widget code should use self.ui.<name>"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"CardiacEnsemble.py uses widgets not in the .ui: {missing}"


def test_widgets_with_connected_signals_have_the_expected_class():
    source = module_source()
    connected = set(re.findall(r"self\.ui\.(\w+)\.connect\(", source))
    unmapped = connected - set(EXPECTED_CLASSES)
    assert not unmapped, f"add the expected class of {sorted(unmapped)} to EXPECTED_CLASSES"
    widgets = ui_widgets()
    for name, expected in EXPECTED_CLASSES.items():
        assert name in widgets, f"{name} missing from the .ui"
        assert widgets[name].get("class") == expected, f"{name} should be a {expected}"


def _bound_widgets() -> dict[str, ElementTree.Element]:
    bound = {}
    for element in ElementTree.parse(UI_FILE).iter("widget"):
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = element
    return bound


def test_parameter_bindings_match_the_parameter_node_and_widget_classes():
    fields, bound = parameter_fields(), _bound_widgets()
    assert set(bound) <= set(fields), \
        f".ui binds unknown parameters: {sorted(set(bound) - set(fields))}"
    assert set(fields) - set(bound) == UNBOUND_PARAMETERS, \
        f"parameters without a widget: {sorted(set(fields) - set(bound))}"
    source = module_source()
    for name, widget in bound.items():
        kind = fields[name]
        assert widget.get("class") == BINDING_CLASSES[kind], \
            f"{name} ({kind}) is bound to a {widget.get('class')}"
        if kind == "node":
            annotation = re.search(rf"^\s+{name}: (\w+)", source, re.M).group(1)
            node_types = [s.text for s in widget.iter("string")]
            assert annotation in node_types, f"{widget.get('name')} does not list {annotation}"


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Top-level `from X import name` of a module: name -> X."""
    return {alias.asname or alias.name: node.module for node in tree.body
            if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_choice_parameters_offer_the_library_options():
    """The fusion rules come from the library's one list, not a copy the module keeps."""
    tree = ast.parse(module_source())
    assert _imported_names(tree).get("FUSION_RULES") == "CardiacEnsembleLib.core.options"
    assigned = {target.id for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert "FUSION_RULES" not in assigned, "the module must not restate the fusion rules"
    fusion = next(statement for statement in _parameter_class(tree).body
                  if isinstance(statement, ast.AnnAssign) and statement.target.id == "fusion")
    assert "FUSION_RULES" in _names_used(fusion.annotation), \
        f"the fusion choice is {ast.unparse(fusion.annotation)}, not the library's rules"
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and len(node.targets) == 1
              and getattr(node.targets[0], "id", None) == "DEVICES"}
    assert values["DEVICES"] == ["auto", "cpu", "cuda"]  # what inference.runner.pick_device takes


@pytest.mark.parametrize("module", ["CardiacEnsembleLib.core.manifest",
                                    "CardiacEnsembleLib.core.options",
                                    "CardiacEnsembleLib.core.requirements",
                                    "CardiacEnsembleLib.core.terminology"])
def test_what_the_module_reads_before_installing_needs_no_torch(module):
    """The panel reads the manifest, the options and the segment terminology before torch and
    the other dependencies are installed; Slicer bundles numpy, nothing else of ours."""
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in ('torch', 'slicer', 'nibabel', 'SimpleITK', 'scipy') "
            f"if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", f"{module} imports {run.stdout.strip()}"


def _names_used(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_logic_has_no_qt():
    tree = ast.parse(module_source())
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef)
                 and n.name == "CardiacEnsembleLogic")
    assert not {"qt", "ctk"} & _names_used(logic), "the Logic must stay usable without Qt"
    assert not [n for n in ast.walk(logic) if isinstance(n, ast.Attribute)
                and n.attr == "app" and getattr(n.value, "id", None) == "slicer"]


def _imports(tree: ast.Module) -> set[str]:
    """Top-level packages a module imports, at its top or inside a function."""
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imports.add(node.module.split(".")[0])
    return imports


@pytest.mark.parametrize("path", MRML_FILES, ids=lambda p: p.name)
def test_mrml_side_imports_mrml_only_and_never_the_application(path):
    tree = ast.parse(path.read_text())
    assert not {"qt", "ctk", "torch"} & _imports(tree)
    used = {f"slicer.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "slicer"}
    forbidden = used & {"slicer.app", "slicer.mrmlScene", "slicer.modules"}
    assert not forbidden, f"{path.name} must not use {sorted(forbidden)}"


def test_only_the_mrml_side_imports_slicer():
    """So the runtime's other packages run where no Slicer (nor slicer-core) is installed."""
    importing = [p.relative_to(ROOT).as_posix() for p in LIB_DIR.rglob("*.py")
                 if "__pycache__" not in p.parts and p not in MRML_FILES
                 and "slicer" in _imports(ast.parse(p.read_text()))]
    assert not importing, f"only CardiacEnsembleLib/slicer/ may import slicer: {importing}"


#: Stand-ins for the Slicer and CTK macros that print what they were given, so the module's
#: real CMakeLists.txt can be evaluated with `cmake -P`, without Slicer.
CMAKE_PROBE = """
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(item IN LISTS MY_SCRIPTS)
    message("module-script ${item}")
  endforeach()
  foreach(item IN LISTS MY_RESOURCES)
    message("module-resource ${item}")
  endforeach()
  if(MY_WITH_GENERIC_TESTS)
    message("module-generic-tests ${MY_NAME}")
  endif()
endfunction()
function(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  message("lib-source-dir ${MY_SOURCE_DIR}")
  foreach(item IN LISTS MY_SCRIPTS)
    message("lib-script ${item}")
  endforeach()
  foreach(item IN LISTS MY_RESOURCES)
    message("lib-resource ${item}")
  endforeach()
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  message("unittest ${MY_SCRIPT}")
endfunction()
include("${MODULE_CMAKELISTS}")
"""


@pytest.fixture(scope="module")
def cmake_install(tmp_path_factory) -> dict[str, list[str]]:
    """What CardiacEnsemble/CMakeLists.txt hands to the Slicer and CTK macros: kind -> values."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (apt-get install cmake): the install lists are "
                    "checked by evaluating the real CMakeLists.txt")
    probe = tmp_path_factory.mktemp("cmake") / "probe.cmake"
    probe.write_text(CMAKE_PROBE)
    run = subprocess.run([cmake, "-DBUILD_TESTING=ON",
                          f"-DMODULE_CMAKELISTS={MODULE_DIR / 'CMakeLists.txt'}", "-P",
                          str(probe)], cwd=MODULE_DIR, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "CMake Error" not in run.stderr, run.stderr[-3000:]
    found: dict[str, list[str]] = {}
    for line in run.stderr.splitlines():  # message() without a mode writes to stderr
        kind, _, value = line.partition(" ")
        found.setdefault(kind, []).append(value)
    return found


def _files(folder: Path, base: Path, pattern: str = "*") -> set[str]:
    return {p.relative_to(base).as_posix() for p in folder.rglob(pattern)
            if p.is_file() and "__pycache__" not in p.parts}


def test_module_cmake_installs_the_module_script_and_every_resource(cmake_install):
    """The module file is the one script (Slicer loads every .py beside it as a module); the
    terminology and the batch script travel as resources."""
    assert set(cmake_install["module-script"]) == {p.name for p in MODULE_DIR.glob("*.py")}
    assert set(cmake_install["module-resource"]) == _files(MODULE_DIR / "Resources", MODULE_DIR)
    assert {"Resources/Scripts/headless_segment.py",
            "Resources/SegmentationCategoryTypeModifier-CardiacEnsemble.term.json"} <= \
        set(cmake_install["module-resource"])
    assert cmake_install["module-generic-tests"] == ["CardiacEnsemble"]
    assert cmake_install["unittest"] == ["CardiacEnsemble.py"]  # the module's self-test


def test_module_cmake_installs_exactly_the_runtime_package_and_its_data(cmake_install):
    """Every Python file of CardiacEnsembleLib (sub-packages too) and every file of its data
    folders, relative to the repository root; nothing of the workbench, research or tests."""
    assert [Path(d).resolve() for d in cmake_install["lib-source-dir"]] == [ROOT.resolve()]
    scripts, resources = cmake_install["lib-script"], cmake_install["lib-resource"]
    assert len(scripts) == len(set(scripts)) and not set(scripts) & set(resources)
    on_disk_scripts = _files(LIB_DIR, ROOT, "*.py")
    assert set(scripts) == on_disk_scripts, (
        f"not installed: {sorted(on_disk_scripts - set(scripts))}; "
        f"installed but not a runtime module: {sorted(set(scripts) - on_disk_scripts)}")
    data = _files(LIB_DIR / "models", ROOT) | _files(LIB_DIR / "sample", ROOT)
    assert set(resources) == data, f"data not installed: {sorted(data - set(resources))}"
    package = {p for p in _files(LIB_DIR, ROOT) if not p.endswith(".pyc")}
    left_out = package - set(scripts) - set(resources)
    assert not left_out, f"files of the package that would not be installed: {sorted(left_out)}"


def test_extension_cmake_describes_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL"):
        assert values.get(key), f"{key} is empty"
    # the catalog takes one category; the module itself is listed under both (its categories)
    assert values["EXTENSION_CATEGORY"] == "Segmentation"
    assert 'self.parent.categories = ["Segmentation", "Cardiac"]' in module_source()
    assert "Slicer 5.10 and later" in values["EXTENSION_DESCRIPTION"]
    # no screenshot URL until real screenshots exist (the catalog would show broken images)
    assert values.get("EXTENSION_SCREENSHOTURLS", "") == ""
    assert (ROOT / "LICENSE.txt").is_file()
    # the module installs torch through the PyTorch extension (CardiacEnsembleLogic)
    assert values["EXTENSION_DEPENDS"] == "PyTorch" and "PyTorchUtils" in module_source()
    icon = re.search(r"/main/(.+)$", values["EXTENSION_ICONURL"]).group(1)
    assert (ROOT / icon).is_file(), f"the icon URL names {icon}, which is not in the repository"
    assert re.findall(r"add_subdirectory\((\w+)\)", text) == [MODULE_DIR.name]


@pytest.mark.parametrize("size", [(128, 128)])
def test_icon_is_a_small_png(size):
    data = (MODULE_DIR / "Resources" / "Icons" / "CardiacEnsemble.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == size
