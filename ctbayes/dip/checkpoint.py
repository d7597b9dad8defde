"""DIP checkpoints: the optimiser's whole state at an iteration, in one .npz file written
atomically, with the settings and the data fingerprint it must be resumed with."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes.errors import InputError
from ctbayes.io.atomic import atomic_path


def save_checkpoint(path, carry, iteration, history, psnr_rows, config, fingerprint, fit_seconds):
    """Write the carry (a pytree of arrays) and the run's progress to `path`."""
    leaves = jax.tree.leaves(carry)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, iteration=iteration, history=history, psnr=np.asarray(psnr_rows, np.float64),
                 config=json.dumps(config.trajectory_fields(), sort_keys=True),
                 fingerprint=fingerprint, fit_seconds=fit_seconds,
                 **{f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})


def load_checkpoint(path, carry_template, config, fingerprint, iterations):
    """The carry, iteration, history, PSNR rows and fit time stored in a checkpoint; an
    InputError where it cannot be read or was written with other settings, data or network."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
        saved = json.loads(str(stored["config"]))
        iteration = int(stored["iteration"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"The DIP checkpoint {path} cannot be read: {exc}.") from exc
    current = config.trajectory_fields()
    differing = [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
                 for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differing:
        raise InputError(f"The DIP checkpoint {path} was written with other settings ("
                         + "; ".join(differing) + "); resume with the same settings or start anew.")
    if str(stored["fingerprint"]) != fingerprint:
        raise InputError(f"The DIP checkpoint {path} was written for another sinogram, geometry "
                         "or initial image; resume with the same data or start anew.")
    if iteration > iterations:
        raise InputError(f"The DIP checkpoint {path} is at iteration {iteration}, beyond the "
                         f"{iterations} iterations asked for.")
    template_leaves, treedef = jax.tree.flatten(carry_template)
    leaves = [stored.get(f"leaf_{i}") for i in range(len(template_leaves))]
    if any(a is None or a.shape != np.shape(b) for a, b in zip(leaves, template_leaves)):
        raise InputError(f"The DIP checkpoint {path} holds a network of another shape.")
    carry = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in leaves])
    psnr_rows = [tuple(r) for r in stored["psnr"].reshape(-1, 2)]
    return carry, iteration, stored["history"], psnr_rows, float(stored["fit_seconds"])
