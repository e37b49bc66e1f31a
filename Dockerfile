# Multi-stage CPU image of uwe-connect.
# CUDA variant: build FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 for the runtime stage and
# install onnxruntime-gpu==1.31.1's libonnxruntime.so instead (ORT_DYLIB_PATH); see README "GPU".

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip unzip zlib1g-dev libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/uwe-connect /usr/local/bin/uwe-connect
COPY --from=build /src/target/release/uwe-trainer /usr/local/bin/uwe-trainer
COPY --from=build /src/.uwe/base /app/.uwe/base
COPY --from=build /src/.uwe/lib /app/.uwe/lib
COPY --from=build /src/models/base /app/models/base
COPY --from=build /src/models/uwe-minilm-l6 /app/models/uwe-minilm-l6
COPY --from=build /src/data /app/data
COPY --from=build /src/schemas /app/schemas
COPY --from=build /src/connectors /app/connectors
COPY --from=build /src/deploy/trainer.toml /app/deploy/trainer.toml
RUN ln -s uwe-minilm-l6 /app/models/default
ENV ORT_DYLIB_PATH=/app/.uwe/lib/libonnxruntime.so UWE_CACHE_DIR=/app/cache
EXPOSE 9464 9465
ENTRYPOINT ["uwe-connect"]
CMD ["run", "--config", "connectors/vacancies.toml"]
