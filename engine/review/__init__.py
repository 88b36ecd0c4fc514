"""Review cases: the Redis-backed queue analysts work from."""
