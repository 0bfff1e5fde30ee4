"""The top floor: the ``seg2tflite`` command line, the demo, training and compression.

Installed as ``seg2tflite.app``; ``python -m seg2tflite.app`` is the ``seg2tflite`` script.
"""

if __name__ != "seg2tflite.app":  # the checkout's root on sys.path would load this folder a second time
    raise ImportError(f"import seg2tflite.app, not {__name__}: the folders at the repository's top install under seg2tflite")
