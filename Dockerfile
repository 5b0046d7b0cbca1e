# syntax=docker/dockerfile:1

# claude-code-api: HTTP API server for the Claude Code CLI.
#
#   docker build -t claude-code-api .
#   docker run --rm -p 8000:8000 -e CLAUDE_API_KEY=... -e ANTHROPIC_API_KEY=... \
#     -v claude-data:/data -v claude-config:/home/claude/.claude -v "$PWD/workspace:/workspace" \
#     claude-code-api
#
# The Claude Code CLI comes with the npm dependency @anthropic-ai/claude-agent-sdk (its platform package
# carries the matching native binary, ripgrep included), so the image needs no separate CLI install.

# ---- build: compile TypeScript, then drop dev dependencies ------------------------------------------
FROM node:22-bookworm-slim AS build
WORKDIR /app

COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund

COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY plugins ./plugins
COPY routes ./routes
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

# ---- runtime -------------------------------------------------------------------------------------
FROM node:22-bookworm-slim AS runtime

# What the CLI's tools need at runtime: git (repository context, the model's git commands),
# ca-certificates (TLS to the Anthropic API), bash (the Bash tool; already in the base image, listed
# so it is not lost). tini is PID 1: it forwards SIGTERM to node and reaps the orphans the Bash tool
# leaves behind (the CLI runs commands in new sessions, re-parented to PID 1 when it dies).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates bash tini \
 && rm -rf /var/lib/apt/lists/*

# The server runs as root so that it can run every key's agent as an unprivileged identity of its
# own (uids from AGENT_UID_BASE, HOMEs under /agents); ISOLATION=uid makes that a requirement: the
# server refuses to start rather than run agents with its own rights. No run ever executes as root,
# and the server's environment, /data and the keys file are unreadable to the agents.
RUN mkdir -p /data /workspace /agents /home/claude/.claude \
 && chmod 700 /data /home/claude \
 && chmod 711 /agents

WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The web console (/console): static files, read from the package at runtime.
COPY console ./console

# DATA_DIR: the run store. DEFAULT_WORKING_DIR: where runs execute (each key in /workspace/<key>, its
# own); ALLOWED_WORKING_DIRS is left unset, so it defaults to DEFAULT_WORKING_DIR. AGENTS_DIR: each
# key's HOME and Claude config directory (sessions; mount a volume so they survive restarts).
# CLAUDE_CONFIG_DIR: the server's own (the CLI probe).
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/data \
    DEFAULT_WORKING_DIR=/workspace \
    CLAUDE_CONFIG_DIR=/home/claude/.claude \
    HOME=/home/claude \
    AGENTS_DIR=/agents \
    ISOLATION=uid \
    NODE_ENV=production

USER root
EXPOSE 8000

# No curl in slim images: use node's fetch. /health answers 200 even when the CLI is missing
# ("degraded") and 503 while shutting down.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8000)+'/health').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"]

# Run node directly, not `npm start` (npm would rebuild, and does not forward SIGTERM reliably), under
# tini so SIGTERM reaches the server, which stops admitting, ends every run's process tree and exits
# (within 30 s; give `docker stop` a longer timeout, e.g. compose stop_grace_period: 40s).
# -s: act as a child subreaper too when tini is not PID 1 (e.g. under `docker run --init` or compose
# `init: true`), so orphans are still reaped and tini does not warn.
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
CMD ["node", "dist/src/server.js"]
