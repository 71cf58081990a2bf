#!/usr/bin/env python
"""Mutation audit: does a test notice when a paper formula or a core rule is broken?

Each mutation of ``tools/mutations.py`` replaces one snippet of one file by a plausible wrong
version (a weight swapped, an exponent dropped, a detach removed, a boundary moved). The audit
makes one scratch copy of the repository (one per job with --jobs), applies each mutation alone, runs the tests the mutation
names, restores the file, and reports per mutation the first failing test (caught), SURVIVED (every
selected test passed: a gap in the tests) or ERROR (the run could not judge it: a collection error,
a timeout, a selection that fails without the mutation). docs/mutation_audit.md explains it.

    python tools/mutation_audit.py                       # every mutation, table on stdout
    python tools/mutation_audit.py --output docs/mutation_audit.md   # `make mutation`
    python tools/mutation_audit.py --only qr-sigma-ee-max-to-mean
    python tools/mutation_audit.py --check               # snippets and compilation only, no tests

Exit code: 0 when every mutation was caught, 1 when one survived or could not be judged, 2 when the
mutation list itself is wrong (a snippet that does not occur exactly once, a file that no longer
compiles, a test selection that names a missing test).
"""
import argparse
import ast
import datetime
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
MUTATIONS_FILE = Path(__file__).resolve().with_name("mutations.py")
# Folders the scratch copy links to instead of copying: data, not code (gitignored, possibly large).
LINKED_FOLDERS = ("datasets",)
# -x: the first failure is enough to call a mutation caught; -rfE: the failing node ids in a summary.
PYTEST_OPTIONS = ("-x", "-q", "-p", "no:cacheprovider", "-rfE", "--tb=short")
# The markers around the generated part of the --output file: the prose around them is kept.
BEGIN_MARK = "<!-- mutation-audit:begin -->"
END_MARK = "<!-- mutation-audit:end -->"

CAUGHT, SURVIVED, ERROR = "caught", "SURVIVED", "ERROR"


class MutationListError(ValueError):
    """A mutation that cannot be applied as written (its snippet, its file or its test selection)."""


class ScratchError(RuntimeError):
    """The scratch copy cannot be set up so that the tests run against it."""


@dataclass(frozen=True)
class Mutation:
    """One targeted mutation (the fields of a ``tools/mutations.py`` entry)."""

    id: str
    path: str
    find: str
    replace: str
    rule: str
    tests: Tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "tests", tuple(self.tests))  # hashable: selections are cache keys


@dataclass
class PytestRun:
    """What one pytest run said: ``status`` (CAUGHT / SURVIVED / ERROR) and ``detail`` (the first
    failing node id, or what went wrong)."""

    status: str
    detail: str
    seconds: float = 0.0


@dataclass
class Result:
    mutation: Mutation
    line: int  # where ``find`` starts in the original file, 1-based
    status: str
    detail: str
    seconds: float

    @property
    def location(self) -> str:
        return f"{self.mutation.path}:{self.line}"


# --- the mutation list -------------------------------------------------------------------------------
def load_mutations(path: Path = MUTATIONS_FILE) -> List[Mutation]:
    """The ``MUTATIONS`` of a mutations file (a list of dicts), as records; ids must be unique."""
    spec = importlib.util.spec_from_file_location("mutation_list", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mutations = [Mutation(**entry) for entry in module.MUTATIONS]
    seen = set()
    for mutation in mutations:
        if mutation.id in seen:
            raise MutationListError(f"mutation id {mutation.id!r} is used twice in {path}")
        seen.add(mutation.id)
    return mutations


def select_mutations(mutations: Sequence[Mutation], only: Optional[Sequence[str]]) -> List[Mutation]:
    """The mutations named by ``--only`` (all without it), in list order."""
    if not only:
        return list(mutations)
    known = {m.id for m in mutations}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise MutationListError(f"--only names unknown mutations {unknown}; known: {sorted(known)}")
    return [m for m in mutations if m.id in set(only)]


def locate(mutation: Mutation, source: str) -> int:
    """The 1-based line where ``mutation.find`` starts in ``source``; it must occur exactly once, so
    the mutation is applied where its author meant it."""
    count = source.count(mutation.find)
    if count != 1:
        raise MutationListError(f"mutation {mutation.id!r}: its snippet occurs {count} times in {mutation.path} "
                                f"(must be exactly once): {mutation.find!r}")
    return source[: source.index(mutation.find)].count("\n") + 1


def mutate_source(mutation: Mutation, source: str) -> str:
    locate(mutation, source)
    return source.replace(mutation.find, mutation.replace, 1)


def selected_test_problems(mutation: Mutation, root: Path) -> List[str]:
    """Test files and test functions named in ``mutation.tests`` that do not exist in ``root`` (a
    typo there would make pytest select nothing, or an error, not a verdict)."""
    if not mutation.tests:
        return [f"mutation {mutation.id!r}: no tests selected"]
    problems, is_option_value = [], False
    for arg in mutation.tests:
        if is_option_value or arg.startswith("-"):  # an option, or the expression of -k / -m
            is_option_value = arg in ("-k", "-m") and not is_option_value
            continue
        file_part, _, node = arg.partition("::")
        test_file = root / file_part
        if not test_file.exists():
            problems.append(f"mutation {mutation.id!r}: test path {file_part} does not exist")
            continue
        if node:
            name = node.split("::")[-1].split("[")[0]
            if not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", test_file.read_text(), re.M):
                problems.append(f"mutation {mutation.id!r}: {file_part} defines no {name}")
    return problems


def check_mutation(mutation: Mutation, root: Path) -> Tuple[Optional[int], List[str]]:
    """(line of the snippet, problems) for one mutation against the files of ``root``: the snippet
    occurs exactly once, the mutation changes something, the mutated file still compiles (the
    equivalent of py_compile, in memory), and the test selection names existing tests."""
    target = root / mutation.path
    if not target.is_file():
        return None, [f"mutation {mutation.id!r}: {mutation.path} does not exist"]
    source = target.read_bytes().decode("utf-8")  # as ``mutated_file`` reads it: line endings untranslated
    try:
        line = locate(mutation, source)
    except MutationListError as error:
        return None, [str(error)]
    problems = []
    if mutation.find == mutation.replace:
        problems.append(f"mutation {mutation.id!r}: replace equals find (nothing is mutated)")
    try:
        compile(mutate_source(mutation, source), str(target), "exec", dont_inherit=True)
    except SyntaxError as error:
        problems.append(f"mutation {mutation.id!r}: the mutated {mutation.path} does not compile: {error}")
    return line, problems + selected_test_problems(mutation, root)


def check_mutations(mutations: Iterable[Mutation], root: Path) -> Tuple[Dict[str, int], List[str]]:
    """Every mutation checked (``check_mutation``): ({id: line}, every problem found)."""
    lines, problems = {}, []
    for mutation in mutations:
        line, found = check_mutation(mutation, root)
        if line is not None:
            lines[mutation.id] = line
        problems += found
    return lines, problems


# --- the scratch copy --------------------------------------------------------------------------------
def repository_files(root: Path) -> List[str]:
    """The files git knows in ``root`` (tracked, plus untracked ones that are not ignored, so work
    in progress is audited as it stands), relative paths."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    return sorted({name for name in out.split("\0") if name})


def package_folders(root: Path) -> Dict[str, str]:
    """The editable install's package -> folder map (``PACKAGE_DIRS`` of setup.py), {} without one."""
    setup = root / "setup.py"
    if not setup.is_file():
        return {}
    for node in ast.parse(setup.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGE_DIRS" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


class ScratchCopy:
    """A temporary copy of ``repo``'s files in which the installed packages import from the copy.

    The editable install maps package names to folders of the real checkout (``detr_plus_projects``
    -> ``projects/``); in the copy, links with the package names point at the copied folders and
    ``PYTHONPATH`` puts the copy first, so ``import detr_plus_projects`` reads the mutated files.
    ``verify_imports`` proves it before any verdict is trusted."""

    def __init__(self, repo: Path):
        self.repo = Path(repo).resolve()
        self.packages = package_folders(self.repo)
        self.root: Optional[Path] = None

    def __enter__(self) -> "ScratchCopy":
        self.root = Path(tempfile.mkdtemp(prefix="mutation_audit_")).resolve()
        try:
            self._copy_files()
            self._link_folders()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _copy_files(self):
        for name in repository_files(self.repo):
            source, target = self.repo / name, self.root / name
            if not (source.is_symlink() or source.is_file()):
                continue  # a submodule, or a tracked file deleted in the work tree
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            else:
                shutil.copy2(source, target)

    def _link_folders(self):
        for folder in LINKED_FOLDERS:
            if (self.repo / folder).exists() and not (self.root / folder).exists():
                (self.root / folder).symlink_to(self.repo / folder, target_is_directory=True)
        for package, folder in self.packages.items():
            if package != folder and (self.root / folder).is_dir() and not (self.root / package).exists():
                (self.root / package).symlink_to(folder, target_is_directory=True)

    def env(self) -> Dict[str, str]:
        """The environment of every test run: the copy first on the path, one thread per process
        (the audit must not compete with other work for cores), no bytecode written (a mutated
        file's .pyc could otherwise be taken for the restored file's)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        return env

    def verify_imports(self, packages: Optional[Sequence[str]] = None):
        """Raise ``ScratchError`` unless every package (default: those of ``PACKAGE_DIRS``) imports
        from a file inside the copy, in a subprocess with the test runs' environment."""
        packages = list(self.packages) if packages is None else list(packages)
        if not packages:
            return
        script = "import importlib, json, sys; print(json.dumps({n: importlib.import_module(n).__file__ for n in sys.argv[1:]}))"
        run = subprocess.run([sys.executable, "-c", script, *packages], cwd=self.root, env=self.env(),
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise ScratchError(f"importing {packages} in the scratch copy {self.root} failed:\n{run.stderr.strip()}")
        files = json.loads(run.stdout.strip().splitlines()[-1])
        outside = {name: path for name, path in files.items()  # __file__ None: a namespace package, not the copy's
                   if path is None or not Path(path).resolve().is_relative_to(self.root)}
        if outside:
            raise ScratchError(
                "in the scratch copy these packages import from outside it, so the tests would run against the "
                f"unmutated files: {outside} (scratch copy: {self.root}). Check setup.py's PACKAGE_DIRS and that "
                "no PYTHONPATH entry or .pth file puts the checkout before it.")


@contextmanager
def mutated_file(path: Path, mutation: Mutation):
    """``path`` with ``mutation`` applied for the duration of the block; its original bytes are
    written back afterwards, whatever happens inside."""
    original = path.read_bytes()
    try:
        path.write_bytes(mutate_source(mutation, original.decode("utf-8")).encode("utf-8"))
        yield
    finally:
        path.write_bytes(original)


# --- running the tests -------------------------------------------------------------------------------
SUMMARY_LINE = re.compile(r"^(FAILED|ERROR) (.+?)(?: - (.*))?$")


def interpret_pytest(returncode: int, output: str) -> Tuple[str, str]:
    """(status, detail) of a pytest run of the mutated copy.

    A failing test is a catch, named by its node id. An error outside a test body (collecting a
    module, setting up a fixture) is a catch only when it is an assertion: an import-time crash of
    the mutated file proves nothing about the tests, so it is reported as ERROR."""
    if returncode == 0:
        passed = re.findall(r"(\d+) passed", output)
        return SURVIVED, f"every selected test passed ({passed[-1] if passed else 'all'} passed)"
    if returncode == 5:
        return ERROR, "no tests collected: the selection matches nothing"
    for line in output.splitlines():
        match = SUMMARY_LINE.match(line.strip())
        if not match:
            continue
        kind, node, message = match.group(1), match.group(2), (match.group(3) or "").strip()
        if kind == "FAILED":
            return CAUGHT, node
        if message.startswith(("AssertionError", "assert ")):
            return CAUGHT, node
        where = "setup" if "::" in node else "collection"
        return ERROR, f"{where} error in {node}: {message or 'see pytest output'}"
    if returncode == 1:
        return CAUGHT, "a test failed (its node id was not found in pytest's output)"
    last = [line for line in output.strip().splitlines() if line.strip()][-1:] or [""]
    return ERROR, f"pytest exit code {returncode}: {last[0].strip()}"


def run_pytest(root: Path, env: Dict[str, str], tests: Sequence[str], timeout: float) -> PytestRun:
    """``python -m pytest -x -q ... <tests>`` in ``root``; on timeout the whole process group (pytest
    and anything it started) is killed."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pytest", *PYTEST_OPTIONS, *tests], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_process_group(process)
        return PytestRun(ERROR, f"timeout after {timeout:g} s", time.monotonic() - start)
    except BaseException:  # Ctrl-C: pytest runs in its own session and would not get the signal
        _kill_process_group(process)
        raise
    status, detail = interpret_pytest(process.returncode, output)
    return PytestRun(status, detail, time.monotonic() - start)


def _kill_process_group(process: subprocess.Popen):
    """Kill the process group this audit started for one pytest run (pytest and its children)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


class Baselines:
    """Each test selection run once without any mutation, on demand and cached: a selection that
    already fails would call every mutation "caught"."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._runs: Dict[Tuple[str, ...], PytestRun] = {}
        self._locks: Dict[Tuple[str, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def of(self, tests: Tuple[str, ...], scratch: ScratchCopy) -> PytestRun:
        with self._guard:
            lock = self._locks.setdefault(tests, threading.Lock())
        with lock:
            if tests not in self._runs:
                self._runs[tests] = run_pytest(scratch.root, scratch.env(), tests, self.timeout)
            return self._runs[tests]


def audit_mutation(mutation: Mutation, line: int, scratch: ScratchCopy, timeout: float,
                   baselines: Optional[Baselines] = None) -> Result:
    """Apply one mutation in the scratch copy, run its tests, restore the file; the verdict."""
    start = time.monotonic()
    with mutated_file(scratch.root / mutation.path, mutation):
        run = run_pytest(scratch.root, scratch.env(), mutation.tests, timeout)
    status, detail = run.status, run.detail
    if status != SURVIVED and baselines is not None:
        baseline = baselines.of(mutation.tests, scratch)
        if baseline.status != SURVIVED:
            status, detail = ERROR, f"the selection fails without the mutation ({baseline.detail})"
    return Result(mutation, line, status, detail, time.monotonic() - start)


def progress_line(index: int, total: int, result: Result) -> str:
    verdict = {CAUGHT: f"caught by {result.detail}", SURVIVED: f"SURVIVED: {result.detail}"}.get(result.status, f"ERROR: {result.detail}")
    return f"[{index}/{total}] {result.mutation.id}  {result.location}  {verdict}  ({result.seconds:.1f} s)"


def run_audit(mutations: Sequence[Mutation], repo: Path = REPO, timeout: float = 300.0, jobs: int = 1,
              lines: Optional[Dict[str, int]] = None, baseline: bool = True,
              report: Callable[[str], None] = print) -> List[Result]:
    """Every mutation audited in scratch copies of ``repo`` (one per job), results in list order.
    ``lines``: each mutation's line in the original file (``check_mutations`` computes them)."""
    if lines is None:
        lines, problems = check_mutations(mutations, repo)
        if problems:
            raise MutationListError("\n".join(problems))
    jobs = max(1, min(jobs, len(mutations)))
    baselines = Baselines(timeout) if baseline else None
    results: Dict[str, Result] = {}
    with _scratch_copies(repo, jobs) as copies:
        free = queue.Queue()
        for copy in copies:
            free.put(copy)

        def audit(mutation):
            scratch = free.get()
            try:
                return audit_mutation(mutation, lines[mutation.id], scratch, timeout, baselines)
            finally:
                free.put(scratch)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(audit, m) for m in mutations]
            for done, future in enumerate(as_completed(futures), start=1):
                result = future.result()
                results[result.mutation.id] = result
                report(progress_line(done, len(mutations), result))
    return [results[m.id] for m in mutations]


@contextmanager
def _scratch_copies(repo: Path, count: int):
    """``count`` scratch copies, each verified to import its own files."""
    copies = []
    try:
        for _ in range(count):
            copies.append(ScratchCopy(repo).__enter__())
            copies[-1].verify_imports()
        yield copies
    finally:
        for copy in copies:
            copy.__exit__()


# --- the report --------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdict_cell(result: Result) -> str:
    if result.status == CAUGHT:
        return f"`{_cell(result.detail)}`"
    if result.status == SURVIVED:
        return "**SURVIVED**"
    return f"ERROR: {_cell(result.detail)}"


def summary_line(results: Sequence[Result]) -> str:
    counts = {status: sum(r.status == status for r in results) for status in (CAUGHT, SURVIVED, ERROR)}
    return (f"{len(results)} mutations: {counts[CAUGHT]} caught, {counts[SURVIVED]} survived, "
            f"{counts[ERROR]} errors")


def render_markdown(results: Sequence[Result], total: Optional[int] = None, when: Optional[str] = None) -> str:
    """The table (id | file:line | rule | caught by / SURVIVED | seconds) and the summary line;
    ``total``: the size of the whole list, when only part of it ran (``--only``)."""
    lines = [f"**{summary_line(results)}**" + (f" (a partial run: {len(results)} of {total})" if total and total != len(results) else ""),
             ""]
    if when:
        lines += [f"Generated by `python tools/mutation_audit.py` on {when}, {sum(r.seconds for r in results):.0f} s in all.", ""]
    lines += ["| id | file:line | rule | caught by / SURVIVED | seconds |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.mutation.id} | {r.location} | {_cell(r.mutation.rule)} | {verdict_cell(r)} | {r.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(path: Path, markdown: str):
    """Put ``markdown`` between the markers of ``path`` (the prose around them stays); a file
    without the markers is written anew with them. A marker counts only on a line of its own, so
    prose that quotes the markers is left alone."""
    section = f"{BEGIN_MARK}\n{markdown}{END_MARK}"
    text = path.read_text() if path.exists() else ""
    found = re.search(rf"^{re.escape(BEGIN_MARK)}$.*?^{re.escape(END_MARK)}$", text, re.M | re.S)
    if found:
        path.write_text(text[:found.start()] + section + text[found.end():])
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(section + "\n")


# --- command line ------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutations (ids of tools/mutations.py)")
    parser.add_argument("--check", action="store_true",
                        help="only verify that every snippet occurs exactly once and every mutated file compiles; run no test")
    parser.add_argument("--output", type=Path, help="markdown file for the table (between its audit markers)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="mutations audited at once, each in its own scratch copy (default 1)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not run a selection without the mutation to confirm that it passes (faster, less sure)")
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument("--mutations", type=Path, default=MUTATIONS_FILE, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    repo = args.repo.resolve()
    try:
        everything = load_mutations(args.mutations)
        mutations = select_mutations(everything, args.only)
    except MutationListError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines, problems = check_mutations(mutations, repo)
    if args.check:
        for m in mutations:
            if m.id in lines:
                print(f"ok  {m.id}  {m.path}:{lines[m.id]}")
    if problems:
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(mutations)} mutations: every snippet occurs exactly once, every mutated file compiles, "
              "every selected test exists")
        return 0
    try:
        results = run_audit(mutations, repo, args.timeout, args.jobs, lines, baseline=not args.no_baseline)
    except ScratchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    when = datetime.date.today().isoformat()
    markdown = render_markdown(results, total=len(everything), when=when)
    print()
    print(markdown)
    if args.output:
        write_report(args.output, markdown)
        print(f"table written to {args.output}")
    return 1 if any(r.status != CAUGHT for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
