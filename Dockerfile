# CPU image: a SageMaker-compatible container running the native server.
#   docker build -t sagemaker-hf-server .
#   docker run -p 8080:8080 -v /path/to/model:/opt/ml/model:ro sagemaker-hf-server serve
# SageMaker runs it as `<image> serve`, with the model untarred into /opt/ml/model
# (or HF_MODEL_ID set); see README.md for the environment variables.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin sagemaker-hf-server \
 && strip target/release/sagemaker-hf-server

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sagemaker-hf-server /usr/local/bin/sagemaker-hf-server
# SageMaker may move the port (inference pipelines): the server reads SAGEMAKER_BIND_TO_PORT.
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
ENV SAGEMAKER_BIND_TO_PORT=8080
EXPOSE 8080
WORKDIR /
ENTRYPOINT ["/usr/local/bin/sagemaker-hf-server"]
CMD ["serve"]
