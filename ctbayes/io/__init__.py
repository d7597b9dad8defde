"""Reading and writing scan and result files, and importing foreign formats."""

from ctbayes.io.atomic import atomic_path
from ctbayes.io.hdf5 import read_scan, write_scan

__all__ = ["atomic_path", "read_scan", "write_scan"]
