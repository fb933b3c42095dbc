# For `make docker-test`: a stand-in for nvidia/cuda:11.6.2-cudnn8-runtime-ubuntu20.04 (no image
# registry is reachable from the test machines) with that image's layout and empty files named
# like its libraries, to build the runner's gpu target and run cloud.gpu_check in it. It proves
# the target's paths and library search, not that CUDA works.
ARG BASE_IMAGE=local/debian-py311:bookworm
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /usr/local/cuda-11.6/targets/x86_64-linux/lib
RUN for lib in libcudart.so.11.6.55:libcudart.so.11.0 libcublas.so.11.8.1.74:libcublas.so.11 \
               libcublasLt.so.11.8.1.74:libcublasLt.so.11 libnvrtc.so.11.6.124:libnvrtc.so.11.2 \
               libcurand.so.10.2.9.55:libcurand.so.10 libcufft.so.10.7.1.112:libcufft.so.10 \
               libcusolver.so.11.3.4.124:libcusolver.so.11 libcusparse.so.11.7.2.124:libcusparse.so.11; do \
        touch "${lib%%:*}" && ln -s "${lib%%:*}" "${lib##*:}"; \
    done \
    && ln -s targets/x86_64-linux/lib /usr/local/cuda-11.6/lib64
WORKDIR /usr/lib/x86_64-linux-gnu
RUN for part in "" _ops_infer _ops_train _cnn_infer _cnn_train _adv_infer _adv_train; do \
        touch "libcudnn${part}.so.8.4.0" && ln -s "libcudnn${part}.so.8.4.0" "libcudnn${part}.so.8"; \
    done
