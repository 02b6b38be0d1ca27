"""``bench/mypyc_hot.py``: which functions of callgrind's profile go in the list."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import mypyc_hot

pytestmark = pytest.mark.timeout(30)

LIB = "0123abcd__mypyc.cpython-311-x86_64-linux-gnu.so"
ANNOTATED = f"""\
--------------------------------------------------------------------------------
Ir                  file:function
--------------------------------------------------------------------------------
  59,136 ( 0.01%)  ???:CPyTagged_Str [/tmp/b/{LIB}]
     120 ( 0.00%)  ???:CPyImport_Exec'2 [/tmp/b/{LIB}]
     110 ( 0.00%)  ???:CPyImport_Exec [/tmp/b/{LIB}]
      12 ( 0.00%)  ???:0x0000000000033450 [/tmp/b/{LIB}]
      30 ( 0.00%)  ???:vgetargskeywordsfast_impl.constprop.0 [/tmp/b/{LIB}]
   9,000 ( 0.00%)  ???:PyObject_GetAttr [/usr/lib/libpython3.11.so.1.0]
     800 ( 0.00%)  ???:CPyDef_x [/tmp/b/meshd/stats.cpython-311-x86_64-linux-gnu.so]
"""


def test_the_group_librarys_functions_by_name_once_each() -> None:
    # Recursive calls (callgrind's '2) are the function; code without a symbol is left out,
    # as are other libraries' functions (the per-module shims included).
    assert mypyc_hot.hot_functions(ANNOTATED, LIB) == [
        "CPyImport_Exec",
        "CPyTagged_Str",
        "vgetargskeywordsfast_impl.constprop.0",
    ]
