"""The local backend: model servers as processes under CPU quotas behind a router, on this machine."""
