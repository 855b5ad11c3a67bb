"""``keras-prune convert``: a model saved by Keras 2 (tf.keras 2.x or standalone Keras 2.x)
written as a Keras 3 ``.keras`` file, with the list of what was translated."""

from __future__ import annotations

import argparse

from keras_prune.cli._common import add_model_arguments, check_output, load, print_conversion

DESCRIPTION = """\
Read MODEL as keras-prune reads every model and write it to OUT as a Keras 3 .keras file.

MODEL can be written by Keras 2: an .h5/.hdf5 file of tf.keras (TF 2.3 to 2.15) or of
standalone Keras 2.x, a .json architecture (model.to_json()) with its --weights .h5 file,
a tf.keras SavedModel folder (model.save("folder")), or the .keras file of tf.keras 2.13-2.15.
Settings that Keras 3 spells or computes differently are translated so that the outputs
stay the same, and each one is listed: for example groups=1 on DepthwiseConv2D removed,
batch_input_shape moved to an InputLayer, and Keras 2's hard_sigmoid (clip(0.2x+0.5, 0, 1),
not Keras 3's relu6(x+3)/6) kept as keras_prune>keras2_hard_sigmoid, which every keras-prune
command reads (in Python: `import keras_prune.legacy`, then keras.saving.load_model). The compile settings (loss, metrics, optimizer) are carried over when
Keras 3 has them. A layer that cannot be rebuilt (a Lambda, which carries Python bytecode,
or a custom class not given with --custom-objects) stops the command before anything is
written. A Keras 3 MODEL is written as it is.

OUT is written to a temporary file and renamed when complete; an existing OUT is kept unless
--overwrite."""

EXAMPLES = """\
examples:
  keras-prune convert mobilenet_tf2.h5 -o mobilenet.keras
  keras-prune convert saved_model_dir -o model.keras
  keras-prune convert model.json --weights model_weights.h5 -o model.keras
  keras-prune convert classifier.h5 -o classifier.keras --custom-objects my_layers.py"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="write a Keras 2 model (.h5, .json + weights, SavedModel) as a Keras 3 .keras file",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the .keras file to write; never the input")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keras_prune.io import save_model

    check_output(args, suffixes=(".keras",))
    model = load(args, announce=False)
    if not print_conversion(model):
        print(f"'{args.model}' is a Keras 3 model; nothing to translate.")
    save_model(model, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0
