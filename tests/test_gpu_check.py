"""benchmarks/gpu_check.sh, the one command a GPU session runs, dry-run on CPU. A stand-in python3 first
on PATH records each command line the script gives it instead of running it; then every benchmark
script and perfloss command parses its recorded arguments, and every pytest command collects its tests.
A renamed flag, an engine name the sweep does not know or a test selection that selects nothing fails
here, not in a session's few minutes of device time."""
import importlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

# python3 for the dry run: appends {"cwd", "argv", "env"} (the PERFLOSS_ variables) to $GPU_CHECK_RECORD
RECORDING_PYTHON = """\
import json, os, sys
with open(os.environ["GPU_CHECK_RECORD"], "a") as f:
    env = {k: v for k, v in os.environ.items() if k.startswith("PERFLOSS_")}
    f.write(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:], "env": env}) + "\\n")
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _record_gpu_check(tmp_path: Path):
    bin_dir, wheels, results = tmp_path / "bin", tmp_path / "wheels", tmp_path / "results"
    bin_dir.mkdir()
    wheels.mkdir()
    (tmp_path / "record.py").write_text(RECORDING_PYTHON)
    _executable(bin_dir / "python3", f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "record.py"}" "$@"\n')
    _executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho 'a stand-in'\n")
    # compute-sanitizer OPTION VALUE ... COMMAND: runs COMMAND (each option gpu_check.sh gives takes a value)
    _executable(bin_dir / "compute-sanitizer", '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift 2; done\nexec "$@"\n')
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", GPU_CHECK_RECORD=str(tmp_path / "record.jsonl"))
    run = subprocess.run(["bash", str(SCRIPT), str(wheels), str(results)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    steps = [line.split()[0] for line in (results / "steps.txt").read_text().splitlines()]
    assert steps == re.findall(r"^\s*step (\w+) ", SCRIPT.read_text(), re.M), run.stdout + run.stderr
    return steps, [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]


def _parses(argv) -> str:
    """'' when the command's parser takes argv, else its error."""
    try:
        if argv[:2] == ["-m", "perfloss"]:
            from perfloss import cli
            cli.parser().parse_args(argv[2:])
        else:
            importlib.import_module(Path(argv[0]).stem).parse_args(argv[1:])
    except SystemExit as e:
        return f"exit {e.code}"
    return ""


def test_every_command_of_the_gpu_check_parses(tmp_path, monkeypatch, capsys):
    steps, commands = _record_gpu_check(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    kinds = {"-c": [], "pip": [], "pytest": [], "parse": []}
    for c in commands:
        argv = c["argv"]
        kind = "-c" if argv[0] == "-c" else argv[1] if argv[1] in ("pip", "pytest") and argv[0] == "-m" else "parse"
        kinds[kind].append(c)
    assert len(commands) - len(kinds["-c"]) == len(steps) >= 12  # each step one python command
    assert all(c["argv"][:2] == ["-m", "perfloss"] or c["argv"][0].startswith("benchmarks/") for c in kinds["parse"])

    errors = {" ".join(c["argv"]): _parses(c["argv"]) for c in kinds["parse"]}
    assert not {k: v for k, v in errors.items() if v}, capsys.readouterr().err

    for c in kinds["pytest"]:  # collected as the GPU machine would; pytest exits 5 when none is selected
        argv = c["argv"][2:]
        if "-n" in argv and importlib.util.find_spec("xdist") is None:  # -n N: pytest-xdist, on the GPU machine
            i = argv.index("-n")
            argv = argv[:i] + argv[i + 2:]
        collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", *argv], cwd=c["cwd"],
                                 env={**os.environ, **c["env"]}, capture_output=True, text=True, timeout=300)
        assert collect.returncode == 0, " ".join(c["argv"]) + "\n" + collect.stdout[-3000:] + collect.stderr[-3000:]
