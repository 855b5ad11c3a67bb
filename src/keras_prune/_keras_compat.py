"""Every use of Keras internals in one place, so a Keras upgrade has one file to check."""

from __future__ import annotations


def stateless_scope():
    """The active ``keras.StatelessScope`` (as in a JAX train step), or ``None``."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    return get_stateless_scope()


def no_autocast():
    """A context in which variables read as their own dtype, even inside a mixed-precision call."""
    from keras.src.backend.common.variables import AutocastScope

    return AutocastScope(None)


def call_takes_training(model) -> bool:
    """Whether ``fit`` passes ``training=True`` to ``model`` (its ``call`` has the argument)."""
    return bool(getattr(model, "_call_has_training_arg", True))


def child_layers(layer) -> list:
    """The layers ``layer`` tracks directly, in the order it created them.

    This finds sub-layers kept in any attribute (private ones such as KerasHub's
    ``_self_attention_layer`` too) or in lists and dicts of them, as Keras' own
    ``Model.quantize`` and weight saving do; it does not descend into them.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def untracked():
    """A context in which attributes set on a layer are not tracked (no variables adopted)."""
    from keras.src.utils.tracking import DotNotTrackScope

    return DotNotTrackScope()


def replace_sublayer(layer, attribute: str, new) -> None:
    """Sets ``layer.<attribute>`` to ``new`` in place of the sub-layer it holds, at that
    sub-layer's position among the ones ``layer`` tracks (so weights keep their order and
    save under the same attribute); the old sub-layer is no longer tracked. ``layer`` may
    already be built (its state is unlocked for the swap, then locked again)."""
    old = getattr(layer, attribute)
    index = next(i for i, child in enumerate(layer._layers) if child is old)
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        tracker.untrack(old)
        setattr(layer, attribute, new)
    finally:
        tracker.locked = locked
    layer._layers.remove(new)
    layer._layers.insert(index, new)


def all_layers(layer) -> list:
    """``layer`` and every layer inside it, at any depth, each once."""
    return list(layer._flatten_layers(include_self=True, recursive=True))


def own_variables(layer) -> list:
    """The variables ``layer`` created itself (not those of its sub-layers)."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def build_by_calling(layer, *args, **kwargs) -> None:
    """Builds ``layer`` by tracing its ``__call__`` on the shapes of ``args`` and ``kwargs``
    (nothing is computed), so layers whose ``build`` takes several shapes build too."""
    from keras.src.backend import compute_output_spec

    compute_output_spec(layer.__call__, *args, **kwargs)


def share_layout(variable, like) -> None:
    """Lays ``variable`` out over devices as ``like`` is (Keras distribution API, JAX).

    A variable's layout comes from the distribution's ``LayoutMap`` by the variable's path
    when it is created; a mask's path is not its kernel's, so it gets its kernel's layout here.
    """
    layout = getattr(like, "_layout", None)
    if layout is None:
        return
    variable._layout = layout
    variable._direct_assign(variable.value)
