"""The image definition, checked offline: pins identical to the lock, non-root, kfp preinstalled, and
every module a component runs installed in it."""

import inspect
import re
import tomllib
from pathlib import Path

import setuptools

import sherlock
from components import COMPONENTS, component
from components.images import CPU_IMAGE, IMAGE

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_every_pip_call_is_constrained_by_the_lock():
    calls = re.findall(r"pip install[^\n]*", DOCKERFILE)
    assert len(calls) == 4 and all("-c requirements/constraints.txt" in call for call in calls)
    torch = re.search(r'"torch==([\d.]+)\$\{TORCH_LOCAL_VERSION\}"', DOCKERFILE)
    assert torch and torch.group(1) == lock()["torch"]


def test_pyproject_pins_equal_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = ("train", "pipelines", "tracking", "serving")
    requirements = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    pins = lock()
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        name = re.sub(r"\[.*\]", "", name).lower()
        assert pins.get(name) == version, f"{requirement} differs from the lock ({pins.get(name)})"


def test_image_installs_every_runtime_extra_and_runs_unprivileged():
    assert '".[train,pipelines,tracking,serving]"' in DOCKERFILE  # kfp is in the image: no run-time pip
    assert re.search(r"^USER 1000$", DOCKERFILE, re.MULTILINE)
    assert "pip check" in DOCKERFILE


def test_components_reference_this_version_of_the_image():
    assert IMAGE.endswith(f":{sherlock.__version__}-cuda") and CPU_IMAGE.endswith(f":{sherlock.__version__}-cpu")
    assert IMAGE.rsplit(":", 1)[0] == CPU_IMAGE.rsplit(":", 1)[0]


def test_the_image_installs_every_first_party_module_a_component_runs():
    """A component's body runs in the image, not in this checkout: each ``from sherlock…``/``from
    components…`` it imports must be in a package the Dockerfile copies and pyproject installs."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = set(setuptools.find_packages(str(ROOT), include=include["include"]))
    imported = set()
    for name in COMPONENTS:
        source = inspect.getsource(component(name).python_func)
        imported |= set(re.findall(r"^\s*from ((?:sherlock|components)[\w.]*) import", source, re.MULTILINE))
    assert {"components.steps", "sherlock.stages.registry"} <= imported
    for module in imported:
        assert module in packages or module.rpartition(".")[0] in packages, f"{module} is not installed in the image"
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file() or (ROOT / module.replace(".", "/")).is_dir()
        top = module.split(".")[0]
        assert re.search(rf"^COPY {top} {top}$", DOCKERFILE, re.MULTILINE), f"the Dockerfile does not copy {top}/"
