"""A restricted unpickler for model files that are pickles of plain arrays (FLAME, its embeddings).

FLAME's ``generic_model.pkl`` / ``flame2023.pkl`` and ``flame_static_embedding.pkl`` are Python
pickles of dicts of NumPy arrays, a SciPy sparse matrix and (FLAME 2020) ``chumpy`` arrays. A plain
``pickle.load`` would run whatever code a tampered file names, and ``import chumpy`` fails on
NumPy >= 1.24 anyway. ``RestrictedUnpickler`` resolves only the globals that rebuilding arrays needs:

- NumPy: ``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer`` (old ``numpy.core``
  and new ``numpy._core`` module paths);
- ``copyreg._reconstructor`` (Python 2 ``copy_reg``), replaced by a checked version that only
  creates the stand-ins below;
- ``_codecs.encode`` (how protocol-2 pickles written by Python 3 carry ``bytes``), checked to
  encode a ``str`` to latin-1 and nothing else; builtins ``object``, ``set``, ``frozenset``,
  ``complex``;
- SciPy sparse ``csc``/``csr``/``coo`` matrices (``scipy.sparse.csc``, ``scipy.sparse._csc``, ...),
  mapped to ``SparseStandIn``: their pickled state (``data``, ``indices``, ``indptr``, shape) is
  kept as plain arrays and densified by NumPy, so no SciPy code runs (and SciPy is not needed);
- ``chumpy.ch.Ch`` (any ``chumpy.*`` module, class ``Ch``), mapped to ``ChStandIn``, whose pickled
  state's ``x`` array is the value.

Anything else raises ``InputError`` (a ``GsheadError``) naming the refused global, *before* any of
the file's code could run: globals are resolved when the pickle names them, and a call needs the
resolved global first. ``load_restricted`` returns the object with every stand-in replaced by a
plain ``numpy.ndarray``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from gshead.core.errors import InputError


class ChStandIn:
    """What a pickled ``chumpy.ch.Ch`` becomes: its state's ``x`` array, nothing else."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if not isinstance(state, dict) or "x" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise pickle.UnpicklingError(f"a chumpy Ch object without an 'x' array (state: {keys})")
        self.value = np.asarray(state["x"])

    def to_array(self) -> np.ndarray:
        if not hasattr(self, "value"):
            raise pickle.UnpicklingError("a chumpy Ch object with no state")
        return self.value


_MAX_DENSE = 200_000_000  # elements: FLAME's J_regressor is 5 x 5023


class SparseStandIn:
    """What a pickled SciPy sparse matrix becomes; ``to_array`` densifies it with NumPy only."""

    format = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a sparse matrix with a {type(state).__name__} state")
        self.state = state

    def _shape(self) -> tuple[int, int]:
        shape = self.state.get("_shape", self.state.get("shape"))
        if shape is None or len(shape) != 2:
            raise pickle.UnpicklingError(f"a {self.format} matrix without a 2-D shape")
        return int(shape[0]), int(shape[1])

    def to_array(self) -> np.ndarray:
        rows, cols = self._shape()
        if rows < 0 or cols < 0 or rows * cols > _MAX_DENSE:
            raise pickle.UnpicklingError(f"a {rows}x{cols} {self.format} matrix is too large to densify")
        s = self.state
        data = np.asarray(s["data"])
        out = np.zeros((rows, cols), dtype=data.dtype if data.size else np.float64)
        if self.format in ("csc", "csr"):
            indices = np.asarray(s["indices"], dtype=np.int64)
            indptr = np.asarray(s["indptr"], dtype=np.int64)
            major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))  # column (csc) or row (csr)
            r, c = (indices, major) if self.format == "csc" else (major, indices)
        else:  # coo: scipy >= 1.13 stores ``coords``, older versions ``row`` and ``col``
            r, c = s["coords"] if "coords" in s else (s["row"], s["col"])
            r, c = np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.int64)
        if len(r) != len(data) or len(c) != len(data):
            raise pickle.UnpicklingError(f"a {self.format} matrix whose index arrays disagree with its data")
        if len(data) and (r.min() < 0 or r.max() >= rows or c.min() < 0 or c.max() >= cols):
            raise pickle.UnpicklingError(
                f"a {self.format} matrix with indices outside its {rows}x{cols} shape"
            )
        np.add.at(out, (r, c), data)  # duplicates sum, as in SciPy
        return out


def _sparse_class(fmt: str) -> type[SparseStandIn]:
    return type(f"{fmt.upper()}StandIn", (SparseStandIn,), {"format": fmt})


_SPARSE = {fmt: _sparse_class(fmt) for fmt in ("csc", "csr", "coo")}
_STAND_INS: tuple[type, ...] = (ChStandIn, *_SPARSE.values())


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` restricted to creating our stand-ins (``base`` must be ``object``)."""
    if cls not in _STAND_INS or base is not object or state is not None:
        raise pickle.UnpicklingError(
            f"copyreg._reconstructor used to build {getattr(cls, '__name__', cls)!r}"
        )
    return object.__new__(cls)


def _safe_codecs_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it: a str to latin-1 bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for pkg in ("numpy.core", "numpy._core"):
        found[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        found[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            found[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return found


_ALLOWED: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    **{(m, "_reconstructor"): _safe_reconstructor for m in ("copyreg", "copy_reg")},
    ("_codecs", "encode"): _safe_codecs_encode,
    **{(m, t.__name__): t for m in ("builtins", "__builtin__") for t in (object, set, frozenset, complex)},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only array-building globals (see the module docstring)."""

    def __init__(self, file, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module == "chumpy" or module.startswith("chumpy.")) and name == "Ch":
            return ChStandIn
        if module.startswith("scipy.sparse"):
            for fmt, stand_in in _SPARSE.items():
                if name in (f"{fmt}_matrix", f"{fmt}_array"):
                    return stand_in
        raise RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("a persistent id")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list (carries its dotted name)."""


def _plain(obj: Any) -> Any:
    """``obj`` with stand-ins replaced by arrays, recursing into dicts, lists and tuples."""
    if isinstance(obj, _STAND_INS):
        return obj.to_array()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = np.empty(obj.shape, dtype=object)
        for i, v in np.ndenumerate(obj):
            out[i] = _plain(v)
        return out
    return obj


def loads_restricted(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler``; ``InputError`` (one line) if it is refused."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source=source).load()
        return _plain(obj)
    except RefusedGlobal as exc:
        raise InputError(
            f"refused to load {source}: it references {exc}; only numpy/scipy arrays are allowed"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        MemoryError,
        RecursionError,
    ) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{source}: not a readable array pickle ({reason[:160]})") from None


def load_restricted(path: str | Path) -> Any:
    """Read and unpickle the file at ``path`` with ``RestrictedUnpickler`` (see ``loads_restricted``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return loads_restricted(data, source=str(path))
