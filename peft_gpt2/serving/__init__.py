"""The OpenAI-compatible server: app, routes, protocol shapes, step engine, runtime adapters, metrics."""
