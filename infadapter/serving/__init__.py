"""The serving data plane: ONNX model variants, the TF-Serving-compatible model server, CPU limits.

The dispatcher (``dispatcher.py``) lives here too; see docs/serving.md.
"""
