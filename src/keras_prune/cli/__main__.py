import sys

from keras_prune.cli import main

sys.exit(main())
