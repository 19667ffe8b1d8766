"""How a stage's members (seeds, top-p thresholds) run on the devices: the LM runner's two layouts.

    program = members.program(trainer, config.mesh, config.train.members, config.data.batch_size, len(stage.members))
    states = program.init(keys)                          # [M, ...] TrainState
    states, metrics = program.chunk(states, batches, ps)  # batches [S, B, T] on the host, ps [M]
    # per_member_batches=True: batches [M, S, B, T], each member its own data order

- ``config.mesh`` with fsdp = expert = model = 1 (the default): no model sharding; the members are split
  over ``mesh.data`` devices (``parallel.sweep``; -1: as many as divide the member count), each member's
  whole batch on its device.
- Otherwise a sharded run: the devices form the mesh ``config.mesh`` (axes data, fsdp, expert, model; -1
  takes the devices the others leave), the members run one after another (``lax.map``), and each has its
  batch split over data x fsdp x expert and its weights over fsdp / expert / model by the logical axes
  the model declares (``models.sharding``). Checkpoints restore into the same shardings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from psec_jax import parallel
from psec_jax.models import sharding
from psec_jax.parallel import distributed

MODEL_AXES = ("fsdp", "expert", "model")


class Program(NamedTuple):
    init: Callable[[jax.Array], Any]  # keys [M] -> TrainState [M, ...]
    chunk: Callable[
        [Any, Any, jax.Array], tuple[Any, dict]
    ]  # (states, host Batch [S, B, T] or [M, S, B, T], ps [M]) -> (states, metrics [M, S])
    evaluate: Callable[
        [Any, Any, jax.Array, jax.Array], dict
    ]  # (states, Batch [N, R, T], text rows [N, R], ps [M]) -> metrics [M]
    tokens: Callable[[Any, Any, jax.Array], dict]  # (states, Batch [N, R, T], ps [M]) -> token_outputs [M, ...]
    mesh: Any  # the mesh of a sharded run, None for a split over the devices


def is_sharded(mesh_config: ml_collections.ConfigDict) -> bool:
    """Whether ``config.mesh`` asks for model sharding (any of fsdp, expert, model beyond one device)."""
    return any(int(mesh_config[a]) != 1 for a in MODEL_AXES)


def _stacked(shardings: Any) -> Any:
    """The NamedShardings of one member's arrays with a leading, unsplit member axis."""
    return jax.tree.map(
        lambda s: NamedSharding(s.mesh, P(None, *s.spec)), shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
    )


def program(
    trainer: Any,
    mesh_config: ml_collections.ConfigDict,
    members: str,
    batch_rows: int,
    num_members: int,
    per_member_batches: bool = False,
) -> Program:
    """The stage's init, chunk and evaluation functions for the layout ``mesh_config`` asks for (see the
    module docstring); ``members``: "map" or "vmap" for the split over the devices; ``batch_rows``: rows
    per step (a batch the batch axes do not divide stays whole on every device); ``num_members``: the
    stage's member count; ``per_member_batches``: chunk batches carry a leading member axis [M, S, B, T]
    (each member its own data order) instead of one [S, B, T] that every member sees."""
    evaluate = lambda st, b, rows, p: trainer.evaluate(st.params, b, rows, p)
    tokens = lambda st, b, p: trainer.tokens(st.params, b, p)
    batch_axis = 0 if per_member_batches else None
    if not is_sharded(mesh_config):
        over = parallel.members_mesh(mesh_config.data, num_members)
        chunk = parallel.sweep(trainer.chunk, in_axes=(0, batch_axis, 0), members=members, mesh=over)
        return Program(
            parallel.sweep(trainer.init, mesh=over),
            lambda s, b, ps: chunk(s, jax.tree.map(jnp.asarray, b), ps),
            parallel.sweep(evaluate, in_axes=(0, None, None, 0), members="map", mesh=over),
            parallel.sweep(tokens, in_axes=(0, None, 0), members="map", mesh=over),
            None,
        )
    mesh = parallel.make_mesh(mesh_config)
    states = _stacked(sharding.state_shardings(trainer, mesh))
    lead = 1 if per_member_batches else 0  # the member axis, unsplit, before [S, B, T]
    split = sharding.batch_sharding(mesh, ndim=3 + lead, batch_dim=1 + lead)
    batch = NamedSharding(mesh, parallel.fit_spec(split.spec, (1,) * lead + (1, batch_rows, 1), mesh))
    replicated = NamedSharding(mesh, P())
    with jax.set_mesh(mesh):
        init = jax.jit(jax.vmap(trainer.init), out_shardings=states)
        chunk = jax.jit(
            parallel.map_members(trainer.chunk, (0, batch_axis, 0)),
            in_shardings=(states, batch, replicated),
            out_shardings=(states, replicated),
        )
        ev = jax.jit(parallel.map_members(evaluate, (0, None, None, 0)), out_shardings=replicated)
        tok = jax.jit(parallel.map_members(tokens, (0, None, 0)), out_shardings=replicated)

    def place(tree: Any, s: NamedSharding) -> Any:
        return jax.tree.map(lambda x: distributed.global_array(x, s), tree)

    def on_mesh(fn: Callable) -> Callable:
        def run(*args):
            with jax.set_mesh(mesh):  # the model's sharding constraints read it while tracing
                return fn(*args)

        return run

    return Program(
        on_mesh(lambda keys: init(place(keys, replicated))),
        on_mesh(lambda s, b, ps: chunk(s, place(b, batch), place(ps, replicated))),
        on_mesh(lambda s, b, rows, ps: ev(s, place(b, replicated), place(rows, replicated), place(ps, replicated))),
        on_mesh(lambda s, b, ps: tok(s, place(b, replicated), place(ps, replicated))),
        mesh,
    )
