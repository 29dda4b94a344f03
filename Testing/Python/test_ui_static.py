"""The Slicer module's files agree with each other, checked without Qt or the Slicer application.

The panel cannot be opened here, so these checks catch what would otherwise only fail when a
user opens the module: a widget name the code uses but the .ui lacks, a widget of the wrong
class for its signal or its parameter binding, a script or resource the CMake build would not
install, a module file that does not compile, Qt creeping into the Logic or the MRML bridge.
"""
from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "CardiacEnsemble"
MODULE_FILE = MODULE_DIR / "CardiacEnsemble.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CardiacEnsemble.ui"
LIB_DIR = ROOT / "CardiacEnsembleLib"
BRIDGE_FILE = LIB_DIR / "slicer_bridge.py"

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


def parameter_fields() -> dict[str, str]:
    """Fields of the module's @parameterNodeWrapper class -> 'node' | 'bool' | 'choice' | other."""
    tree = ast.parse(module_source())
    wrapped = [node for node in tree.body if isinstance(node, ast.ClassDef) and any(
        getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)]
    assert len(wrapped) == 1, "expected one @parameterNodeWrapper class in CardiacEnsemble.py"
    fields = {}
    for statement in wrapped[0].body:
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


def test_choice_parameters_offer_the_library_options():
    from CardiacEnsembleLib.fusion import FUSION_RULES

    tree = ast.parse(module_source())
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and len(node.targets) == 1
              and getattr(node.targets[0], "id", None) in ("FUSION_RULES", "DEVICES")}
    assert values["FUSION_RULES"] == list(FUSION_RULES)
    assert values["DEVICES"] == ["auto", "cpu", "cuda"]


def test_module_file_compiles_without_importing_qt(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "module.pyc"), doraise=True)
    classes = {n.name for n in ast.parse(module_source()).body if isinstance(n, ast.ClassDef)}
    assert {"CardiacEnsemble", "CardiacEnsembleWidget", "CardiacEnsembleLogic",
            "CardiacEnsembleTest"} <= classes


def _names_used(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_logic_has_no_qt():
    tree = ast.parse(module_source())
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef)
                 and n.name == "CardiacEnsembleLogic")
    assert not {"qt", "ctk"} & _names_used(logic), "the Logic must stay usable without Qt"
    assert not [n for n in ast.walk(logic) if isinstance(n, ast.Attribute)
                and n.attr == "app" and getattr(n.value, "id", None) == "slicer"]


def test_bridge_imports_mrml_only_and_never_the_application():
    tree = ast.parse(BRIDGE_FILE.read_text())
    top_imports = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_imports |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top_imports.add(node.module.split(".")[0])
    assert not {"qt", "ctk", "torch"} & top_imports
    used = {f"slicer.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "slicer"}
    forbidden = used & {"slicer.app", "slicer.mrmlScene", "slicer.modules"}
    assert not forbidden, f"slicer_bridge must not use {sorted(forbidden)}"


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"no set({variable} ...) in CMakeLists.txt"
    return [item.replace("${MODULE_NAME}", "CardiacEnsemble") for item in match.group(1).split()]


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    lib_scripts = _cmake_list(text, "LIB_PYTHON_SCRIPTS")
    on_disk_scripts = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")}
    on_disk_resources = {p.relative_to(MODULE_DIR).as_posix()
                         for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    on_disk_lib = {p.relative_to(ROOT).as_posix() for p in LIB_DIR.glob("*.py")}
    assert set(scripts) == on_disk_scripts
    assert set(resources) == on_disk_resources
    assert set(lib_scripts) == on_disk_lib, (
        f"not listed: {sorted(on_disk_lib - set(lib_scripts))}; "
        f"listed but absent: {sorted(set(lib_scripts) - on_disk_lib)}")
    for data_folder in ("CardiacEnsembleLib/models/*", "CardiacEnsembleLib/sample/*"):
        assert data_folder in text, f"library data {data_folder} is not installed"
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_cmake_describes_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert values.get(key), f"{key} is empty"
    assert values["EXTENSION_CATEGORY"] == "Segmentation"
    assert values["EXTENSION_DEPENDS"] == "PyTorch"
    assert values["EXTENSION_ICONURL"].endswith("CardiacEnsemble/Resources/Icons/CardiacEnsemble.png")
    assert "add_subdirectory(CardiacEnsemble)" in text
    assert re.search(r"project\(CardiacEnsemble\)", text)


@pytest.mark.parametrize("size", [(128, 128)])
def test_icon_is_a_small_png(size):
    data = (MODULE_DIR / "Resources" / "Icons" / "CardiacEnsemble.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == size
