"""The sha256 of every dataset file the committed results were made from, as the reference machine
generated it (``pinned``: XLA on SSE4_2 in a child process), keyed by its cache file name.

A machine that generates other bytes prints one warning line with both checksums (``check``): its
results will differ from the committed ones by training noise, and the exact reference bytes can be
brought over with ``psec-jax dataset NAME --export DIR`` there and ``--import FILE`` here. Regenerate an
entry with the command in the warning (``psec-jax dataset NAME``) and ``sha256sum`` of the file in
``psec_jax.data.datasets.cache_dir()``.
"""

from __future__ import annotations

from psec_jax import progress

SHA256: dict[str, str] = {
    "walker-run-expert-10traj.hdf5": "d22909e51e903546c05fbeca534044707fc3c706f1fa2d2424cb4fad2c7432c0",
    "walker-stand-expert-1000traj.hdf5": "8092eb2f7a87aa92b312e3b0b5cdb694170ea85e475897a9026c934604786739",
    "walker-stand-medium-expert-40traj.hdf5": "d6d8ec031a7c578c657f775a8c05117ac1ad4a570663ec5ccdb00df9b0fbbe16",
    "walker-walk-expert-10traj.hdf5": "e20c155110b708fed7147b633ffa6c94c467bdb79b947546016fd2dde17db957",
    "walker-walk-expert-1traj.hdf5": "87b6bab5a0cf1e3eb4eb1f73e18128e0f83c2c25b4d5220d91357dde6cb63515",
}


def check(filename: str, sha256: str, command: str) -> bool | None:
    """Compares a freshly generated dataset file's ``sha256`` with its reference: True if it matches,
    None if ``filename`` has none, False (after one warning line naming both checksums and
    ``command``) if it differs."""
    want = SHA256.get(filename)
    if want is None:
        return None
    if want == sha256:
        return True
    progress.say(
        f"warning: {filename} was generated with other bytes (sha256 {sha256[:16]}...) than the "
        f"reference {want[:16]}... the committed results used; results will differ from them by "
        f"training noise (`{command} --export DIR` on the reference machine and `--import FILE` here "
        f"bring the same bytes)"
    )
    return False
