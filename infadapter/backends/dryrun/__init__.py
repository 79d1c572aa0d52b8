"""The dry-run backend: the manifests each plan would apply, written to a folder."""
