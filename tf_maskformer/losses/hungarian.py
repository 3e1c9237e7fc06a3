"""An in-graph, XLA-compilable, batched Hungarian solver (minimum-cost linear assignment).

The algorithm is the shortest-augmenting-path method with dual potentials (Jonker-Volgenant as
described by Crouse, 2016), the one scipy.optimize.linear_sum_assignment uses, vectorised over the
batch: one augmentation per row (target), each a Dijkstra-like search over the columns (queries)
whose steps are [B, C] tensor ops inside tf.while_loop. Every batch element runs the same number of
loop steps; finished elements only mask their updates, so shapes stay static (what TPUs need) and no
host op is involved.

Hand-written because it runs inside the compiled train step: the Model Garden's DETR matcher
(official.projects.detr.ops.matchers) is correct but iterates cover/zero-finding loops over padded
square matrices: ~1 s against ~17 ms for 16 x 100 x 100 here (benchmarks/matcher.py, scipy beside).

Rows are the targets and columns the queries (scipy solves MaskFormer's [queries, targets] problem in
this transposed orientation too). Invalid (padding) rows are skipped; every valid row is assigned a
distinct column, which needs valid rows <= columns.
"""

from __future__ import annotations

import tensorflow as tf

T = tf.Tensor

# Potentials accumulate shortest-path lengths; a large finite value keeps arithmetic inf/nan free.
_BIG = 1e30


def _argmin_prefer_free(values: tf.Tensor, free: tf.Tensor) -> tf.Tensor:
    """Index of the minimum per row; among exact ties an unassigned column wins (as in scipy)."""
    lowest = tf.reduce_min(values, axis=-1, keepdims=True)
    is_min = values <= lowest
    free_min = is_min & free
    first_free = tf.argmax(tf.cast(free_min, tf.int32), axis=-1, output_type=tf.int32)
    first_min = tf.argmax(tf.cast(is_min, tf.int32), axis=-1, output_type=tf.int32)
    return tf.where(tf.reduce_any(free_min, axis=-1), first_free, first_min)


def hungarian_assignment(cost: tf.Tensor, row_valid: tf.Tensor | None = None) -> tf.Tensor:
    """Optimal assignment of rows to columns per batch element.

    cost: float [B, R, C]; row_valid: bool [B, R] (default all valid), at most C valid rows each.
    Returns int32 [B, R]: the column assigned to each valid row, -1 for invalid rows. Minimises the sum
    of the chosen costs over valid rows. Costs must be finite; the solve runs in float32.
    """
    cost = tf.cast(tf.stop_gradient(cost), tf.float32)
    batch, rows, cols = cost.shape
    batch = batch if batch is not None else tf.shape(cost)[0]
    if row_valid is None:
        row_valid = tf.ones([batch, rows], tf.bool)
    row_valid = tf.cast(row_valid, tf.bool)
    col_ids = tf.range(cols, dtype=tf.int32)[None, :]
    row_ids = tf.range(rows, dtype=tf.int32)[None, :]

    def augment_row(i: T, u: T, v: T, col4row: T, row4col: T) -> tuple[T, ...]:
        active = row_valid[:, i]

        def search_step(done: T, cur_row: T, min_val: T, shortest: T, path: T, scanned_rows: T, scanned_cols: T,
                        sink: T) -> tuple[T, ...]:
            scanned_rows = scanned_rows | ((row_ids == cur_row[:, None]) & ~done[:, None])
            cost_row = tf.gather(cost, cur_row, axis=1, batch_dims=1)
            u_cur = tf.gather(u, cur_row, axis=1, batch_dims=1)
            reduced = min_val[:, None] + cost_row - u_cur[:, None] - v
            better = ~scanned_cols & (reduced < shortest) & ~done[:, None]
            path = tf.where(better, cur_row[:, None], path)
            shortest = tf.where(better, reduced, shortest)
            candidates = tf.where(scanned_cols, _BIG, shortest)
            j = _argmin_prefer_free(candidates, row4col < 0)
            new_min = tf.gather(candidates, j, axis=1, batch_dims=1)
            owner = tf.gather(row4col, j, axis=1, batch_dims=1)
            min_val = tf.where(done, min_val, new_min)
            scanned_cols = scanned_cols | ((col_ids == j[:, None]) & ~done[:, None])
            found = ~done & (owner < 0)
            sink = tf.where(found, j, sink)
            cur_row = tf.where(done | found, cur_row, owner)
            return done | found, cur_row, min_val, shortest, path, scanned_rows, scanned_cols, sink

        start = (~active, tf.fill([batch], i), tf.zeros([batch]), tf.fill([batch, cols], _BIG),
                 tf.fill([batch, cols], -1), tf.zeros([batch, rows], tf.bool), tf.zeros([batch, cols], tf.bool),
                 tf.fill([batch], -1))
        _, _, min_val, shortest, path, scanned_rows, scanned_cols, sink = tf.while_loop(
            lambda done, *_: tf.reduce_any(~done), search_step, start,
            maximum_iterations=cols)

        # Dual update: u[i] += min_val; other scanned rows r: u[r] += min_val - shortest[col4row[r]];
        # scanned columns j: v[j] -= min_val - shortest[j]. Inactive elements keep theirs.
        shortest_of_row = tf.gather(shortest, tf.maximum(col4row, 0), axis=1, batch_dims=1)
        is_i = row_ids == i
        du = tf.where(is_i, min_val[:, None],
                      tf.where(scanned_rows, min_val[:, None] - shortest_of_row, 0.0))
        dv = tf.where(scanned_cols, min_val[:, None] - shortest, 0.0)
        u = tf.where(active[:, None], u + du, u)
        v = tf.where(active[:, None], v - dv, v)

        # Augment along the path from the sink back to row i, flipping assignments.
        def flip_step(done: T, j: T, col4row: T, row4col: T) -> tuple[T, ...]:
            r = tf.gather(path, tf.maximum(j, 0), axis=1, batch_dims=1)
            live = ~done
            row4col = tf.where(live[:, None] & (col_ids == j[:, None]), r[:, None], row4col)
            previous = tf.gather(col4row, tf.maximum(r, 0), axis=1, batch_dims=1)
            col4row = tf.where(live[:, None] & (row_ids == r[:, None]), j[:, None], col4row)
            return done | (r == i), tf.where(live, previous, j), col4row, row4col

        _, _, col4row, row4col = tf.while_loop(
            lambda done, *_: tf.reduce_any(~done), flip_step, (~active, sink, col4row, row4col),
            maximum_iterations=rows)
        return i + 1, u, v, col4row, row4col

    start = (tf.constant(0), tf.zeros([batch, rows]), tf.zeros([batch, cols]),
             tf.fill([batch, rows], -1), tf.fill([batch, cols], -1))
    _, _, _, col4row, _ = tf.while_loop(lambda i, *_: i < rows, augment_row, start)
    return tf.where(row_valid, col4row, -1)
