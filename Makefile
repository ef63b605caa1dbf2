# Set-up and the commands README.md documents. Works on a fresh machine with Python 3.10-3.13.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The shared models and datasets: $(SHARED), else $FACE_ORGANIZER_SHARED, else ../shared.
SHARED ?= $(or $(FACE_ORGANIZER_SHARED),../shared)

.PHONY: setup setup-test demo test typecheck bench

# The supported Pythons are checked first: pip's own refusal comes after the venv is made, and names no way out.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 13) else \
		f"face-organizer needs Python 3.10 to 3.13, and $(PYTHON) is {v[0]}.{v[1]}: name another, as in " \
		"make $(MAKECMDGOALS) PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# insightface requires the GUI build opencv-python, whose cv2 needs the desktop's libGL and X11
# libraries (on a server: "ImportError: libGL.so.1"). All OpenCV builds share one cv2 folder and
# the last installed wins, so the GUI build is removed and a headless one put back over it: the
# contrib build where it is installed (DeepFace's; it holds every module of the other, and OpenCV 5's
# CascadeClassifier, which DeepFace's opencv detector needs, only it has), else the plain one.
define headless_opencv
	$(BIN)/python -m pip uninstall --quiet -y opencv-python
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$($(BIN)/python -c \
		'import importlib.metadata as m; d = {x.metadata["Name"].lower(): x.version for x in m.distributions()}; \
		n = next(k for k in ("opencv-contrib-python-headless", "opencv-python-headless") if k in d); print(f"{n}=={d[n]}")')"
endef

# CPU install: the project, the CPU ONNX Runtime and insightface (sample faces, pack downloads).
setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cpu,insightface]"
	$(call headless_opencv)

# Tests also cover the DeepFace backends of the legacy tools, so they install DeepFace + TensorFlow
# (and deepface's opencv-contrib-python-headless, the build then put back last).
setup-test: setup
	$(BIN)/python -m pip install --quiet -e ".[cpu,insightface,deepface,test]"
	$(call headless_opencv)

# Quick start: sort the faces that ship inside pip packages (insightface's t1.jpg, scikit-image's astronaut).
demo: setup
	FACE_ORGANIZER_SHARED=$(SHARED) $(BIN)/python scripts/demo.py --output demo_output

# Lint the Dockerfile, prove constraints.txt resolves for the image's platform, run the suite.
test: setup-test
	$(BIN)/hadolint Dockerfile
	$(BIN)/python docker/lock.py --check
	FACE_ORGANIZER_SHARED=$(SHARED) $(BIN)/python -m pytest -q

# Static types of the package, scripts, benchmarks and tests (pyproject.toml's [tool.mypy]); not part of `make test`, as
# each release of mypy or numpy's stubs may find new complaints in code that runs the same.
typecheck: setup-test
	$(BIN)/python -m pip install --quiet "mypy>=1.10"
	$(BIN)/python -m mypy

bench: setup-test
	$(BIN)/python benchmarks/bench_embeddings.py --count 600 --workers 0
