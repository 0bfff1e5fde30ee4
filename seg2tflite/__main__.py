"""``python -m seg2tflite``: the same command line as the ``seg2tflite`` script."""

import sys

from seg2tflite.cli import main

sys.exit(main())
