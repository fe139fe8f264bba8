# CPU image: a SageMaker-compatible container running the native server, for linux/amd64 (x86
# instances) and linux/arm64 (Graviton instances) from this one file:
#   docker build -t sagemaker-hf-server .            # for the platform of the machine building it
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/sagemaker-hf-server --push .
#   docker run -p 8080:8080 -v /path/to/model:/opt/ml/model:ro sagemaker-hf-server serve
# SageMaker runs it as `<image> serve`, with the model untarred into /opt/ml/model
# (or HF_MODEL_ID set); see README.md for the environment variables.
#
# What each image asks of the CPU: amd64 is built for x86-64-v3 (AVX2 + FMA: Haswell and later,
# every current SageMaker x86 instance; the flag lives in .cargo/config.toml and applies to the
# x86_64 target only), arm64 for ARMv8.0-A with NEON (Graviton 2, 3 and 4).
#
# The build stage runs on the building machine's platform (BUILDPLATFORM, no emulation) and
# cross-compiles for the image's (TARGETARCH) with Debian's cross gcc when the two differ. Needs
# BuildKit (the default builder of current Docker), which sets those two arguments.

FROM --platform=$BUILDPLATFORM rust:1-bookworm AS build
ARG TARGETARCH
ARG BUILDARCH
WORKDIR /src
# The Rust target and the C toolchain (linker; C code of onig and ring) for TARGETARCH.
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; package=x86-64-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; package=aarch64-linux-gnu ;; \
      *) echo "TARGETARCH '$TARGETARCH': only amd64 and arm64 are supported (BuildKit sets it)" >&2; \
         exit 1 ;; \
    esac; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "gcc-$package" "libc6-dev-$TARGETARCH-cross"; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    rustup target add "$triple"; \
    upper=$(echo "$triple" | tr 'a-z-' 'A-Z_'); lower=$(echo "$triple" | tr '-' '_'); \
    { echo "TRIPLE=$triple GNU=$gnu"; \
      echo "export CARGO_TARGET_${upper}_LINKER=$gnu-gcc CC_$lower=$gnu-gcc AR_$lower=$gnu-ar"; \
    } > /target.env
# Debian names its gcc `<gnu>-gcc` natively and as a cross compiler alike, so one set of
# variables (/target.env) serves both builds.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY benches benches
RUN set -eu; . /target.env; \
    mkdir -p src; echo 'fn main() {}' > src/main.rs; : > src/lib.rs; \
    cargo build --release --locked --target "$TRIPLE" --bin sagemaker-hf-server; \
    rm -rf src
COPY src src
# (touch: COPY keeps the files' times, which may be older than the stub build's outputs)
RUN set -eu; . /target.env; \
    touch src/main.rs src/lib.rs; \
    cargo build --release --locked --target "$TRIPLE" --bin sagemaker-hf-server; \
    cp "target/$TRIPLE/release/sagemaker-hf-server" /sagemaker-hf-server; \
    "$GNU-strip" /sagemaker-hf-server

# ca-certificates: the system's TLS roots, which the server uses (not a list compiled in). A
# company CA for an HF_ENDPOINT mirror goes in the same way as on any Debian machine:
#   COPY my-ca.crt /usr/local/share/ca-certificates/ && RUN update-ca-certificates
# (or SSL_CERT_FILE=/path/to/bundle.pem at run time).
FROM debian:bookworm-20260803-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /sagemaker-hf-server /usr/local/bin/sagemaker-hf-server
# SageMaker may move the port (inference pipelines): the server reads SAGEMAKER_BIND_TO_PORT.
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
# Multi-model endpoints (SAGEMAKER_MULTI_MODEL=true): MMS's model API, POST/GET/DELETE /models.
# CPU image only: SageMaker runs GPU multi-model endpoints with its Triton container alone.
LABEL com.amazonaws.sagemaker.capabilities.multi-models=true
ENV SAGEMAKER_BIND_TO_PORT=8080
EXPOSE 8080
WORKDIR /
ENTRYPOINT ["/usr/local/bin/sagemaker-hf-server"]
CMD ["serve"]
