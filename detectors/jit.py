"""The one place numba's compiler options are set.

Every kernel is decorated with :data:`njit`. Set ``NUMBA_DISABLE_JIT=1`` to run the kernels
as plain Python (tests do this to measure coverage and to compare with the compiled path).
"""

from __future__ import annotations

import numba

# cache=True keeps compiled kernels on disk between runs (service restarts start fast);
# nogil=True lets the service run kernels in a worker thread without holding the GIL;
# fastmath stays off: NaN handling must be exact.
njit = numba.njit(cache=True, nogil=True, fastmath=False)
