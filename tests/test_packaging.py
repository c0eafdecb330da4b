"""What the package declares is true: its Python range, license, dependencies and version."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions, requires, version
from pathlib import Path

import pytest
from conftest import tiny_model
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import videotome
from videotome import dependencies, patch
from videotome.errors import VideotomeError

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = sorted((ROOT / "src").rglob("*.py"))

#: standard-library modules and names added after Python 3.10, with the version that added them
NEWER_STDLIB: dict[str, tuple[int, int]] = {
    "tomllib": (3, 11),
    "wsgiref.types": (3, 11),
    "asyncio.TaskGroup": (3, 11),
    "asyncio.timeout": (3, 11),
    "contextlib.chdir": (3, 11),
    "datetime.UTC": (3, 11),
    "enum.StrEnum": (3, 11),
    "enum.ReprEnum": (3, 11),
    "enum.verify": (3, 11),
    "hashlib.file_digest": (3, 11),
    "math.cbrt": (3, 11),
    "math.exp2": (3, 11),
    "operator.call": (3, 11),
    "typing.Self": (3, 11),
    "typing.LiteralString": (3, 11),
    "typing.Never": (3, 11),
    "typing.NotRequired": (3, 11),
    "typing.Required": (3, 11),
    "typing.TypeVarTuple": (3, 11),
    "typing.Unpack": (3, 11),
    "typing.assert_never": (3, 11),
    "typing.assert_type": (3, 11),
    "typing.reveal_type": (3, 11),
    "typing.dataclass_transform": (3, 11),
    "collections.abc.Buffer": (3, 12),
    "itertools.batched": (3, 12),
    "math.sumprod": (3, 12),
    "types.get_original_bases": (3, 12),
    "typing.override": (3, 12),
    "typing.TypeAliasType": (3, 12),
    "copy.replace": (3, 13),
    "dbm.sqlite3": (3, 13),
    "os.process_cpu_count": (3, 13),
    "typing.ReadOnly": (3, 13),
    "typing.TypeIs": (3, 13),
    "warnings.deprecated": (3, 13),
    "annotationlib": (3, 14),
    "compression": (3, 14),
    "string.templatelib": (3, 14),
}


def minimum_python() -> tuple[int, int]:
    """The lower bound of pyproject's ``requires-python``, as (major, minor)."""
    bounds = [Version(s.version) for s in SpecifierSet(PYPROJECT["project"]["requires-python"]) if s.operator == ">="]
    assert len(bounds) == 1, "requires-python should have exactly one >= bound"
    return bounds[0].major, bounds[0].minor


def _dotted(release: tuple[int, int]) -> str:
    return ".".join(map(str, release))


def imported_names(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of every module and name the tree imports, and of ``module.name`` on a plain import."""
    found: list[tuple[int, str]] = []
    plain: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name))
                if "." not in alias.name:
                    plain[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in plain:
            found.append((node.lineno, f"{plain[node.value.id]}.{node.attr}"))
    return found


def test_sources_run_on_the_minimum_python():
    minimum = minimum_python()
    problems = []
    for path in SOURCES:
        name = path.relative_to(ROOT)
        try:
            tree = ast.parse(path.read_text(), filename=str(path), feature_version=minimum)
        except SyntaxError as error:
            problems.append(f"{name}:{error.lineno}: syntax newer than Python {_dotted(minimum)}: {error.msg}")
            continue
        for line, imported in imported_names(tree):
            added = NEWER_STDLIB.get(imported)
            if added is not None and added > minimum:
                problems.append(
                    f"{name}:{line}: imports {imported}, new in Python {_dotted(added)}; "
                    f"requires-python allows {_dotted(minimum)}"
                )
    assert not problems, "\n".join(problems)


def test_license_file_holds_the_declared_license():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert " ".join(text.split()[:7]) == "Apache License Version 2.0, January 2004 http://www.apache.org/licenses/"
    sections = [
        "Definitions", "Grant of Copyright License", "Grant of Patent License", "Redistribution",
        "Submission of Contributions", "Trademarks", "Disclaimer of Warranty", "Limitation of Liability",
        "Accepting Warranty or Additional Liability",
    ]
    for number, title in enumerate(sections, 1):
        assert f"{number}. {title}." in text
    assert "END OF TERMS AND CONDITIONS" in text


#: imports of optional backends that the code uses only when installed, so pyproject leaves them out
OPTIONAL_IMPORTS = {"decord"}


def declared_requirements() -> list[Requirement]:
    """pyproject's dependencies and its dev extra."""
    project = PYPROJECT["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_imported_distribution_is_declared():
    declared = {canonicalize_name(r.name) for r in declared_requirements()}
    distributions = packages_distributions()
    missing = set()
    for path in SOURCES:
        for line, imported in imported_names(ast.parse(path.read_text())):
            top = imported.partition(".")[0]
            if top in sys.stdlib_module_names or top in OPTIONAL_IMPORTS or top == "videotome":
                continue
            names = {canonicalize_name(d) for d in distributions.get(top, [top])}
            if not names & declared:
                missing.add(f"{path.relative_to(ROOT)}:{line}: imports {top} ({', '.join(sorted(names))})")
    assert not missing, "not declared in pyproject's dependencies:\n" + "\n".join(sorted(missing))


def test_constraints_pin_every_declared_dependency_inside_its_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        pin = Requirement(line)
        (specifier,) = pin.specifier
        assert specifier.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(pin.name)] = specifier.version
    for requirement in declared_requirements():
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned), f"constraints.txt pins {pinned}, outside {requirement}"


@pytest.fixture
def installed_transformers(monkeypatch):
    """Make the check see the given transformers version; its once-per-process cache is cleared around the test."""
    dependencies.check_transformers.cache_clear()
    yield lambda installed: monkeypatch.setattr(dependencies, "version", {"transformers": installed}.__getitem__)
    dependencies.check_transformers.cache_clear()


@pytest.mark.parametrize("installed", ["4.57.0", "6.0.0"])
def test_patch_refuses_a_transformers_outside_the_declared_range(installed_transformers, installed):
    installed_transformers(installed)
    (supported,) = [r for r in map(Requirement, requires("videotome")) if r.name == "transformers"]
    with pytest.raises(VideotomeError) as caught:
        patch(tiny_model("vit"), r=2)
    message = str(caught.value)
    assert f"transformers {installed} is installed" in message and str(supported) in message
    assert message.endswith("run: pip install -c constraints.txt -e .") and "\n" not in message


def test_version_is_written_once_in_the_package():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "videotome.__version__"}
    init = ast.parse((ROOT / "src" / "videotome" / "__init__.py").read_text())
    assigned = {
        target.id: node.value
        for node in init.body if isinstance(node, ast.Assign)
        for target in node.targets if isinstance(target, ast.Name)
    }
    # a literal (literal_eval refuses anything else), so setuptools reads it without importing the package and torch
    assert ast.literal_eval(assigned["__version__"]) == videotome.__version__


def test_installed_metadata_has_the_package_version():
    assert version("videotome") == videotome.__version__, "stale install; run: pip install -c constraints.txt -e ."
