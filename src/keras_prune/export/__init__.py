"""Export: the compact ``.kpsparse`` format and LiteRT (TFLite) conversion."""

from keras_prune.export.format import SparseFormatError
from keras_prune.export.litert import export_litert
from keras_prune.export.sparse import export_sparse, load_sparse

__all__ = ["SparseFormatError", "export_litert", "export_sparse", "load_sparse"]
