"""Click command groups of ``cli.py``, one module per area; ``cli.py`` only assembles them.

These modules parse flags, call the package and print: no decisions are made here.
"""
