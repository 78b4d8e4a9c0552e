"""ComfyUI for the tests: where its sources are, what it needs, and ComfyUI imported in this process on the CPU.

ComfyUI and AnimateDiff-Evolved (ADE) are not installable from the package registries, so their source trees are
found on disk: ``IVMIXED_COMFYUI_SOURCES`` names the folder holding ``ComfyUI/`` and
``ComfyUI-AnimateDiff-Evolved/``; by default it is ``<repo>/../shared/comfyui``. The sources are treated as read-only:
every folder ComfyUI writes to (models, custom nodes, output, temp, input, user, bytecode caches) is a temp folder.

Nothing here imports ComfyUI at module level, so collecting the tests stays fast where ComfyUI is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Dict, Optional

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "comfyui" / "ComfyUI-IVMixed"
ADE_FOLDER = "ComfyUI-AnimateDiff-Evolved"
ANIMATEDIFF_MODELS = "animatediff_models"  # ADE's model folder name
# Modules of ComfyUI's requirements that a plain ivmixed environment lacks (looked up, not imported).
REQUIRED_MODULES = ("aiohttp", "torchsde", "alembic", "sqlalchemy", "av", "yaml", "einops", "safetensors", "scipy",
                    "psutil", "comfyui_frontend_package", "requests")


def comfyui_sources() -> Path:
    """The folder holding ``ComfyUI/`` and ``ComfyUI-AnimateDiff-Evolved/``."""
    given = os.environ.get("IVMIXED_COMFYUI_SOURCES")
    return Path(given).expanduser().resolve() if given else (REPO.parent / "shared" / "comfyui").resolve()


def comfyui_root() -> Path:
    return comfyui_sources() / "ComfyUI"


def ade_root() -> Path:
    return comfyui_sources() / ADE_FOLDER


def sources_problem() -> Optional[str]:
    """Why ComfyUI cannot be found, in one line; None when both source trees are there."""
    where = comfyui_sources()
    if not (where / "ComfyUI" / "main.py").is_file() or not (where / ADE_FOLDER / "__init__.py").is_file():
        return f"ComfyUI sources not found at {where}: set IVMIXED_COMFYUI_SOURCES"
    return None


def requirements_problem() -> Optional[str]:
    """Why ComfyUI cannot run in this Python, in one line; None when its requirements are importable."""
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return (f"ComfyUI's requirements are not installed in this Python (missing {', '.join(missing)}): "
                "run bash .ci/comfyui.sh")
    return None


# --- torchvision ---------------------------------------------------------------------------------------------------
# ComfyUI (comfy/sd.py through a few model families) and ADE import torchvision at import time, but no Stable
# Diffusion 1.5 or AnimateDiff path calls it. The registry's torchvision builds are CUDA ones that fail to load next
# to the CPU build of torch, so the tests register an import-only stand-in instead: importing it and reading its
# attributes works, calling anything from it raises. transformers and diffusers are imported first, so that their
# "is torchvision available" checks see the real state (not installed) and never use the stand-in.

class TorchvisionStandIn(RuntimeError):
    pass


class _Absent:
    """Any attribute of the stand-in: more attributes on access, an error when called or instantiated."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise TorchvisionStandIn(f"{self._name} is not available: torchvision is an import-only stand-in in these "
                                 "tests")

    def __repr__(self):
        return f"<torchvision stand-in {self._name}>"


class _StandInModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self.__name__}.{attr}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+stand-in"
        module.__file__ = None
        return module

    def exec_module(self, module):
        pass


def install_torchvision_stand_in() -> bool:
    """Register the stand-in (see above); False when torchvision is already imported (then it is left alone)."""
    if "torchvision" in sys.modules:
        return isinstance(sys.modules["torchvision"], _StandInModule)
    import diffusers  # noqa: F401  (their availability checks run now, before the stand-in exists)
    import transformers  # noqa: F401

    if not any(isinstance(finder, _StandInFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _StandInFinder())
    return True


# --- folders -------------------------------------------------------------------------------------------------------

def make_base_directory(base: Path, models: Optional[Path] = None, pack: bool = True) -> Path:
    """A ComfyUI base directory (``--base-directory``): its own models, output, temp, input and user folders, and a
    ``custom_nodes`` folder holding links to ADE and (when present and ``pack``) to ComfyUI-IVMixed. ``models``: a
    folder with ``checkpoints/`` and ``animatediff_models/`` to link in as the base's own model folders."""
    base = Path(base)
    folders = ("output", "temp", "input", "user", "custom_nodes", "models/checkpoints", f"models/{ANIMATEDIFF_MODELS}")
    for name in folders:
        (base / name).mkdir(parents=True, exist_ok=True)
    links = {ADE_FOLDER: ade_root()}
    if pack and (PACK / "__init__.py").is_file():
        links[PACK.name] = PACK
    for name, target in links.items():
        link = base / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return base


def model_folders(models: Path) -> Dict[str, Path]:
    """ComfyUI's folder names -> the folders of a tiny-model root (see ``models.py``)."""
    return {"checkpoints": Path(models) / "checkpoints", ANIMATEDIFF_MODELS: Path(models) / ANIMATEDIFF_MODELS}


# --- ComfyUI in this process ---------------------------------------------------------------------------------------

class Comfy(types.SimpleNamespace):
    """ComfyUI imported in this process: ``nodes``, ``folder_paths``, ``comfy`` (the package, with ``samplers``,
    ``sample``, ``sd``, ``utils``, ``model_management`` imported), ``args``; ``base`` (the temp base directory),
    ``loaded`` (custom node folder name -> whether it loaded)."""

    def node_class(self, name: str):
        mappings = self.nodes.NODE_CLASS_MAPPINGS
        if name not in mappings:
            raise KeyError(f"node type {name!r} is not registered in ComfyUI (custom nodes loaded: {self.loaded})")
        return mappings[name]

    def run_node(self, name: str, **inputs):
        """Run a (V1) node as ComfyUI would: an instance's FUNCTION called with the inputs; returns its outputs."""
        cls = self.node_class(name)
        return getattr(cls(), cls.FUNCTION)(**inputs)

    def add_model_folder(self, folder_name: str, path: Path) -> None:
        self.folder_paths.add_model_folder_path(folder_name, str(path))
        self.folder_paths.filename_list_cache.clear()


_COMFY: Optional[Comfy] = None


def import_comfy(base: Path, models: Optional[Path] = None, pack: bool = True) -> Comfy:
    """Import ComfyUI in this process, once: on the CPU, with ``base`` (made by :func:`make_base_directory` if
    needed) as its base directory, its built-in extra nodes, ADE and (when present) ComfyUI-IVMixed loaded as custom
    nodes, and ``models``' folders registered. Later calls return the same object (and only add model folders)."""
    global _COMFY
    if _COMFY is not None:
        if models is not None:
            for folder_name, path in model_folders(models).items():
                _COMFY.add_model_folder(folder_name, path)
        return _COMFY
    problem = sources_problem() or requirements_problem()
    if problem:
        raise RuntimeError(problem)
    base = make_base_directory(Path(base), pack=pack)
    # Bytecode of the read-only sources goes to the temp folder, not beside them.
    if sys.pycache_prefix is None:
        sys.pycache_prefix = str(base / "pycache")
    install_torchvision_stand_in()
    root = str(comfyui_root())
    if root not in sys.path:
        sys.path.insert(0, root)

    import comfy.options  # noqa: F401  (command-line parsing stays off: ComfyUI's defaults)
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(base)
    args.disable_api_nodes = True
    args.database_url = "sqlite:///:memory:"
    import folder_paths

    assert folder_paths.base_path == os.path.abspath(base), folder_paths.base_path
    for name in ("output", "temp", "input", "user"):
        getattr(folder_paths, f"set_{name}_directory")(str(base / name))
    import utils.extra_config  # noqa: F401  (before nodes: nodes puts comfy/ first on sys.path, with its own utils)
    import nodes
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    built_in = set(nodes.NODE_CLASS_MAPPINGS)
    loaded = {}
    for link in sorted((base / "custom_nodes").iterdir()):
        loaded[link.name] = asyncio.run(nodes.load_custom_node(str(link), built_in, module_parent="custom_nodes"))
    if not loaded.get(ADE_FOLDER):
        raise RuntimeError(f"AnimateDiff-Evolved did not load from {ade_root()} (see the log above)")
    _COMFY = Comfy(nodes=nodes, folder_paths=folder_paths, comfy=comfy, args=args, base=base, loaded=loaded)
    if models is not None:
        for folder_name, path in model_folders(models).items():
            _COMFY.add_model_folder(folder_name, path)
    return _COMFY
