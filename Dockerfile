# syntax=docker/dockerfile:1
# MollySocket (TypeScript). Build: docker build -t mollysocket .   Run: see docker-compose.yml and INSTALL.md.

FROM node:20-bookworm-slim AS build
# better-sqlite3 compiles its native module with these.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY views ./views
COPY certs ./certs
# npm ci compiles better-sqlite3 and, through `prepare`, the TypeScript; then drop the development packages.
RUN npm ci && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    MOLLY_HOST=0.0.0.0 \
    MOLLY_DB=/data/mollysocket.db
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/views ./views
COPY --from=build /src/certs ./certs
RUN chmod +x dist/cli/main.js \
 && ln -s /app/dist/cli/main.js /usr/local/bin/mollysocket \
 && mkdir /data && chown node:node /data
# The image's unprivileged user (uid 1000). The database and the generated VAPID key live in /data.
USER node
WORKDIR /data
VOLUME /data
EXPOSE 8020
# Reads the server's heartbeat from the database, so it also works with webserver = false.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["mollysocket", "health"]
ENTRYPOINT ["mollysocket"]
CMD ["server"]
