"""Observing the service: Prometheus and the dispatcher's counters, replayed and generated load, traces,
the Prometheus rules."""
