"""The resumable checkpoint of ``finetune`` and ``shrink``: a folder keras-prune creates and
marks as its own, holding the model after the last finished epoch and what run it belongs to."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

from keras_prune.cli import CLIError

# The flags of add_training_arguments that define a run, besides each command's own.
TRAINING_KEYS = ("data", "epochs", "batch_size", "loss", "from_logits", "metrics", "optimizer",
                 "learning_rate", "validation_split", "image_scale", "weights")

MARKER = ".keras-prune-checkpoint"
MARKER_TEXT = "keras-prune made this folder for a resumable checkpoint; it deletes it once the run succeeds.\n"
# Checkpoint files, and the temporary names atomic_write gives them while they are written.
OWN_FILES = (MARKER, "state.json", "epoch-*.keras", ".epoch-*.keras", ".state.*.json")


class Checkpoint:
    """A folder holding the model after the last finished epoch, and what run it is.

    keras-prune creates the folder itself, with a marker file, and only ever deletes its own
    files in it: a folder that exists and is not such a checkpoint is refused before any work.
    """

    def __init__(self, args: argparse.Namespace, keys: tuple[str, ...]):
        self.folder = Path(args.checkpoint_dir or f"{args.output}.ckpt")
        self.signature = signature(args, keys)
        self.state = self.folder / "state.json"
        self.epochs_done = 0  # of this run, once resumed or saved
        check_folder(self.folder, args)
        self._resumable = None if args.restart else self._read_state()

    def _read_state(self) -> dict | None:
        from keras_prune.io import error_summary

        if not self.state.is_file():
            return None
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError) as error:
            raise CLIError(f"Checkpoint '{self.folder}' cannot be read ({error_summary(error)}); pass "
                           "--restart to start over.") from None
        if not isinstance(state, dict) or state.get("signature") != self.signature:
            raise CLIError(
                f"Checkpoint '{self.folder}' belongs to a different run (other model, data or "
                "options); pass --restart to discard it, or --checkpoint-dir to keep both."
            )
        return state

    def load(self, unsafe: bool):
        """``(model, finished epochs)`` from the checkpoint, or ``(None, 0)`` if there is none
        (or ``--restart`` was given)."""
        from keras_prune.io import error_summary, load_model

        state = self._resumable
        if state is None:
            return None, 0
        try:
            model = load_model(self.folder / str(state["model"]), safe_mode=not unsafe)
            self.epochs_done = int(state["epochs_done"])
        except (KeyError, TypeError, ValueError) as error:
            raise CLIError(f"Checkpoint '{self.folder}' cannot be loaded ({error_summary(error)}); pass "
                           "--restart to start over.") from None
        print(f"Resuming from epoch {self.epochs_done}/{self.signature['epochs']} "
              f"(checkpoint {self.folder})", file=sys.stderr)
        return model, self.epochs_done

    def callback(self, keras):
        """A callback writing the checkpoint atomically at the end of every epoch."""
        checkpoint = self

        class EpochCheckpoint(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                checkpoint.save(self.model, epoch + 1)

        return EpochCheckpoint()

    def save(self, model, epochs_done: int) -> None:
        from keras_prune.io import atomic_write

        if not self.folder.is_dir():
            self.folder.mkdir()
            (self.folder / MARKER).write_text(MARKER_TEXT)
        name = f"epoch-{epochs_done}.keras"
        atomic_write(self.folder / name, model.save)
        state = {"signature": self.signature, "epochs_done": epochs_done, "model": name}
        atomic_write(self.state, lambda tmp: Path(tmp).write_text(json.dumps(state, indent=2)))
        self.epochs_done = epochs_done
        for old in self.folder.glob("epoch-*.keras"):  # the state now points at the new file
            if old.name != name:
                old.unlink()

    def kept(self) -> str:
        """A sentence saying which epoch the checkpoint keeps for this run, or ``""``."""
        if not self.epochs_done:
            return ""
        return (f" Checkpoint '{self.folder}' keeps epoch {self.epochs_done}/{self.signature['epochs']}; "
                "the same command resumes from it.")

    def clear(self) -> None:
        """Deletes keras-prune's own files, then the folder if nothing else is in it. Call it
        only once the run has succeeded (OUT is written)."""
        if not (self.folder / MARKER).is_file():
            return
        for path in self.folder.iterdir():
            if _own(path.name) and path.name != MARKER and path.is_file():
                path.unlink()
        (self.folder / MARKER).unlink()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()


def _own(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_FILES)


def check_folder(folder: Path, args: argparse.Namespace) -> None:
    """Refuses a checkpoint folder keras-prune could not safely write and later delete."""
    where = _resolved(folder)
    for flag in ("output", "report"):
        path = getattr(args, flag, None)
        if path and _inside(_resolved(path), where):
            raise CLIError(f"Output '{path}' is inside the checkpoint folder '{folder}', which keras-prune "
                           "empties once the run succeeds; write it elsewhere or pass another --checkpoint-dir.")
    for flag in ("model", "weights", "data"):
        path = getattr(args, flag, None)
        if path and (_inside(_resolved(path), where) or _inside(where, _resolved(path))):
            raise CLIError(f"Checkpoint folder '{folder}' overlaps the input '{path}'; pass --checkpoint-dir "
                           "NEW_FOLDER, a folder that does not exist yet, outside your inputs.")
    if folder.exists():
        _check_existing(folder)
    elif not folder.parent.is_dir():
        raise CLIError(f"Checkpoint folder '{folder}' cannot be created: '{folder.parent}' does not exist; "
                       "create it first, or pass another --checkpoint-dir.")


def _check_existing(folder: Path) -> None:
    if not folder.is_dir():
        raise CLIError(f"Checkpoint folder '{folder}' is a file; pass --checkpoint-dir NEW_FOLDER, a "
                       "folder that does not exist yet.")
    if not (folder / MARKER).is_file():
        raise CLIError(f"Checkpoint folder '{folder}' already exists and is not a keras-prune checkpoint; "
                       "keras-prune only writes (and later deletes) a folder it creates. Pass "
                       "--checkpoint-dir NEW_FOLDER, a folder that does not exist yet.")
    others = sorted(p.name for p in folder.iterdir() if not _own(p.name))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CLIError(f"Checkpoint folder '{folder}' holds files keras-prune did not write ({shown}); "
                       "move them out, or pass --checkpoint-dir NEW_FOLDER.")


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies within it."""
    return path == folder or folder in path.parents


def signature(args: argparse.Namespace, keys: tuple[str, ...]) -> dict:
    """What identifies a run: a checkpoint is resumed only by the same command on the same files
    (same paths, sizes and modification times)."""
    return {
        "command": args.command,
        **_stamp("model", args.model),
        **{key: getattr(args, key) for key in (*keys, *TRAINING_KEYS)},
        **_stamp("data", args.data),
    }


def _stamp(name: str, path) -> dict:
    """``path`` resolved, with its size and modification time when it is a file."""
    resolved = Path(path).resolve() if path else None
    stat = resolved.stat() if resolved is not None and resolved.is_file() else None
    return {
        name: str(resolved) if resolved else None,
        f"{name}_bytes": stat.st_size if stat else None,
        f"{name}_mtime_ns": stat.st_mtime_ns if stat else None,
    }
