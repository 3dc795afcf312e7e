# CI only: the Python stand-in plus the CPU torch wheel, as a pip find-links folder in the image's pip
# configuration: services/setup-env.sh (run by the CPU variants of services/llm and services/image)
# asks pip for that folder, exactly as on a development machine. Stands in for the vLLM and PyTorch bases.
ARG BASE_IMAGE=local/python-standin:3.11
FROM ${BASE_IMAGE}
COPY wheels/ /opt/wheels/
RUN printf '[global]\nfind-links = /opt/wheels\n' > /etc/pip.conf
