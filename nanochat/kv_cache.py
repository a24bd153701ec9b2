"""
The KV cache of inference: keys and values of every layer for a fixed number of rows ("slots"),
each row at its own length. nanochat/gpt.py reads and extends it in forward; nanochat/engine.py
allocates, copies and frees its rows; nanochat/core_eval.py runs shared prompt prefixes through it.
"""

import torch

class KVCache:
    """Keys and values of every layer for a fixed number of rows, each row with its own length.

    k, v: (n_layer, B, H_kv, T_max, D), zero-filled when allocated; lengths: (B,) int64 on the CPU,
    the positions filled in each row. A forward pass through the model appends T new tokens to
    every row: row b's go to positions lengths[b] .. lengths[b] + T - 1, and its queries attend
    only to that row's own filled keys. Positions at or past a row's length hold zeros or stale
    values of an earlier occupant (always finite), are masked out by the model, and so contribute
    exactly nothing. The model calls begin_pass once per forward, then insert_kv for each layer;
    lengths advance after the last layer. The storage is allocated by `allocate`, or on the first
    insert with the dtype and device of the keys.

    rows(r0, r1) is a KVCache over rows r0..r1-1 that shares the storage and the lengths (the
    engine runs its batches on such views); copy_row copies one row's filled positions to another.
    """

    def __init__(self, batch_size, num_heads, seq_len, head_dim, num_layers):
        self.shape = (num_layers, batch_size, num_heads, seq_len, head_dim)
        self.k = None
        self.v = None
        self.lengths = torch.zeros(batch_size, dtype=torch.long)
        # set by begin_pass for the current forward pass (read by the model)
        self.pass_start = 0         # the rows' common start position, when they share one
        self.pass_end = 0           # the longest row's length after the pass
        self.pass_positions = None  # (B, T) absolute positions, when the rows start at different ones
        self.pass_blocked = None    # (B, 1, T, Tk) bool, True where a query must not look
        self._write_index = None

    def allocate(self, dtype, device):
        if self.k is None:
            self.k = torch.zeros(self.shape, dtype=dtype, device=device)
            self.v = torch.zeros(self.shape, dtype=dtype, device=device)
        return self

    def reset(self):
        self.lengths.zero_()

    def get_pos(self):
        """The common length of all rows (for caches whose rows move together)."""
        lo, hi = int(self.lengths.min()), int(self.lengths.max())
        assert lo == hi, f"the rows have different lengths ({lo}..{hi}); use .lengths"
        return lo

    @property
    def pos(self):
        return self.get_pos()

    def rows(self, r0, r1):
        """A view of rows r0..r1-1: same storage, same lengths (in-place updates reach this cache)."""
        assert self.k is not None, "allocate the cache before taking views of it"
        assert 0 <= r0 < r1 <= self.shape[1], f"rows {r0}..{r1} outside 0..{self.shape[1]}"
        L, _, H, T, D = self.shape
        view = KVCache(r1 - r0, H, T, D, L)
        view.k, view.v, view.lengths = self.k[:, r0:r1], self.v[:, r0:r1], self.lengths[r0:r1]
        return view

    def copy_row(self, src, dst):
        """Row dst becomes a copy of row src (its filled positions and its length)."""
        n = int(self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def begin_pass(self, T, device):
        """Prepare a forward pass of T new tokens per row: positions and the attention mask."""
        starts = self.lengths.tolist()
        lo, hi = min(starts), max(starts)
        capacity = self.shape[3]
        assert hi + T <= capacity, f"KV cache overflow: {hi + T} positions, capacity {capacity}"
        self.pass_end = hi + T
        if lo == hi:  # every row at the same position: slices, and the model's usual masks
            self.pass_start, self.pass_positions, self.pass_blocked, self._write_index = lo, None, None, None
            return
        B = len(starts)
        start = torch.tensor(starts, device=device)
        positions = start[:, None] + torch.arange(T, device=device)  # (B, T)
        keys = torch.arange(hi + T, device=device)  # (Tk,)
        self.pass_start = None
        self.pass_positions = positions
        self.pass_blocked = (keys[None, None, :] > positions[:, :, None]).unsqueeze(1)  # (B, 1, T, Tk)
        self._write_index = (torch.arange(B, device=device)[:, None].expand(B, T), positions)

    def insert_kv(self, layer_idx, k, v):
        """k, v: (B, H_kv, T, D) of the new tokens -> this layer's keys/values (B, H_kv, Tk, D),
        views of positions [0, Tk) with Tk = pass_end."""
        if self.k is None:
            self.allocate(k.dtype, k.device)
        if k.dtype != self.k.dtype:
            k, v = k.to(self.k.dtype), v.to(self.k.dtype)
        T, Tk = k.size(2), self.pass_end
        kl, vl = self.k[layer_idx], self.v[layer_idx]  # (B, H_kv, T_max, D)
        if self._write_index is None:
            t0 = self.pass_start
            kl[:, :, t0:t0 + T] = k
            vl[:, :, t0:t0 + T] = v
        else:
            # rows at different positions: one scatter; advanced indices around a slice put the
            # indexed dims first, so the target is (B, T, H_kv, D)
            rows, positions = self._write_index
            kl[rows, :, positions] = k.transpose(1, 2)
            vl[rows, :, positions] = v.transpose(1, 2)
        if layer_idx == self.shape[0] - 1:
            self.lengths += T
        return kl[:, :, :Tk], vl[:, :, :Tk]

    def prefill(self, other):
        """Start from another (filled) cache, e.g. a batch-1 prompt cache broadcast to B rows."""
        assert other.k is not None, "the source cache is empty"
        T = other.get_pos()
        assert int(self.lengths.max()) == 0, "prefill an empty cache"
        (L, B, H, cap, D), (oL, oB, oH, _, oD) = self.shape, other.shape
        assert T <= cap, f"the source cache ({T} positions) is longer than this one ({cap})"
        assert (L, H, D) == (oL, oH, oD), f"cache shapes differ: {self.shape} vs {other.shape}"
        assert oB in (1, B), "the source batch must be 1 or equal to this batch"
        self.allocate(other.k.dtype, other.k.device)
        self.k[:, :, :, :T] = other.k[:, :, :, :T]  # broadcasts over the batch dimension
        self.v[:, :, :, :T] = other.v[:, :, :, :T]
        self.lengths.fill_(T)
