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
