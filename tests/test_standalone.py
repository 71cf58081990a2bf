"""The project stands on its own: no tracked file cites a document that a clone does not contain
(the facts and design notes it relies on live in docs/authors_code_facts.md and docs/design.md)."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".pth", ".pkl", ".pt", ".npy", ".npz", ".zip", ".gz"}
# Built from pieces so that this file does not contain what it looks for.
FORBIDDEN = (
    ".." + "/shared",
    "shared" + "/papers",
    "papers" + "/README",
    "DESIGN" + ".md",
)


def tracked_text_files():
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in names.decode().split("\0"):
        path = ROOT / name
        if not name or path.suffix.lower() in BINARY_SUFFIXES or not path.is_file():
            continue  # deleted in the working tree but not yet in the index: nothing to read
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        yield name, data.decode("utf-8", errors="replace")


def test_no_tracked_file_cites_documents_outside_the_repository():
    hits = []
    for name, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            hits += [f"{name}:{number}: {pattern}" for pattern in FORBIDDEN if pattern in line]
    assert not hits, "citations of files a clone does not have:\n" + "\n".join(hits)


def test_the_cited_documents_exist():
    for name in ("docs/authors_code_facts.md", "docs/design.md"):
        assert (ROOT / name).is_file(), name


def github_anchor(heading):
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def test_cited_sections_of_the_facts_page_exist():
    facts = (ROOT / "docs/authors_code_facts.md").read_text()
    anchors = {github_anchor(line.lstrip("#")) for line in facts.splitlines() if line.startswith("#")}
    missing = []
    for name, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            for anchor in re.findall(r"authors_code_facts\.md#([a-z0-9_-]+)", line):
                if anchor not in anchors:
                    missing.append(f"{name}:{number}: #{anchor}")
    assert not missing, "sections not in docs/authors_code_facts.md:\n" + "\n".join(missing)


def core_imports():
    """{core module: detr_plus modules it imports (at any depth: function-level imports too), and
    the other packages it imports}; imports under ``if TYPE_CHECKING:`` are not run, so not counted."""
    import ast

    graph = {}
    for path in sorted((ROOT / "detr_plus").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        module = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                   for n in ast.walk(node)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = list(package[: len(package) - node.level + 1]) if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                targets.update(f"{source}.{alias.name}" for alias in node.names)  # a module, or a name in one
        graph[module] = targets
    return graph


def test_the_core_never_imports_the_projects_and_has_no_import_circle():
    graph = core_imports()
    into_projects = {m: sorted(t for t in ts if t.split(".")[0] in ("projects", "detr_plus_projects")) for m, ts in graph.items()}
    assert not any(into_projects.values()), {m: t for m, t in into_projects.items() if t}

    def owner(target):  # the core module a dotted import names (a module, or the module holding a name)
        while target and target not in graph:
            target = target.rpartition(".")[0]
        return target

    packages = {m for m in graph if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}
    edges = {m: {owner(t) for t in ts} - {"", m} - packages for m, ts in graph.items() if m not in packages}
    circles, done = [], set()

    def visit(module, path):
        if module in path:
            circles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for nxt in edges.get(module, ()):
            visit(nxt, path + [module])
        done.add(module)

    for module in edges:
        visit(module, [])
    assert not circles, circles
