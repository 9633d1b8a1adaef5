"""The one exception type of the data package.

Every problem with a dataset on disk (a missing directory, an unreadable image, a mask of
the wrong size, a label out of range) raises :class:`DatasetError`: a one-line message that
starts with the file it is about. It subclasses ``ValueError``, so a caller that already
turns ``ValueError`` into "error: ..., exit status 2" needs nothing new.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """Bad input data. ``str(err)`` is one line that names the file and what is wrong."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())   # keep it one line, whatever PIL said
        super().__init__(f"{self.path}: {self.problem}")
