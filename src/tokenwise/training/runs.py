"""What the trainers share about a run's output directory and about being stopped.

Both ``tokenwise train`` (a causal LM) and ``tokenwise compress train`` (a token
classifier) write their result and a ``checkpoint/`` into one ``--out`` directory. The
rules, checked before any model or data is loaded (:func:`check_output_dir`):

* ``--out`` must be a directory that can be created and written: an existing file, or a
  file where a parent directory should be, is an error at once, not after training.
* A non-empty ``--out`` is refused unless it holds a checkpoint written by the same
  command (then ``--resume`` continues it) or ``--overwrite`` is given. A directory
  holding a checkpoint of the *other* trainer, another model, or anything else is never
  silently written over.
* ``--overwrite`` empties the directory before the run writes its first file
  (:meth:`OutputPlan.prepare`, called once the model and data have loaded), so the result
  never mixes old files (a stale ``generation_config.json``, an old ``checkpoint/``) with
  new ones. The filesystem root, the home directory and the working directory (or one of
  its parents) are never emptied.

A run stopped by SIGTERM or SIGINT (:class:`StopSignals`) finishes its current step,
writes a checkpoint and raises :class:`TrainingInterrupted`, whose message says how to
resume; a second signal stops at once (the checkpoint file is replaced atomically, so it is
never half written).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tokenwise.errors import TokenwiseError

__all__ = ["OutputPlan", "StopSignals", "TrainingInterrupted", "check_output_dir",
           "checkpoint_format"]


class TrainingInterrupted(TokenwiseError):
    """A run stopped by a signal after saving a checkpoint.

    Attributes:
        signum: the signal (``signal.SIGTERM`` or ``signal.SIGINT``).
        step: the last step done (saved in the checkpoint).
        exit_code: the conventional exit status, ``128 + signum``.
    """

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum = signum
        self.step = step
        self.exit_code = 128 + int(signum)


def checkpoint_format(path: Path) -> str | None:
    """The ``format`` a tokenwise checkpoint records, or None (no file, or not one of ours).

    Example:
        >>> checkpoint_format(Path("no/such/state.safetensors")) is None
        True
    """
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("format")
    except Exception:  # anything unreadable is simply not our checkpoint
        return None


@dataclass
class OutputPlan:
    """What :func:`check_output_dir` decided: where to write and whether to empty it first.

    Attributes:
        out: the output directory.
        resume: continue the checkpoint in it.
        clear: empty it before the first write (``--overwrite`` over a non-empty directory).
    """

    out: Path
    resume: bool = False
    clear: bool = False

    def prepare(self) -> None:
        """Create the directory, emptied first when :attr:`clear` (only once)."""
        if self.clear and self.out.is_dir():
            for entry in self.out.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.clear = False
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TokenwiseError(f"cannot create --out {str(self.out)!r}: {exc.strerror}") \
                from None


def check_output_dir(out: str | os.PathLike[str], *, checkpoint: str, fmt: str, command: str,
                     resume: bool = False, overwrite: bool = False) -> OutputPlan:
    """Check ``out`` before a run does any work; raise a :class:`TokenwiseError` if unfit.

    Args:
        out: the output directory.
        checkpoint: the checkpoint file, relative to ``out`` (``"checkpoint/state.safetensors"``).
        fmt: the ``format`` this command writes into its checkpoints.
        command: the command, for messages (``"tokenwise train"``).
        resume: the run continues the checkpoint in ``out`` (which must be one of ``fmt``).
        overwrite: a non-empty ``out`` may be emptied and reused.

    Returns:
        an :class:`OutputPlan`; call its :meth:`~OutputPlan.prepare` before the first write.

    Example:
        >>> _ = Path("notes.txt").write_text("x")
        >>> where = {"checkpoint": "checkpoint/state.safetensors", "fmt": "tokenwise-train-1",
        ...          "command": "tokenwise train"}
        >>> check_output_dir("notes.txt/run", **where)
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: cannot create --out 'notes.txt/run': 'notes.txt' is ...
        >>> check_output_dir("fresh", **where).clear
        False
    """
    path = Path(os.fspath(out))
    shown = repr(str(path))
    if resume and overwrite:
        raise TokenwiseError("--resume continues the run in --out and --overwrite starts a new "
                             "one there: give one of them")
    if path.exists() and not path.is_dir():
        raise TokenwiseError(f"--out {shown} is a file; give a directory")
    if not path.exists():
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise TokenwiseError(f"cannot create --out {shown}: {str(_relative(parent))!r} is "
                                 "a file, not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise TokenwiseError(f"cannot create --out {shown}: {str(parent)!r} is not "
                                 "writable")
        if resume:
            raise TokenwiseError(f"nothing to resume: --out {shown} does not exist")
        return OutputPlan(path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise TokenwiseError(f"--out {shown} is not writable")
    ckpt = path / checkpoint
    found = checkpoint_format(ckpt)
    ours = found == fmt
    if resume:
        if ours:
            return OutputPlan(path, resume=True)
        if found is not None:
            raise TokenwiseError(f"cannot resume: {str(ckpt)!r} is a checkpoint of another "
                                 f"command (format {found!r}), not of `{command}`")
        raise TokenwiseError(f"nothing to resume: {str(ckpt)!r} does not exist")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return OutputPlan(path)
    if overwrite:
        _check_safe_to_empty(path)
        return OutputPlan(path, clear=True)
    if ours:
        raise TokenwiseError(
            f"--out {shown} already holds a checkpoint of `{command}`; pass --resume to "
            "continue it, --overwrite to start over (its files are deleted), or choose "
            "another --out")
    listed = ", ".join(entries[:6]) + (f" and {len(entries) - 6} more" if len(entries) > 6
                                        else "")
    other = (f" (its checkpoint is another command's, format {found!r})"
             if found is not None else "")
    raise TokenwiseError(
        f"--out {shown} is not empty ({listed}) and is not a resumable `{command}` run"
        f"{other}; writing there would replace or mix with those files. Choose another "
        "--out, or pass --overwrite to delete its contents first")


def _relative(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _check_safe_to_empty(path: Path) -> None:
    """Refuse to empty a directory whose loss would be far beyond a run's output."""
    real = path.resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if real == Path(real.anchor) or real in (home, cwd) or real in cwd.parents:
        raise TokenwiseError(
            f"--overwrite would delete everything in {str(real)!r} (the filesystem root, the "
            "home directory, or the working directory or one of its parents); give a "
            "directory of its own to --out")


class StopSignals:
    """Within ``with``: SIGTERM and SIGINT are noted, not fatal, so a loop can save and stop.

    After the first signal the previous handlers are back, so a second one acts at once.
    Outside the main thread (where Python cannot set handlers) it does nothing.

    Attributes:
        signum: the signal received, or None.

    Example:
        >>> with StopSignals() as stop:
        ...     stop.signum is None
        True
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        """The received signal's name (``"SIGTERM"``), or ``""``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            # None: a handler set outside Python; the default is the closest we can put back.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


# ---------------------------------------------------------------------------------------------
# checkpoint files: one safetensors file, tensors plus string metadata, replaced atomically


def state_tensors(model: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The model, optimizer and torch RNG states as tensors and metadata strings.

    Tied weights are stored once (``aliases`` names the others); optimizer scalars and
    parameter groups go into the metadata as JSON. :func:`restore_state` reads them back.
    """
    import json

    import torch

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, value in model.state_dict().items():
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if key in seen:  # tied weights: store once, remember the alias
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[f"model/{name}"] = value.detach().cpu().contiguous().clone()
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state().detach().cpu().clone()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state.detach().cpu().clone()
    metadata = {
        "aliases": json.dumps(aliases),
        "optimizer_groups": json.dumps(opt_state["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
    }
    return tensors, metadata


def restore_state(tensors: dict[str, Any], metadata: dict[str, str], model: Any,
                  optimizer: Any) -> None:
    """Load what :func:`state_tensors` saved into ``model`` and ``optimizer``; set torch's RNG."""
    import json

    import torch

    device = next(model.parameters()).device
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    for name, target in json.loads(metadata["aliases"]).items():
        state[name] = state[target]
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    opt_state: dict[str, Any] = {"state": {}, "param_groups": json.loads(
        metadata["optimizer_groups"])}
    for group in opt_state["param_groups"]:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            opt_state["state"].setdefault(int(index), {})[name] = value
    for index, entry in json.loads(metadata["optimizer_scalars"]).items():
        opt_state["state"].setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)


def write_checkpoint(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically: a temporary file, flushed, then renamed."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: Path, fmt: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of a checkpoint; an error unless its ``format`` is ``fmt``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    if metadata.get("format") != fmt:
        raise TokenwiseError(f"{str(path)!r} is not a checkpoint of this trainer (format "
                             f"{metadata.get('format')!r}, expected {fmt!r})")
    return tensors, metadata
