"""The compiler: discovery view + policy resources + a sidecar's descriptor -> its snapshot.

Pure, synchronous and deterministic. :func:`compile_snapshot` compiles one proxy;
:class:`Compiler` compiles many, reusing what they share; :func:`validate_resources` runs
the cross-resource checks; :func:`explain` traces one request through the result.
"""

from controld.compiler.explain import explain
from controld.compiler.hashing import snapshot_hash
from controld.compiler.snapshot import Compiler, compile_snapshot
from controld.compiler.validate import ResourceProblem, validate_resources

__all__ = [
    "Compiler",
    "ResourceProblem",
    "compile_snapshot",
    "explain",
    "snapshot_hash",
    "validate_resources",
]
