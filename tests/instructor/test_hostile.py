"""Hostile submissions: each gets a grade and a note, never a crashed grader, and honest students in the
same batch are graded correctly. They run against a two-exercise assignment without a model, so the
grader itself is what takes the time."""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib.instructor.batch import grade_folder
from course_lib.instructor.sandbox import Limits, landlock_abi
from tests.helpers import kill_tree, slow_extra
from tests.instructor.ordinary_user import NOBODY, as_ordinary_user
from tests.instructor.tiny_assignment import FULL, STEM, TINY, graded_cell, solution, wrong_is_even

# the memory bomb stops at 2 GiB, a notebook at 25 s and 8 MB of output, not the defaults
LIMITS = Limits(memory_bytes=2 * 2**30, notebook_seconds=25, output_bytes=8_000_000)
TIMEOUT = 10  # seconds a cell may run
pytestmark = [pytest.mark.grading, pytest.mark.xdist_group("hostile")]  # one worker builds the batch once
WRONG_IS_EVEN = {"test_add": 1.0, "test_is_even": 0.0}
MARK = "course-hostile-marker"  # processes and files the attacks leave behind carry it

FORGERIES = {
    # silence failures: no traceback, a harmless AssertionError
    "hides_failures": "get_ipython().showtraceback = lambda *a, **k: None\n"
                      "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})",
    # rewrite IPython's cell runner so test cells run as `pass`
    "rewrites_ipython": "ip = get_ipython()\nfor name in ('run_cell', 'run_cell_async'):\n    orig = getattr(ip, name)\n"
                        "    def fake(raw_cell, *a, _orig=orig, **k):\n"
                        "        return _orig('pass' if 'assert' in raw_cell else raw_cell, *a, **k)\n"
                        "    setattr(ip, name, fake)",
    # the same, reached without naming any of it: decoded at run time
    "decodes_its_attack": "exec(__import__('base64').b64decode({!r}).decode())".format(__import__("base64").b64encode(
        b"ip = globals()['_ih'] and __import__('IPython').get_ipython()\n"
        b"ip.run_cell = (lambda orig: lambda raw, *a, **k: orig('pass' if 'assert' in raw else raw, *a, **k))"
        b"(ip.run_cell)\n").decode()),
    # the helpers the tests use, and the grader's own report function, replaced
    "replaces_helpers": "import builtins, course_lib.core.checks as checks\n"
                        "checks.report = lambda *a, **k: None\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
                        "get_ipython().showtraceback = lambda *a, **k: None",
    # a forged report sent from a hook after every cell: the grader wants exactly the reference's reports
    "forges_reports": "from IPython.display import display\nfrom course_lib.core.checks import MIME\n"
                      "def forge(*a):\n    display({MIME: {'name': 'is_even', 'value': [True, False, True, True, False, False],"
                      " 'rtol': 1e9, 'atol': 1e9}}, raw=True)\n"
                      "get_ipython().events.register('post_run_cell', forge)\n"
                      "get_ipython().showtraceback = lambda *a, **k: None",
}

HARM = {
    # a daemon that outlives the kernel and would kill every later kernel
    "leaves_a_daemon": "import subprocess, sys\n"
                       f"subprocess.Popen([sys.executable, '-c', 'import os, time  # {MARK}\\n"
                       "while True:\\n    os.system(\"pkill -9 -f ipykernel\")\\n    time.sleep(0.2)'],"
                       " start_new_session=True)",
    # signals to everything it can name: the grader, its parent, every process
    "kills_everything": "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                        "    except OSError as e:\n        print('refused', pid, e)\n"
                        "for pid in range(2, 40000):\n    try:\n        os.kill(pid, signal.SIGKILL) if pid != os.getpid() else None\n"
                        "    except OSError:\n        pass",
    # files where the next student would run them, and a big one
    "plants_files": "import os\nfor folder in ('/tmp', '/dev/shm', os.path.expanduser('~')):\n"
                    f"    open(os.path.join(folder, '{MARK}.py'), 'w').write('print(1)')\n"
                    f"open('/tmp/{MARK}.bin', 'wb').write(b'0' * 100_000_000)",
}

# Every line prints "open" or "refused"; the test wants no "open".
PROBES = """
import os, socket, fcntl, termios, glob
def probe(what, action):
    try:
        action()
        print(what, 'open')
    except Exception as error:
        print(what, 'refused', type(error).__name__)
probe('shadow', lambda: open('/etc/shadow').read())
probe('grader environment', lambda: open('/proc/1/environ').read())
for fd in (0, 1, 2):
    probe(f'terminal on fd {fd}', lambda: fcntl.ioctl(fd, termios.TIOCSTI, b'x') if os.isatty(fd) else 1 / 0)
probe('controlling terminal', lambda: open('/dev/tty'))
probe('other terminals', lambda: [open(p) for p in glob.glob('/dev/pts/*')] and None or 1 / 0)
probe('outbound tcp', lambda: socket.create_connection(('1.1.1.1', 53), timeout=2))
probe('loopback tcp', lambda: socket.create_connection(('127.0.0.1', 22), timeout=2))
probe('listening', lambda: socket.create_server(('0.0.0.0', 8765)))
probe('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53)))
probe('grader processes', lambda: [p for p in os.listdir('/proc') if p.isdigit() and int(p) > 2] or 1 / 0)
probe('inherited descriptors', lambda: [f for f in os.listdir('/proc/self/fd') if os.readlink(f'/proc/self/fd/{f}')
      .startswith('/') and not os.readlink(f'/proc/self/fd/{f}').startswith(('/dev/null', '/tmp/cbox-'))] or 1 / 0)
probe('root privileges', lambda: os.getuid() == 0 or 1 / 0)
repository = os.path.dirname(os.path.dirname(__import__('course_lib').__path__[0]))
probe('solutions', lambda: os.listdir(os.path.join(repository, 'solutions')))
probe('tests', lambda: os.listdir(os.path.join(repository, 'tests')))
probe('grader code', lambda: open(os.path.join(__import__('course_lib').__path__[0], 'instructor', 'grading.py')))
arguments = open('/proc/self/cmdline').read().split(chr(0))
print('box', os.path.dirname(arguments[arguments.index('-f') + 1]))
"""


def _insert_after(nb, grade_id, source):
    index = nb.cells.index(graded_cell(nb, grade_id))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


def _write(folder: Path, student: str, nb_or_text, name=f"{STEM}.ipynb") -> Path:
    path = folder / student / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb_or_text, str):
        path.write_text(nb_or_text)
    else:
        for i, cell in enumerate(nb_or_text.cells):
            cell["id"] = f"c{i}"
        nbformat.write(nb_or_text, path)
    return path


def _hostile_batch(folder: Path, secret: Path, outside: Path) -> dict[str, tuple[dict, str]]:
    """Every hostile case: student -> (expected scores, a word the note must contain)."""
    cases = {}

    def case(student, nb, expected, note_word):
        _write(folder, student, nb)
        cases[student] = (expected, note_word)

    case("honest_first", solution(), FULL, "")
    case("infinite_loop", _insert_after(solution(), "test_add", "while True:\n    pass"),
         FULL, "time limit")
    case("swallows_interrupts", _insert_after(solution(), "test_add",
         "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except BaseException:\n        pass"),
         {"test_add": 1.0, "test_is_even": 0.0}, "time limit")
    case("sys_exit", _insert_after(solution(), "test_add", "import sys\nsys.exit(3)"), FULL, "sys.exit")
    case("kernel_dies", _insert_after(solution(), "test_add", "import os\nos._exit(0)"),
         {"test_add": 1.0, "test_is_even": 0.0}, "kernel died")
    case("memory_bomb", _insert_after(solution(), "test_add",
         "hog = []\nwhile True:\n    hog.append(bytearray(256 * 2**20))"), FULL, "memory")
    case("huge_output", _insert_after(solution(), "test_add", "for _ in range(200):\n    print('x' * 100_000)"),
         FULL, "output was cut")
    nb = wrong_is_even(solution())
    nb.cells.remove(graded_cell(nb, "test_is_even"))
    case("deleted_test_cell", nb, {"test_add": 1.0, "test_is_even": 0.0}, "missing and was restored")
    nb = wrong_is_even(solution())
    graded_cell(nb, "test_is_even").source = "print('all tests pass')"
    case("edited_test_cell", nb, {"test_add": 1.0, "test_is_even": 0.0}, "edited and was restored")
    # 1. Forging full marks. Each has a wrong is_even; the verdict is reached in the grader, so each gains nothing.
    for student, trick in FORGERIES.items():
        case(student, _insert_after(wrong_is_even(solution()), "is_even", trick), WRONG_IS_EVEN, "")
    nb = solution()
    graded_cell(nb, "add").source = ("class Anything(int):\n    def __eq__(self, other):\n        return True\n"
                                     "    __hash__ = int.__hash__\n\ndef add(a, b):\n    return Anything(0)")
    case("eq_always_true", nb, {"test_add": 0.0, "test_is_even": 2.0}, "")
    nb = _insert_after(solution(), "test_add", "from course_lib.core import tasks\ntasks.FIELDS = ()\nimport course_lib.instructor\n"
                       "course_lib.instructor.grading = None")
    graded_cell(nb, "add").source = graded_cell(nb, "add").source.replace("return a + b", "return 3")
    case("patches_course_lib", nb, {"test_add": 0.0, "test_is_even": 2.0}, "")
    # 2. Harming others: each attack runs, then the next students are graded as if it never had.
    for student, attack in HARM.items():  # whatever it does to itself, its test cells had run
        case(student, _insert_after(solution(), "test_is_even", attack), FULL, None)
    # 3. Leaks: every probe must come back refused; the cell prints what it got.
    case("probes_the_sandbox", _insert_after(solution(), "test_is_even", PROBES), FULL, "")
    # 5. Budgets
    case("display_updates", _insert_after(solution(), "test_is_even",
         "h = display('x', display_id=True)\nfor _ in range(300):\n    h.update('y' * 1_000_000)"), FULL, "")
    nb = solution()
    for _ in range(12):
        nb.cells.append(nbformat.v4.new_code_cell("print('z' * 1_900_000)"))
    case("many_big_cells", nb, FULL, "output was cut")
    nb = solution()
    nb.cells.extend(nbformat.v4.new_code_cell("import time\ntime.sleep(8)") for _ in range(10))
    case("sleeps_under_the_timeout", nb, FULL, "later cells were not run")
    nb = solution()
    nb.cells.extend(nbformat.v4.new_code_cell("pass") for _ in range(20_000))
    case("twenty_thousand_cells", nb, FULL, "later cells were not run")
    # 7. Honest mistakes
    nb = solution()
    graded_cell(nb, "is_even").source += "\n    import sys\n    print('a warning', file=sys.stderr)"
    case("warns_on_stderr", nb, FULL, "")
    nb = solution()
    copy = nbformat.from_dict(json.loads(json.dumps(graded_cell(nb, "is_even"))))
    graded_cell(nb, "is_even").source = "def is_even(n):\n    return None  # my first try"
    nb.cells.insert(nb.cells.index(graded_cell(nb, "is_even")) + 1, copy)
    case("copies_a_solution_cell", nb, FULL, "appeared 2 times")
    # 6. Feedback: what a student displays or writes never reaches the feedback page as HTML
    nb = _insert_after(solution(), "test_is_even", "from IPython.display import HTML, display\n"
                       "display(HTML('<script>alert(1)</script>'))\nraise ValueError('<img src=x onerror=alert(2)>')")
    nb.cells.append(nbformat.v4.new_markdown_cell("<img src=x onerror=alert(3)>"))
    case("injects_html", nb, FULL, "")
    case("reads_hidden_tests", _insert_after(solution(), "test_add", f"print(open({str(secret)!r}).read())"),
         FULL, "")  # the instructor's copy does not exist in the sandbox
    case("writes_outside", _insert_after(solution(), "test_add",
         f"open({str(outside)!r}, 'w').write('pwned')"), FULL, "")
    case("not_json", "{ this is not a notebook", {"test_add": 0.0, "test_is_even": 0.0}, "not a valid notebook")
    _write(folder, "misnamed", solution(), name="tiny_assignment (1).ipynb")
    cases["misnamed"] = ({"test_add": 0.0, "test_is_even": 0.0}, "no tiny_assignment.ipynb")
    (folder / "empty").mkdir()
    cases["empty"] = ({"test_add": 0.0, "test_is_even": 0.0}, "no tiny_assignment.ipynb")
    old = solution()  # an older release: other visible tests, no nbgrader checksums, an extra scratch cell
    graded_cell(old, "test_is_even").source = "assert is_even(2)"
    old.cells.append(nbformat.v4.new_code_cell("print('my notes')"))
    case("older_release", old, FULL, "edited and was restored")
    with zipfile.ZipFile(folder / "zipped.zip", "w") as zipped:
        zipped.writestr(f"export/{STEM}.ipynb", nbformat.writes(solution()))
    cases["zipped"] = (FULL, "")
    # 4. Shapes: Unicode names, names that read alike, archives and files of every form, links
    case("李明", solution(), FULL, None)
    case("José Díaz", solution(), FULL, None)
    case("Jose_Diaz", wrong_is_even(solution()), WRONG_IS_EVEN, None)
    with zipfile.ZipFile(folder / "SHOUTING.ZIP", "w") as zipped:
        zipped.writestr(f"{STEM}.ipynb/readme.txt", "a folder named like the notebook")
        zipped.writestr(f"deeper/{STEM}.ipynb", nbformat.writes(solution()))
    cases["SHOUTING"] = (FULL, None)
    nbformat.write(solution(), folder / f"{STEM} - Ana.ipynb")
    cases["Ana"] = (FULL, None)
    (folder / "links").mkdir()
    (folder / "links" / f"{STEM}.ipynb").symlink_to("/etc/passwd")
    (folder / "links" / "sub").mkdir()
    (folder / "links" / "sub" / f"{STEM}.ipynb").symlink_to("/dev/zero")
    cases["links"] = ({"test_add": 0.0, "test_is_even": 0.0}, "link")
    case("honest_last", solution(), FULL, "")
    return cases


@pytest.fixture(scope="session")  # built once even if other modules' tests run in between
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside-the-sandbox.txt"
    secret = root / "out" / "nbgrader" / "source" / STEM / f"{STEM}.ipynb"  # the instructor's copy
    cases = _hostile_batch(root / "submissions", secret, outside)
    result = grade_folder(root / "submissions", [TINY], root / "out", timeout=TIMEOUT, limits=LIMITS)
    return cases, result, root, outside


def test_every_hostile_submission_gets_its_grade_and_a_note(batch):
    cases, result, _, _ = batch
    graded = {result.names[g.student]: g for g in result.grades}
    assert sorted(graded) == sorted(cases)
    assert len({g.student for g in result.grades}) == len(cases)  # every name its own id
    for student, (expected, note_word) in cases.items():
        assert graded[student].by_cell() == expected, (student, graded[student].note)
        if note_word:
            assert note_word in graded[student].note, (student, graded[student].note)
        elif note_word is not None:
            assert graded[student].note == "", (student, graded[student].note)


@pytest.mark.skipif(not landlock_abi(), reason="filesystem isolation needs Linux Landlock")
def test_the_sandbox_keeps_files_outside_unread_and_unwritten(batch):
    _, result, root, outside = batch
    assert not outside.exists()
    autograded = nbformat.read(root / "out" / "nbgrader" / "autograded" / "reads_hidden_tests" / STEM / f"{STEM}.ipynb",
                               as_version=4)
    printed = json.dumps([c.get("outputs", []) for c in autograded.cells])
    assert ("PermissionError" in printed or "FileNotFoundError" in printed) and "HIDDEN TESTS" not in printed


def test_outputs_csv_gradebook_and_feedback(batch):
    cases, result, _, _ = batch
    rows = result.csv.read_text().splitlines()
    assert rows[0] == "student,name,notebook,exercise,score,max_score,note"
    assert len(rows) == 1 + 2 * len(cases)
    assert result.gradebook.exists()
    feedback = (result.feedback / "edited_test_cell" / f"{STEM}.html").read_text()
    assert "AssertionError" in feedback and "edited and was restored" in feedback
    assert "not a valid notebook" in (result.feedback / "not_json" / f"{STEM}.html").read_text()


def test_regrading_reuses_finished_work_and_gives_the_same_grades(batch):
    cases, first, root, _ = batch
    again = grade_folder(root / "submissions", [TINY], root / "out", timeout=TIMEOUT, limits=LIMITS)
    assert again.reused == len(cases)
    assert [(g.student, g.by_cell()) for g in again.grades] == [(g.student, g.by_cell()) for g in first.grades]


def _autograded_text(root: Path, student: str) -> str:
    path = root / "out" / "nbgrader" / "autograded" / student / STEM / f"{STEM}.ipynb"
    return "".join(o.get("text", "") for c in nbformat.read(path, as_version=4).cells for o in c.get("outputs", []))


def test_every_probe_of_the_sandbox_is_refused(batch):
    _, _, root, _ = batch
    printed = _autograded_text(root, "probes_the_sandbox").splitlines()
    probes = [line for line in printed if " open" in line or " refused" in line]
    assert len(probes) == PROBES.count("probe(") - 1 + 2, printed  # less the def; the fd probe prints 3 lines
    assert [line for line in probes if " open" in line] == [], printed


def test_nothing_outlives_its_sandbox(batch):
    _, _, root, _ = batch
    running = subprocess.run(["pgrep", "-f", MARK], capture_output=True, text=True).stdout.split()
    assert running == [], f"processes left behind: {running}"
    for folder in ("/tmp", "/dev/shm", str(Path.home())):
        assert not list(Path(folder).glob(f"{MARK}*")), folder
    box = next(line.split(" ", 1)[1] for line in _autograded_text(root, "probes_the_sandbox").splitlines()
               if line.startswith("box "))
    assert box.startswith("/") and not Path(box).exists(), box


def test_budgets_keep_every_notebook_small_and_short(batch):
    _, _, root, _ = batch
    autograded = root / "out" / "nbgrader" / "autograded"
    sizes = {s: (autograded / s / STEM / f"{STEM}.ipynb").stat().st_size
             for s in ("display_updates", "many_big_cells", "sleeps_under_the_timeout", "twenty_thousand_cells")}
    assert sizes["display_updates"] < 100_000, sizes
    assert sizes["many_big_cells"] < LIMITS.output_bytes + 3 * 2**20, sizes
    assert sizes["twenty_thousand_cells"] < 20 * 2**20, sizes


def test_feedback_holds_no_hidden_test_and_no_student_html(batch):
    _, result, _, _ = batch
    for student in {g.student for g in result.grades}:
        page = (result.feedback / student / f"{STEM}.html").read_text()
        assert "HIDDEN" not in page and "checks import report" not in page and "is_even(-7)" not in page, student
        assert "<script" not in page.lower() and "<img" not in page.lower(), student


def _scores(csv_path: Path, leave_out=frozenset()) -> dict[tuple[str, str], float]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return {(row["student"], row["exercise"]): float(row["score"]) for row in csv.DictReader(handle)
                if row["name"] not in leave_out}


# Submissions that only wait for a time or output budget: the same clocks and limits hold for every user, and they
# are most of the class's grading time, so the ordinary user's run leaves them out.
BUDGET_ONLY = frozenset({"infinite_loop", "swallows_interrupts", "sleeps_under_the_timeout", "twenty_thousand_cells",
                         "many_big_cells"})


@pytest.mark.skipif(os.getuid() != 0, reason="the suite already runs as an ordinary user")
def test_an_ordinary_user_grades_the_hostile_class_alike(batch, tmp_path_factory):
    """The README's command, run by an ordinary user from a folder outside the repository, in a terminal, on two
    worker processes: the same scores as the batch graded by one."""
    _, result, root, outside = batch
    place = Path(tempfile.mkdtemp(prefix="course-class-"))  # /tmp, not pytest's folder: root-only
    try:
        shutil.copytree(root / "submissions", place / "submissions", symlinks=True,
                        ignore=lambda folder, names: BUDGET_ONLY & set(names))
        shutil.copy(TINY, place / TINY.name)
        (place / "home").mkdir()
        for path in [place, *place.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666, follow_symlinks=False) if not path.is_symlink() else None
        command = [str(Path(sys.executable).parent / "course"), "grade", "submissions", "--output", "grading",
                   "--workers", "2",
                   "--solutions", str(place), "--cell-timeout", str(TIMEOUT),
                   "--notebook-timeout", str(LIMITS.notebook_seconds), "--memory-gb", str(LIMITS.memory_bytes / 2**30)]
        wrapped = as_ordinary_user(command, place / "home")
        # `script` gives the grader a terminal, as an instructor's shell would: no kernel may type into it
        shell = " ".join(shlex.quote(part) for part in wrapped)
        done = subprocess.Popen(["script", "-qec", shell, "/dev/null"], cwd=place, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = done.communicate(timeout=1500)
        except subprocess.TimeoutExpired:
            kill_tree(done.pid)  # the grader runs in `script`'s own session: killing `script` alone leaves it running
            done.communicate()
            raise
        assert done.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert (place / "grading" / "nbgrader" / "gradebook.db").stat().st_uid == NOBODY
        assert _scores(place / "grading" / "grades.csv") == _scores(result.csv, leave_out=BUDGET_ONLY)
        assert not outside.exists()
    finally:
        shutil.rmtree(place, ignore_errors=True)


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory):
    """A real Dask cluster: a scheduler and two workers, each its own process started with the `dask` command."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    dask = str(Path(sys.executable).parent / "dask")
    common = ["--no-dashboard"]
    processes = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                                   "--host", "127.0.0.1", *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 120
        while not scheduler_file.exists():
            assert time.monotonic() < deadline and processes[0].poll() is None, "the Dask scheduler did not start"
            time.sleep(0.2)
        for _ in range(2):  # --memory-limit 0: a worker's kernels are processes of their own, with their own limits
            processes.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads",
                                               "1", "--memory-limit", "0", "--host", "127.0.0.1", *common],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _grade_in_parallel(batch, tmp_path_factory, address, leave_out, workers):
    """The hostile class (less `leave_out`) graded on the Dask cluster and, with `workers`, by two local processes:
    scores equal to one worker's, and nothing written outside."""
    _, result, root, outside = batch
    place = tmp_path_factory.mktemp("parallel")
    shutil.copytree(root / "submissions", place / "submissions", symlinks=True,
                    ignore=lambda folder, names: leave_out & set(names))
    expected = _scores(result.csv, leave_out=leave_out)
    on_dask = grade_folder(place / "submissions", [TINY], place / "dask", timeout=TIMEOUT, limits=LIMITS, dask=address)
    assert _scores(on_dask.csv) == expected
    assert (on_dask.csv.parent / "results.json").is_file() and (on_dask.feedback / "honest_last").is_dir()
    if workers:
        two = grade_folder(place / "submissions", [TINY], place / "two", timeout=TIMEOUT, limits=LIMITS, workers=2)
        assert _scores(two.csv) == expected
    assert not outside.exists()


def test_a_dask_cluster_and_two_workers_grade_the_hostile_class_alike(batch, tmp_path_factory, dask_address):
    """Without the submissions that only wait out a clock (most of the class's time; the slow test has them). As
    root, the ordinary user's test above grades on two workers (`--workers 2`), so this one does not again."""
    _grade_in_parallel(batch, tmp_path_factory, dask_address, BUDGET_ONLY, workers=os.getuid() != 0)


@slow_extra("slow: the whole hostile class again on two workers and on Dask, about 6 minutes on 2 cores")
def test_the_whole_hostile_class_grades_alike_in_parallel(batch, tmp_path_factory, dask_address):
    _grade_in_parallel(batch, tmp_path_factory, dask_address, frozenset(), workers=True)
