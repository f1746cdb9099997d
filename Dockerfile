# MollySocket (TypeScript). Build: docker build -t mollysocket .   Run: see docker-compose.yml and INSTALL.md.
# NODE_VERSION: the Node.js line of the official node image, an LTS line that still gets security releases
# (22 or 24; docker build --build-arg NODE_VERSION=22 .).
ARG NODE_VERSION=24

FROM node:${NODE_VERSION}-trixie-slim AS build
# better-sqlite3 compiles its native module with these.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies first, so that a change to the source reuses this layer. npm can exit 0 after a network
# failure: `npm ls` and the compiled module are checked, so a broken install fails here and is not cached.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts \
 && npm rebuild better-sqlite3 \
 && npm ls --all >/dev/null \
 && test -f node_modules/better-sqlite3/build/Release/better_sqlite3.node
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# Then the development packages go, and better-sqlite3's build leftovers (objects, static library, SQLite's
# sources: about 25 MB); only the module itself is loaded at run time.
RUN npm run build \
 && test -f dist/cli/main.js \
 && npm prune --omit=dev \
 && cd node_modules/better-sqlite3 \
 && mv build/Release/better_sqlite3.node . \
 && rm -rf build deps src \
 && mkdir -p build/Release \
 && mv better_sqlite3.node build/Release/

FROM node:${NODE_VERSION}-trixie-slim
ENV NODE_ENV=production \
    MOLLY_HOST=0.0.0.0 \
    MOLLY_DB=/data/mollysocket.db
WORKDIR /app
COPY package.json docker-entrypoint.sh ./
COPY views ./views
COPY certs ./certs
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# `mollysocket` (entrypoint, healthcheck, `docker compose exec`) is docker-entrypoint.sh: it runs the CLI as the
# unprivileged user `node` (uid 1000). The container starts as root only so that the script can hand /data
# over to that user when it belongs to someone else (a volume made by MollySocket's image belongs to root).
RUN ln -s /app/docker-entrypoint.sh /usr/local/bin/mollysocket \
 && mkdir /data && chown node:node /data
WORKDIR /data
VOLUME /data
EXPOSE 8020
# Reads the server's heartbeat from the database, so it also works with webserver = false.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["mollysocket", "health"]
ENTRYPOINT ["mollysocket"]
CMD ["server"]
