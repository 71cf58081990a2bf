"""The mutation audit's mechanics (tools/mutation_audit.py) on a tiny fake repository, and the real
mutation list (tools/mutations.py) checked against this repository's files. No model is built: the
fake repository's tests run in a few short pytest subprocesses."""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutation_audit", REPO / "tools" / "mutation_audit.py")
audit = importlib.util.module_from_spec(_spec)
sys.modules["mutation_audit"] = audit  # before exec: dataclasses look their module up there
_spec.loader.exec_module(audit)

AREA_SOURCE = textwrap.dedent("""\
    def area(width, height):
        return width * height


    def perimeter(width, height):
        return 2 * (width + height)
""")
AREA_TEST = textwrap.dedent("""\
    from fakepkg.geometry import area


    def test_area():
        assert area(2, 3) == 6
""")


def mutation(id, find, replace, tests=("tests/test_geometry.py",), path="fakepkg/geometry.py"):
    return audit.Mutation(id=id, path=path, find=find, replace=replace, rule=f"rule of {id}", tests=tuple(tests))


BREAKS_AREA = mutation("area-as-sum", "return width * height", "return width + height")
UNSEEN = mutation("perimeter-doubled", "return 2 * (width + height)", "return 4 * (width + height)")


@pytest.fixture
def fake_repo(tmp_path):
    """A git repository with a package (installed under another name too, as setup.py's
    PACKAGE_DIRS maps ``detr_plus_projects`` to ``projects/``), a function and a test of it."""
    root = tmp_path / "repo"
    files = {
        "setup.py": 'PACKAGE_DIRS = {"fakepkg": "fakepkg", "fake_projects": "projects"}\n',
        "fakepkg/__init__.py": "",
        "fakepkg/geometry.py": AREA_SOURCE,
        "projects/__init__.py": "",
        "tests/test_geometry.py": AREA_TEST,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    return root


def test_a_caught_mutation_names_the_failing_test_and_an_unseen_one_survives(fake_repo):
    original = (fake_repo / "fakepkg" / "geometry.py").read_bytes()
    reports = []
    results = audit.run_audit([BREAKS_AREA, UNSEEN], fake_repo, timeout=60, report=reports.append)
    caught, survived = results
    assert (caught.status, caught.detail, caught.line) == (audit.CAUGHT, "tests/test_geometry.py::test_area", 2)
    assert (survived.status, survived.line) == (audit.SURVIVED, 6)
    assert len(reports) == 2 and any("area-as-sum" in line and "caught by tests/test_geometry.py::test_area" in line for line in reports)
    assert (fake_repo / "fakepkg" / "geometry.py").read_bytes() == original  # the repository is never touched

    table = audit.render_markdown(results)
    assert "| area-as-sum | fakepkg/geometry.py:2 | rule of area-as-sum | `tests/test_geometry.py::test_area` |" in table
    assert "| perimeter-doubled | fakepkg/geometry.py:6 | rule of perimeter-doubled | **SURVIVED** |" in table
    assert "2 mutations: 1 caught, 1 survived, 0 errors" in table


def test_the_scratch_copy_imports_its_own_files_under_the_installed_names(fake_repo):
    with audit.ScratchCopy(fake_repo) as scratch:
        root = scratch.root
        assert (root / "fakepkg" / "geometry.py").read_text() == AREA_SOURCE
        assert (root / "fake_projects").resolve() == (root / "projects").resolve()
        scratch.verify_imports()  # fakepkg and fake_projects from inside the copy
        with pytest.raises(audit.ScratchError, match="outside"):
            scratch.verify_imports(["json"])  # a module from elsewhere is reported
    assert not root.exists()


def test_a_snippet_that_does_not_occur_exactly_once_is_an_error_naming_the_mutation(fake_repo):
    twice = mutation("ambiguous-return", "return ", "return -")
    missing = mutation("missing-snippet", "return width / height", "return height / width")
    for bad, count in ((twice, 2), (missing, 0)):
        with pytest.raises(audit.MutationListError, match=rf"{bad.id}.*occurs {count} times in fakepkg/geometry.py"):
            audit.run_audit([bad], fake_repo, timeout=60, report=lambda line: None)
    _, problems = audit.check_mutations([twice, missing, BREAKS_AREA], fake_repo)
    assert len(problems) == 2 and "ambiguous-return" in problems[0] and "missing-snippet" in problems[1]


def test_the_check_finds_broken_syntax_and_missing_tests(fake_repo):
    broken = mutation("unbalanced", "return width * height", "return (width * height")
    no_test = mutation("no-such-test", "return width * height", "return width - height",
                       tests=("tests/test_geometry.py::test_volume",))
    no_file = mutation("no-such-file", "return width * height", "return width - height", tests=("tests/test_other.py", "-k", "x"))
    _, problems = audit.check_mutations([broken, no_test, no_file, BREAKS_AREA], fake_repo)
    assert [p.split("'")[1] for p in problems] == ["unbalanced", "no-such-test", "no-such-file"]
    assert "does not compile" in problems[0] and "defines no test_volume" in problems[1]
    assert audit.main(["--repo", str(fake_repo), "--mutations", str(REPO / "tools" / "mutations.py"), "--check"]) == 2


def test_the_file_is_restored_byte_for_byte_even_when_the_run_fails(tmp_path):
    target = tmp_path / "geometry.py"
    original = AREA_SOURCE.replace("\n", "\r\n").encode() + b"# \xc3\xa9\n"  # CRLF and non-ASCII bytes
    target.write_bytes(original)
    crlf = mutation("crlf", "return width * height", "return width + height")
    with pytest.raises(RuntimeError):
        with audit.mutated_file(target, crlf):
            assert b"return width + height" in target.read_bytes()
            raise RuntimeError("the test run crashed")
    assert target.read_bytes() == original


def test_a_run_past_its_timeout_is_killed_and_reported_as_an_error(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\n\ndef test_slow():\n    time.sleep(60)\n")
    run = audit.run_pytest(tmp_path, dict(os.environ), ["test_slow.py"], timeout=1.0)
    assert (run.status, run.detail) == (audit.ERROR, "timeout after 1 s") and run.seconds < 30


@pytest.mark.parametrize("returncode, output, expected", [
    (0, "...\n3 passed, 1 warning in 0.1s", (audit.SURVIVED, "every selected test passed (3 passed)")),
    (1, "FAILED tests/test_a.py::test_b[x-1] - assert 1 == 2\n1 failed", (audit.CAUGHT, "tests/test_a.py::test_b[x-1]")),
    (2, "ERROR tests/test_a.py - NameError: name 'f' is not defined\nInterrupted: 1 error during collection",
     (audit.ERROR, "collection error in tests/test_a.py: NameError: name 'f' is not defined")),
    (2, "ERROR tests/test_a.py - AssertionError: module-level check\n", (audit.CAUGHT, "tests/test_a.py")),
    (1, "ERROR tests/test_a.py::test_b - RuntimeError: fixture broke\n", (audit.ERROR, "setup error in tests/test_a.py::test_b: RuntimeError: fixture broke")),
    (5, "no tests ran", (audit.ERROR, "no tests collected: the selection matches nothing")),
    (4, "ERROR: file or directory not found: tests/nope.py\n", (audit.ERROR, "pytest exit code 4: ERROR: file or directory not found: tests/nope.py")),
])
def test_pytest_outcomes_are_read_as_caught_survived_or_error(returncode, output, expected):
    assert audit.interpret_pytest(returncode, output) == expected


def test_the_report_replaces_only_the_marked_section(tmp_path):
    doc = tmp_path / "audit.md"
    doc.write_text(f"# Audit\n\nprose before\n\n{audit.BEGIN_MARK}\nplaceholder\n{audit.END_MARK}\n\nprose after\n")
    result = audit.Result(BREAKS_AREA, 2, audit.ERROR, "timeout after 5 s", 5.0)
    audit.write_report(doc, audit.render_markdown([result], total=3))
    text = doc.read_text()
    assert text.startswith("# Audit\n\nprose before\n\n") and text.endswith("\n\nprose after\n") and "placeholder" not in text
    assert "| area-as-sum | fakepkg/geometry.py:2 | rule of area-as-sum | ERROR: timeout after 5 s | 5.0 |" in text
    assert "1 mutations: 0 caught, 0 survived, 1 errors** (a partial run: 1 of 3)" in text


def test_markers_quoted_in_the_prose_are_not_the_section(tmp_path):
    """The docs explain the markers in backticks on a line of prose; the table goes between the marker
    lines only (a first version split at the first quoted marker and put the table into the prose)."""
    doc = tmp_path / "audit.md"
    quoted = f"between `{audit.BEGIN_MARK}` and `{audit.END_MARK}`, kept"
    doc.write_text(f"# Audit\n\n{quoted}\n\n{audit.BEGIN_MARK}\nplaceholder\n{audit.END_MARK}\n")
    audit.write_report(doc, "TABLE\n")
    assert doc.read_text() == f"# Audit\n\n{quoted}\n\n{audit.BEGIN_MARK}\nTABLE\n{audit.END_MARK}\n"


def test_every_listed_mutation_applies_once_to_this_repository_and_still_compiles():
    """What ``python tools/mutation_audit.py --check`` verifies, for the real list."""
    mutations = audit.load_mutations()
    lines, problems = audit.check_mutations(mutations, REPO)
    assert problems == []
    assert len(mutations) >= 40 and len(lines) == len(mutations)
    sigma = next(m for m in mutations if m.id == "qr-sigma-ee-max-to-mean")
    assert sigma.path == "projects/qr_detr/modeling/eeqr.py" and "max" in sigma.find and "mean" in sigma.replace
    areas = {m.path.split("/")[1] if m.path.startswith("projects/") else "core" for m in mutations}
    assert areas == {"core", "qr_detr", "od_detr", "mr_detr", "lora_detr"}
