"""The one rule for what a command may write over, and how it writes.

Every command that writes files (``train``, ``eval``, ``synth``, ``shard``, ``curate``, ``embed``, ``index``,
``convert``) checks its output with this module before any work starts:

* a path that does not exist, or an empty folder, is written;
* a folder the same command wrote before (it holds a :data:`MARKER` file naming the
  command) is replaced whole, but only with ``--overwrite``;
* an existing file is replaced only with ``--overwrite``;
* anything else (a non-empty folder clipforge did not write, a file where a folder is
  wanted, a folder where a file is wanted, a parent that is a file or not writable) is
  refused, ``--overwrite`` or not: clipforge never deletes what it cannot tell is its own;
* an output that is one of the command's inputs, or a folder that contains one, is
  refused even with ``--overwrite``.

A refusal is a :class:`~clipforge.errors.ClipforgeError` raised before anything on disk
changes. Files are written under a temporary name and renamed when complete
(:func:`atomic_file`); a folder is built as a hidden sibling and swapped into place when
complete (:meth:`OutputFolder.building`), so a crash leaves the old output or none, never a
mixture. A run folder, which a training run fills over hours and a resume continues,
is written in place instead (:meth:`OutputFolder.prepare`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

from clipforge.errors import ClipforgeError

MARKER = ".clipforge-output"
"""The file in every output folder that names the command which wrote it."""

OVERWRITE_HELP = (
    "replace an earlier output of this command (a folder it wrote, or an existing file); "
    "a non-empty folder clipforge did not write is never replaced"
)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of :func:`atomic_file` that a killed writer left anywhere
    in ``folder`` (``.NAME.tmp-PID`` whose process is gone); return what was deleted.

    A command that continues its own output (a resumed embedding or training run) calls
    this first, so the folder holds exactly what an uninterrupted run writes.
    """
    gone = []
    for tmp in Path(folder).rglob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if tmp.is_file() and pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block ends, then deliver it.

    An interrupt in the middle of a write surfaces from inside the writer: ``torch.save``'s
    zip writer then fails on its own half-written record and replaces the
    KeyboardInterrupt with a RuntimeError, so a Ctrl-C that landed on a checkpoint write
    ended the run with a traceback and exit status 1 instead of "interrupted" (130).
    Signal handlers can only be set from the main thread; elsewhere the block runs as it is.
    A process that ignores SIGINT (started under nohup or in the background) keeps ignoring it.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda sig, _frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    A kill at any moment leaves either the old file or the new one, never a torn one; an
    exception removes the temporary file and leaves ``path`` as it was. Text is UTF-8.
    A Ctrl-C during the write waits for it to finish (the new file is in place) and is
    then raised as usual.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _interrupts_deferred():
        try:
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


def marker_command(folder: str | os.PathLike[str]) -> str | None:
    """The command that wrote ``folder`` according to its marker, or None without one."""
    try:
        return (Path(folder) / MARKER).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def mark(folder: str | os.PathLike[str], command: str) -> None:
    """Mark ``folder`` as written by ``command``."""
    atomic_write(Path(folder) / MARKER, command + "\n")


def input_path(spec: str | os.PathLike[str]) -> Path | None:
    """The local path an input names; for a pattern (``shards/train-{000..009}.tar``,
    ``*.tar``) the literal part before the first wildcard; None for a URL."""
    text = os.fspath(spec)
    if "://" in text or text.startswith("pipe:"):
        return None
    cut = min((i for i in (text.find(c) for c in "{*?[") if i >= 0), default=len(text))
    return _real(Path(text[:cut] or "."))


def check_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Check a single-file output (see the module docstring); return it as a Path."""
    path = Path(path)
    real = _real(path)
    _check_inputs(path, real, inputs, folder=False)
    if real.is_dir():
        raise ClipforgeError(f"{path} is a folder; give a file name to write")
    if real.exists():
        if not overwrite:
            raise ClipforgeError(f"{path} already exists; pass --overwrite to replace it")
        _check_writable(real.parent, path)
    else:
        _check_creatable(real.parent, path)
    return path


class OutputFolder:
    """The output folder of one command, checked when constructed (see the module docstring).

    ``noun`` says what an earlier output is in the refusal ("a run"), ``hint`` is added to
    it ("; or --resume RUN to continue it"). ``also_own`` recognises folders of this
    command written before markers existed. After the checks nothing has been touched; the
    folder is written with :meth:`building` (swapped into place when complete) or
    :meth:`prepare` (in place).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        command: str,
        *,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike[str]] = (),
        noun: str | None = None,
        hint: str = "",
        also_own: Callable[[Path], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.command = command
        self.overwrite = overwrite
        self.inputs = list(inputs)
        self.noun = noun or f"an earlier `clipforge {command}` output"
        self.hint = hint
        self.also_own = also_own
        self.real = _real(self.path)
        self.state = self._check()
        self._build = self.real  # where building() writes; set when it starts
        self._keep: tuple[str, ...] = ()

    @property
    def replaces(self) -> bool:
        """True when an earlier output of this command will be replaced."""
        return self.state == "own"

    def _check(self) -> str:
        """``"new"``, ``"empty"`` or ``"own"``, or raise why this folder may not be written."""
        path, real = self.path, self.real
        _check_inputs(path, real, self.inputs, folder=True)
        if real.exists() and not real.is_dir():
            raise ClipforgeError(f"{path} is a file, not a folder; give a folder to write")
        if not real.exists():
            _check_creatable(real.parent, path)
            return "new"
        if not any(real.iterdir()):
            _check_writable(real, path)
            return "empty"
        written_by = marker_command(real)
        own = written_by == self.command or (
            written_by is None and self.also_own is not None and self.also_own(real)
        )
        if not own:
            what = (
                f"holds the output of `clipforge {written_by}`, not of `clipforge {self.command}`"
                if written_by
                else "is a non-empty folder clipforge did not write"
            )
            raise ClipforgeError(
                f"{path} {what}; choose a new or empty folder (--overwrite replaces only an "
                "earlier output of this command)"
            )
        if not self.overwrite:
            raise ClipforgeError(
                f"{path} already holds {self.noun}; pass --overwrite to replace it{self.hint}"
            )
        _check_writable(real, path)
        return "own"

    # -- writing --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the folder ready to be written in place: create it, or empty an earlier
        output (only reachable with ``--overwrite``), and mark it as this command's."""
        if self.state == "own":
            _clear(self.real)
        self.real.mkdir(parents=True, exist_ok=True)
        self.mark(self.real)

    def unprepare(self) -> None:
        """Undo :meth:`prepare` after a refusal, before anything worth resuming was
        written: a folder this command created is removed, one found empty is emptied
        again, so a refused command leaves nothing behind. (An earlier output that
        ``--overwrite`` cleared stays cleared: the user asked to replace it.)"""
        if self.state == "new":
            shutil.rmtree(self.real, ignore_errors=True)
        elif self.real.is_dir():
            _clear(self.real)

    def mark(self, folder: str | os.PathLike[str] | None = None) -> None:
        """Write the marker (into ``folder``, by default the output folder itself)."""
        mark(folder or self.real, self.command)

    @contextmanager
    def building(self, keep: Sequence[str] = ()) -> Iterator[Path]:
        """Yield the folder to write the output into; on success it becomes the output.

        A new output, or one that replaces an earlier output, is built in a hidden sibling
        folder and renamed into place at the end, so the old output stays whole until the
        new one is. An existing empty folder (perhaps a mount point that cannot be
        renamed) is written in place. On an exception everything written is removed.
        ``keep`` names entries of an earlier output carried into the new one (a cache
        whose entries stay valid); :meth:`kept` says where to use them meanwhile.
        """
        self._keep = tuple(keep)
        parent = self.real.parent
        swap = self.state == "new" or (self.state == "own" and os.access(parent, os.W_OK))
        if not swap:
            if self.state == "own":  # the parent cannot hold a sibling: replace in place
                _clear(self.real, keep=self._keep)
            self._build = self.real
            self.mark()
            try:
                yield self.real
            except BaseException as e:
                _clear(self.real, keep=self._keep if self.state == "own" else ())
                if self.state == "own":
                    self.mark()
                self._reraise(e, self.real)
            return
        parent.mkdir(parents=True, exist_ok=True)
        build = parent / f".{self.real.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        build.mkdir()
        self._build = build
        try:
            self.mark(build)
            yield build
            for name in self._keep:
                old = self.real / name
                if self.state == "own" and old.exists() and not (build / name).exists():
                    os.replace(old, build / name)
            self._swap(build)
        except BaseException as e:
            shutil.rmtree(build, ignore_errors=True)
            self._reraise(e, build)

    def _reraise(self, e: BaseException, written: Path) -> NoReturn:
        """Raise ``e`` again; a user error that names the folder being written names it as
        the user gave it, not by its temporary or resolved name."""
        if isinstance(e, ClipforgeError) and str(written) in str(e):
            raise ClipforgeError(str(e).replace(str(written), str(self.path))) from None
        raise e

    def kept(self, name: str) -> Path:
        """Where a ``keep`` entry is used while :meth:`building` runs: the earlier output's
        own copy (moved over at the end) or, without one, the one being built."""
        if self.state == "own" and self._build != self.real:
            return self.real / name
        return self._build / name

    def inside(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` relative to the output folder if it lies inside it (``"."`` for the
        folder itself), else None."""
        real = _real(Path(path))
        if real == self.real or self.real in real.parents:
            return real.relative_to(self.real).as_posix()
        return None

    def final(self, path: str | os.PathLike[str]) -> Path:
        """Where a file written under the folder :meth:`building` yielded ends up."""
        return self.path / Path(path).relative_to(self._build)

    def _swap(self, build: Path) -> None:
        if self.state == "new" and self.real.exists():
            # Someone created it meanwhile; what it now holds is not ours to replace.
            raise ClipforgeError(f"{self.path} appeared while writing; nothing was replaced")
        if not self.real.exists():
            os.rename(build, self.real)
            return
        old = self.real.with_name(f".{self.real.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
        os.rename(self.real, old)
        try:
            os.rename(build, self.real)
        except BaseException:
            os.rename(old, self.real)
            raise
        shutil.rmtree(old, ignore_errors=True)


# -- checks ---------------------------------------------------------------------------------


def _real(path: Path) -> Path:
    # Symlinks resolved, so that comparisons see one file under one name, and a swap
    # replaces the folder a link points to rather than the link.
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # hard links, case-insensitive file systems
    return a == b


def _check_inputs(
    shown: Path, out: Path, inputs: Iterable[str | os.PathLike[str]], folder: bool
) -> None:
    for spec in inputs:
        inp = input_path(spec)
        if inp is None:
            continue
        if _same(out, inp):
            raise ClipforgeError(f"{shown} is also an input; choose another output")
        if folder and any(_same(out, up) for up in inp.parents):
            raise ClipforgeError(
                f"{shown} contains the input {os.fspath(spec)}; choose another output"
            )


def _check_creatable(parent: Path, shown: Path) -> None:
    """``shown`` can be created: its nearest existing ancestor is a writable folder."""
    up = parent
    while not up.exists():
        up = up.parent
    if not up.is_dir():
        raise ClipforgeError(f"cannot create {shown}: {up} is a file, not a folder")
    _check_writable(up, shown)


def _check_writable(folder: Path, shown: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ClipforgeError(f"cannot write {shown}: {folder} is not writable")


def _clear(folder: Path, keep: Sequence[str] = ()) -> None:
    """Remove everything in ``folder`` except the entries named in ``keep``."""
    for entry in folder.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


__all__ = [
    "MARKER",
    "OVERWRITE_HELP",
    "OutputFolder",
    "atomic_file",
    "atomic_write",
    "check_file",
    "input_path",
    "mark",
    "marker_command",
]
