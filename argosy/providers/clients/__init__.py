"""API clients shared by the providers and the catalog fetchers (one client per provider)."""
