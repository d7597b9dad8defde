"""Property test of the scan reader: any small HDF5 tree, with any attribute values, reads
as a valid Scan or raises InputError; never another exception."""

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from ctbayes.errors import InputError  # noqa: E402
from ctbayes.io import read_scan  # noqa: E402
from ctbayes.scan import Scan  # noqa: E402

PATHS = ["entry/instrument/detector/data", "entry/sample/rotation_angle",
         "entry/instrument/detector/image_key", "entry/instrument/detector/x_pixel_size",
         "entry/ctbayes/ground_truth", "entry/ctbayes/references/fbp", "exchange/data",
         "entry/ctbayes/provenance"]
ATTRS = ["beam", "det_spacing", "pixel_size", "image_shape", "source_origin",
         "origin_detector", "det_row_spacing", "noise_std"]

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.floats(min_value=0.5, max_value=400.0), st.integers(-3, 70))
arrays = st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.int8]).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                     max_side=7)))  # any value, NaN and inf too
views = st.integers(1, 6).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, 7)))
attr_values = st.one_of(numbers, st.text(max_size=6), st.sampled_from(["parallel", "fanflat",
                        "cone", "parallel3d", b"fanflat"]), st.lists(st.integers(-2, 9),
                        max_size=4), st.booleans(), arrays)


@st.composite
def trees(draw):
    """A dict path -> value or ("link", kind, target) plus the attributes of entry/ctbayes."""
    nodes = {}
    if draw(st.booleans()):  # a plausible core (views, detector) that other fields can spoil
        n, d = draw(views)
        nodes[PATHS[0]] = draw(hnp.arrays(np.float32, (n, d), elements=st.floats(0, 5, width=32)))
        nodes[PATHS[1]] = draw(st.one_of(
            hnp.arrays(np.float64, (n,), elements=st.floats(-400, 400)),
            st.just(np.linspace(0, 180, n, endpoint=False))))
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=5, unique=True)):
        nodes[path] = draw(st.one_of(arrays, st.text(max_size=4), numbers,
                                     st.tuples(st.just("link"), st.sampled_from(["soft", "external"]),
                                               st.sampled_from(PATHS + ["nowhere"]))))
    attrs = draw(st.dictionaries(st.sampled_from(ATTRS), attr_values, max_size=5))
    return nodes, attrs


def _write(path: Path, nodes, attrs):
    with h5py.File(path, "w") as f:
        for name, value in nodes.items():
            if name in f or any(p in f and isinstance(f[p], h5py.Dataset)
                                for p in _parents(name)):
                continue
            if isinstance(value, tuple) and value[:1] == ("link",):
                f[name] = (h5py.SoftLink("/" + value[2]) if value[1] == "soft"
                           else h5py.ExternalLink("absent.h5", "/" + value[2]))
            else:
                f[name] = value
        if attrs and "entry/ctbayes" not in f:
            f.require_group("entry/ctbayes") if "entry" not in f or isinstance(f["entry"], h5py.Group) else None
        group = f.get("entry/ctbayes")
        if isinstance(group, h5py.Group):
            for key, value in attrs.items():
                group.attrs[key] = value


def _parents(name):
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_any_hdf5_tree_reads_as_a_scan_or_an_input_error(tree):
    nodes, attrs = tree
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.h5"
        try:
            _write(path, nodes, attrs)
        except (TypeError, ValueError, KeyError, OSError):
            return  # h5py cannot store this combination: nothing to read
        try:
            scan = read_scan(path)
        except InputError as err:
            message = str(err)
            assert str(path) in message and "\n" not in message
            return
        assert isinstance(scan, Scan)
        assert scan.sinogram.shape == scan.geometry.sinogram_shape
        assert np.all(np.isfinite(scan.sinogram))
