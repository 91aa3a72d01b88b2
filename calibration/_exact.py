"""Exact integer arithmetic for rank laws: modular polynomial arithmetic + CRT.

The rank-sum law of the batch-predictive-inference paper is the Gaussian binomial
coefficient ``[n + m choose m]_q``: the number of multisets of size ``m`` from
``{1..n+1}`` with rank sum ``m + u`` is the coefficient of ``q^u``.  Its
coefficients are huge integers (``C(1050, 50) ~ 10^85``), so they are computed
exactly modulo several primes below ``2^40`` with vectorised int64 NumPy
arithmetic (the product formula needs only shifts, subtractions and strided
cumulative sums) and reconstructed by the Chinese remainder theorem only where a
comparison needs the true integer.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["ModularCounts", "gaussian_binomial_mod"]

_PRIME_BITS = 40


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@lru_cache(maxsize=8)
def _primes(count: int) -> tuple[int, ...]:
    out: list[int] = []
    c = (1 << _PRIME_BITS) - 1
    while len(out) < count:
        if _is_prime(c):
            out.append(c)
        c -= 2
    return tuple(out)


class ModularCounts:
    """Nonnegative integers below ``bound`` stored by residues modulo primes.

    Parameters
    ----------
    residues : ndarray of shape (n_primes, length)
        Residues of ``length`` integers.
    primes : tuple of int
        The moduli (product exceeds ``bound``).
    """

    def __init__(self, residues: np.ndarray, primes: tuple[int, ...]):
        self.residues = residues
        self.primes = primes
        modulus = math.prod(primes)
        self._basis = []
        for p in primes:
            m = modulus // p
            self._basis.append(m * pow(m, -1, p))
        self._modulus = modulus

    def __len__(self) -> int:
        return self.residues.shape[1]

    def value(self, index: int) -> int:
        """Exact integer at ``index`` (Chinese remainder theorem)."""
        r = self.residues[:, index]
        return sum(int(ri) * b for ri, b in zip(r, self._basis)) % self._modulus

    def values(self) -> list[int]:
        """All exact integers (slow for long arrays; used for small laws and tests)."""
        return [self.value(i) for i in range(len(self))]

    def cumulative(self) -> ModularCounts:
        """Prefix sums, exactly (residues of the running totals)."""
        p = np.asarray(self.primes, dtype=np.int64)[:, None]
        out = np.empty_like(self.residues)
        block = 1 << 20  # block sums of values < 2^40 stay below 2^60
        carry = np.zeros((len(self.primes), 1), dtype=np.int64)
        for start in range(0, len(self), block):
            chunk = np.cumsum(self.residues[:, start : start + block], axis=1) + carry
            chunk %= p
            out[:, start : start + block] = chunk
            carry = chunk[:, -1:]
        return ModularCounts(out, self.primes)


def gaussian_binomial_mod(n: int, m: int, max_degree: int | None = None) -> ModularCounts:
    """Coefficients of ``[n + m choose m]_q`` of degrees ``0..D``, exactly.

    Uses ``[N + k choose k]_q = prod_{j=1}^{k} (1 - q^{N + j}) / (1 - q^j)`` with
    ``k = min(n, m)``, ``N = max(n, m)``; after each factor the partial product is
    the polynomial ``[N + j choose j]_q``, so each division by ``1 - q^j`` is exact
    and is the strided recurrence ``c[u] += c[u - j]``.  Both operations commute
    with truncation at degree ``D = max_degree`` (default ``n m``: everything), so
    a tail of the law costs proportionally less.  Residues are reduced only when
    the running bound on their size could overflow int64.  Cost ``O(P N k^2)``
    integer operations with ``P`` primes (``P = 8`` for ``n = 1000, m = 50``).
    """
    big_n, k = max(n, m), min(n, m)
    if big_n >= 1 << 22:
        raise ValueError("n too large for the exact rank law (max(n, m) must be < 2^22)")
    total = math.comb(n + m, m)
    count = max(1, math.ceil((total.bit_length() + 2) / (_PRIME_BITS - 1)))
    primes = _primes(count)
    p = np.asarray(primes, dtype=np.int64)[:, None]
    deg_max = big_n * k if max_degree is None else min(int(max_degree), big_n * k)
    buf = np.zeros((len(primes), deg_max + 1), dtype=np.int64)
    buf[:, 0] = 1
    bound = 1  # bound on |entries| of buf
    limit = 1 << 62
    for j in range(1, k + 1):
        deg = min(j * big_n, deg_max)
        length = deg + 1
        terms = -(-length // j)
        if bound * 2 * terms >= limit:
            buf[:, :length] %= p
            bound = 1 << _PRIME_BITS
        shift = big_n + j
        # multiply by (1 - q^shift), truncated at degree deg
        if shift <= deg:
            buf[:, shift:length] -= buf[:, : length - shift].copy()
        # divide by (1 - q^j): c[u] += c[u - j] along each residue class mod j
        full = (length // j) * j
        if full:
            view = buf[:, :full].reshape(len(primes), full // j, j)
            np.cumsum(view, axis=1, out=view)
        if full < length:
            buf[:, full:length] += buf[:, full - j : full - j + (length - full)]
        bound = bound * 2 * terms
    buf %= p
    return ModularCounts(buf, primes)
