"""The design rule of the flat layout: imports flow one way, from the scripts to the modules they use."""
import ast
import glob
import os

from conftest import REPO


def our_imports(path, ours):
    """The repo's own modules that the file at path imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in ours}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in ours:
            found.add(node.module)
    return found


def is_script(path):
    return "if __name__ == '__main__':" in open(path, encoding='utf-8').read()


def import_graph():
    paths = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(REPO, '*.py'))}
    return {name: our_imports(path, set(paths)) for name, path in paths.items()}, paths


def test_models_and_helpers_import_nothing_of_ours():
    graph, _ = import_graph()
    assert graph['networks'] == set() and graph['utils'] == set()


def test_no_module_imports_a_script():
    """A model or helper file that imports a script (train.py, test.py, ...) drags the script's options and side
    effects into everything that uses it; only scripts that drive other scripts (bench.py) may."""
    graph, paths = import_graph()
    scripts = {name for name, path in paths.items() if is_script(path)}
    assert {'train', 'test', 'transform_dataset'} <= scripts
    wrong = {(name, dep) for name, deps in graph.items() if name not in scripts for dep in deps & scripts}
    assert wrong == set()


def test_imports_have_no_cycle():
    graph, _ = import_graph()
    done, path = set(), []

    def visit(name):
        assert name not in path, f'import cycle: {" -> ".join(path + [name])}'
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
