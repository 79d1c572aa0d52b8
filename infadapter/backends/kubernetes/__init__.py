"""The Kubernetes backend: variant Deployments in a namespace, applied through the API server."""
