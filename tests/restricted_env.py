"""Run Python in a process that imports only what one stage of serving/deploy/Dockerfile installs.

A stage's distributions are read as the Dockerfile reads them: its ``pip install`` lines name the project with or
without ``--no-deps`` and with ``[extras]``, or an extra's list from pyproject.toml (the ``serve`` stage:
``--no-deps`` plus the ``triton`` extra; ``engine-builder``: ``dependencies`` plus the ``export`` extra), closed over
each installed distribution's own requirements (``importlib.metadata.requires``, markers evaluated here). The child
process may import the standard library, the project's packages (``tool.setuptools.packages.find``), the modules
of those distributions (``importlib.metadata.packages_distributions``), what the base image itself provides
(:data:`CONTAINER_PROVIDES`) and stand-in modules named explicitly; any other top-level import fails with
``ModuleNotFoundError: No module named '<name>'``, as in the image.

The child is started with ``python -S`` so that the finder is installed before anything else is imported (no
.pth file of this venv runs; the project comes from the source tree, as ``pip install --no-deps`` installs it).
Processes the child starts itself are not restricted.

As a script (the child): ``python -S tests/restricted_env.py -c CODE | -m MODULE | SCRIPT [ARGS...]``, the
stage's allowed modules in ``$SPAI_RESTRICTED_ENV`` (JSON, written by :func:`run_restricted`).
"""

from __future__ import annotations

import importlib.abc
import json
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "serving" / "deploy" / "Dockerfile"
CONFIG_VARIABLE = "SPAI_RESTRICTED_ENV"
REFUSED_PREFIX = "restricted_env: refused imports: "
SYSCONFIG_DATA = "_sysconfigdata_"  # the standard library's build configuration (sysconfig), named per platform
# Importable in the base image without any pip install of ours (only where the project's code imports it).
CONTAINER_PROVIDES: dict[str, dict[str, str]] = {
    # The NGC TensorRT image ships TensorRT's Python bindings: export.trt builds the plans with them. Not on this
    # machine (only type stubs), so here `tensorrt_available()` is False either way, as on a machine without GPU.
    "engine-builder": {"tensorrt": "the NGC TensorRT container's TensorRT Python bindings"},
    # The NGC Triton image: its Python backend provides triton_python_backend_utils to the models it loads; tests
    # pass a stand-in for it explicitly (``stand_ins``), never by default. Its TensorRT has no Python module.
    "serve": {},
}


# ---- the parent side: which distributions a stage installs ------------------------------------------------------

def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def stage_text(stage: str, dockerfile: Path = DOCKERFILE) -> str:
    """The Dockerfile lines of ``FROM ... AS <stage>`` up to the next ``FROM``."""
    parts = re.split(r"^(?=FROM )", dockerfile.read_text(), flags=re.M)
    found = [p for p in parts if re.match(rf"FROM \S+ AS {re.escape(stage)}\s", p)]
    if len(found) != 1:
        raise ValueError(f"{dockerfile}: no single stage {stage!r}")
    return re.sub(r"\\\n", " ", found[0])  # continuation lines joined: one RUN per line


def stage_requirements(stage: str, dockerfile: Path = DOCKERFILE) -> list[str]:
    """The requirement strings the stage's ``pip install`` lines install besides the project itself."""
    project = _pyproject()["project"]
    text, requirements, seen = stage_text(stage, dockerfile), [], False
    for flags, extras in re.findall(r"pip install ([^\n\"/]*)\"?/opt/spai-deploy(?:\[([\w,-]+)\])?", text):
        seen = True
        if "--no-deps" not in flags:
            requirements += project["dependencies"]
        for extra in filter(None, extras.split(",")):
            requirements += project["optional-dependencies"][extra]
    for extra in re.findall(r"\['optional-dependencies'\]\['([\w-]+)'\]", text):
        requirements += project["optional-dependencies"][extra]
    if not seen:
        raise ValueError(f"{dockerfile}: stage {stage!r} does not pip install /opt/spai-deploy")
    return requirements


def distribution_closure(requirements: Iterable[str]) -> tuple[set[str], set[str]]:
    """(installed distributions the requirements pull in, transitively; required ones not installed here), both
    normalized. Markers are evaluated for this interpreter and the extras each requirement asks for."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    wanted: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    missing: set[str] = set()
    while todo:
        req = todo.pop()
        name, extras = normalize(req.name), set(req.extras)
        if name in wanted and extras <= wanted[name]:
            continue
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            missing.add(name)
            continue
        wanted[name] = wanted.get(name, set()) | extras
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *wanted[name]}):
                todo.append(sub)
    return set(wanted), missing


def project_packages() -> set[str]:
    """Top-level packages ``pip install`` puts in site-packages (``tool.setuptools.packages.find.include``)."""
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.split(".")[0] for pattern in include}


def allowed_distributions(stage: str) -> set[str]:
    """Distributions (normalized) whose metadata a process of ``stage`` sees: the closure, the project itself and
    what the base image provides."""
    dists, _ = distribution_closure(stage_requirements(stage))
    return dists | {normalize(_pyproject()["project"]["name"])} | {normalize(n) for n in CONTAINER_PROVIDES[stage]}


def allowed_modules(stage: str, extra_names: Iterable[str] = ()) -> set[str]:
    """Top-level modules a process of ``stage`` may import (see the module docstring)."""
    import importlib.metadata as md

    dists = allowed_distributions(stage)
    owned = {top for top, owners in md.packages_distributions().items() if dists & {normalize(o) for o in owners}}
    stdlib = {*sys.stdlib_module_names, *sys.builtin_module_names}
    return (stdlib | project_packages() | owned
            | set(CONTAINER_PROVIDES[stage]) | set(extra_names))


def run_restricted(stage: str, args: Sequence[str], *, stand_ins: Sequence[Path] = (),
                   env: Mapping[str, str] | None = None, cwd: Path = ROOT,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` (``-c CODE ...``, ``-m MODULE ...`` or ``SCRIPT ...``) restricted to ``stage``;
    ``stand_ins``: module files importable under their own names only (their folders go on the path)."""
    import site

    config = {"stage": stage, "allowed": sorted(allowed_modules(stage, [p.stem for p in stand_ins])),
              "distributions": sorted(allowed_distributions(stage)),
              "path": [str(ROOT), *dict.fromkeys(str(p.parent) for p in stand_ins)],
              "site": site.getsitepackages(), "prefix": [sys.prefix, sys.exec_prefix]}
    child_env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}
    child_env[CONFIG_VARIABLE] = json.dumps(config)
    return subprocess.run([sys.executable, "-S", __file__, *args], capture_output=True, text=True, cwd=cwd,
                          env=child_env, timeout=timeout)


def refused_imports(stderr: str) -> dict[str, list[str]]:
    """The top-level modules a child tried to import and was refused, each with the files that tried (its last
    stderr line says). Optional imports (``try: import x``) show up here too."""
    lines = [line for line in stderr.splitlines() if line.startswith(REFUSED_PREFIX)]
    return json.loads(lines[-1][len(REFUSED_PREFIX):]) if lines else {}


def project_refusals(stderr: str) -> dict[str, list[str]]:
    """:func:`refused_imports` tried by the project's own files (not by a third-party package's optional probe)."""
    roots = tuple(str(ROOT / name) + os.sep for name in sorted(project_packages()))
    found = {top: [str(Path(f).relative_to(ROOT)) for f in files if f.startswith(roots)]
             for top, files in refused_imports(stderr).items()}
    return {top: files for top, files in found.items() if files}


# ---- the child side ------------------------------------------------------------------------------------------------

class StageFinder(importlib.abc.MetaPathFinder):
    """The only meta-path finder: it asks the interpreter's own finders, for allowed top-level modules and the
    metadata of allowed distributions only (code reads versions with importlib.metadata)."""

    def __init__(self, allowed: Iterable[str], distributions: Iterable[str], finders: Sequence[object]) -> None:
        self.allowed, self.finders = frozenset(allowed), list(finders)
        self.distributions = frozenset(distributions)
        self.refused: dict[str, list[str]] = {}  # top-level module -> the files whose import was refused

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's protocol
        top = fullname.partition(".")[0]
        if top not in self.allowed and not top.startswith(SYSCONFIG_DATA):
            files = self.refused.setdefault(top, [])
            if (importer := _importer()) not in files:
                files.append(importer)
            return None  # the import system raises ModuleNotFoundError: No module named '<fullname>'
        for finder in self.finders:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, context=None):  # noqa: ANN001 - importlib.metadata's protocol
        import importlib.metadata as md

        context = context or md.DistributionFinder.Context()
        for finder in self.finders:
            find = getattr(finder, "find_distributions", None)
            for dist in find(context) if find else ():
                if normalize(dist.metadata["Name"] or "") in self.distributions:
                    yield dist

    def invalidate_caches(self) -> None:
        for finder in self.finders:
            getattr(finder, "invalidate_caches", lambda: None)()


def _importer() -> str:
    """The file whose import statement (or importlib call) is being resolved."""
    frame = sys._getframe(2)
    machinery = (os.path.dirname(importlib.__file__) + os.sep, __file__)
    while frame is not None and (frame.f_code.co_filename.startswith(("<frozen", *machinery))):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "?"


def _child(argv: list[str]) -> None:
    config = json.loads(os.environ[CONFIG_VARIABLE])
    finder = StageFinder(config["allowed"], config["distributions"], sys.meta_path)
    sys.meta_path[:] = [finder]
    import atexit

    atexit.register(lambda: print(REFUSED_PREFIX + json.dumps(finder.refused), file=sys.stderr, flush=True))
    # -S skipped site.py, which would have made this venv the prefix and added its site-packages
    sys.prefix, sys.exec_prefix = config["prefix"]
    sys.path[:] = [*config["path"], *sys.path[1:], *config["site"]]
    mode, rest = (argv[0], argv[1:]) if argv and argv[0] in ("-c", "-m") else ("script", argv)
    try:
        if mode == "-c":
            sys.argv = ["-c", *rest[1:]]
            sys.path.insert(0, "")
            exec(compile(rest[0], "<string>", "exec"), {"__name__": "__main__"})
        elif mode == "-m":
            sys.argv = [rest[0], *rest[1:]]
            sys.path.insert(0, "")
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(rest)
            sys.path.insert(0, str(Path(rest[0]).resolve().parent))
            runpy.run_path(rest[0], run_name="__main__")
    except ModuleNotFoundError as e:
        if e.name and e.name.partition(".")[0] in finder.refused:
            e.add_note(f"restricted_env: the {config['stage']} stage of serving/deploy/Dockerfile does not install "
                       f"{e.name.partition('.')[0]!r}")
        raise


if __name__ == "__main__":
    _child(sys.argv[1:])
