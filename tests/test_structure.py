"""The package's imports, read from the source with ``ast`` (nothing is run): data flows one way, so no two modules
import each other, directly or through others, and no command (the CLI, the web app, evaluate, the LoRA
converter) imports another command's modules: what they share lives below them all. Imports inside functions
count too: a lazy import still ties two modules together."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ivmixed")
# Each command and the module prefix its own code lives under.
COMMANDS = {
    "generate": ("ivmixed.cli",),
    "app": ("ivmixed.app",),
    "evaluate": ("ivmixed.evaluate",),
    "convert LoRA": ("lora.convert_lora_safetensor_to_diffusers",),
}


def module_files():
    """``{module name: path}`` of the package, and of the LoRA converter script."""
    out = {"lora.convert_lora_safetensor_to_diffusers": os.path.join(ROOT, "lora", "convert_lora_safetensor_to_diffusers.py")}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, name)
    return out


def imports(name, path, modules):
    """The package modules ``name`` imports anywhere in its source."""
    is_package = os.path.basename(path) == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(parent + ([node.module] if node.module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ivmixed.config.RunConfig -> ivmixed.config
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own parents
                found.add(target)
    return found


def graph():
    modules = module_files()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def cycles(edges):
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def command_of(module):
    for command, prefixes in COMMANDS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return command
    return None


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(graph()) == []


def test_no_command_imports_another_commands_modules():
    crossings = sorted((a, b) for a, targets in graph().items() for b in targets
                       if command_of(a) and command_of(b) and command_of(a) != command_of(b))
    assert crossings == []


def test_the_checks_catch_what_they_look_for():
    """The helpers find a planted cycle and read relative imports as the package does."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges = graph()
    assert "ivmixed.config" in edges["ivmixed.runner"]  # from .config import ...
    assert "ivmixed.sampler" in edges["ivmixed.pipelines.common"]  # from ..sampler import ...
    assert command_of("ivmixed.app.page") == "app" and command_of("ivmixed.applied") is None
