# CI only: stands in for the CUDA PyTorch base of services/image/Dockerfile (which takes torch from its
# base image): the Python stand-in with the CPU torch wheel installed system-wide.
ARG BASE_IMAGE=local/python-torch-standin:3.11
FROM ${BASE_IMAGE}
RUN python3 -m pip install -q --no-cache-dir "torch==2.13.0" && python3 -c "import torch; print(torch.__version__)"
