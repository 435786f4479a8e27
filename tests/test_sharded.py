"""Construction on a jax.sharding Mesh against the single-device construction.

The comparisons run in a subprocess with 4 forced CPU devices and a 2-device
mesh (programs with Cholesky factorizations on every forced CPU device have
been seen to deadlock): this process keeps its single device. The subprocess
has a timeout, so a hang fails the test instead of stalling the suite.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from redunet_jax import construct
from redunet_jax._sharded import check_mesh

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from redunet_jax import construct, transform
    from redunet_jax._packed import padded_plan
    from redunet_jax._sharded import _sharded_step

    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    rng = np.random.default_rng(0)
    # Uneven classes, class 1 empty, a singleton class 3; m = 45 is odd, the
    # k + 1 = 5 stacked matrices (25 for F = 5 frequencies) do not split
    # evenly, and 3 + 3 + 1 blocks of 8 samples are padded to 8 blocks.
    y = np.array([0] * 23 + [2] * 21 + [3])
    rng.shuffle(y)
    out = {}

    def gap(a, b):
        a, b = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(a) == len(b)
        return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                   for u, v in zip(a, b))

    def compare(name, X, **kw):
        rates = {True: [], False: []}
        nets = {}
        for sharded in (False, True):
            net, Z = construct(
                X, y, num_classes=4, num_layers=3, eps_sq=0.5,
                mesh=mesh if sharded else None,
                callback=lambda i, r: rates[sharded].append(float(r.delta_r)),
                **kw,
            )
            nets[sharded] = (net, Z)
        (a, Za), (b, Zb) = nets[False], nets[True]
        X_test = X[::2] + 0.1 * rng.standard_normal(X[::2].shape)
        out[name] = dict(
            layers=gap(a.layers, b.layers),
            features=gap(Za, Zb),
            transform=gap(transform(a, X_test), transform(b, X_test)),
            rates=gap(rates[False], rates[True]),
            num_layers=[a.num_layers, b.num_layers],
            shapes=[list(Za.shape), list(Zb.shape)],
            devices=len(b.layers.gamma.sharding.device_set),
            finite=bool(np.isfinite(np.asarray(Zb)).all()),
        )
        return a

    compare("vector", rng.standard_normal((45, 6)) + y[:, None])
    compare("vector_labels", rng.standard_normal((45, 6)) + y[:, None],
            use_labels=True)
    X = rng.standard_normal((45, 3, 8))
    compare("invariant", X, invariant=True, chunk_size=8)

    # Without a mesh, invariant construction (its blocks moved in concurrent
    # parts) computes on the device of its input, whatever ran before.
    Xi = rng.standard_normal((30, 2, 6)).astype(np.float32)
    yi = np.arange(30) % 3
    placed, results = [], []
    for where in (jax.devices()[1], None, jax.devices()[0]):
        Xin = Xi if where is None else jax.device_put(jnp.asarray(Xi), where)
        _, Zi = construct(Xin, yi, num_classes=3, num_layers=2, invariant=True)
        placed.append(sorted(d.id for d in Zi.devices()))
        results.append(Zi)
    out["placement"] = placed
    out["placement_gap"] = max(gap(results[0], r) for r in results)

    # The step factors its share in one batched Cholesky call per device.
    plan = padded_plan(y, 4, 2, 8)
    Z = jnp.zeros((45, 3, 5), jnp.complex64)
    Pi = jax.nn.one_hot(y, 4)
    s = jnp.float32(0.5)
    mesh_x = jax.sharding.Mesh(mesh.devices, ("data",),
                               axis_types=(jax.sharding.AxisType.Auto,))
    text = _sharded_step.lower(
        Z, Pi, s, s, s, tuple(jnp.asarray(p) for p in plan[:3]),
        mesh=mesh_x, use_labels=False, signal_shape=(8,), block=8,
    ).compile().as_text()
    calls = [l for l in text.splitlines() if "potrf" in l and "custom-call(" in l]
    out["cholesky_calls"] = len(calls)
    out["cholesky_share"] = "c64[13,3,3]" in calls[0] if calls else False
    out["padded_blocks"] = [len(plan.block_class), int(np.sum(plan.order < 45))]
    json.dump(out, sys.stdout)
    """
)


@pytest.fixture(scope="module")
def sharded_results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["vector", "vector_labels", "invariant"])
def test_sharded_construction_equals_single_device(sharded_results, case):
    r = sharded_results[case]
    assert r["num_layers"] == [3, 3]
    assert r["shapes"][0] == r["shapes"][1]
    assert r["finite"]
    assert r["devices"] == 2
    assert r["layers"] < 1e-5
    assert r["features"] < 1e-5
    assert r["rates"] < 1e-5
    assert r["transform"] < 1e-5


def test_sharded_step_factors_once_per_device_on_padded_blocks(sharded_results):
    assert sharded_results["cholesky_calls"] == 1
    assert sharded_results["cholesky_share"]
    # 3 + 3 + 1 class-pure blocks of 8 samples, padded with a zero block.
    assert sharded_results["padded_blocks"] == [8, 45]


def test_invariant_construction_follows_the_input_device(sharded_results):
    assert sharded_results["placement"] == [[1], [0], [0]]
    assert sharded_results["placement_gap"] == 0.0


def test_mesh_must_be_a_one_axis_mesh():
    X = np.random.default_rng(0).standard_normal((8, 3))
    y = np.array([0, 1] * 4)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        construct(X, y, num_classes=2, num_layers=1, mesh="data")
    with pytest.raises(TypeError, match="got list"):
        check_mesh(jax.devices())
    two_axes = jax.make_mesh((1, 1), ("a", "b"))
    with pytest.raises(ValueError, match=r"exactly one axis.*\('a', 'b'\)"):
        construct(X, y, num_classes=2, num_layers=1, mesh=two_axes)
    assert check_mesh(jax.make_mesh((1,), ("data",))).axis_names == ("data",)
