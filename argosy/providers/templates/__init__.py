"""Rendered artifacts and shared helpers for the serverless and orchestrator providers (issue 6).

- `serverless`: published serverless prices, cold-start estimates, router auth, vLLM arguments,
  secret placeholders and the `ServerlessEndpoint` every endpoint provider returns.
- `fallback`: the side-by-side primary/serverless-fallback plan for `argosy deploy --fallback --dry-run`.
- `serverless_prices.yaml`: the one table of published per-second serverless GPU prices.
"""
