"""The subcommands, one module each: ``add(sub)`` declares the subcommand and its options on
argparse's subparsers, ``run(args)`` does the work. Heavy imports happen inside ``run`` (and the
options' defaults come from light config modules), so ``--help`` and a refused argument answer
without loading PyTorch or TensorFlow. ``seg2tflite.app.cli.COMMANDS`` lists them in help order.
"""
