"""The op registry: every op of fastgen is declared once, in its loop's ``fastgen/ops/<loop>.py``.

A loop's module declares its ops on a :class:`Loop`::

    loop = Loop("langevin")
    ula_step_ = loop.op(
        "ula_step_(Tensor(a!) x, Tensor score, float step_size, Tensor? step_sizes=None, int seed=0, ...) -> ()",
        shapes=_ula_step_shapes,  # shape function: torch._check_*s naming the argument, returns fake outputs
    )

Everything else is found by name or derived from that declaration:

* the schema, defined in three namespaces, one per kind of implementation:
  ``fastgen`` (the CPU and CUDA kernels that ``csrc/<loop>.cpp`` registers under the op's name),
  ``fastgen_triton`` (the function of the op's name in ``kernels/<loop>.py``: CUDA tensors, and
  CPU tensors when Triton is interpreted) and ``fastgen_torch`` (the function of the op's name in
  ``fastgen/reference/<loop>.py``: any device). Both CUDA implementations want the CUDA dispatch
  key, so they cannot be one op; three ops from one declaration keep every backend callable on
  its own (``fastgen.use_backend``, tests, benchmarks) with one schema;
* the fake (the shape function) of all three, for ``torch.compile`` and ``opcheck``;
* the same shape function run before the Triton and reference implementations, so no direct
  call of those reads out of bounds (the C++ implementations check in C++);
* autograd, from an optional ``backward`` / ``setup_context`` pair, the same for every namespace;
* the keyword call: ``ula_step_(x=..., score=..., step_size=...)`` picks the backend for the device
  of the first tensor argument and calls its op. It does not check arguments again: the public
  functions of ``fastgen.ops`` check user input once and convert it to the op's arguments.

C++ and CUDA keep their kernels and only register implementations; the schema is never restated.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core import extensions as _ext
from ._common import backend_for

NAMESPACES = {"cpu": "fastgen", "cuda": "fastgen", "triton": "fastgen_triton", "torch": "fastgen_torch"}
_LIBRARIES = {ns: torch.library.Library(ns, "DEF") for ns in sorted(set(NAMESPACES.values()))}

#: Every declared op by name, in declaration order.
REGISTRY: dict[str, Op] = {}


@dataclass
class Op:
    """One declared op; calling it with keyword arguments runs it on the backend chosen for its tensors."""

    loop: str
    schema: str
    shapes: Callable
    backward: Callable | None = None
    setup_context: Callable | None = None
    name: str = field(init=False)
    arguments: list = field(init=False)  # torch._C.Argument per schema argument
    mutated: tuple = field(init=False)  # names of the arguments written in place
    call: Callable = field(init=False)  # the keyword call, generated once the op is registered

    def __post_init__(self):
        self.name = self.schema.split("(", 1)[0]
        parsed = torch._C.parse_schema(f"fastgen::{self.schema}")
        self.arguments = list(parsed.arguments)
        self.mutated = tuple(a.name for a in self.arguments if a.alias_info is not None and a.alias_info.is_write)

    @property
    def argument_names(self) -> list[str]:
        return [a.name for a in self.arguments]

    def overload(self, backend: str) -> torch._ops.OpOverload:
        """The registered op that runs `backend` (cpu, cuda, triton or torch)."""
        return getattr(getattr(torch.ops, NAMESPACES[backend]), self.name).default

    def __call__(self, **kwargs):
        return self.call(**kwargs)

    def on(self, backend: str) -> Callable:
        """The keyword call with the backend fixed (a sampler resolves it once, outside its loop)."""
        return functools.partial(self.call, backend=backend)

    def complete(self, args, kwargs=None) -> tuple:
        """All arguments in schema order: the dispatcher drops trailing ones left at their defaults."""
        if len(args) == len(self.arguments) and not kwargs:
            return tuple(args)
        kwargs = kwargs or {}
        rest = [kwargs[a.name] if a.name in kwargs else a.default_value for a in self.arguments[len(args):]]
        return tuple(args) + tuple(rest)

    def positional(self, kwargs: dict) -> tuple:
        """Keyword arguments as the positional tuple of the schema (defaults filled in)."""
        unknown = set(kwargs) - set(self.argument_names)
        if unknown:
            raise TypeError(f"{self.name} got unexpected arguments {sorted(unknown)}")
        return self.complete((), kwargs)


def _named(op: Op, args) -> types.SimpleNamespace:
    return types.SimpleNamespace(**dict(zip(op.argument_names, args, strict=False)))


def _keyword_call(op: Op) -> Callable:
    """A function ``(*, <schema arguments with their defaults>, backend=None)`` that calls the backend's op.

    Generated from the schema, so the call costs what a hand-written positional call costs."""
    params, names = [], []
    for a in op.arguments:
        names.append(a.name)
        params.append(f"{a.name}={a.default_value!r}" if a.has_default_value() else a.name)
    first = next(a for a in op.arguments if "Tensor" in str(a.type))
    probe = f"({first.name}[0] if len({first.name}) else None)" if first.type.kind() == "ListType" else first.name
    args = ", ".join(names)
    source = (f"def {op.name}(*, {', '.join(params)}, backend=None):\n"
              f"    probe = {probe}\n"
              f"    if probe is None:  # an empty tensor list: only the reference dispatches without a tensor\n"
              f"        backend = 'torch'\n"
              f"    elif backend is None:\n"
              f"        backend = backend_for(probe)\n"
              f"    return overloads[backend]({args})\n")
    scope = {"backend_for": backend_for, "overloads": {b: op.overload(b) for b in NAMESPACES}}
    exec(compile(source, f"<fastgen op {op.name}>", "exec"), scope)
    call = scope[op.name]
    call.op = op
    return call


class Loop:
    """The ops of one hot loop: kernels/<loop>.{cu,py}, csrc/<loop>.cpp, fastgen/reference/<loop>.py."""

    def __init__(self, name: str):
        self.name = name
        self.reference = importlib.import_module(f"fastgen.reference.{name}")
        self.triton = getattr(_ext.TRITON, name, None) if _ext.TRITON is not None else None

    def op(self, schema: str, *, shapes: Callable, backward: Callable | None = None,
           setup_context: Callable | None = None) -> Callable:
        """Declare an op (see the module docstring), register everything derived from it, and return its
        keyword call (``.op`` is the :class:`Op`)."""
        op = Op(self.name, schema, shapes, backward, setup_context)
        if op.name in REGISTRY:
            raise RuntimeError(f"op {op.name!r} is declared twice")
        REGISTRY[op.name] = op
        fake = _fake(op)
        for ns, lib in _LIBRARIES.items():
            lib.define(schema)
            torch.library.register_fake(f"{ns}::{op.name}", fake, lib=lib)
        _LIBRARIES["fastgen_torch"].impl(op.name, _checked(op, getattr(self.reference, op.name)),
                                        "CompositeExplicitAutograd")
        if self.triton is not None:
            keys = ("CUDA", "CPU") if _ext.TRITON_INTERPRET else ("CUDA",)
            for key in keys:
                _LIBRARIES["fastgen_triton"].impl(op.name, _checked(op, getattr(self.triton, op.name)), key)
        if backward is not None:
            for ns, lib in _LIBRARIES.items():
                torch.library.register_autograd(f"{ns}::{op.name}", backward, setup_context=setup_context, lib=lib)
        op.call = _keyword_call(op)
        return op.call


def _fake(op: Op) -> Callable:
    def fake(*args, **kwargs):
        return op.shapes(_named(op, op.complete(args, kwargs)))

    fake.__name__ = f"{op.name}_fake"
    return fake


def _checked(op: Op, impl: Callable) -> Callable:
    """impl, after the shape function has checked its arguments."""

    def run(*args, **kwargs):
        args = op.complete(args, kwargs)
        op.shapes(_named(op, args))
        return impl(*args)

    run.__name__ = impl.__name__
    return run
