# CI only: the local stand-in for python:3.11-slim and the upstream service bases (vLLM, PyTorch,
# OpenVINO images), built on a debootstrapped Debian bookworm rootfs (compose/ci/base-rootfs.sh,
# imported as ROOTFS). It is NOT the upstream image: same distro family and Python 3.11, no CUDA.
ARG ROOTFS=local/bookworm-py:rootfs
FROM ${ROOTFS}
# Extra CA certificates of the build host (e.g. a TLS-inspecting egress proxy), so pip and uv inside
# image builds can reach PyPI; the context folder may be empty.
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null 2>&1 \
 && ln -sf /usr/bin/python3 /usr/local/bin/python \
 && ln -sf /usr/bin/python3 /usr/local/bin/python3
ENV LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    UV_NATIVE_TLS=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
CMD ["python3"]
