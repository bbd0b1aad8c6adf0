"""Talking to the orchestrator: the HTTP client (claim, heartbeat, status, progress) and throttled progress reports."""
