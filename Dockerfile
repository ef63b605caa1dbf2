# syntax=docker/dockerfile:1.7
# face-organizer: InsightFace on ONNX Runtime (CUDA 12), FAISS, and the legacy DeepFace tools.
#
#   DOCKER_BUILDKIT=1 docker build -t face-organizer:$(date +%F)-cuda12-cudnn910 -t face-organizer:latest .
#
# Base: the CUDA 12 runtime *without* cuDNN. cuDNN comes from PyPI (nvidia-cudnn-cu12), pinned in
# constraints.txt below 9.11, the release that dropped Pascal (Tesla P4) and Maxwell GPUs.
ARG CUDA_BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
FROM ${CUDA_BASE}

# 1 installs DeepFace + TensorFlow for gender_filter --backend deepface and benchmark_backends.
ARG WITH_DEEPFACE=1
# 1 downloads the buffalo_l pack into the image (otherwise mount it at /models, or let it download).
ARG BAKE_MODELS=0
# faiss-gpu-cu12 only where its wheels cover the GPU's compute capability; faiss-cpu always works.
ARG FAISS_PACKAGE=faiss-cpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FACE_ORGANIZER_CONTAINER=1 \
    FACE_ORGANIZER_MODEL_ROOT=/models \
    FACE_ORGANIZER_CALIBRATION=/models/calibration.json \
    DEEPFACE_HOME=/models/deepface \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/lib/python3.10/dist-packages/nvidia/cudnn/lib:/usr/local/cuda/lib64

# Ubuntu rotates package versions; pinning them would break rebuilds, not protect GPUs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY constraints.txt /build/constraints.txt
COPY docker/requirements-gpu.txt docker/requirements-deepface.txt /build/
# packages/ (git-ignored, may be empty): local wheels, tried before the index, so a rebuild
# does not download a gigabyte again. BuildKit's pip cache does the same for the rest.
COPY packages/ /build/packages/

# insightface, deepface and retina-face go in with --no-deps: their metadata requires the CPU
# onnxruntime and GUI opencv-python, which would shadow onnxruntime-gpu and headless OpenCV.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install --find-links /build/packages -c /build/constraints.txt \
        -r /build/requirements-gpu.txt "${FAISS_PACKAGE}" \
    && python3 -m pip install --no-deps --find-links /build/packages -c /build/constraints.txt insightface \
    && if [ "${WITH_DEEPFACE}" = "1" ]; then \
        python3 -m pip install --find-links /build/packages -c /build/constraints.txt -r /build/requirements-deepface.txt \
        && python3 -m pip install --no-deps --find-links /build/packages -c /build/constraints.txt deepface retina-face; \
    fi

COPY pyproject.toml README.md /app/
COPY face_organizer /app/face_organizer
COPY scripts /app/scripts
COPY benchmarks /app/benchmarks
COPY docker/verify_env.py /app/docker/verify_env.py
RUN python3 -m pip install --no-deps --no-cache-dir /app \
    && python3 /app/docker/verify_env.py

RUN if [ "${BAKE_MODELS}" = "1" ]; then \
        python3 -c "from insightface.utils.storage import ensure_available; ensure_available('models', 'buffalo_l', root='/')"; \
    fi

VOLUME ["/models"]
# The service stays up for `docker exec face-organizer python /app/scripts/<stage>.py …`.
# pid 1 keeps the container up for docker exec, reaps orphaned processes, and on docker stop gives every
# run SIGTERM and time to save its progress (sleep infinity ignored SIGTERM: runs were killed outright).
CMD ["python3", "-m", "face_organizer.keeper"]
