"""infadapter: accuracy-aware, latency-SLO-driven autoscaling of ML inference model variants."""

__version__ = "0.1.0"
