"""Every use of Keras internals in one place, so a Keras upgrade has one file to check."""

from __future__ import annotations

import contextlib


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


def inner_layers(layer) -> list:
    """Every layer inside ``layer``, at any depth, each once (not ``layer`` itself)."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


def is_functional(model) -> bool:
    """Whether ``model`` is a functional model (built from its inputs' and outputs' graph).

    Keras exports no public type for it; a ``keras.Sequential`` is not one.
    """
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def producer_of(tensor):
    """The operation (layer) whose call produced the symbolic ``tensor`` (an ``InputLayer``
    for a ``keras.Input``), or ``None`` if ``tensor`` has no such history."""
    return getattr(getattr(tensor, "_keras_history", None), "operation", None)


def producing_node(tensor):
    """``(operation, node)``: the call that produced the symbolic ``tensor`` (``node`` is
    that call's entry among ``operation``'s inbound nodes), or ``None`` if there is none."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    return history.operation, history.operation._inbound_nodes[history.node_index]


def inbound_nodes(layer) -> list:
    """The nodes of ``layer``'s symbolic calls (one per call in a functional graph)."""
    return layer._inbound_nodes


def retrack_sublayer(container, old, new) -> None:
    """Makes ``container`` track the layer ``new`` in place of its sub-layer ``old``, at the same
    position among its layers; set the attribute holding ``old`` to ``new`` afterwards."""
    container._tracker.replace_tracked_value("layers", old, new)


def built_input_shapes(layer):
    """The input shapes ``layer`` was built with, by ``build`` argument name (a dict), or
    ``None`` if Keras did not record them."""
    return getattr(layer, "_build_shapes_dict", None)


def copy_input_shape_argument(target, source) -> None:
    """Gives ``target`` the ``input_shape=...`` argument ``source`` was created with, if any,
    so a Sequential model that starts with ``target`` still gets its input from it."""
    if getattr(source, "_input_shape_arg", None) is not None:
        target._input_shape_arg = source._input_shape_arg


@contextlib.contextmanager
def deferred_variables():
    """A context collecting the variables whose initialization Keras defers during it (those
    created inside ``keras.StatelessScope(initialize_variables=False)``).

    Yields a list that, once the block ends normally, holds those variables, taken off Keras'
    queue so nothing else initializes them: initialize each with :func:`initialize_deferred`.
    If the block raises, they are dropped from the queue and never initialized.
    """
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)
    before = len(pending)
    created = []
    try:
        yield created
    except BaseException:
        del pending[before:]
        raise
    created.extend(pending[before:])
    del pending[before:]


def initialize_deferred(variable) -> None:
    """Gives a variable whose initialization Keras deferred its initial value."""
    variable._deferred_initialize()
