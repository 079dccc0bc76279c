"""TensorFlow's image ops through its C API (`c_api.h`, `c_api_eager.h`), loaded with ctypes from the installed
`tensorflow` package: the very kernels `tf.image.decode_jpeg` & co. run, without importing TF's Python package.

Why: the engine needs TF for 23 images only (the builder's `_fix_image`), and `import tensorflow` costs ~4.9 s of
CPU here (its Python API), against ~0.25 s to load the shared libraries that hold the kernels and their C API.
The C API is TensorFlow's stable ABI (what its Go/Java/Rust bindings use). The attributes below are those
`tf.image.*` passes by default; `tests/test_engine_build.py` checks the results against TFDS's own `_fix_image`.

Load this in a process that does not import `tensorflow` (the engine's helper process): two copies of TF's runtime
in one process crash.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from typing import Any

_P = ctypes.c_void_p
_TF_STRING = 7
_TF_UINT8 = 4
_TSTRING_SIZE = 24  # sizeof(TF_TString)

# `tf.image.decode_jpeg(data)`, `tf.image.decode_png(data, channels=3)`, `tf.image.encode_jpeg(image, format="rgb",
# quality=100)`: every attribute, as the Python wrappers pass them
DECODE_JPEG = {"channels": 0, "ratio": 1, "fancy_upscaling": True, "try_recover_truncated": False,
               "acceptable_fraction": 1.0, "dct_method": ""}  # fmt: skip
DECODE_PNG = {"channels": 3, "dtype": ("type", _TF_UINT8)}
ENCODE_JPEG_RGB_100 = {"format": "rgb", "quality": 100, "progressive": False, "optimize_size": False,
                       "chroma_downsampling": True, "density_unit": "in", "x_density": 300, "y_density": 300,
                       "xmp_metadata": ""}  # fmt: skip


class TFError(RuntimeError):
    """A TF op failed (a corrupt image, say), or TF's libraries are missing."""


def _library_dir() -> str:
    spec = importlib.util.find_spec("tensorflow")  # (finds the package without running its __init__)
    if spec is None or spec.origin is None:
        raise TFError("TensorFlow is not installed in this environment")
    return os.path.dirname(spec.origin)


def _load_lazily(path: str) -> ctypes.CDLL:
    """`path` loaded with RTLD_LAZY: a function is bound when first called. ctypes.CDLL always adds RTLD_NOW,
    which binds all of the library's ~265,000 symbol references up front: ~0.1 s more of the helper's start,
    which the train split's layout waits on (0.22-0.29 s against 0.34-0.48 s here). The symbols of the library's
    own dependencies (libtensorflow_framework) are found through its handle too."""
    libc = ctypes.CDLL(None)
    libc.dlopen.restype, libc.dlopen.argtypes = _P, [ctypes.c_char_p, ctypes.c_int]
    libc.dlerror.restype, libc.dlerror.argtypes = ctypes.c_char_p, []
    handle = libc.dlopen(os.fsencode(path), os.RTLD_LAZY | os.RTLD_LOCAL)
    if not handle:
        raise OSError((libc.dlerror() or b"dlopen failed").decode(errors="replace"))
    return ctypes.CDLL(path, handle=handle)


def _sig(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> None:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)


class Eager:
    """An eager TF context on the CPU; `run` may be called from several threads."""

    def __init__(self) -> None:
        lib_dir = _library_dir()
        try:
            # (libtensorflow_framework comes with it: the symbols of both are found through this handle)
            fw = cc = _load_lazily(os.path.join(lib_dir, "libtensorflow_cc.so.2"))
        except OSError as exc:
            raise TFError(f"cannot load TensorFlow's C library from {lib_dir}: {exc}") from None
        _sig(fw, "TF_NewStatus", _P)
        _sig(fw, "TF_GetCode", ctypes.c_int, _P)
        _sig(fw, "TF_Message", ctypes.c_char_p, _P)
        _sig(fw, "TF_AllocateTensor", _P, ctypes.c_int, _P, ctypes.c_int, ctypes.c_size_t)
        _sig(fw, "TF_TensorData", _P, _P)
        _sig(fw, "TF_DeleteTensor", None, _P)
        _sig(cc, "TF_StringInit", None, _P)
        _sig(cc, "TF_StringCopy", None, _P, ctypes.c_char_p, ctypes.c_size_t)
        _sig(cc, "TF_StringGetDataPointer", _P, _P)
        _sig(cc, "TF_StringGetSize", ctypes.c_size_t, _P)
        _sig(cc, "TFE_NewContextOptions", _P)
        _sig(cc, "TFE_NewContext", _P, _P, _P)
        _sig(cc, "TFE_NewOp", _P, _P, ctypes.c_char_p, _P)
        _sig(cc, "TFE_DeleteOp", None, _P)
        _sig(cc, "TFE_OpAddInput", None, _P, _P, _P)
        _sig(cc, "TFE_OpSetAttrInt", None, _P, ctypes.c_char_p, ctypes.c_int64)
        _sig(cc, "TFE_OpSetAttrBool", None, _P, ctypes.c_char_p, ctypes.c_ubyte)
        _sig(cc, "TFE_OpSetAttrFloat", None, _P, ctypes.c_char_p, ctypes.c_float)
        _sig(cc, "TFE_OpSetAttrString", None, _P, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t)
        _sig(cc, "TFE_OpSetAttrType", None, _P, ctypes.c_char_p, ctypes.c_int)
        _sig(cc, "TFE_Execute", None, _P, ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_int), _P)
        _sig(cc, "TFE_NewTensorHandle", _P, _P, _P)
        _sig(cc, "TFE_DeleteTensorHandle", None, _P)
        _sig(cc, "TFE_TensorHandleResolve", _P, _P, _P)
        self._fw, self._cc = fw, cc
        self._local = threading.local()
        self._ctx = cc.TFE_NewContext(cc.TFE_NewContextOptions(), self._status)
        self._check("creating an eager context")

    @property
    def _status(self) -> int:
        """A TF_Status per thread: ops may run from several threads at once (TF's eager runtime allows it)."""
        status = getattr(self._local, "status", None)
        if status is None:
            status = self._local.status = self._fw.TF_NewStatus()
        return int(status)

    def _check(self, what: str) -> None:
        if self._fw.TF_GetCode(self._status):
            raise TFError(f"{what}: {self._fw.TF_Message(self._status).decode(errors='replace')}")

    def string(self, data: bytes) -> int:
        """A handle on a scalar string tensor holding `data`."""
        tensor = self._fw.TF_AllocateTensor(_TF_STRING, None, 0, _TSTRING_SIZE)
        try:
            tstring = self._fw.TF_TensorData(tensor)
            self._cc.TF_StringInit(tstring)
            self._cc.TF_StringCopy(tstring, data, len(data))
            handle: int = self._cc.TFE_NewTensorHandle(tensor, self._status)
            self._check("making a string tensor")
        finally:
            self._fw.TF_DeleteTensor(tensor)
        return handle

    def string_value(self, handle: int) -> bytes:
        """The bytes of a scalar string tensor (the handle is released)."""
        tensor = self._cc.TFE_TensorHandleResolve(handle, self._status)
        self._cc.TFE_DeleteTensorHandle(handle)
        self._check("reading a string tensor")
        try:
            tstring = self._fw.TF_TensorData(tensor)
            return ctypes.string_at(self._cc.TF_StringGetDataPointer(tstring), self._cc.TF_StringGetSize(tstring))
        finally:
            self._fw.TF_DeleteTensor(tensor)

    def run(self, op_name: str, inputs: list[int], attrs: dict[str, Any]) -> int:
        """Execute one single-output op; returns its output's handle (the inputs are released)."""
        cc = self._cc
        op = cc.TFE_NewOp(self._ctx, op_name.encode(), self._status)
        self._check(f"op {op_name}")
        try:
            for handle in inputs:
                cc.TFE_OpAddInput(op, handle, self._status)
                self._check(f"op {op_name}: input")
            for key, value in attrs.items():
                self._set_attr(op, key.encode(), value)
            out = (_P * 1)()
            count = ctypes.c_int(1)
            cc.TFE_Execute(op, out, ctypes.byref(count), self._status)
            self._check(op_name)
        finally:
            cc.TFE_DeleteOp(op)
            for handle in inputs:
                cc.TFE_DeleteTensorHandle(handle)
        result = out[0]
        assert result is not None  # (TFE_Execute succeeded: one output handle)
        return int(result)

    def _set_attr(self, op: int, key: bytes, value: Any) -> None:
        cc = self._cc
        if isinstance(value, tuple) and value[0] == "type":
            cc.TFE_OpSetAttrType(op, key, value[1])
        elif isinstance(value, bool):
            cc.TFE_OpSetAttrBool(op, key, int(value))
        elif isinstance(value, int):
            cc.TFE_OpSetAttrInt(op, key, value)
        elif isinstance(value, float):
            cc.TFE_OpSetAttrFloat(op, key, value)
        else:
            raw = str(value).encode()
            cc.TFE_OpSetAttrString(op, key, raw, len(raw))


def load() -> Eager:
    """The CPU only (a GPU host's TF would otherwise claim its GPUs' memory for two tiny conversions), quiet logs."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return Eager()


def jpeg_cmyk_to_rgb(tf: Eager, data: bytes) -> bytes:
    """TFDS's `jpeg_cmyk_to_rgb`: decode_jpeg, then encode_jpeg(format="rgb", quality=100)."""
    image = tf.run("DecodeJpeg", [tf.string(data)], DECODE_JPEG)
    return tf.string_value(tf.run("EncodeJpeg", [image], ENCODE_JPEG_RGB_100))


def png_to_jpeg(tf: Eager, data: bytes) -> bytes:
    """TFDS's `png_to_jpeg`: decode_png(channels=3), then encode_jpeg(format="rgb", quality=100)."""
    image = tf.run("DecodePng", [tf.string(data)], DECODE_PNG)
    return tf.string_value(tf.run("EncodeJpeg", [image], ENCODE_JPEG_RGB_100))
