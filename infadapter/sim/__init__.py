"""The trace-driven simulator and live-vs-simulated experiments."""
