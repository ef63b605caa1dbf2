"""Packaging facts that can be checked without a Docker engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from face_organizer import keeper

ROOT = Path(__file__).resolve().parents[1]


def test_compose_service_reserves_all_gpus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["face-organizer"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices
    assert service["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in service["environment"]["NVIDIA_DRIVER_CAPABILITIES"]
    assert service["container_name"] == "face-organizer"
    # Its first process passes docker stop on to the docker exec runs, and waits for them within docker's time.
    assert service["command"] == ["python3", "-m", "face_organizer.keeper"]
    assert service["stop_grace_period"] == "2m" and keeper.DEFAULT_STOP_SECONDS < 120
    assert 'CMD ["python3", "-m", "face_organizer.keeper"]' in (ROOT / "Dockerfile").read_text()
    volumes = service["volumes"]
    assert any(v.endswith(":/workspace") for v in volumes)
    assert service["working_dir"] == "/workspace"  # relative names in docker exec runs: the mounted folder
    assert any(v.endswith(":ro") for v in volumes)
    assert "face-organizer-models" in compose["volumes"]


def test_constraints_pin_the_gpu_critical_packages() -> None:
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert "onnxruntime" not in pins and "opencv-python" not in pins
    # 1.27+ is a CUDA 13 build without code for Pascal (the Tesla P4) or Volta
    assert tuple(map(int, pins["onnxruntime-gpu"].split(".")[:2])) < (1, 27)
    assert "onnxruntime-gpu<1.27" in (ROOT / "docker" / "requirements-gpu.txt").read_text()
    major, minor = map(int, pins["nvidia-cudnn-cu12"].split(".")[:2])
    assert (major, minor) < (9, 11)
    assert all(name in pins for name in ("insightface", "faiss-cpu", "numpy", "opencv-contrib-python-headless"))


def test_dockerfile_installs_traps_without_deps() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "--no-deps" in text and "insightface" in text and "constraints.txt" in text
    assert "--mount=type=cache,target=/root/.cache/pip" in text and "--find-links /build/packages" in text
    assert "verify_env.py" in text and "ARG WITH_DEEPFACE" in text and "ARG BAKE_MODELS" in text


def test_what_the_container_downloads_or_measures_lives_in_the_models_volume(monkeypatch) -> None:
    # The container is recreated on every upgrade: model packs, DeepFace's weights and the model's
    # calibration kept in its home folder would be lost, and downloaded or measured again.
    from face_organizer.deepface_import import deepface_home_default
    from face_organizer.thresholds import calibration_path

    text = (ROOT / "Dockerfile").read_text()
    env = dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=(\S+?)\s*\\?$", text, re.M))
    assert 'VOLUME ["/models"]' in text
    assert env["FACE_ORGANIZER_CONTAINER"] == "1"  # outputs in the container's own filesystem are warned about
    for name in ("FACE_ORGANIZER_MODEL_ROOT", "FACE_ORGANIZER_CALIBRATION", "DEEPFACE_HOME"):
        assert env[name].startswith("/models"), name
        monkeypatch.setenv(name, env[name])
    assert calibration_path() == Path("/models/calibration.json") and deepface_home_default() == Path("/models/deepface")


def test_umbrella_command_dispatches(capsys) -> None:
    from face_organizer.cli import common
    from face_organizer.cli.cluster import main as cluster_main
    from face_organizer.cli.main import main

    assert main([]) == 0 and "cluster" in capsys.readouterr().out
    assert main(["nope"]) == 2 and "Error: unknown command 'nope'\nusage:" in capsys.readouterr().err
    meant = {"clustr": "cluster", "generate_embeddings.py": "embed", "/app/scripts/undo_move.py": "undo-move",
             "Search": "search"}
    for typed, command in meant.items():
        assert main([typed]) == 2 and f"(did you mean {command!r}?)" in capsys.readouterr().err
    assert main(["cluster", "--embeddings", "/nonexistent.pkl", "--output", "/tmp/x"]) == 2
    assert "cannot read embeddings file" in capsys.readouterr().err
    run = subprocess.run([sys.executable, "-m", "face_organizer", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert (run.returncode, run.stdout.split()[0]) == (0, "face-organizer")
    # A stage's usage and errors name the command as typed, not its script.
    with pytest.raises(SystemExit):
        main(["gender", "--help"])
    assert capsys.readouterr().out.startswith("usage: face-organizer gender [-h]")
    # Its examples run the commands too, the scripts of other stages as well.
    with pytest.raises(SystemExit):
        main(["embed-all-gpus", "--help"])
    examples = capsys.readouterr().out.split("examples:")[1]
    assert "face-organizer embed-all-gpus --input" in examples and "face-organizer cluster --embeddings" in examples
    assert "scripts/" not in examples
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    assert "docker exec face-organizer face-organizer diagnose --expect-gpu" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        common.run(cluster_main, ["--help"])
    assert "  python scripts/cluster_faces.py --embeddings" in capsys.readouterr().out  # the script, as before
    with pytest.raises(SystemExit):
        main(["embed-all-gpus", "--input", "x", "--output-dir", "y", "--bogus"])
    assert "face-organizer embed-all-gpus: error: unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        common.run(cluster_main, ["--bogus"])
    assert "cluster_faces.py: error:" in capsys.readouterr().err


class _Parsed(Exception):
    """Raised where a stage, its options read and checked, would start its work."""


def test_every_example_in_the_help_is_a_command_its_stage_takes(monkeypatch, capsys) -> None:
    # Each stage's --help ends with examples; a misspelt or retired option in one, or a line continued without
    # its backslash (the example ran on with a gap of spaces), is what a user copies first.
    import shlex
    from importlib import import_module

    from face_organizer.cli import common
    from face_organizer.cli.main import COMMANDS

    def parsed(*_args, **_kwargs):
        raise _Parsed

    monkeypatch.setattr(common, "setup_logging", parsed)
    stages = {script: import_module(f"face_organizer.cli.{module}") for module, script, _ in COMMANDS.values()}
    tried: set[str] = set()
    for owner in stages.values():
        examples = owner.EXAMPLES
        lines = [line for line in examples.splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in lines if re.search(r"\S {2,}(?!#|\s)", line)], owner.__name__  # a gap, no comment
        for command in examples.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            at = next((i for i, w in enumerate(words) if os.path.basename(w) in stages), None)
            if at is None:
                continue
            script = os.path.basename(words[at])
            with pytest.raises(_Parsed):  # not SystemExit: a usage error
                common.run(stages[script].main, words[at + 1:])
            tried.add(script)
    assert not set(stages) - tried, "stages whose help shows no example of their own"
    assert capsys.readouterr().err == ""


def test_stages_that_only_read_embeddings_files_do_not_load_onnx() -> None:
    # Importing onnx takes most of a second; clustering, embeddings_info and the search's
    # set-up should not pay it before they know they need a model.
    code = ("import sys; import face_organizer.cli.cluster, face_organizer.cli.info, face_organizer.cli.search, "
            "face_organizer.cli.embed; print(sorted(m for m in ('onnx', 'onnxruntime', 'insightface') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_every_command_tells_its_version(capsys) -> None:
    from importlib.metadata import version

    from face_organizer import __version__
    from face_organizer.cli.main import COMMANDS, main

    assert version("face-organizer") == __version__  # the package's metadata reads the one place it is set
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"face-organizer {__version__}\n"
    for stage in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([stage, "--version"])
        assert done.value.code == 0 and capsys.readouterr().out == f"face-organizer {__version__}\n", stage


def every_parser(monkeypatch, capsys) -> list:
    """The argument parser of every command, as each builds it for --help."""
    from face_organizer.cli import common
    from face_organizer.cli.main import COMMANDS, main

    made = []
    real = common.parser
    monkeypatch.setattr(common, "parser", lambda *args, **kwargs: made.append(real(*args, **kwargs)) or made[-1])
    for stage in COMMANDS:
        with pytest.raises(SystemExit):
            main([stage, "--help"])
    capsys.readouterr()
    assert len(made) >= len(COMMANDS)
    return made


def test_every_option_of_every_command_says_what_it_does(monkeypatch, capsys) -> None:
    made = every_parser(monkeypatch, capsys)
    bare = [f"{p.prog} {a.option_strings[0] if a.option_strings else a.dest}" for p in made for a in p._actions if not a.help]
    assert bare == []


def test_every_file_or_folder_argument_refuses_an_empty_one(monkeypatch, capsys, tmp_path) -> None:
    # `--input "$DIR"` with DIR unset embedded the current folder; `--output ""` wrote there.
    from face_organizer.cli import common
    from face_organizer.cli.main import main

    made = every_parser(monkeypatch, capsys)
    paths = {"DIR", "FILE", "FILE.pkl", "IMG", "OUTPUT", "SOURCE", "MODEL", "MODEL_ROOT", "YUNET_MODEL"}
    untyped = [f"{p.prog} {a.option_strings[0] if a.option_strings else a.dest}" for p in made for a in p._actions
               if (a.metavar or a.dest.upper()) in paths and a.type is not common.path]
    assert untyped == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "face.png").write_bytes(b"")
    for args in (["embed", "--input", "", "--output", "e.pkl"], ["cluster", "--embeddings", "e.pkl", "--output="],
                 ["search", "--embeddings", "e.pkl", "--query", "", "--output", "o"], ["info", ""]):
        with pytest.raises(SystemExit) as usage:
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert usage.value.code == 2 and err[-1].endswith(": an empty path (an unset shell variable?)"), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]
    # A name copied with a space: "input folder not found: /workspace/input/2017 " showed none.
    (tmp_path / "2017").mkdir()
    with pytest.raises(SystemExit) as usage:
        main(["embed", "--input", f"{tmp_path}/2017 ", "--output", "e.pkl"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"argument --input: '{tmp_path}/2017 ' does not exist, but '{tmp_path}/2017' does: a space copied with the "
        "name?")
    assert common.path(" new output") == " new output"  # spaces where nothing exists without them: taken as given


def test_a_home_folder_the_shell_left_as_typed_is_expanded(monkeypatch, capsys, tmp_path) -> None:
    # Shells leave `--output=~/emb.pkl` as typed: the stage made a folder named `~` in the current one.
    from face_organizer.cli import common
    from face_organizer.cli.main import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert common.path("~/emb.pkl") == f"{tmp_path}/home/emb.pkl"
    assert common.path("~") == f"{tmp_path}/home"
    assert common.path("a/~/b") == "a/~/b"
    assert main(["info", "~/embeddings_gpu0.pkl"]) != 0
    assert f"Error: {tmp_path}/home/embeddings_gpu0.pkl: no embeddings file" in capsys.readouterr().err
    (tmp_path / "~").mkdir()  # a folder that is named so is kept as named
    assert common.path("~/emb.pkl") == "~/emb.pkl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["~"]


@pytest.mark.parametrize(("stage", "option", "value", "message"), [
    ("cluster", "--min-similarity", "2", "a cosine similarity lies between -1 and 1, not 2"),
    ("cluster", "--min-similarity", "high", "not a number: 'high'"),
    ("cluster", "--neighbours", "2", "must be 3 or more"),
    ("cluster", "--seed", "-1", "a seed lies between 0 and 2,147,483,647, not -1"),
    ("cluster", "--clusters", "0", "use a number of people (1 or more) or 'auto'"),
    ("cluster", "--clusters", "two", "use a number of people (1 or more) or 'auto'"),
    ("cluster", "--seed", "2147483648", "a seed lies between 0 and 2,147,483,647, not 2147483648"),
    ("search", "--threshold", "-1.5", "a cosine similarity lies between -1 and 1, not -1.5"),
    ("search", "--target-fmr", "0", "must be above 0 and below 1, not 0"),
    ("gender", "--min-confidence", "1.2", "must be between 0 and 1, not 1.2"),
    ("embed", "--checkpoint-seconds", "-5", "must be 0 or more"),
    ("embed", "--batch-size", "100000", "at most 4,096: each stream holds a batch of decoded images"),
    ("gender", "--batch-size", "0", "must be 1 or more"),
    ("backends", "--backends", ",", "no backend named in ',': scrfd, yunet, or DeepFace's detectors (opencv, "),
])
def test_out_of_range_options_are_one_usage_line(stage, option, value, message, capsys) -> None:
    # A value that cannot mean anything is refused before any work starts, naming the option.
    from face_organizer.cli.main import main

    with pytest.raises(SystemExit) as usage:
        main([stage, f"{option}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert usage.value.code == 2 and f"error: argument {option}: {message}" in err[-1] and "Traceback" not in "".join(err)


def test_clusters_auto_is_taken_in_any_case() -> None:
    from face_organizer.cli.cluster import clusters_arg

    assert [clusters_arg(v) for v in ("auto", "AUTO", "Auto ", "3")] == [None, None, None, 3]


def test_make_refuses_an_unsupported_python_before_making_anything(tmp_path) -> None:
    # pip's own refusal ("requires a different Python") came after the venv was made, and named no way out.
    fake = tmp_path / "python3.14"
    fake.write_text(f'#!/bin/sh\n[ "$1" = -c ] || exit 9\nexec "{sys.executable}" -c '
                    '"import sys; sys.version_info = (3, 14, 0, \'final\', 0); exec(sys.argv[1])" "$2"\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    done = subprocess.run(["make", "-C", str(ROOT), f"VENV={venv}", f"PYTHON={fake}", "demo"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and not venv.exists()
    assert (f"face-organizer needs Python 3.10 to 3.13, and {fake} is 3.14: name another, as in make demo "
            "PYTHON=python3.12") in done.stderr


def _heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, spaces as hyphens, other punctuation
    dropped, a repeated heading's numbered -1, -2, …"""
    anchors: set[str] = set()
    for title in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        repeat = sum(a == anchor or re.fullmatch(re.escape(anchor) + r"-\d+", a) is not None for a in anchors)
        anchors.add(f"{anchor}-{repeat}" if repeat else anchor)
    return anchors


def test_every_link_in_the_documents_reaches_its_file_and_heading() -> None:
    """A heading renamed (a benchmark's command line in it changed) breaks the links to it without a word."""
    broken = []
    for name in ("README.md", "PROJECT_PLAN.md", "GPU_TROUBLESHOOTING_LOG.md"):
        text = re.sub(r"```.*?```", "", (ROOT / name).read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            document = ROOT / path if path else ROOT / name
            if not document.exists():
                broken.append(f"{name}: {target}")
            elif anchor and anchor not in _heading_anchors(document.read_text(encoding="utf-8")):
                broken.append(f"{name}: {target}")
    assert not broken, broken
